"""What a stored image says about itself: the AUTOMATIC1111 infotext, the JSON sidecar, and the PNG
text chunks (``parameters``, ``kitty``, and ComfyUI's ``prompt``/``workflow`` kept as they came)."""

from __future__ import annotations

import io
import json
import platform
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any

import PIL
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from services.contracts import A1111_SAMPLERS, RenderSpec

from . import __version__
from .redaction import redact

PARAMETERS_CHUNK = "parameters"
"""A1111's chunk name; its PNG Info tab, ComfyUI and most galleries read it."""

KITTY_CHUNK = "kitty"
"""Our chunk: the sidecar JSON, so an image carries its full record even without the bucket."""

SIDECAR_VERSION = 1
"""Bumped when the sidecar's shape changes incompatibly."""


def infotext(
    spec: RenderSpec,
    *,
    seed: int | None,
    model_hash: str | None = None,
    version: str | None = None,
    settings_used: dict[str, Any] | None = None,
    sampler: tuple[str, str | None] | None = None,
) -> str:
    """The ``parameters`` text as AUTOMATIC1111 writes it (``create_infotext``), so its PNG Info
    tab and other readers parse our images. `settings_used` (a raw graph's own sampler settings)
    replaces the request's steps, CFG and sampler; what it leaves None is left out, never guessed.
    `sampler` (A1111's sampler and schedule type, see `provenance.sampler_used`) is what actually
    ran: without it a request naming no scheduler gets no ``Sampler:``, and most readers then
    read nothing at all."""
    if settings_used is not None:
        steps, cfg = settings_used.get("steps"), settings_used.get("cfg")
        sampler_name, schedule = settings_used.get("sampler"), settings_used.get("scheduler")
    else:
        steps, cfg = spec.steps, spec.cfg
        sampler_name, schedule = A1111_SAMPLERS.get(spec.scheduler or "", (spec.scheduler, None))
    if sampler is not None:
        sampler_name, schedule = sampler
    if not spec.is_sampled:
        steps, cfg, sampler_name, schedule = None, None, None, None
    fields: dict[str, object | None] = {
        "Steps": steps,
        "Sampler": sampler_name,
        "Schedule type": schedule,
        "CFG scale": _a1111_number(cfg) if cfg is not None else None,
        "Seed": seed,
        "Size": f"{spec.width}x{spec.height}",
        "Model hash": model_hash,
        "Model": spec.model,
        "Version": version,
    }
    if spec.upscale is not None:
        fields["Postprocess upscale by"] = spec.upscale.scale
        fields["Postprocess upscaler"] = spec.upscale.model or "Lanczos"
    if spec.hires is not None:  # as A1111 writes its hires fix: Size stays the first pass's
        fields["Denoising strength"] = _a1111_number(spec.hires.strength)
        fields["Hires upscale"] = _a1111_number(spec.hires.scale)
        fields["Hires steps"] = spec.hires.steps
        fields["Hires upscaler"] = spec.hires.upscaler or "Lanczos"
    for index, control in enumerate(spec.controls):  # as the ControlNet extension writes its units
        module = "canny" if control.type == "canny" and control.preprocess else "none"
        fields[f"ControlNet {index}"] = (
            f"Module: {module}, Model: {control.model}, Weight: {_a1111_number(control.weight)}, "
            f"Guidance Start: {_a1111_number(control.start)}, Guidance End: {_a1111_number(control.end)}"
        )
    settings_line = ", ".join(
        f"{name}: {_quote(value)}" for name, value in fields.items() if value not in (None, "")
    )
    negative_line = f"\nNegative prompt: {spec.negative_prompt}" if spec.negative_prompt else ""
    return f"{spec.prompt}{negative_line}\n{settings_line}".strip()


def build_sidecar(
    *,
    job_id: str,
    engine: str,
    spec: RenderSpec,
    seed: int | None,
    width: int,
    height: int,
    device: str | None,
    png_key: str,
    meta_key: str,
    engine_info: dict[str, Any],
    timings: dict[str, Any],
    created_at: datetime,
    index: int,
    settings_used: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record stored beside an image (and inside it, as the ``kitty`` chunk). `pipeline`
    (``{id, step}``) marks an image a pipeline's step made; a step after the first names its
    `source`, the image of the step before."""
    info = dict(engine_info)
    engine_versions = info.pop("versions", None) or {}
    versions = {
        "python": platform.python_version(),
        "kitty-images": _package_version("kitty-images", __version__),
        "pillow": PIL.__version__,
        **{str(name): str(value) for name, value in dict(engine_versions).items()},
    }
    if created_at.tzinfo is None:
        # Naive datetimes in this codebase are UTC by convention.
        created_at = created_at.replace(tzinfo=UTC)
    record = {
        "sidecar_version": SIDECAR_VERSION,
        "job_id": job_id,
        "index": index,
        "engine": engine,
        "model": spec.model,
        "request": redact(spec.model_dump(mode="json")),
        "seed": seed,
        "width": width,
        "height": height,
        "device": device,
        "versions": versions,
        "timings": dict(timings),
        "engine_info": redact(info),
        "created_at": created_at.astimezone(UTC).isoformat(),
        "png_key": png_key,
        "meta_key": meta_key,
    }
    if settings_used is not None:
        record["settings_used"] = dict(settings_used)
    if spec.upscale is not None:
        record["source"] = spec.upscale.source  # the image this one is an upscale of
    elif spec.postprocess is not None:
        record["source"] = spec.postprocess.source
    elif spec.contact_sheet is not None:
        record["sources"] = list(spec.contact_sheet.sources)  # the shots, in beat order
    elif pipeline is not None and pipeline.get("step") and spec.image:
        record["source"] = spec.image  # a refine: an image-to-image pass over the step before
    if pipeline is not None:
        record["pipeline"] = dict(pipeline)
    return record


def encode_png(
    image: Image.Image,
    *,
    parameters: str,
    sidecar: dict[str, Any],
    extra_chunks: dict[str, str] | None = None,
) -> bytes:
    """The PNG bytes of `image` with text chunks ``parameters``, ``kitty`` and `extra_chunks`
    (ComfyUI's ``prompt``/``workflow``); ours win a name clash, being the record of this job."""
    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, parameters)
    info.add_text(KITTY_CHUNK, json.dumps(sidecar, separators=(",", ":"), ensure_ascii=False))
    for name, text in (extra_chunks or {}).items():
        if name not in (PARAMETERS_CHUNK, KITTY_CHUNK):
            info.add_text(name, text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


THUMB_MAX_SIDE = 320
"""Longest side of a gallery thumbnail: sharp on a 2x screen in a ~160 px grid cell."""

THUMB_QUALITY = 80
"""WebP quality of thumbnails: a few KiB each, indistinguishable at grid size."""


def encode_thumbnail(image: Image.Image) -> bytes:
    """A small WebP of `image` for the gallery grid."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE))
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=THUMB_QUALITY)
    return buffer.getvalue()


def read_png_text(data: bytes) -> dict[str, str]:
    """Every text chunk (tEXt, zTXt, iTXt) of a PNG, by name."""
    with Image.open(io.BytesIO(data)) as image:
        # `.text` reads chunks after the image data too (A1111 and ComfyUI write theirs before it,
        # but other tools do not).
        chunks = getattr(image, "text", {}) or {}
        return {str(name): str(value) for name, value in chunks.items()}


def _quote(value: object) -> str:
    """A1111's ``infotext_utils.quote``: JSON-quote a value that would break the ``k: v, …`` line."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _a1111_number(value: float) -> int | float:
    """7.0 → 7, 7.5 → 7.5: how A1111's UI writes CFG scale."""
    return int(value) if float(value).is_integer() else value


def _package_version(name: str, fallback: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return fallback
