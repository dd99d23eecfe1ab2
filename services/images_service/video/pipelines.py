"""diffusers' video pipelines: loading one from local folders as real models load (Stable Video
Diffusion image-to-video; AnimateDiff text-to-video, an SD1.5 base with a motion adapter), and one
render of a `VideoSpec` to frames, seeded, with per-step progress and the VAE decoded in chunks."""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..engines.base import JobCanceled, ProgressFn
from ..engines.diffusers.device import (
    DTYPE_KWARG,
    dtype_name,
    free_memory,
    is_out_of_memory,
    pick_device,
    pick_dtype,
    short_error,
)
from ..engines.diffusers.render import StepReporter
from ..errors import EngineError, KittyError, ModelNotFound, ValidationFailed
from .encode import check_fps
from .families import DECODE_CHUNK_FRAMES, SVD_MOTION_BUCKET, SVD_NOISE_AUG, VideoFamily

logger = logging.getLogger("kitty.images.video")

SIZE_MULTIPLE = 8
"""Widths and heights must be multiples of this: both pipelines' own checks refuse others (their VAEs
downsample by 8)."""

SVD_MIN_GUIDANCE = 1.0
"""SVD ramps guidance across the clip from this (first frame, which the image pins) up to the job's cfg."""

ANIMATEDIFF_SCHEDULER = {
    "beta_schedule": "linear",
    "clip_sample": False,
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}
"""DDIM with these settings over the base model's scheduler config: the schedule AnimateDiff's motion
modules were trained with (diffusers' AnimateDiff guide); SD1.5's own PNDM gives washed-out motion."""


PIPELINE_FAMILIES = {
    "StableVideoDiffusionPipeline": VideoFamily.SVD,
    "AnimateDiffPipeline": VideoFamily.ANIMATEDIFF,
}
"""diffusers pipeline class → the family it renders."""


@dataclass(frozen=True)
class VideoSpec:
    """One clip to render. `image` is SVD's start picture; `prompt` and `negative_prompt` are
    AnimateDiff's. `fps` conditions SVD's motion and is the rate the clip is meant to play at."""

    frames: int
    fps: int
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    prompt: str = ""
    negative_prompt: str | None = None
    image: Image.Image | None = None
    motion_bucket_id: int = SVD_MOTION_BUCKET
    noise_aug_strength: float = SVD_NOISE_AUG
    decode_chunk_size: int = DECODE_CHUNK_FRAMES


def video_family(pipe: Any) -> VideoFamily:
    family = PIPELINE_FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise ValidationFailed(f"{type(pipe).__name__} is not a video pipeline this service renders")
    return family


def load_video_pipeline(
    family: VideoFamily | str,
    source: Path | str,
    *,
    motion_adapter: Path | str | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> Any:
    """The pipeline in diffusers folder `source` (an SD1.5 model for AnimateDiff, with the
    `motion_adapter` folder) on `device` (else the best available) in `dtype` (else the device's):
    safetensors only, nothing fetched. `variant` picks weight files such as ``*.fp16.safetensors``."""
    family = VideoFamily(family)
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    _check_folder(Path(source), "model_index.json", f"{family.value} model")
    if family is VideoFamily.SVD and motion_adapter is not None:
        raise ValidationFailed("Stable Video Diffusion takes no motion adapter")
    if family is VideoFamily.ANIMATEDIFF:
        if motion_adapter is None:
            raise ValidationFailed("AnimateDiff needs a motion adapter folder beside its SD1.5 model")
        _check_folder(Path(motion_adapter), "config.json", "motion adapter")
    started = time.perf_counter()
    kwargs: dict[str, Any] = {DTYPE_KWARG: dtype, "local_files_only": True, "use_safetensors": True}
    if variant:
        kwargs["variant"] = variant
    try:
        pipe = _from_folders(family, str(source), motion_adapter, kwargs).to(device)
    except KittyError:
        raise
    except Exception as exc:
        logger.exception("loading %s video model from %s failed", family.value, source)
        if is_out_of_memory(exc):
            free_memory(device)
            raise EngineError(
                f"{device} has not enough memory to load the {family.value} model at {source}",
                remediation=["Free the device of other models, or load on another device."],
            ) from exc
        if isinstance(exc, OSError):
            raise ModelNotFound(
                f"the {family.value} model at {source} is incomplete: {short_error(exc)}",
                remediation=["Fetch it again, with its safetensors weights."],
            ) from exc
        raise EngineError(f"could not load the {family.value} model at {source}: {short_error(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "loaded %s video model %s on %s as %s in %.2f s",
        family.value,
        source,
        device,
        dtype_name(dtype),
        time.perf_counter() - started,
    )
    return pipe


def _check_folder(folder: Path, marker: str, what: str) -> None:
    if not (folder / marker).is_file():
        raise ModelNotFound(
            f"no {what} at {folder}: {marker} is missing",
            remediation=[
                "Point at the diffusers folder of the model (the one holding its model_index.json)."
            ],
        )


def _from_folders(
    family: VideoFamily, source: str, motion_adapter: Path | str | None, kwargs: dict[str, Any]
) -> Any:
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, StableVideoDiffusionPipeline

    if family is VideoFamily.SVD:
        return StableVideoDiffusionPipeline.from_pretrained(source, **kwargs)
    # An adapter is published without variants, whatever the base model's.
    adapter_kwargs = {key: value for key, value in kwargs.items() if key != "variant"}
    adapter = MotionAdapter.from_pretrained(str(motion_adapter), **adapter_kwargs)
    pipe = AnimateDiffPipeline.from_pretrained(source, motion_adapter=adapter, **kwargs)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **ANIMATEDIFF_SCHEDULER)
    return pipe


def check_spec(pipe: Any, spec: VideoSpec) -> VideoFamily:
    """The family of `pipe`, once `spec` is one it can render; `ValidationFailed` saying what is not."""
    family = video_family(pipe)
    check_fps(spec.fps)
    for name in ("frames", "steps", "decode_chunk_size"):
        if getattr(spec, name) < 1:
            raise ValidationFailed(f"{name} must be at least 1, not {getattr(spec, name)}")
    if (
        min(spec.width, spec.height) < SIZE_MULTIPLE
        or spec.width % SIZE_MULTIPLE
        or spec.height % SIZE_MULTIPLE
    ):
        raise ValidationFailed(
            f"a clip's width and height must be multiples of {SIZE_MULTIPLE}, not {spec.width}x{spec.height}"
        )
    if spec.cfg < 0:
        raise ValidationFailed(f"cfg must not be negative, not {spec.cfg}")
    if family is VideoFamily.SVD:
        if spec.image is None:
            raise ValidationFailed("Stable Video Diffusion animates a start image; none was given")
        if spec.prompt or spec.negative_prompt:
            raise ValidationFailed(
                "Stable Video Diffusion takes no prompt: it animates the start image alone"
            )
        if not 0 <= spec.motion_bucket_id <= 255:
            raise ValidationFailed(f"motion_bucket_id must be from 0 to 255, not {spec.motion_bucket_id}")
        if spec.noise_aug_strength < 0:
            raise ValidationFailed(f"noise_aug_strength must not be negative, not {spec.noise_aug_strength}")
    else:
        if spec.image is not None:
            raise ValidationFailed("AnimateDiff renders from a prompt; a start image is not supported")
        longest = getattr(pipe.unet.config, "motion_max_seq_length", None)
        if longest is not None and spec.frames > longest:
            raise ValidationFailed(
                f"this motion adapter animates at most {longest} frames, not {spec.frames}"
            )
    return family


def render_video(pipe: Any, spec: VideoSpec, progress: ProgressFn | None = None) -> list[Image.Image]:
    """`spec.frames` pictures of `spec.width` x `spec.height`. The noise comes from a CPU generator
    seeded with `spec.seed`, so a seed gives the same clip on any device kind; `progress` hears
    (step, spec.steps) after each denoising step and may raise `JobCanceled` to stop."""
    family = check_spec(pipe, spec)
    kwargs: dict[str, Any] = {
        "num_frames": spec.frames,
        "width": spec.width,
        "height": spec.height,
        "num_inference_steps": spec.steps,
        "generator": torch.Generator(device="cpu").manual_seed(spec.seed),
        "output_type": "pil",
        **decode_in_chunks(pipe, spec.decode_chunk_size),
    }
    if progress is not None:
        kwargs["callback_on_step_end"] = StepReporter(progress, spec.steps).callback(0, spec.steps)
    if family is VideoFamily.SVD:
        assert spec.image is not None  # check_spec
        kwargs |= {
            "image": spec.image.convert("RGB"),
            "fps": spec.fps,
            "motion_bucket_id": spec.motion_bucket_id,
            "noise_aug_strength": spec.noise_aug_strength,
            "min_guidance_scale": min(SVD_MIN_GUIDANCE, spec.cfg),
            "max_guidance_scale": spec.cfg,
        }
    else:
        kwargs |= {"prompt": spec.prompt, "negative_prompt": spec.negative_prompt, "guidance_scale": spec.cfg}
    try:
        output = pipe(**kwargs)
    except (JobCanceled, KittyError):
        raise
    except Exception as exc:
        logger.exception("rendering %d frames with %s failed", spec.frames, type(pipe).__name__)
        if is_out_of_memory(exc):
            free_memory(pipe.device)
            raise EngineError(
                f"out of memory rendering {spec.frames} frames of {spec.width}x{spec.height}",
                remediation=["Ask for fewer frames or a smaller size, or lower decode_chunk_size."],
            ) from exc
        raise EngineError(f"rendering the clip failed: {short_error(exc)}") from exc
    return list(output.frames[0])


def decode_in_chunks(pipe: Any, chunk: int) -> dict[str, Any]:
    """The call's keyword that decodes `chunk` frames at a time, where the pipeline has one; else its
    VAE decodes one frame at a time (VAE slicing) and there is no keyword."""
    if "decode_chunk_size" in inspect.signature(pipe.__call__).parameters:
        return {"decode_chunk_size": chunk}
    pipe.vae.enable_slicing()
    return {}
