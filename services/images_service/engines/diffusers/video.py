"""A video job on the diffusers engine: the clip's pipeline from the model cache, SVD's start image
from the store, one `render_video` with the job's progress, and what the sidecar records of it."""

from __future__ import annotations

import time
from typing import Any

import torch

from services.contracts import RenderSpec

from ...errors import ValidationFailed
from ...models import ModelEntry
from ...video.pipelines import VideoSpec, render_video
from ..base import ImageLoader, ProgressFn, RenderedVideo, RenderResult
from .cache import ModelCache
from .device import dtype_name


def clip_spec(spec: RenderSpec, image_loader: ImageLoader | None) -> VideoSpec:
    """`spec` (a video job's) as the pipelines' `VideoSpec`, its start image read through
    `image_loader`."""
    video = spec.video
    if video is None:
        raise ValueError("clip_spec needs a spec with `video` set")
    image = None
    if spec.image is not None:
        if image_loader is None:
            raise ValidationFailed("this engine was built without an image loader: it cannot read `image`")
        image = image_loader(spec.image)
    extra: dict[str, Any] = {}
    if video.motion_bucket_id is not None:
        extra["motion_bucket_id"] = video.motion_bucket_id
    if video.noise_aug_strength is not None:
        extra["noise_aug_strength"] = video.noise_aug_strength
    return VideoSpec(
        frames=video.frames,
        fps=video.fps,
        width=spec.width,
        height=spec.height,
        steps=spec.steps,
        cfg=spec.cfg,
        seed=spec.seed,
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or None,
        image=image,
        decode_chunk_size=video.decode_chunk_size,
        **extra,
    )


def render_clip(
    spec: RenderSpec,
    entry: ModelEntry,
    cache: ModelCache,
    progress: ProgressFn,
    *,
    image_loader: ImageLoader | None,
    device: torch.device,
    dtype: torch.dtype,
    versions: dict[str, str],
) -> RenderResult:
    """Render `spec`'s clip with `entry`'s pipeline, resident in `cache`. Called under the engine's lock."""
    clip = clip_spec(spec, image_loader)
    started, loads = time.perf_counter(), cache.loads
    resident = cache.video(entry)
    load_s = time.perf_counter() - started if cache.loads != loads else 0.0
    rendering = time.perf_counter()
    frames = render_video(resident.pipe, clip, progress)
    render_s = time.perf_counter() - rendering
    return RenderResult(
        images=[],
        device=str(device),
        engine_info={
            "mode": "video",
            "family": entry.family,
            "dtype": dtype_name(dtype),
            "pipeline_class": resident.pipeline_class,
            "scheduler_class": type(resident.pipe.scheduler).__name__,
            "attention": list(resident.attention),
            "versions": dict(versions),
        },
        timings={"load_s": round(load_s, 4), "render_s": round(render_s, 4)},
        video=RenderedVideo(frames=frames, fps=clip.fps, seed=spec.seed),
    )
