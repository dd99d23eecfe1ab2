"""Live previews: a job's current latents projected to a small RGB WebP every few steps, kept in Redis
under ``{prefix}:preview:{job_id}`` for ``GET /api/images/jobs/{id}/preview``.

The projection is linear (one 3×C matrix and a bias per model family), cheap enough to run inside
the denoising loop. Torch is never imported here: the API process reads the keys, and the worker's
tensors bring their own methods.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from services.contracts import ErrorCode

from .engines.base import ProgressFn
from .errors import KittyError

log = logging.getLogger("kitty.images.previews")

PREVIEW_MAX_SIDE = 256
"""The longest side of a preview, in pixels (a latent is 1/8 of the image: 256 covers 2048 px)."""

PREVIEW_QUALITY = 70
"""WebP quality of a preview: a few KB, refreshed every few steps."""

PREVIEW_TTL_S = 3600
"""How long a job's last preview stays in Redis after it was written."""

PREVIEW_EVERY_ACCELERATED = 2
"""IMAGES_PREVIEW_EVERY unset, on CUDA and MPS: a preview every 2 steps. A preview costs a fixed
~3 ms (`make bench`'s ``previews.cost_ms``: a 1024² SDXL render's 128×128 latent projected, WebP,
Redis SET, on this repo's 2-core CPU), about 2 % of a ~65 ms SDXL step at one preview per 2 steps;
estimated from that, not yet measured on a GPU."""

PREVIEW_EVERY_CPU = 2
"""IMAGES_PREVIEW_EVERY unset, on CPU: every 2 steps too. The issue's rule is "off on slow devices if it
costs more than a few percent", and measured it does not (``previews.overhead``: tiny SD1.5, 20
steps, on vs off, within noise; ~3 ms a preview against a real model's 0.5 s and longer CPU step)."""


def _bytes_table(rows: tuple[tuple[float, ...], ...], biases: tuple[float, ...]) -> LatentRgb:
    """A table written in 0-255 units (as it was published) as weights and biases in -1..1 units."""
    return LatentRgb(
        weights=tuple(tuple(value / 127.5 for value in row) for row in rows),
        bias=tuple((value - 127.5) / 127.5 for value in biases),
    )


@dataclass(frozen=True)
class LatentRgb:
    """RGB in -1..1 from one latent pixel: ``rgb[c] = bias[c] + Σ weights[c][l] · latent[l]``."""

    weights: tuple[tuple[float, ...], ...]
    """One row per colour (R, G, B), one column per latent channel."""
    bias: tuple[float, float, float] | tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.weights[0])


LATENT_RGB: dict[str, LatentRgb] = {
    # SD 1.x/2.x VAE: keturn's least-squares fit of decoded pixels on the latent channels of SD 1.4
    # renders ("Decoding latents to RGB without upscaling", discuss.huggingface.co, 2022); SD 1.5
    # keeps that VAE. Written here per colour (rows), the fit's per-channel columns transposed.
    "sd15": LatentRgb(
        weights=(
            (0.298, 0.187, -0.158, -0.184),
            (0.207, 0.286, 0.189, -0.271),
            (0.208, 0.173, 0.264, -0.473),
        ),
        bias=(0.0, 0.0, 0.0),
    ),
    # SDXL VAE: Timothy Alexis Vass's fit ("Explaining the SDXL latent space", Hugging Face blog,
    # 2023; diffusers' callback guide uses it), published in 0-255 units.
    "sdxl": _bytes_table(
        ((60, -60, 25, -70), (60, -5, 15, -50), (60, 10, -5, -35)),
        (150, 140, 130),
    ),
}
"""Per model family. SD3 and Flux (16 latent channels; Flux's packed into tokens) have none: their
jobs render without previews."""


class PreviewNotFound(KittyError):
    """The job exists (and is the caller's) but has no preview: not started, not a diffusers render,
    previews off, or older than PREVIEW_TTL_S."""

    code, status = ErrorCode.NOT_FOUND, 404
    default_remediation = (
        "Previews appear every few steps of a running diffusers job (IMAGES_PREVIEW_EVERY); "
        "follow `preview_step` in the job view.",
    )


def preview_key(prefix: str, job_id: str) -> str:
    """The Redis key of job `job_id`'s latest preview (IMAGES_QUEUE_PREFIX `prefix`)."""
    return f"{prefix}:preview:{job_id}"


def preview_interval(setting: int | None, device_type: str) -> int:
    """Steps between previews: IMAGES_PREVIEW_EVERY when set (0: off), else by device."""
    if setting is not None:
        return max(setting, 0)
    return PREVIEW_EVERY_CPU if device_type == "cpu" else PREVIEW_EVERY_ACCELERATED


def project(latents: Any, table: LatentRgb) -> Image.Image:
    """The first image of `latents` (a torch tensor, batch × C × h × w) as an RGB picture of h × w
    pixels, at most PREVIEW_MAX_SIDE on its longest side."""
    latent = latents[0].float()  # a half-precision matmul is not on every CPU; this is h·w·C values
    weights = latent.new_tensor(table.weights)  # 3 × C
    bias = latent.new_tensor(table.bias)
    rgb = (weights @ latent.flatten(1) + bias[:, None]).reshape(3, *latent.shape[1:])
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array, "RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.BILINEAR)
    return image


def encode_preview(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=PREVIEW_QUALITY, method=0)  # method 0: the fastest
    return buffer.getvalue()


@runtime_checkable
class PreviewSink(Protocol):
    """Where a job's previews go (the worker's `JobReporter`)."""

    preview_every: int | None
    """IMAGES_PREVIEW_EVERY: steps between previews; 0 off; None: by device (`preview_interval`)."""

    def publish_preview(self, webp: bytes, step: int) -> None:
        """Keep `webp` as the job's preview at `step` (the step that the next progress report says)."""
        ...


@dataclass
class PreviewingProgress:
    """A `ProgressFn` that also carries where previews go: what a worker hands an engine."""

    report: ProgressFn
    sink: PreviewSink

    def __call__(self, step: int, total: int) -> None:
        self.report(step, total)


def preview_sink(progress: ProgressFn) -> PreviewSink | None:
    """The sink `progress` carries, if any (a bare callback, a test's or a warm-up's, has none)."""
    return progress.sink if isinstance(progress, PreviewingProgress) else None


class Previewer:
    """Publishes a job's latents every `every` steps. A failure is logged once and previews stop for
    the job: a preview must never fail or slow the render."""

    def __init__(self, sink: PreviewSink, every: int) -> None:
        self.sink = sink
        self.every = every
        self.seconds = 0.0
        """Spent on previews so far (the bench reads it)."""
        self._broken = False

    def is_due(self, step: int) -> bool:
        return not self._broken and self.every > 0 and step > 0 and step % self.every == 0

    def publish(self, latents: Any, family: str | None, step: int) -> None:
        table = LATENT_RGB.get(family or "")
        if table is None or getattr(latents, "ndim", 0) != 4 or latents.shape[1] != table.channels:
            return  # no table for this family, or latents of another shape (packed, video)
        started = time.perf_counter()
        try:
            self.sink.publish_preview(encode_preview(project(latents, table)), step)
        except Exception:
            self._broken = True
            log.warning("preview failed; this job continues without previews", exc_info=True)
        finally:
            self.seconds += time.perf_counter() - started
