"""Upscaling a stored image: the `RenderSpec` of an upscale job (``POST /api/images/upscale``), its
prompt, model and seed the source's, its size the result's, and the upscaler that makes it."""

from __future__ import annotations

from typing import Any

from services.contracts import RenderSpec, UpscaleRequest, UpscaleSpec

from .engines.descriptors import ENGINES, engines_with
from .errors import ModelNotFound, ValidationFailed
from .models import AddonEntry, ModelRegistry
from .rerun import recorded_sidecar
from .settings import Settings
from .storage import Store
from .storage.keys import validate_image_key

UPSCALE_STEPS = 1
"""An upscale job's `steps`: one pass, which is also what its progress counts."""

COPIED_FIELDS = ("prompt", "negative_prompt", "model", "cfg", "scheduler", "preset", "quality")
"""What the result's spec keeps of the source's request, so the gallery shows it as the same picture."""


def _not_upscalable(key: str, why: str) -> ValidationFailed:
    return ValidationFailed(
        f"image '{key}' cannot be upscaled: {why}",
        remediation=["Upscale an image this service generated (GET /api/images/latest lists them)."],
        detail={"key": key},
    )


def source_sidecar(key: str, store: Store) -> dict[str, Any]:
    """The sidecar of the stored image `key` (already validated); `KeyNotFound` when the image is not
    there, `ValidationFailed` when it has no readable sidecar."""
    return recorded_sidecar(key, store, _not_upscalable)


def _side(sidecar: dict[str, Any], name: str, key: str) -> int:
    value = sidecar.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _not_upscalable(key, f"its sidecar records no {name}")
    return value


def upscale_engine() -> str:
    """The engine whose queue upscale jobs wait in: a local one, as its worker upscales in its own
    process (no server has our upscalers) without loading a pipeline; one that declares the `upscale`
    capability first."""
    local = [name for name, descriptor in ENGINES.items() if descriptor.is_local]
    return ([name for name in engines_with("upscale") if name in local] or local)[0]


def pick_upscaler(body: UpscaleRequest, registry: ModelRegistry) -> AddonEntry | None:
    """The upscaler `body` names, else the first registered (and present) one of its scale, else None
    (Lanczos resampling)."""
    if body.model is not None:
        entry = registry.addon("upscalers", body.model)
        if not entry.is_present:
            raise ModelNotFound(
                f"upscaler '{entry.name}' is registered but its file {entry.path} is missing",
                remediation=["Download it to that path, or send no `model` to use the default upscaler."],
                detail={"upscalers": entry.name},
            )
        return entry
    return next(
        (e for e in registry.addons("upscalers").values() if e.scale == body.scale and e.is_present),
        None,
    )


def resolve_upscale(
    body: UpscaleRequest, registry: ModelRegistry, settings: Settings, store: Store
) -> RenderSpec:
    """The spec of a job making image `body.key` `body.scale` times larger, as a new image: the
    source's prompt, model and seed (for the gallery and infotext), the result's size (what the
    caller's tier ceilings are checked against)."""
    key = validate_image_key(body.key, settings.s3_prefix)
    sidecar = source_sidecar(key, store)
    request: dict[str, Any] = sidecar["request"]
    width, height = _side(sidecar, "width", key), _side(sidecar, "height", key)
    entry = pick_upscaler(body, registry)
    copied = {name: request[name] for name in COPIED_FIELDS if request.get(name) is not None}
    seed = sidecar.get("seed") if isinstance(sidecar.get("seed"), int) else request.get("seed")
    return RenderSpec(
        **{"prompt": "", "model": None, "cfg": 0.0, **copied},
        width=width * body.scale,
        height=height * body.scale,
        steps=UPSCALE_STEPS,
        seed=seed if isinstance(seed, int) else 0,
        num_images=1,
        engine=upscale_engine(),
        upscale=UpscaleSpec(source=key, scale=body.scale, model=entry.name if entry else None),
    )
