"""The wire of HIP-35's "Painter" API (``/api/painter/*``): a simple request with HIP-35's field names
(`cfg_scale`, seed −1, `style`) and a response with the images' URLs, seeds and usage. The service
maps it onto a `GenerateRequest`, so both APIs share one queue, one set of limits and one audit log."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .schema import (
    CONTROL_TYPES,
    MAX_CFG,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    NAME_PATTERN,
    SIDE_MULTIPLE,
    ErrorInfo,
    JobStatus,
    prompt_not_blank,
)

RANDOM_SEED = -1
"""HIP-35's "pick a seed for me"; the seed actually used is in each image of the response."""


class PainterRequest(BaseModel):
    """``POST /api/painter/generate``. Absent `width`, `height`, `steps` and `cfg_scale` take the
    model's (or the style's) defaults: HIP-35's 1024×1024 and cfg 7.0 are what the SDXL entries
    register, and an SD 1.5 model keeps the size it was trained at."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    """Absent: the quality negatives (or the style's own); "" asks for none at all."""
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg_scale: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    seed: int = Field(default=RANDOM_SEED, ge=RANDOM_SEED, le=MAX_SEED)
    style: str | None = Field(default=None, min_length=1, max_length=100)
    """A preset's name (GET /api/images/presets)."""
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    reference_image: str | None = Field(default=None, min_length=1, max_length=1024)
    """A picture whose look (or face) the images take after (IP-Adapter): an upload's key
    (``POST /api/images/uploads``) or a stored image's; `reference_image` of /api/images/generate."""
    consent: bool = False
    """The caller states that the person in `reference_image` agreed to its use; the identity_lock
    style refuses without it (CONSENT_MISSING)."""
    control_image: str | None = Field(default=None, min_length=1, max_length=1024)
    """A picture that steers the composition (ControlNet): an upload's or a stored image's key; needs
    `control_type`. Sent as the one entry of /api/images/generate's `controls`."""
    control_type: Literal[CONTROL_TYPES] | None = None  # type: ignore[valid-type]
    """What `control_image` is: canny (edges, computed from a plain picture), depth, pose or scribble;
    only with `control_image`."""

    _prompt_not_blank = field_validator("prompt")(prompt_not_blank)


class PainterImage(BaseModel):
    url: str
    """A presigned download link (IMAGES_URL_TTL, a day by default)."""
    key: str
    """The storage key: for POST /api/images/select, /rerun or DELETE."""
    width: int | None = None
    height: int | None = None
    size: str | None = None
    """``"<width>x<height>"``."""
    seed: int | None = None
    workflow_id: str
    """The job id: GET /api/images/jobs/{workflow_id} shows the job, and each image's sidecar holds
    the full resolved request that re-renders it (POST /api/images/rerun)."""


class PainterUsage(BaseModel):
    model: str | None = None
    steps: int | None = None
    compute_ms: int | None = None
    """The worker's render time (the sidecar's `timings.total_s`), not the time spent queued."""


class PainterView(BaseModel):
    """The Painter response: ``200`` with `images` and `usage` once the job is done (or `error` once it
    failed); ``202`` with `job_id` and `status` while it is queued or rendering (poll
    `GET /api/painter/jobs/{job_id}`)."""

    job_id: str
    status: JobStatus
    images: list[PainterImage] = Field(default_factory=list)
    usage: PainterUsage | None = None
    waiting_for: str | None = None
    """While queued: what the job waits for, in words (no worker serves its engine; N jobs ahead)."""
    error: ErrorInfo | None = None
    """When `status` is "error" or "canceled": why, with what to do (as on /api/images/jobs/{id})."""
