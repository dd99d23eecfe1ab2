"""The names the diffusers engine had when it was one module, kept for the code that imports them
from here (`tiny.py`, the benches, tests). It now lives in the `diffusers` package next to this
file; new code imports from there."""

from __future__ import annotations

from .diffusers.device import DTYPE_KWARG, pick_device, pick_dtype
from .diffusers.engine import DiffusersEngine, quiet_libraries
from .diffusers.validation import (
    IMG2IMG,
    INPAINT,
    SCHEDULERS,
    TXT2IMG,
    denoise_steps,
    job_mode,
    pipeline_strength,
)

_DTYPE_KWARG = DTYPE_KWARG

__all__ = [
    "IMG2IMG",
    "INPAINT",
    "SCHEDULERS",
    "TXT2IMG",
    "_DTYPE_KWARG",
    "DiffusersEngine",
    "denoise_steps",
    "job_mode",
    "pick_device",
    "pick_dtype",
    "pipeline_strength",
    "quiet_libraries",
]
