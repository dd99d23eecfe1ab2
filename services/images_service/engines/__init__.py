"""Engines: the descriptor table (`descriptors.ENGINES`) and `make_engine`, which builds the engine
a descriptor names, importing its module only then (so the API process, which only validates names,
never imports torch)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from .base import Engine, EngineHealth, ImageLoader, JobCanceled, ProgressFn, RenderedImage, RenderResult
from .descriptors import ENGINES, EngineContext, EngineDescriptor, descriptor_for

if TYPE_CHECKING:
    from ..models import ModelRegistry
    from ..settings import Settings
    from ..storage import Store


def check_engine_name(name: str) -> str:
    """`name`, when this build has that engine; `ValidationFailed` otherwise."""
    return descriptor_for(name).name


def make_engine(name: str, settings: Settings, registry: ModelRegistry, store: Store | None = None) -> Engine:
    """`store`: where the engine reads a job's input image and mask (a worker's store)."""
    # Imported here, not above: uploads reads this package's descriptor table, so importing it at
    # module level would be circular.
    from ..uploads import read_image

    image_loader = partial(read_image, store) if store is not None else None
    return descriptor_for(name).build(EngineContext(settings, registry, image_loader))


__all__ = [
    "ENGINES",
    "Engine",
    "EngineDescriptor",
    "EngineHealth",
    "ImageLoader",
    "JobCanceled",
    "ProgressFn",
    "RenderResult",
    "RenderedImage",
    "check_engine_name",
    "make_engine",
]
