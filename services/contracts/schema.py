"""The wire: every request and response body that crosses a process boundary.

The seed's field names are kept (``job_id``, ``png_key``, ``meta_key``, ``imageRef``); additions are
optional so an older client never breaks. Pydantic and the standard library only.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

MAX_PROMPT_CHARS = 10_000
"""HIP-35's prompt limit; the AInfluencer seed's 2,000 is a preset concern, not the wire's."""

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 4096, 8
"""Width and height bounds: latent space is 1/8 of pixel space, so sides must divide by 8. 4096 is
HIP-35's enterprise ceiling; a deployment's own (IMAGES_MAX_SIDE) and a key's tier bind below it."""

MAX_STEPS = 150
MAX_CFG = 30.0
MAX_SEED = 2**32 - 1
MAX_IMAGES = 8
"""HIP-35's enterprise batch; IMAGES_MAX_IMAGES and the tiers bind below it."""
LATEST_DEFAULT, LATEST_MAX = 36, 500
MAX_WORKFLOW_BYTES = 1_000_000
MAX_WORKFLOW_NODES = 500
"""HIP-35's limits on a raw ComfyUI workflow: 1 MB of JSON, 500 nodes."""

ENGINE_NAMES = ("diffusers", "comfyui", "a1111", "invokeai")
EngineName = Literal["diffusers", "comfyui", "a1111", "invokeai"]
"""The engines a request may name. The wire imports nothing of ours, so these repeat the names of the
engine descriptor table (images_service/engines/descriptors.py); tests/unit/test_engine_descriptors.py
fails when the three disagree."""

SCHEDULER_NAMES = (
    "euler",
    "euler_a",
    "heun",
    "lms",
    "ddim",
    "pndm",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "dpmpp_sde",
    "unipc",
)
"""The named set of samplers a request may ask for; each engine maps them to its own names."""


A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler": ("Euler", None),
    "euler_a": ("Euler a", None),
    "heun": ("Heun", None),
    "lms": ("LMS", None),
    "ddim": ("DDIM", None),
    "pndm": ("PLMS", None),
    "dpmpp_2m": ("DPM++ 2M", None),
    "dpmpp_2m_karras": ("DPM++ 2M", "Karras"),
    "dpmpp_sde": ("DPM++ SDE", None),
    "unipc": ("UniPC", None),
}
"""Our scheduler names → AUTOMATIC1111's (sampler, "Schedule type"). A1111 v1.9+ splits the old
"DPM++ 2M Karras" into sampler "DPM++ 2M" plus schedule type "Karras"; diffusers' PNDM is the
pseudo-linear multistep method A1111 calls PLMS."""

SCHEDULER_ALIASES: dict[str, str] = {
    **{
        sampler.lower() + (f" {schedule}".lower() if schedule else ""): name
        for name, (sampler, schedule) in A1111_SAMPLERS.items()
    },
    "pndm": "pndm",
    "dpm++ 2m sde": "dpmpp_sde",
}
"""A1111's names (any case) accepted for `scheduler`, e.g. "Euler a", "DPM++ 2M Karras"."""

QUALITY_NAMES = ("low", "standard", "pro")
"""The AInfluencer quality levels a preset defines: low 20 steps/cfg 6, standard 30/7, pro 50/8."""

MAX_LORAS = 5
CONTROL_TYPES = ("canny", "depth", "pose", "scribble")
"""HIP-35's ControlNet kinds. `canny` may start from a plain picture (we compute the edge map); the
others take a ready map (a depth map, an OpenPose skeleton, a scribble)."""
MAX_CONTROLS = 3
MAX_HIRES_SCALE = 4.0
UPSCALE_FACTORS = (2, 4)
MAX_WEBHOOK_CHARS = 2000
NAME_PATTERN = r"^[A-Za-z0-9._-]+$"


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    ENGINE_OFFLINE = "ENGINE_OFFLINE"
    ENGINE_TIMEOUT = "ENGINE_TIMEOUT"
    ENGINE_ERROR = "ENGINE_ERROR"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    QUEUE_UNAVAILABLE = "QUEUE_UNAVAILABLE"
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    CONSENT_MISSING = "CONSENT_MISSING"
    """A request that needs the caller's statement that the person pictured agreed (identity lock)."""
    SAFETY_FILTER = "SAFETY_FILTER"
    """A prompt on the operator's blocklist (400 at submit), or a job whose image the content gate
    withheld (the job's error; nothing was stored)."""
    WORKER_LOST = "WORKER_LOST"
    CANCELED = "CANCELED"
    NOT_FOUND = "NOT_FOUND"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str
    remediation: list[str] = Field(default_factory=list)
    detail: Any = None


class ErrorBody(BaseModel):
    """Every error response, from every process: ``{"error": {...}}``."""

    error: ErrorInfo


def error_body(info: ErrorInfo) -> dict[str, Any]:
    """The JSON of an error response, ``{"error": {"code", "message", "remediation", "detail"}}``:
    what every process answers a failure with (through `services.common.errors.error_response`)."""
    return ErrorBody(error=info).model_dump(mode="json")


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    DONE = "done"
    ERROR = "error"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELED)


class LoraRef(BaseModel):
    """A LoRA registered in models.yaml, applied to this job only."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    weight: float = Field(default=1.0, ge=-2.0, le=2.0)


class ControlInput(BaseModel):
    """One ControlNet input: a picture that steers the composition (edges, depth, pose, scribble)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=1024)
    """Key of an upload (``POST /api/images/uploads``) or a stored image."""
    type: Literal[CONTROL_TYPES]  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    """A models.yaml ``controlnets:`` entry; absent: the one registered for this type and the
    model's family."""
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    """How strongly it steers (ControlNet's conditioning scale); 0 renders as if it were absent."""
    start: float = Field(default=0.0, ge=0.0, le=1.0)
    end: float = Field(default=1.0, ge=0.0, le=1.0)
    """The fraction of the sampling steps it acts on, as the peers' start/end percent."""
    preprocess: bool = True
    """`canny` only: compute the edge map from `image` (OpenCV Canny); false: `image` is the map."""

    @model_validator(mode="after")
    def _range(self) -> ControlInput:
        if self.start >= self.end:
            raise ValueError(f"control `start` ({self.start}) must be below `end` ({self.end})")
        return self


class HiresFix(BaseModel):
    """A1111's hires fix: render at the requested size, upscale by `scale`, then img2img at
    `strength` so the detail is redrawn at the larger size."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(default=2.0, ge=1.0, le=MAX_HIRES_SCALE)
    strength: float = Field(default=0.5, ge=0.0, le=1.0)
    """The second pass's denoise: 0 keeps the upscaled picture, 1 ignores it."""
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """The second pass's steps (absent: the request's)."""
    upscaler: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    """A models.yaml ``upscalers:`` entry; absent: Lanczos resampling."""


PIPELINE_STEP_KINDS = ("refine", "upscale", "postprocess")
"""What may follow a pipeline's generate step: an img2img pass over the image at a low strength
(`refine`), `upscale` (as POST /upscale), `postprocess` (grain, tone mapping, LUT, sharpen, denoise)."""
MAX_PIPELINE_STEPS = 6

MIN_FRAMES, MAX_FRAMES = 2, 64
"""Frames a video job may ask for: SVD renders 14-25 and AnimateDiff 16-32 typically; 64 is HIP-35's
GIF ceiling. A family's own maximum (a motion adapter's) binds below it at submit time."""
MIN_FPS, MAX_FPS = 1, 60
MAX_MOTION_BUCKET = 255
MAX_NOISE_AUG = 1.0

JobKind = Literal["image", "video"]
"""What a generate request renders: pictures (the default) or one clip."""

MIN_BEATS, MAX_BEATS, MAX_BEAT_CHARS = 2, 10, 500
"""A storyboard's shots: one per beat (`GenerateRequest.beats`)."""


class PipelineStep(BaseModel):
    """One step after the generate step of a pipeline (a preset's ``steps``, or a request's
    ``pipeline``); each runs as its own job on the queue, on the previous step's image."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[PIPELINE_STEP_KINDS]  # type: ignore[valid-type]
    strength: float = Field(default=0.3, ge=0.0, le=1.0)
    """refine: how much of the image is redrawn."""
    scale: Literal[UPSCALE_FACTORS] = 2  # type: ignore[valid-type]
    """upscale: the factor."""
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    """upscale: a registered upscaler (absent: as POST /upscale picks)."""
    ops: list[dict[str, Any]] = Field(default_factory=list, max_length=10)
    """postprocess: the operations in order, e.g. ``[{"op": "tone_map", "operator": "aces"}]``."""
    retries: int = Field(default=1, ge=0, le=3)
    """How often the step is tried again after an engine failure before the pipeline stops."""


RefinerName = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)]
"""A refiner named in a request's `refiner` (a models.yaml entry)."""


def prompt_not_blank(value: str) -> str:
    """A prompt of only whitespace renders as an empty one: refused wherever a prompt is taken."""
    if not value.strip():
        raise ValueError("prompt must contain some text, not only whitespace")
    return value


class GenerateRequest(BaseModel):
    """``POST /api/images/generate``. Absent fields take the model's defaults at enqueue time.
    ``kind: "video"`` renders one clip with a video model (`frames`, `fps`, and SVD's start `image`,
    `motion_bucket_id` and `noise_aug_strength`); `prompt` is required for images and AnimateDiff."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    cfg: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    scheduler: Literal[SCHEDULER_NAMES] | None = None  # type: ignore[valid-type]
    refiner: bool | RefinerName | None = False
    """The SDXL refiner pass: true/false, null (= false, as the KITTY guide sends it), or the name of
    the model's registered refiner (models.yaml `refiner:`), which is the same as true."""
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    engine: EngineName | None = None
    workflow: dict[str, Any] | None = None
    """A ComfyUI API-format graph ``{node_id: {class_type, inputs}}`` run as is (engine comfyui)."""
    image: str | None = Field(default=None, min_length=1, max_length=1024)
    """Key of an upload (``POST /api/images/uploads``) or a stored image: image-to-image."""
    mask: str | None = Field(default=None, min_length=1, max_length=1024)
    """Key of an uploaded mask (white = repaint) for inpainting; needs `image`."""
    strength: float | None = Field(default=None, ge=0.0, le=1.0)
    """How much of `image` is repainted: 0 keeps it, 1 ignores it (default 0.75)."""
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS)
    preset: str | None = Field(default=None, min_length=1, max_length=100, pattern=NAME_PATTERN)
    quality: Literal[QUALITY_NAMES] | None = None  # type: ignore[valid-type]
    webhook: str | None = Field(default=None, min_length=1, max_length=MAX_WEBHOOK_CHARS)
    """An http(s) URL POSTed the job's outcome when it ends, signed (images_service/webhooks.py)."""
    controls: list[ControlInput] = Field(default_factory=list, max_length=MAX_CONTROLS)
    """ControlNet inputs, applied together (each with its own weight and step range)."""
    reference_image: str | None = Field(default=None, min_length=1, max_length=1024)
    """Key of a picture whose look (or face) the result takes after: IP-Adapter."""
    reference_weight: float = Field(default=0.6, ge=0.0, le=2.0)
    """How strongly `reference_image` steers (IP-Adapter scale); 0 renders as if it were absent."""
    reference_model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    """A models.yaml ``ip_adapters:`` entry; absent: the one registered for the model's family."""
    consent: bool = False
    """The caller states that the person in `reference_image` agreed to its use; the identity-lock
    preset refuses without it (CONSENT_MISSING)."""
    hires: HiresFix | None = None
    pipeline: list[PipelineStep] = Field(default_factory=list, max_length=MAX_PIPELINE_STEPS)
    """Steps after the render, each a job on the previous step's image (a preset may bring its
    own); the job id answered is the pipeline's, whose view lists the steps."""
    beats: list[Annotated[str, Field(min_length=1, max_length=MAX_BEAT_CHARS)]] | None = Field(
        default=None, min_length=MIN_BEATS, max_length=MAX_BEATS
    )
    """A storyboard: one shot per beat (`"{beat}, {prompt}"` through the preset, one seed for all),
    each shot through the pipeline's steps, then a contact sheet of them all. The job id answered is
    the storyboard's; its result lists the shots' final images and then the sheet."""
    kind: JobKind = "image"
    frames: int | None = Field(default=None, ge=MIN_FRAMES, le=MAX_FRAMES)
    """Video: the clip's length in frames (absent: the model's default)."""
    fps: int | None = Field(default=None, ge=MIN_FPS, le=MAX_FPS)
    """Video: the rate it plays at (SVD is also conditioned on it)."""
    motion_bucket_id: int | None = Field(default=None, ge=0, le=MAX_MOTION_BUCKET)
    """SVD: how much motion (more is more; 127 when absent)."""
    noise_aug_strength: float | None = Field(default=None, ge=0.0, le=MAX_NOISE_AUG)
    """SVD: noise added to the start image (more frees the clip from it; 0.02 when absent)."""

    @field_validator("scheduler", mode="before")
    @classmethod
    def _a1111_scheduler_names(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in SCHEDULER_NAMES:
            return SCHEDULER_ALIASES.get(value.strip().lower(), value)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _image_needs_a_prompt(
        cls, data: Any, handler: ModelWrapValidatorHandler[GenerateRequest]
    ) -> GenerateRequest:
        """`prompt` is optional on the wire for SVD's clips alone: an image request without one is
        refused as a missing field, as it was when `prompt` was required."""
        request = handler(data)
        if request.kind == "image" and not request.prompt:
            missing = InitErrorDetails(type="missing", loc=("prompt",), input=data)
            raise ValidationError.from_exception_data(cls.__name__, [missing])
        return request

    @model_validator(mode="after")
    def _kind_fields(self) -> GenerateRequest:
        if self.kind == "image":
            video_only = [name for name in VIDEO_FIELDS if getattr(self, name) is not None]
            if video_only:
                raise ValueError(f'{", ".join(f"`{n}`" for n in video_only)} need `kind: "video"`')
            return self
        image_only = [name for name in IMAGE_ONLY_FIELDS if self._is_set(name)]
        if image_only:
            raise ValueError(
                f"a video job takes none of {', '.join(f'`{n}`' for n in image_only)}: drop them, "
                "or send an image job"
            )
        return self

    def _is_set(self, name: str) -> bool:
        """Whether field `name` asks for something: not absent, not false, not its default."""
        value = getattr(self, name)
        default = type(self).model_fields[name].get_default(call_default_factory=True)
        return value is not None and value is not False and value != default

    @model_validator(mode="after")
    def _image_fields_need_an_image(self) -> GenerateRequest:
        if self.image is None and (self.mask is not None or self.strength is not None):
            raise ValueError("`mask` and `strength` need `image` (the picture to start from)")
        return self

    @model_validator(mode="after")
    def _beats_are_shots(self) -> GenerateRequest:
        if self.beats is None:
            return self
        if any(not beat.strip() for beat in self.beats):
            raise ValueError("every beat must contain some text, not only whitespace")
        if self.num_images != 1:
            raise ValueError("a storyboard renders one image per beat: leave `num_images` at 1")
        if self.workflow is not None:
            raise ValueError("a storyboard renders the built-in template: drop `workflow` or `beats`")
        return self

    @field_validator("workflow")
    @classmethod
    def _workflow_bounds(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if len(value) > MAX_WORKFLOW_NODES:
            raise ValueError(f"workflow has {len(value)} nodes; at most {MAX_WORKFLOW_NODES} are accepted")
        if len(json.dumps(value)) > MAX_WORKFLOW_BYTES:
            raise ValueError(f"workflow is larger than {MAX_WORKFLOW_BYTES} bytes of JSON")
        for node_id, node in value.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise ValueError(f"workflow node '{node_id}' needs a 'class_type' string and 'inputs'")
            if not isinstance(node.get("inputs", {}), dict):
                raise ValueError(f"workflow node '{node_id}': 'inputs' must be an object")
        return value

    _prompt_not_blank = field_validator("prompt")(prompt_not_blank)


VIDEO_FIELDS = ("frames", "fps", "motion_bucket_id", "noise_aug_strength")
"""Request fields only a video job takes."""

IMAGE_ONLY_FIELDS = (
    "num_images",
    "workflow",
    "mask",
    "strength",
    "loras",
    "controls",
    "reference_image",
    "hires",
    "pipeline",
    "beats",
    "refiner",
    "preset",
    "quality",
    "scheduler",
)
"""Request fields a video job refuses (each renders pictures, or is a picture's pipeline)."""


def hires_side(side: int, scale: float) -> int:
    """A first-pass side times the hires scale, rounded down to a multiple of 8."""
    return int(side * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE


class UpscaleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    """The stored image's key; the result's sidecar points at it."""
    scale: int
    model: str | None = None
    """A models.yaml ``upscalers:`` entry, or None for Lanczos."""


class PostprocessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    """The stored image's key; the result's sidecar points at it."""
    ops: list[dict[str, Any]]
    """As validated by images_service/postprocess.py; recorded resolved (defaults, seed) in the sidecar."""


class ContactSheetSpec(BaseModel):
    """A storyboard's last job: its shots' images laid out in a grid, each under its beat."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list)
    """The shots' image keys, in beat order (filled in when the job runs)."""
    captions: list[str]
    """One per shot: its beat."""
    columns: int = Field(ge=1)
    shot_size: tuple[int, int]
    """The size of the shots the layout was made for (`storyboard.sheet_layout`)."""


class VideoSettings(BaseModel):
    """A video job's clip, resolved: what the worker renders and the sidecar records."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["svd", "animatediff"]
    frames: int = Field(ge=1)
    fps: int = Field(ge=MIN_FPS, le=MAX_FPS)
    motion_bucket_id: int | None = None
    noise_aug_strength: float | None = None
    """SVD's; None for AnimateDiff."""
    decode_chunk_size: int = Field(default=8, ge=1)
    """Frames the VAE decodes at once: SVD's pixels depend on it, so a re-run keeps it."""


class RenderSpec(BaseModel):
    """A request with every default resolved: what the worker renders and the sidecar records.

    Resolving at enqueue time makes a job reproducible from its stored spec alone.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str = ""
    model: str | None
    """None only for server engines: whatever checkpoint the server has loaded."""
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    scheduler: str | None = None
    refiner: bool = False
    num_images: int = 1
    engine: str = "diffusers"
    workflow: dict[str, Any] | None = None
    image: str | None = None
    mask: str | None = None
    strength: float | None = None
    loras: list[LoraRef] = Field(default_factory=list)
    preset: str | None = None
    quality: str | None = None
    webhook: str | None = None
    """Where the job's outcome is POSTed when it ends; its query is redacted in sidecars and audit."""
    controls: list[ControlInput] = Field(default_factory=list)
    """Each with `model` resolved to the registered ControlNet that renders it."""
    reference_image: str | None = None
    reference_weight: float = 0.6
    reference_model: str | None = None
    """Resolved when `reference_image` is set."""
    consent: bool = False
    hires: HiresFix | None = None
    """`width`/`height` are the first pass's; the images come out `scale` times larger (rounded
    down to a multiple of 8)."""
    postprocess: PostprocessSpec | None = None
    """Set on a post-processing job (a pipeline's `postprocess` step): `source` through `ops`."""
    contact_sheet: ContactSheetSpec | None = None
    """Set on a storyboard's contact-sheet job: `width`×`height` is the sheet's size."""
    upscale: UpscaleSpec | None = None
    """Set on an upscale job (``POST /api/images/upscale``): the whole job is upscaling `source`;
    prompt, model and seed are the source's, `width`/`height` the result's."""
    video: VideoSettings | None = None
    """Set on a video job: one clip of `width`×`height` (`image` is SVD's start picture)."""

    @property
    def is_sampled(self) -> bool:
        """Whether an engine samples this job: not an upscale, post-processing or contact sheet."""
        return self.upscale is None and self.postprocess is None and self.contact_sheet is None

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images this spec produces (after hires fix)."""
        if self.hires is None:
            return self.width, self.height
        return hires_side(self.width, self.hires.scale), hires_side(self.height, self.hires.scale)


class UpscaleRequest(BaseModel):
    """``POST /api/images/upscale``: a stored image made `scale` times larger, as a new image."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=1024)
    scale: Literal[UPSCALE_FACTORS] = 2  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    """A models.yaml ``upscalers:`` entry (a Real-ESRGAN-style .safetensors spandrel reads);
    absent: the first registered one for this scale, else Lanczos resampling."""


class GenerateView(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.QUEUED


class Progress(BaseModel):
    step: int = 0
    total: int = 0


class ImageInfo(BaseModel):
    key: str
    meta_key: str
    seed: int | None = None
    width: int | None = None
    height: int | None = None


class VideoInfo(BaseModel):
    """One stored clip: the MP4, its WebP poster (first frame) and its sidecar."""

    key: str
    poster_key: str
    meta_key: str
    frames: int
    fps: int
    width: int
    height: int
    seed: int | None = None


class JobResult(BaseModel):
    png_key: str
    """The first stored object's key: the first image's PNG, or a video job's MP4."""
    meta_key: str
    images: list[ImageInfo] = Field(default_factory=list)
    videos: list[VideoInfo] = Field(default_factory=list)
    """A video job's clip (its `images` is empty)."""


class StepView(BaseModel):
    """One step of a pipeline job."""

    index: int
    kind: str
    """``generate`` (a storyboard's: ``shot``), a `PIPELINE_STEP_KINDS` entry, or ``contact_sheet``."""
    job_id: str
    after: list[int] = Field(default_factory=list)
    """The steps (by index) whose images this one reads: it runs once they are done."""
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    result: JobResult | None = None
    error: ErrorInfo | None = None


class WaitReason(StrEnum):
    """Why a queued job has not started (`JobWaiting.reason`)."""

    NO_WORKER = "no_worker"
    """No live worker serves its engine: it waits until one starts."""
    PAUSED = "paused"
    """Its owner paused their queue (``POST /api/images/queue/pause``)."""
    QUEUE_PAUSED = "queue_paused"
    """An admin paused the whole queue: workers take no new job."""
    BUSY = "busy"
    """It is next, and every worker of its engine is busy."""
    TURN = "turn"
    """Jobs ahead of it (`JobWaiting.ahead`)."""


class JobWaiting(BaseModel):
    """What a queued job waits for, for a program to act on (`JobView.waiting_for` says it in words)."""

    reason: WaitReason
    message: str
    engine: str | None = None
    ahead: int | None = None
    """Jobs its engine's workers take before it (reason ``turn``)."""
    remediation: list[str] = Field(default_factory=list)


class JobView(BaseModel):
    """``GET /api/images/jobs/{job_id}``."""

    job_id: str
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    preview_step: int | None = None
    """The step of the job's latest live preview (``GET /api/images/jobs/{job_id}/preview``); None
    before the first, and for jobs that make none."""
    result: JobResult | None = None
    error: ErrorInfo | None = None
    engine: str | None = None
    model: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    waiting_for: str | None = None
    """While queued: what the job waits for, in words (no worker serves its engine; N jobs ahead)."""
    waiting: JobWaiting | None = None
    """While queued: the same, structured (a reason code, the engine, what to do)."""
    position: int | None = None
    """While queued in a queue: its place, 1 = the next its engine's workers take (None for a held
    job of a paused queue and a pipeline step waiting for the step before it)."""
    paused: bool = False
    """While queued: its owner paused their queue, or an admin the whole queue; it starts after a
    resume, in its place."""
    worker: str | None = None
    """The worker that took it (its RQ name; its card in GET /api/images/engines gives host and pid)."""
    warm: bool | None = None
    """Whether its model was already loaded on that worker when it started."""
    request: dict[str, Any] | None = None
    """In job listings: what the job was asked to render (secrets redacted)."""
    steps: list[StepView] | None = None
    """A pipeline's steps in order (None for a single job); `progress` counts across them and
    `result` holds the last step's images."""


class QueueView(BaseModel):
    """``GET /api/images/queue`` and what its pause and resume answer: the caller's queue."""

    paused: bool
    """The caller's queued jobs wait (`POST /api/images/queue/pause`) until a resume."""
    everyone_paused: bool = False
    """An admin paused the whole queue: no worker takes a new job, whoever's."""
    held: int = 0
    """The caller's jobs a worker reached while paused, set aside in their order until the resume."""
    resumed: int | None = None
    """A resume's answer: how many held jobs went back to the front of their queues."""


class JobsView(BaseModel):
    """``GET /api/images/jobs``: the caller's jobs, newest first; `next_cursor` pages to older ones."""

    jobs: list[JobView]
    next_cursor: str | None = None


class RetryRequest(BaseModel):
    """``POST /api/images/jobs/{job_id}/retry``: the failed or canceled job's request again, with
    these fields changed (all optional)."""

    model_config = ConfigDict(extra="forbid")

    engine: str | None = Field(default=None, max_length=32)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)


class LatestItem(BaseModel):
    """One image in the gallery listing: the seed's ``key, size, last_modified`` plus what a card
    shows without opening the sidecar."""

    key: str
    size: int
    last_modified: str
    meta_key: str | None = None
    thumb_key: str | None = None
    thumb_url: str | None = None
    """A short-lived URL of the small WebP thumbnail, so a grid never downloads full PNGs."""
    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = None
    engine: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    scheduler: str | None = None
    refiner: bool | None = None
    """Whether the SDXL refiner pass ran (None: unknown, e.g. an image without a sidecar)."""
    preset: str | None = None
    quality: str | None = None
    """The preset and quality level the request named (its prompt is already the preset's)."""
    job_id: str | None = None
    owner: str | None = None
    """The key id of the key that made it (absent when keys were off)."""
    favourite: bool | None = None
    """Whether the caller starred it (their own favourites, per API key)."""
    boards: list[str] | None = None
    """The caller's boards that hold it (absent when none)."""


class LatestView(BaseModel):
    items: list[LatestItem]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next, older page; absent on the last page."""


class SelectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=1024)
    format: Literal["png", "jpeg", "webp"] = "png"
    """What `downloadUrl` serves: the stored PNG, or a JPEG/WebP copy (infotext in EXIF UserComment)."""
    quality: int = Field(default=90, ge=1, le=100)
    """JPEG/WebP quality; ignored for PNG."""


class ImageRef(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    downloadUrl: str  # noqa: N815 - the seed's wire name
    storageUri: str  # noqa: N815


class VideoRef(BaseModel):
    """A stored clip, fetchable by any plain HTTP client: the MP4 and its WebP poster."""

    downloadUrl: str  # noqa: N815
    storageUri: str  # noqa: N815
    posterUrl: str  # noqa: N815


class SelectView(BaseModel):
    """An image's `imageRef`, or a video's `videoRef` (the other is absent)."""

    imageRef: ImageRef | None = None  # noqa: N815
    videoRef: VideoRef | None = None  # noqa: N815

    @property
    def image_ref(self) -> ImageRef:
        """`imageRef`, for a key known to be an image's; `ValueError` when the key was a video's."""
        if self.imageRef is None:
            raise ValueError("the selected key is a video: it has a videoRef, not an imageRef")
        return self.imageRef


class EngineRow(BaseModel):
    """One engine in the health-check matrix (``GET /api/images/engines``)."""

    engine_id: str
    status: Literal["ready", "offline", "misconfigured"]
    detail: str = ""
    version: str | None = None
    last_check: str
    workers: int = 0
    """Workers serving this engine's queue; without one, its jobs wait."""


class EnginesView(BaseModel):
    engines: list[EngineRow]


class ModelInfo(BaseModel):
    name: str
    local: bool
    refiner: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    license: str | None = None
    family: str | None = None
    """sd15, sdxl, sd3, flux, svd or animatediff, as models.yaml declares it."""
    kind: JobKind = "image"
    """What it renders: ``video`` for the svd and animatediff families (a request's `kind`)."""
    sha256: dict[str, str] | str | None = None
    """Recorded weight digests: relative file path → hex for a folder, one hex for a single file
    (`kitty-images models verify` re-checks them); local paths are never shown."""
    tiers: list[str] | None = None
    """The key tiers that may use it (models.yaml `tiers:`); None: every tier."""


class LoraInfo(BaseModel):
    """A LoRA registered in models.yaml, for a request's `loras` (local paths are not shown)."""

    name: str
    base: str | None = None
    """The model family it was trained for: sd15, sdxl, sd3 or flux."""
    description: str | None = None


class AddonInfo(BaseModel):
    """A registered ControlNet, IP-Adapter or upscaler (models.yaml's add-on sections)."""

    name: str
    base: str | None = None
    type: str | None = None
    """ControlNets: the control type it reads."""
    scale: int | None = None
    """Upscalers: the factor it was trained for."""
    license: str | None = None
    sha256: dict[str, str] | str | None = None
    description: str | None = None


class ModelsView(BaseModel):
    models: list[ModelInfo]
    """The models the caller may use (a key sees those its tier may; an admin key, all)."""
    default: str | None = None
    loras: list[LoraInfo] = Field(default_factory=list)
    controlnets: list[AddonInfo] = Field(default_factory=list)
    ip_adapters: list[AddonInfo] = Field(default_factory=list)
    upscalers: list[AddonInfo] = Field(default_factory=list)


class UploadView(BaseModel):
    """``POST /api/images/uploads``: the stored input image, to pass as `image` or `mask`."""

    key: str
    width: int
    height: int
    content_type: str
    size: int


class PresetInfo(BaseModel):
    name: str
    title: str
    description: str
    """The preset's goal."""
    prompt_template: str
    negative_prompt: str
    defaults: dict[str, Any] = Field(default_factory=dict)
    qualities: dict[str, dict[str, Any]] = Field(default_factory=dict)
    engines: list[str] = Field(default_factory=list)
    """Preference order: the first that can run jobs now renders a request naming no engine."""
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Request field → ``{type, required, description}``."""
    requires_consent: bool = False
    safety_notes: list[str] = Field(default_factory=list)
    failure_modes: list[dict[str, Any]] = Field(default_factory=list)
    """``{code, when, remediation}``: what can go wrong and what to do."""
    steps: list[dict[str, Any]] = Field(default_factory=list)
    """The pipeline after the render (`PipelineStep`s)."""


class PresetsView(BaseModel):
    presets: list[PresetInfo]


class RerunRequest(BaseModel):
    """``POST /api/images/rerun``: enqueue exactly the request stored with `key` again."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=1024)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    """Another seed; absent keeps the stored one (same device → the same pixels)."""
    new_seed: bool = False
    """Pick a fresh random seed instead."""
