"""The engine table: one descriptor per engine says what it is, what it can render, which settings
locate its server, how its worker is started and how it is built. Code asks this table rather than
comparing engine names. Torch-free: an engine's module is imported only when `build` runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import ValidationFailed
from ..settings import Settings
from .base import Engine, ImageLoader

if TYPE_CHECKING:
    from ..models import ModelRegistry

EngineKind = Literal["local", "server"]
"""`local`: renders inside the worker process (imports torch, so the API and the doctor never build
it) with the models of models.yaml. `server`: an httpx adapter to a server with its own checkpoints."""

DEFAULT_ENGINE = "diffusers"
"""IMAGE_ENGINE's default, and so the engine a plain `images-worker` serves."""


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What an engine renders. No field has a default: a capability added here must be declared by
    every descriptor, or the table fails to load."""

    txt2img: bool
    img2img: bool
    """Starts from a request's `image`."""
    inpaint: bool
    """Repaints the white part of a request's `mask`."""
    lora: bool
    """Applies the LoRA files of models.yaml named in `loras` (a server engine has its own)."""
    refiner: bool
    """Runs the refiner pass of a models.yaml entry."""
    raw_workflow: bool
    """Runs a request's `workflow`, a graph in the server's own format, as is."""
    schedulers: bool
    """Maps the wire's scheduler names (`SCHEDULER_NAMES`) to its own samplers."""
    control: bool
    """Steers a render with a request's `controls` (ControlNet maps): diffusers with models.yaml's
    ControlNets, a server engine with its own (a control's `model` names the server's)."""
    reference: bool
    """Takes after a request's `reference_image` (IP-Adapter)."""
    upscale: bool
    """Runs upscale jobs (``POST /api/images/upscale``)."""
    hires: bool
    """Runs a request's `hires` fix: a second pass over the first, resized to the output size."""
    video: bool


CAPABILITY_NAMES = tuple(field.name for field in fields(Capabilities))


@dataclass(frozen=True)
class EngineContext:
    """Everything an engine is built from; every descriptor's `build` takes this one argument."""

    settings: Settings
    registry: ModelRegistry
    image_loader: ImageLoader | None = None
    """Reads a job's input image and mask from our store; without one, such jobs are refused."""


class ServerEngineClass(Protocol):
    """The constructor every server adapter has."""

    def __call__(self, settings: Settings, *, image_loader: ImageLoader | None = None) -> Engine: ...


class LocalEngineClass(Protocol):
    """The constructor of the diffusers engine."""

    def __call__(
        self,
        registry: ModelRegistry,
        *,
        device: str | None,
        cache_size: int,
        torch_compile: str | None,
        image_loader: ImageLoader | None,
        pinned_models: frozenset[str],
    ) -> Engine: ...


def construct_server_engine(cls: ServerEngineClass, context: EngineContext) -> Engine:
    return cls(context.settings, image_loader=context.image_loader)


def construct_local_engine(cls: LocalEngineClass, context: EngineContext) -> Engine:
    settings = context.settings
    return cls(
        context.registry,
        device=settings.device,
        cache_size=settings.model_cache_size,
        torch_compile=settings.torch_compile,
        image_loader=context.image_loader,
        pinned_models=settings.pinned_model_names,
    )


def env_name(field_name: str) -> str:
    """The environment variable that sets the `Settings` field `field_name`."""
    return Settings.model_fields[field_name].alias or field_name.upper()


@dataclass(frozen=True, kw_only=True)
class EngineDescriptor:
    name: str
    class_path: str
    """``module:Class`` of the engine, imported only by `build` (the API process must not import torch)."""
    kind: EngineKind
    capabilities: Capabilities
    construct: Callable[[Any, EngineContext], Engine]
    """Calls the engine's class with what it takes from the context (the classes differ by kind)."""
    server_settings: tuple[str, ...] = ()
    """`Settings` fields that say where its server is: setting any of them configures the engine."""
    auth_settings: tuple[str, ...] = ()
    """`Settings` fields of the server's credentials, named in remediation beside `server_settings`."""

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def worker_command(self) -> str:
        return worker_command(self.name)

    def settings_hint(self) -> str:
        """The environment variables that locate its server, as a remediation names them."""
        hint = " and ".join(env_name(name) for name in self.server_settings)
        if self.auth_settings:
            hint += f" (and {' and '.join(env_name(name) for name in self.auth_settings)})"
        return hint

    def is_server_configured(self, settings: Settings) -> bool:
        """Whether a setting that locates its server was given (environment or .env), not defaulted."""
        return bool(settings.model_fields_set & set(self.server_settings))

    def load_class(self) -> Any:
        module_name, _, class_name = self.class_path.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def build(self, context: EngineContext) -> Engine:
        return self.construct(self.load_class(), context)


IMAGES = Capabilities(
    txt2img=True,
    img2img=True,
    inpaint=True,
    lora=False,
    refiner=False,
    raw_workflow=False,
    schedulers=True,
    control=True,
    reference=False,
    upscale=False,
    hires=True,
    video=False,
)
"""What every engine here renders: text-to-image, image-to-image and inpainting with our scheduler
names, ControlNet guidance and the hires fix (the A1111 and InvokeAI adapters: this; ComfyUI adds
raw workflows; diffusers LoRA, the refiner, reference images and upscale jobs)."""

DESCRIPTORS = (
    EngineDescriptor(
        name="diffusers",
        class_path="services.images_service.engines.diffusers.engine:DiffusersEngine",
        kind="local",
        capabilities=replace(IMAGES, lora=True, refiner=True, reference=True, upscale=True, video=True),
        construct=construct_local_engine,
    ),
    EngineDescriptor(
        name="comfyui",
        class_path="services.images_service.engines.comfyui.engine:ComfyUIEngine",
        kind="server",
        capabilities=replace(IMAGES, raw_workflow=True),
        construct=construct_server_engine,
        server_settings=("comfyui_url",),
    ),
    EngineDescriptor(
        name="a1111",
        class_path="services.images_service.engines.a1111.engine:A1111Engine",
        kind="server",
        capabilities=IMAGES,
        construct=construct_server_engine,
        server_settings=("a1111_base_url",),
        auth_settings=("a1111_api_auth",),
    ),
    EngineDescriptor(
        name="invokeai",
        class_path="services.images_service.engines.invokeai.engine:InvokeAIEngine",
        kind="server",
        capabilities=IMAGES,
        construct=construct_server_engine,
        server_settings=("invoke_host", "invoke_port"),
    ),
)

ENGINES: dict[str, EngineDescriptor] = {descriptor.name: descriptor for descriptor in DESCRIPTORS}
"""Engines this build can run, by name; a request naming another one is refused at submit time.
The wire's `ENGINE_NAMES` lists the same names (tests/unit/test_engine_descriptors.py checks)."""


def descriptor_for(name: str) -> EngineDescriptor:
    """The descriptor of engine `name`; `ValidationFailed` when this build has none."""
    if name not in ENGINES:
        raise ValidationFailed(
            f"engine '{name}' is not available in this build",
            remediation=[f"Use one of: {', '.join(ENGINES)}", "Or set IMAGE_ENGINE to one of them."],
        )
    return ENGINES[name]


def engines_with(capability: str) -> list[str]:
    """Names of the engines that have `capability` (a field of `Capabilities`), in table order."""
    if capability not in CAPABILITY_NAMES:
        raise ValueError(f"unknown capability '{capability}'; known: {', '.join(CAPABILITY_NAMES)}")
    return [name for name, descriptor in ENGINES.items() if getattr(descriptor.capabilities, capability)]


def server_engines() -> list[EngineDescriptor]:
    return [descriptor for descriptor in ENGINES.values() if descriptor.kind == "server"]


def is_local_engine(name: str) -> bool:
    """Whether `name` is a known engine that renders in the worker with models.yaml's models."""
    descriptor = ENGINES.get(name)
    return descriptor is not None and descriptor.is_local


def worker_command(name: str, image_engine: str = DEFAULT_ENGINE) -> str:
    """How to start a worker for engine `name`: a plain `images-worker` serves IMAGE_ENGINE
    (`image_engine`, the setting in effect where the hint is given)."""
    return "images-worker" if name == image_engine else f"images-worker --engine {name}"
