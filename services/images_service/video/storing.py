"""A rendered clip as stored objects: ``{prefix}{time}_{id}.mp4`` (H.264, the original), a WebP poster
(its first frame) at ``.poster.webp`` and the JSON sidecar at ``.json`` beside it, and the job's result.
Clips are not put in the gallery index (its entries are PNG images): `latest` lists images only."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from services.contracts import JobResult, RenderSpec, VideoInfo

from ..engines.base import RenderedImage, RenderResult
from ..metadata import build_sidecar
from ..storage.keys import META_SUFFIX, POSTER_SUFFIX, VIDEO_SUFFIX, new_image_key
from ..worker.spool import StoredObject
from .encode import (
    MEDIA_TYPES,
    POSTER_MEDIA_TYPE,
    VideoFormat,
    encode_mp4,
    encode_poster,
    frames_array,
    probe,
)


def frames_as_images(result: RenderResult) -> RenderResult:
    """A clip's frames as a result's images, for what checks and marks images (the content gate,
    the watermark); `with_frames` puts them back."""
    assert result.video is not None
    frames = [RenderedImage(frame, result.video.seed) for frame in result.video.frames]
    return replace(result, images=frames)


def with_frames(result: RenderResult, checked: RenderResult) -> RenderResult:
    """`result` with the frames `checked` (from `frames_as_images`) holds, and its timings."""
    assert result.video is not None
    frames = [rendered.image for rendered in checked.images]
    return replace(result, timings=checked.timings, video=replace(result.video, frames=frames))


def frames_digest(frames: list[Image.Image]) -> str:
    """SHA-256 of the rendered frames' RGB pixels, before encoding: what a re-run with the same seed
    reproduces exactly. The MP4's own bytes may not: this build of x264 (PyAV's wheel) now and then
    codes a frame differently from the same input (measured 4 of 60 encodes; never with ``no-asm``,
    why not found), so the decoded pixels of two encodes may differ by a few levels."""
    return hashlib.sha256(frames_array(frames).tobytes()).hexdigest()


def prepare_video_objects(
    prefix: str,
    job_id: str,
    spec: RenderSpec,
    result: RenderResult,
    engine: str,
    owner: str | None = None,
    pipeline: dict[str, Any] | None = None,
) -> tuple[list[StoredObject], JobResult]:
    """The sidecar, poster and MP4 of `result`'s clip (in that order, so a stored MP4 always has its
    sidecar), and the job's result listing it."""
    video, settings = result.video, spec.video
    if video is None or settings is None:
        raise ValueError("prepare_video_objects needs a video spec and a rendered clip")
    created_at = datetime.now(UTC)
    base = new_image_key(prefix, created_at)
    key, meta_key, poster_key = base + VIDEO_SUFFIX, base + META_SUFFIX, base + POSTER_SUFFIX
    mp4 = encode_mp4(video.frames, video.fps)
    info = probe(mp4)
    sidecar = build_sidecar(
        job_id=job_id,
        engine=engine,
        spec=spec,
        seed=video.seed,
        width=info.width,
        height=info.height,
        device=result.device,
        png_key=key,
        meta_key=meta_key,
        engine_info=result.engine_info,
        timings=result.timings,
        created_at=created_at,
        index=0,
        pipeline=pipeline,
    )
    del sidecar["png_key"]  # not a PNG: `video_key` names it
    sidecar |= {
        "kind": "video",
        "video_key": key,
        "poster_key": poster_key,
        "video": {
            "frames": info.frames,
            "fps": video.fps,
            "duration_s": round(info.duration_s, 4),
            "codec": info.codec,
            "container": VideoFormat.MP4.value,
            "size": len(mp4),
            "frames_sha256": frames_digest(video.frames),
        },
        "settings": {"steps": spec.steps, "cfg": spec.cfg, **settings.model_dump(mode="json")},
    }
    if owner:
        sidecar["owner"] = owner
    objects = [
        StoredObject(meta_key, json.dumps(sidecar, indent=2).encode(), "application/json"),
        StoredObject(poster_key, encode_poster(video.frames), POSTER_MEDIA_TYPE),
        StoredObject(key, mp4, MEDIA_TYPES[VideoFormat.MP4]),
    ]
    clip = VideoInfo(
        key=key,
        poster_key=poster_key,
        meta_key=meta_key,
        frames=info.frames,
        fps=video.fps,
        width=info.width,
        height=info.height,
        seed=video.seed,
    )
    return objects, JobResult(png_key=key, meta_key=meta_key, videos=[clip])
