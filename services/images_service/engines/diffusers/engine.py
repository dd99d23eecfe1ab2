"""`DiffusersEngine`: the in-process engine a worker renders with. Glues validation, the model
cache, LoRAs, guides (ControlNets, IP-Adapter, hires fix) and rendering together under one lock
(one render at a time; a load never races a render), warms a model at worker start and reports its
health."""

from __future__ import annotations

import logging
import os
import threading
import time
from importlib import metadata
from typing import Any

from services.contracts import RenderSpec

from ...errors import EngineError, ValidationFailed
from ...models import ModelRegistry
from ...refiner import refiner_of
from ..acceleration import compile_mode
from ..base import EngineHealth, ImageLoader, ProgressFn, RenderResult
from .cache import ModelCache, Resident
from .controlnet import CONTROLNETS, controlnets_for
from .device import pick_device, pick_dtype
from .ip_adapter import IP_ADAPTERS, loaded_adapter
from .render import Guides, PreparedJob, make_result, read_guides, read_inputs, render_job
from .validation import (
    IMG2IMG,
    TXT2IMG,
    active_controls,
    check_refiner_handover,
    check_sides,
    check_spec,
    is_referenced,
    model_family,
    scheduler_choice,
)
from .video import render_clip

UPSCALERS = "upscalers"
"""models.yaml's section of upscalers (the hires fix's `upscaler`)."""

logger = logging.getLogger("kitty.images.engines.diffusers")

WARMUP_STEPS = 2
"""Denoising steps of the warm-up render `preload` makes on CUDA: the first call compiles (with
IMAGES_TORCH_COMPILE) and picks convolution algorithms; one step would skip the scheduler's second
branch on multistep samplers."""

WARMUP_PROMPT = "warm-up"


def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for package in ("torch", "diffusers", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def quiet_libraries() -> None:
    """Turn off diffusers'/transformers' tqdm bars and info chatter: workers log JSON lines."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


def side_multiple(pipe: Any) -> int:
    """What a side of `pipe`'s renders must be a multiple of: the VAE's scale, times SD3's patch
    size; Flux's image processor already holds its 2x2 packing (16 for the real VAEs)."""
    scale = int(getattr(pipe, "vae_scale_factor", 1) or 1)
    processor = getattr(getattr(pipe, "image_processor", None), "config", None)
    packed = int(getattr(processor, "vae_scale_factor", scale) or scale)
    return max(packed, scale * int(getattr(pipe, "patch_size", 1) or 1))


def check_fits(spec: RenderSpec, base: Resident) -> None:
    """Refuse, before any work, what `base`'s family cannot render: a scheduler of another kind
    of model (SD3 and Flux sample only with their flow-matching Euler), a side its latents cannot
    hold."""
    assert spec.model is not None
    family = model_family(base.pipeline_class)
    scheduler_choice(spec.scheduler, spec.model, base.scheduler_class.__name__, family=family)
    sides = [spec.width, spec.height, *(spec.output_size if spec.hires is not None else ())]
    check_sides(spec.model, family, sides, side_multiple(base.pipe))


class DiffusersEngine:
    """Renders with diffusers pipelines held resident per worker (an LRU of `cache_size` models)."""

    name = "diffusers"

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str | None = None,
        cache_size: int = 1,
        torch_compile: str | None = None,
        image_loader: ImageLoader | None = None,
        pinned_models: frozenset[str] = frozenset(),
    ) -> None:
        """`torch_compile` is IMAGES_TORCH_COMPILE's value: unset/``0`` off, ``1`` or a mode name on
        (CUDA only; elsewhere it is ignored with a log line). `image_loader` reads a stored image by
        key, for a spec's `image` and `mask`; without one, image-to-image jobs are refused.
        `pinned_models` (IMAGES_PINNED_MODELS) are never evicted from the model cache."""
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._registry = registry
        self._image_loader = image_loader
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device)
        self.cache_size = cache_size
        try:
            self.compile_mode = compile_mode(torch_compile)
        except ValueError as exc:
            raise EngineError(str(exc), remediation=["Fix or unset IMAGES_TORCH_COMPILE."]) from exc
        if self.compile_mode and self.device.type != "cuda":
            logger.info("IMAGES_TORCH_COMPILE=%s is ignored on %s", torch_compile, self.device)
            self.compile_mode = None
        self._cache = ModelCache(
            self.device, self.dtype, size=cache_size, compile_mode=self.compile_mode, pinned=pinned_models
        )
        self._lock = threading.Lock()
        self._versions = library_versions()
        quiet_libraries()

    def resident_models(self) -> list[str]:
        """The models held loaded, least recently used first (the worker's card and dispatch)."""
        return self._cache.names()

    def preload(self, model: str) -> None:
        """Load `model` before the first job (``images-worker --preload``). On CUDA also render once
        at the model's default size, so compilation (IMAGES_TORCH_COMPILE) and the choice of
        convolution algorithms happen now rather than in a user's job."""
        entry = self._registry.get(model)
        with self._lock:
            if entry.kind == "video":  # resident, not warmed: a warm-up clip costs as much as a job
                self._cache.video(entry)
                return
            self._cache.base(entry)
        if self.device.type != "cuda":
            return
        started = time.perf_counter()
        warmup = RenderSpec(
            prompt=WARMUP_PROMPT,
            model=model,
            width=int(entry.default("width")),
            height=int(entry.default("height")),
            steps=WARMUP_STEPS,
            cfg=float(entry.default("cfg")),
            seed=0,
            scheduler=entry.default("scheduler"),
        )
        self.render(warmup, lambda step, total: None)
        logger.info(
            "warmed model %s at %dx%d in %.2f s%s",
            model,
            warmup.width,
            warmup.height,
            time.perf_counter() - started,
            f" (torch.compile {self.compile_mode})" if self.compile_mode else "",
        )

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if spec.video is not None:
            return self._render_video(spec, progress)
        mode = check_spec(spec)
        with self._lock:
            job, load_s = self._prepare(spec, mode)
            if mode != TXT2IMG:
                job.inputs = read_inputs(spec, self._image_loader)
            read_guides(spec, job.guides, self._image_loader)
            images, render_timings = render_job(job, progress, self._cache)
            return make_result(
                job,
                images,
                device=self.device,
                dtype=self.dtype,
                versions=self._versions,
                timings={"load_s": round(load_s, 4), **render_timings},
            )

    def _render_video(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if spec.model is None:
            raise ValidationFailed("the diffusers engine needs a model name", remediation=["Set `model`."])
        entry = self._registry.get(spec.model)
        with self._lock:
            return render_clip(
                spec,
                entry,
                self._cache,
                progress,
                image_loader=self._image_loader,
                device=self.device,
                dtype=self.dtype,
                versions=self._versions,
            )

    def health(self) -> EngineHealth:
        if not self._registry.names():
            return EngineHealth("misconfigured", f"no models registered in {self._registry.path}")
        resident = ", ".join(self._cache.names()) or "none yet"
        return EngineHealth(
            "ready", f"{self.device} {self.dtype}; resident: {resident}", self._versions.get("diffusers")
        )

    def close(self) -> None:
        with self._lock:
            self._cache.clear()

    def _prepare(self, spec: RenderSpec, mode: str) -> tuple[PreparedJob, float]:
        """Every pipeline `spec` renders with, resident (loaded if need be), and the seconds that
        took (0 when all were resident). Called under the lock."""
        assert spec.model is not None  # check_spec refused a spec without one
        entry = self._registry.get(spec.model)
        loras = [(self._registry.lora(ref.name), ref.weight) for ref in spec.loras]
        refiner_name = refiner_of(entry, spec.model) if spec.refiner else None
        controls = [
            (control, self._registry.addon(CONTROLNETS, str(control.model)))
            for control in active_controls(spec)
        ]
        reference = (
            self._registry.addon(IP_ADAPTERS, str(spec.reference_model)) if is_referenced(spec) else None
        )
        upscaler_name = spec.hires.upscaler if spec.hires is not None else None
        upscaler = self._registry.addon(UPSCALERS, upscaler_name) if upscaler_name else None
        started, loads = time.perf_counter(), self._cache.loads
        base = self._cache.base(entry)
        check_fits(spec, base)
        guides = Guides(controls=controls, reference_entry=reference)
        if reference is not None:
            guides.reference = loaded_adapter(self._cache, base, reference)
        controlnets = controlnets_for(self._cache, base, controls) if controls else []
        if controlnets:
            pipeline = self._cache.controlled(base, mode, controlnets)
        else:
            pipeline = base if mode == TXT2IMG else self._cache.derived(base, mode)
        refiner = None
        if refiner_name is not None:
            check_refiner_handover(
                spec.model, pipeline.pipeline_class, takes_denoising_end=pipeline.accepts("denoising_end")
            )
            refiner = self._cache.refiner(base, self._registry.get(refiner_name))
        hires = None
        if spec.hires is not None:
            hires = (
                self._cache.controlled(base, IMG2IMG, controlnets)
                if controlnets
                else self._cache.derived(base, IMG2IMG)
            )
        job = PreparedJob(
            spec=spec,
            mode=mode,
            base=base,
            pipeline=pipeline,
            refiner=refiner,
            loras=loras,
            inputs=None,
            guides=guides,
            hires=hires,
            upscaler=upscaler,
        )
        # Nothing read from disk: the load took no time (the lookups' microseconds are not a load).
        return job, time.perf_counter() - started if self._cache.loads != loads else 0.0
