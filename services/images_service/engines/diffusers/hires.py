"""The hires fix's parts that need no pipeline: the steps its second pass adds to a job's
progress, the upscaling of the first pass's pictures to the output size, and what the sidecar
records of it. The pass itself runs in `render` with the job's other passes."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from services.contracts import RenderSpec

from ...models import AddonEntry
from ..upscaling import upscale_image
from .cache import Resident
from .validation import denoise_steps

LANCZOS = "lanczos"
"""The hires fix's upscaler when none is registered: Lanczos resampling (A1111's "Lanczos")."""


def hires_steps(spec: RenderSpec) -> int:
    """The denoising steps the hires pass runs (0 without a hires fix, or at strength 0)."""
    if spec.hires is None:
        return 0
    return denoise_steps(spec.hires.steps or spec.steps, spec.hires.strength)


def upscaled(
    image: Image.Image, scale: float, size: tuple[int, int], upscaler: AddonEntry | None, device: torch.device
) -> Image.Image:
    """`image` made `scale` times larger by `upscaler` (None: Lanczos), then resized to exactly
    `size` (the output size is rounded down to a multiple of 8)."""
    larger = upscale_image(image, scale, upscaler, device=str(device))
    return larger if larger.size == size else larger.resize(size, Image.Resampling.LANCZOS)


def hires_info(spec: RenderSpec, hires: Resident, upscaler: AddonEntry | None) -> dict[str, Any]:
    """What the sidecar's `engine_info` records of the hires fix."""
    assert spec.hires is not None
    steps = spec.hires.steps or spec.steps
    return {
        "scale": spec.hires.scale,
        "strength": spec.hires.strength,
        "steps": steps,
        "denoise_steps": denoise_steps(steps, spec.hires.strength),
        "upscaler": upscaler.name if upscaler is not None else LANCZOS,
        "first_pass_size": [spec.width, spec.height],
        "output_size": list(spec.output_size),
        "pipeline_class": hires.pipeline_class,
    }
