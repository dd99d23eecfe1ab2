"""Fakes behind the protocols: an engine that paints the seed (at the spec's output size, so after a
hires fix), steps with progress, and can fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from services.contracts import RenderSpec
from services.images_service.engines import JobCanceled, ProgressFn, RenderedImage, RenderResult
from services.images_service.errors import KittyError


@dataclass
class FakeEngine:
    name: str = "diffusers"
    fail_with: Exception | None = None
    step_delay_s: float = 0.0
    calls: list[RenderSpec] = field(default_factory=list)

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        self.calls.append(spec)
        progress(0, spec.steps)
        for step in range(1, spec.steps + 1):
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            progress(step, spec.steps)
        if self.fail_with is not None:
            raise self.fail_with
        images = []
        for i in range(spec.num_images):
            seed = spec.seed + i
            color = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
            images.append(RenderedImage(Image.new("RGB", spec.output_size, color), seed))
        return RenderResult(
            images=images, device="fake", engine_info={"dtype": "none"}, timings={"render_s": 0.0}
        )

    def close(self) -> None:
        pass


class BoomError(KittyError):
    """A service error as an engine would raise it."""


class Recorder:
    """A progress callback like the worker's: records (step, total), and raises JobCanceled once
    `cancel_when(calls)` says so."""

    def __init__(self, cancel_when: Callable[[list[tuple[int, int]]], bool] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cancel_when = cancel_when

    def __call__(self, step: int, total: int) -> None:
        self.calls.append((step, total))
        if self.cancel_when is not None and self.cancel_when(self.calls):
            raise JobCanceled("job-1")
