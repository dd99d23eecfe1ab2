"""One render on resident pipelines: the job's input pictures and guides (control maps, reference
image), the pipeline calls (base, then the refiner, then the hires fix), progress as one monotonic
step count that a cancel interrupts, the timings, torch's failures turned into the service's
errors, and the `RenderResult` with its `engine_info`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from services.contracts import RenderSpec

from ...control_maps import control_map
from ...errors import EngineError, KittyError
from ...models import AddonEntry
from ...previews import Previewer, preview_interval, preview_sink
from ...refiner import REFINER_SPLIT, base_steps
from ..acceleration import denoiser, set_vae_tiling
from ..base import ImageLoader, JobCanceled, ProgressFn, RenderedImage, RenderResult
from .cache import ModelCache, Resident
from .controlnet import GuidedControls, control_kwargs, controls_info
from .device import dtype_name, is_out_of_memory, short_error
from .hires import hires_info, hires_steps, upscaled
from .ip_adapter import LoadedAdapter, reference_applied
from .lora import WeightedLoras, loras_applied
from .validation import IMG2IMG, TXT2IMG, denoise_steps, model_family, pipeline_strength, unused_settings

logger = logging.getLogger("kitty.images.engines.diffusers")


@dataclass
class JobInputs:
    """The pictures of an image-to-image or inpainting job, at the output size."""

    image: Image.Image
    mask: Image.Image | None = None


@dataclass
class Guides:
    """What steers a job beside its prompt: the controls that act with their maps at the first
    pass's size (and at the output size, for the hires pass), and the IP-Adapter's reference."""

    controls: GuidedControls = field(default_factory=list)
    maps: list[Image.Image] = field(default_factory=list)
    hires_maps: list[Image.Image] = field(default_factory=list)
    reference: LoadedAdapter | None = None
    reference_entry: AddonEntry | None = None
    reference_image: Image.Image | None = None


@dataclass
class PreparedJob:
    """A spec with every pipeline its render needs resident."""

    spec: RenderSpec
    mode: str
    base: Resident
    """The model's text-to-image pipeline (it holds the load's attention and speed-ups)."""
    pipeline: Resident
    """What renders: `base`, or the image-to-image/inpainting pipeline derived from it."""
    refiner: Resident | None
    loras: WeightedLoras
    inputs: JobInputs | None
    """The job's pictures; None for text-to-image."""
    guides: Guides = field(default_factory=Guides)
    hires: Resident | None = None
    """The hires fix's image-to-image pipeline (with the job's ControlNets, if any)."""
    upscaler: AddonEntry | None = None
    """The hires fix's registered upscaler; None: Lanczos resampling."""

    @property
    def rendering(self) -> list[Resident]:
        """The pipelines of `base`'s components this job calls (the refiner has its own)."""
        return [self.pipeline] if self.hires is None else [self.pipeline, self.hires]


class StepReporter:
    """Turns the pipelines' per-iteration callbacks into one monotonic (step, total) sequence.

    A pass is given a share of `total`; its iterations (2n-1 of them for Heun, fewer for a partial
    schedule) are scaled into that share, and a step is reported only when it advances. With a
    `previewer`, a step it is due at publishes the latents first, so the report carries its step.
    """

    def __init__(self, progress: ProgressFn, total: int, previewer: Previewer | None = None) -> None:
        self._progress = progress
        self.total = total
        self.previewer = previewer
        self._last = -1

    def report(self, step: int) -> None:
        step = min(step, self.total)
        if step > self._last:
            self._last = step
            self._progress(step, self.total)

    def callback(self, offset: int, share: int) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            iterations = max(int(getattr(pipe, "_num_timesteps", 0) or 0), index + 1)
            step = min(offset + (index + 1) * share // iterations, self.total)
            if self.previewer is not None and step > self._last and self.previewer.is_due(step):
                family = model_family(type(pipe).__name__)
                self.previewer.publish(tensors.get("latents"), family, step)
            self.report(step)
            return tensors

        return on_step_end


def read_inputs(spec: RenderSpec, image_loader: ImageLoader | None) -> JobInputs:
    """The job's image (RGB) and mask (L, white = repaint), read by key and resized to the output
    size: the pipelines then render exactly width × height."""
    load = stored_images(image_loader)
    size = (spec.width, spec.height)
    assert spec.image is not None
    image = load(spec.image).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    mask = None
    if spec.mask is not None:
        mask = load(spec.mask).convert("L").resize(size, Image.Resampling.LANCZOS)
    return JobInputs(image=image, mask=mask)


def read_guides(spec: RenderSpec, guides: Guides, image_loader: ImageLoader | None) -> None:
    """Fill `guides` with the control maps (at the first pass's size and at the output size) and
    the reference picture (RGB, as sent: the IP-Adapter's feature extractor sizes it)."""
    if not guides.controls and guides.reference is None:
        return
    load = stored_images(image_loader)
    for control, _ in guides.controls:
        picture = load(control.image)
        guides.maps.append(control_map(picture, control, (spec.width, spec.height)))
        if spec.hires is not None:
            guides.hires_maps.append(control_map(picture, control, spec.output_size))
    if guides.reference is not None:
        assert spec.reference_image is not None
        guides.reference_image = load(spec.reference_image).convert("RGB")


def stored_images(image_loader: ImageLoader | None) -> ImageLoader:
    if image_loader is None:
        raise EngineError(
            "this diffusers engine was built without access to stored images",
            remediation=[
                "Run image-to-image and guided jobs on an images-worker (it reads uploads from the store)."
            ],
        )
    return image_loader


def render_job(
    job: PreparedJob, progress: ProgressFn, cache: ModelCache
) -> tuple[list[Any], dict[str, float]]:
    """The job's images, with its LoRAs and IP-Adapter applied for the render, and the seconds it
    took: ``render_s`` (LoRAs included) and, with LoRAs, ``lora_s`` (putting them in)."""
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            if job.loras:
                stack.enter_context(loras_applied(cache, job.base, job.pipeline, job.loras))
            lora_s = time.perf_counter() - started
            if job.guides.reference is not None:
                weight = job.spec.reference_weight
                stack.enter_context(
                    reference_applied(cache, job.base, job.rendering, job.guides.reference, weight)
                )
            images = run_pipelines(job, progress, cache.device)
    except (JobCanceled, KittyError):
        raise
    except Exception as exc:
        raise render_error(job.spec, exc, cache) from exc
    timings = {"render_s": round(time.perf_counter() - started, 4)}
    if job.loras:
        timings["lora_s"] = round(lora_s, 4)
    return images, timings


def run_pipelines(job: PreparedJob, progress: ProgressFn, device: torch.device) -> list[Any]:
    """Render with the job's pipeline (text-to-image, or image-to-image/inpainting when it has
    inputs), then its refiner if any, then its hires fix if any."""
    first = first_pass_steps(job)
    sink = preview_sink(progress)
    every = preview_interval(sink.preview_every, device.type) if sink is not None else 0
    previewer = Previewer(sink, every) if sink is not None and every > 0 else None
    reporter = StepReporter(progress, first + hires_steps(job.spec), previewer)
    reporter.report(0)
    images = first_pass(job, reporter, first, device)
    if job.hires is not None:
        images = hires_pass(job, images, reporter, first, device)
    reporter.report(reporter.total)
    return images


def first_pass_steps(job: PreparedJob) -> int:
    """The denoising steps of the render at width × height (refiner included)."""
    if job.inputs is None:
        return job.spec.steps
    strength = job.spec.strength if job.spec.strength is not None else 1.0
    return denoise_steps(job.spec.steps, strength)


def make_generators(spec: RenderSpec) -> list[torch.Generator]:
    # One CPU generator per image: the same spec gives the same pixels on a device, and image i
    # of a batch is re-rendered alone from seed+i (up to batched float rounding).
    return [torch.Generator(device="cpu").manual_seed(spec.seed + i) for i in range(spec.num_images)]


def guide_kwargs(job: PreparedJob, mode: str, maps: list[Image.Image]) -> dict[str, Any]:
    """The pipeline arguments of the job's guides: its controls' maps and ranges, its reference."""
    kwargs: dict[str, Any] = {}
    if job.guides.controls:
        kwargs.update(control_kwargs(mode, job.guides.controls, maps))
    if job.guides.reference_image is not None:
        kwargs["ip_adapter_image"] = job.guides.reference_image
    return kwargs


def first_pass(job: PreparedJob, reporter: StepReporter, total: int, device: torch.device) -> list[Any]:
    """The images at width × height: the job's pipeline, then its refiner."""
    spec, pipeline, refiner, inputs = job.spec, job.pipeline, job.refiner, job.inputs
    strength = spec.strength if spec.strength is not None else 1.0
    if inputs is not None and total == 0:
        # Strength 0 keeps the picture: no pass can run without a denoising step.
        return [inputs.image.copy() for _ in range(spec.num_images)]
    pipeline.set_scheduler(spec.scheduler)
    common = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt or None,
        "num_inference_steps": spec.steps,
        "guidance_scale": spec.cfg,
        "num_images_per_prompt": spec.num_images,
        "generator": make_generators(spec),
    }
    base_share = spec.steps if refiner is None else base_steps(spec.steps)
    base_kwargs: dict[str, Any] = {**common, "width": spec.width, "height": spec.height}
    base_kwargs.update(guide_kwargs(job, job.mode, job.guides.maps))
    if inputs is not None:
        base_kwargs.update(
            image=inputs.image, mask_image=inputs.mask, strength=pipeline_strength(spec.steps, strength)
        )
        base_share = total
    for resident in (pipeline, refiner):
        if resident is not None:
            set_vae_tiling(resident.pipe, device, spec.width, spec.height)
    if refiner is not None:
        base_kwargs.update(denoising_end=REFINER_SPLIT, output_type="latent")
    with torch.inference_mode():
        output = pipeline.pipe(**accepted(pipeline, base_kwargs, reporter.callback(0, base_share)))
        images = output.images
        if refiner is not None:
            refiner.set_scheduler(spec.scheduler)
            refiner_kwargs = {**common, "image": images, "denoising_start": REFINER_SPLIT}
            callback = reporter.callback(base_share, spec.steps - base_share)
            images = refiner.pipe(**accepted(refiner, refiner_kwargs, callback)).images
    if inputs is not None and inputs.mask is not None:
        # Outside the mask the picture is kept as sent, not as the VAE redraws it (A1111's overlay).
        return [Image.composite(image, inputs.image, inputs.mask) for image in images]
    return list(images)


def hires_pass(
    job: PreparedJob, images: list[Any], reporter: StepReporter, offset: int, device: torch.device
) -> list[Any]:
    """The hires fix: `images` upscaled to the output size, then redrawn by image-to-image at the
    hires strength, from the same seeds (with the job's controls at the output size, its reference)."""
    spec, hires = job.spec, job.hires
    assert hires is not None and spec.hires is not None
    size = spec.output_size
    upscaled_images = [upscaled(image, spec.hires.scale, size, job.upscaler, device) for image in images]
    steps = spec.hires.steps or spec.steps
    if denoise_steps(steps, spec.hires.strength) == 0:
        return upscaled_images  # strength 0 keeps the upscaled picture
    hires.set_scheduler(spec.scheduler)
    set_vae_tiling(hires.pipe, device, *size)
    count = len(upscaled_images)
    # One prompt per picture: a batch of pictures with one prompt is not what img2img batches.
    kwargs: dict[str, Any] = {
        "prompt": [spec.prompt] * count,
        "negative_prompt": [spec.negative_prompt] * count if spec.negative_prompt else None,
        "num_inference_steps": steps,
        "guidance_scale": spec.cfg,
        "num_images_per_prompt": 1,
        "generator": make_generators(spec)[:count],
        "image": upscaled_images,
        "strength": pipeline_strength(steps, spec.hires.strength),
        "width": size[0],
        "height": size[1],
        **guide_kwargs(job, IMG2IMG, job.guides.hires_maps),
    }
    callback = reporter.callback(offset, reporter.total - offset)
    with torch.inference_mode():
        return list(hires.pipe(**accepted(hires, kwargs, callback)).images)


def accepted(resident: Resident, kwargs: dict[str, Any], callback: Callable[..., Any]) -> dict[str, Any]:
    """Only what this pipeline's __call__ takes (Flux has no negative prompt on older releases, ...)."""
    if resident.accepts("callback_on_step_end"):
        kwargs = {**kwargs, "callback_on_step_end": callback}
    return {key: value for key, value in kwargs.items() if resident.accepts(key) and value is not None}


def render_error(spec: RenderSpec, exc: Exception, cache: ModelCache) -> EngineError:
    """The user-facing error for a render that failed with `exc` (memory freed when it ran out)."""
    logger.exception("render of model %s failed on %s", spec.model, cache.device)
    if is_out_of_memory(exc):
        cache.free_memory()
        return EngineError(
            f"{cache.device} ran out of memory rendering {spec.width}x{spec.height} x{spec.num_images} "
            f"with model '{spec.model}'",
            remediation=[
                "Lower width/height or num_images, or turn the refiner off.",
                "Or set IMAGES_MODEL_CACHE_SIZE=1 so only one model stays resident.",
            ],
        )
    return EngineError(f"rendering with model '{spec.model}' failed: {short_error(exc)}")


def has_guidance_embedding(pipe: Any) -> bool:
    """Whether `pipe`'s transformer embeds a guidance scale (FLUX.1-dev's; not schnell's)."""
    config = getattr(denoiser(pipe), "config", None)
    return bool(getattr(config, "guidance_embeds", False))


def make_result(
    job: PreparedJob,
    images: list[Any],
    *,
    device: torch.device,
    dtype: torch.dtype,
    versions: dict[str, str],
    timings: dict[str, float],
) -> RenderResult:
    """The images with their seeds, and what the sidecar records of how they were made."""
    spec, base, refiner = job.spec, job.base, job.refiner
    engine_info: dict[str, Any] = {
        "mode": job.mode,
        "dtype": dtype_name(dtype),
        "pipeline_class": job.pipeline.pipeline_class,
        "scheduler_class": type(job.pipeline.pipe.scheduler).__name__,
        "attention": list(base.attention),
        "optimizations": list(base.optimizations),
        "versions": dict(versions),
    }
    unused = unused_settings(
        model_family(base.pipeline_class), spec, has_guidance_embedding=has_guidance_embedding(base.pipe)
    )
    if unused:
        engine_info["unused"] = unused  # what the request set that this model renders without
    if getattr(job.pipeline.pipe.scheduler, "config", {}).get("use_karras_sigmas"):
        engine_info["scheduler_karras"] = True  # the infotext's "Schedule type: Karras"
    if getattr(getattr(base.pipe, "vae", None), "use_tiling", False):
        engine_info["vae_tiling"] = True
    if refiner is not None:
        engine_info["refiner"] = refiner.name
        engine_info["refiner_pipeline_class"] = refiner.pipeline_class
    if spec.strength is not None and job.mode != TXT2IMG:
        engine_info["strength"] = spec.strength
        engine_info["denoise_steps"] = denoise_steps(spec.steps, spec.strength)
    if job.loras:
        engine_info["loras"] = [{"name": lora.name, "weight": weight} for lora, weight in job.loras]
    if job.guides.controls:
        engine_info["controls"] = controls_info(job.guides.controls)
    if job.guides.reference_entry is not None:
        engine_info["ip_adapter"] = {
            "model": job.guides.reference_entry.name,
            "weight": spec.reference_weight,
        }
    if job.hires is not None:
        engine_info["hires"] = hires_info(job.spec, job.hires, job.upscaler)
    return RenderResult(
        images=[RenderedImage(image=image, seed=spec.seed + i) for i, image in enumerate(images)],
        device=str(device),
        engine_info=engine_info,
        timings=timings,
    )
