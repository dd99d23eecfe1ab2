"""The video model families, torch-free: what the API needs to admit a video job (which models render
video, each family's inputs and default length) without importing a pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class VideoFamily(StrEnum):
    SVD = "svd"
    """Stable Video Diffusion: one start image to a clip; no prompt."""
    ANIMATEDIFF = "animatediff"
    """AnimateDiff: a prompt to a clip, through an SD1.5 model and a motion adapter."""


VIDEO_FAMILIES = frozenset(family.value for family in VideoFamily)
"""models.yaml `family:` values of video models; every other family renders images."""


@dataclass(frozen=True)
class ClipDefaults:
    """A family's clip when a request and its model's `defaults:` leave frames or fps out."""

    frames: int
    fps: int


CLIP_DEFAULTS = {
    VideoFamily.SVD: ClipDefaults(frames=14, fps=7),
    VideoFamily.ANIMATEDIFF: ClipDefaults(frames=16, fps=8),
}
"""SVD's 14 frames at 7 fps (the base model's training clip; SVD-xt's is 25), AnimateDiff's 16 frames
at 8 fps (its motion modules' training length)."""

DECODE_CHUNK_FRAMES = 8
"""Frames the VAE decodes at once: the decoder's activations for all 25 frames of an SVD clip at
1024x576 outgrow a 24 GB GPU; diffusers' SVD guide suggests 8, and lower still where memory is short.
SVD's decoder is temporal: it sees the frames of one chunk together, so the chunk size changes the
pixels a little. AnimateDiff's decodes each frame alone, so only memory changes."""

SVD_MOTION_BUCKET = 127
"""SVD's motion conditioning (0–255, more is more motion): the value it was trained around."""

SVD_NOISE_AUG = 0.02
"""Noise added to SVD's start image: more frees the clip from the picture, less keeps to it."""

MOTION_ADAPTER_LENGTH_KEY = "motion_max_seq_length"
"""A motion adapter's config.json key for the most frames it animates (32 in diffusers' default)."""


def is_video_family(family: str | None) -> bool:
    return family in VIDEO_FAMILIES


def motion_adapter_frames(folder: str | Path | None) -> int | None:
    """The most frames the motion adapter in `folder` animates, from its config.json; None when
    unreadable (the worker's `check_spec` still refuses a clip too long for the loaded adapter)."""
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    longest = config.get(MOTION_ADAPTER_LENGTH_KEY) if isinstance(config, dict) else None
    return longest if isinstance(longest, int) else None
