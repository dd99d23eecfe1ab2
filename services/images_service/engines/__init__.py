"""Engine registry: engine name → the class that renders with it, imported only when used
(so the API process, which only validates names, never imports torch)."""

from __future__ import annotations

import importlib
from functools import partial
from typing import TYPE_CHECKING

from ..errors import ValidationFailed
from ..uploads import INPUT_ENGINES, read_image
from .base import Engine, EngineHealth, ImageLoader, JobCanceled, ProgressFn, RenderedImage, RenderResult

if TYPE_CHECKING:
    from ..models import ModelRegistry
    from ..settings import Settings
    from ..storage import Store

ENGINES: dict[str, str] = {
    "diffusers": "services.images_service.engines.diffusers_engine:DiffusersEngine",
    "comfyui": "services.images_service.engines.comfyui:ComfyUIEngine",
    "a1111": "services.images_service.engines.a1111:A1111Engine",
    "invokeai": "services.images_service.engines.invokeai:InvokeAIEngine",
}
"""Engines this build can run; a request naming another one is refused at submit time."""


def check_engine_name(name: str) -> str:
    if name not in ENGINES:
        raise ValidationFailed(
            f"engine '{name}' is not available in this build",
            remediation=[f"Use one of: {', '.join(ENGINES)}", "Or set IMAGE_ENGINE to one of them."],
        )
    return name


def make_engine(name: str, settings: Settings, registry: ModelRegistry, store: Store | None = None) -> Engine:
    """`store`: where the diffusers engine reads a job's input image and mask (a worker's store)."""
    module_name, _, class_name = ENGINES[check_engine_name(name)].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    image_loader = partial(read_image, store) if store is not None else None
    if name == "diffusers":
        return cls(  # type: ignore[no-any-return]
            registry,
            device=settings.device,
            cache_size=settings.model_cache_size,
            torch_compile=settings.torch_compile,
            image_loader=image_loader,
        )
    if name in INPUT_ENGINES["image"]:
        return cls(settings, image_loader=image_loader)  # type: ignore[no-any-return]
    return cls(settings)  # type: ignore[no-any-return]


__all__ = [
    "ENGINES",
    "Engine",
    "EngineHealth",
    "ImageLoader",
    "JobCanceled",
    "ProgressFn",
    "RenderResult",
    "RenderedImage",
    "check_engine_name",
    "make_engine",
]
