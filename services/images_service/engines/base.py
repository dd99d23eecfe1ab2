"""The engine seam: what every renderer (diffusers in-process, or a ComfyUI/A1111/InvokeAI adapter)
implements, and the values that cross it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image

from services.contracts import RenderSpec


class JobCanceled(Exception):
    """Raised from a progress callback when the job was canceled; engines let it propagate."""


ImageLoader = Callable[[str], Image.Image]
"""Reads a stored input image (`image`/`mask` of a job) by key, upright; `KeyNotFound` when gone."""

ProgressFn = Callable[[int, int], None]
"""Called with (step, total) as rendering advances. It may raise `JobCanceled`: an engine must let
that exception propagate (and stop its remote job, for adapters)."""


@dataclass
class RenderedImage:
    image: Image.Image
    seed: int | None
    """None when the engine cannot know it (a raw graph whose sampler's seed is not a plain number)."""
    text_chunks: dict[str, str] = field(default_factory=dict)
    """PNG text chunks the engine wants kept (e.g. ComfyUI's ``prompt``/``workflow``)."""


@dataclass
class RenderedVideo:
    """A video job's clip: its frames (PIL, one size) and the rate they play at."""

    frames: list[Image.Image]
    fps: int
    seed: int


@dataclass
class RenderResult:
    images: list[RenderedImage]
    device: str
    """Where it ran: ``cuda:0``, ``mps``, ``cpu`` or the remote server's URL."""
    engine_info: dict[str, Any] = field(default_factory=dict)
    """What the engine reports for the sidecar: dtype, library versions, server info, ..."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``load_s`` (0 when the model was resident), ``render_s``."""
    settings_used: dict[str, Any] | None = None
    """When the request's steps/cfg/sampler did not drive the render (a raw graph carries its own):
    what did, as far as the engine can tell (``steps``, ``cfg``, ``sampler``, ``scheduler``; None
    where it cannot). The image's infotext and sidecar record these instead of the request's."""
    video: RenderedVideo | None = None
    """A video job's clip (`images` is then empty)."""


HealthStatus = Literal["ready", "offline", "misconfigured"]


@dataclass
class EngineHealth:
    """One row of the engines matrix (``GET /api/images/engines``)."""

    status: HealthStatus
    detail: str = ""
    version: str | None = None


class Engine(Protocol):
    name: str

    def health(self) -> EngineHealth:
        """Whether this engine can render now, cheaply (one short request for server engines)."""
        ...

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        """Render `spec` (every default resolved) into ``spec.num_images`` images.

        Raises the service's `KittyError`s (`ModelNotFound`, `EngineOffline`, `EngineTimeout`,
        `EngineError`) with a message the user can act on, or `JobCanceled`.
        """
        ...

    def close(self) -> None:
        """Release models and connections; called when the worker stops."""
        ...
