"""Settings of the images-service and its workers: environment first, `.env` second.

The seed's variable names are kept so an existing KITTY `.env` works; new ones start with IMAGES_.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.api_keys import TIER_NAMES, parse_api_keys
from services.contracts.schema import MAX_IMAGES, MAX_SIDE, MIN_SIDE

MAX_PRESIGN_TTL_S = 7 * 24 * 3600
"""SigV4 presigned URLs cannot live longer than seven days."""


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a key or secret; never echo it into a traceback.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # --- the seed's names -------------------------------------------------------------------
    image_engine: str = Field(default="diffusers", alias="IMAGE_ENGINE")
    """Engine used when a request names none."""
    invoke_host: str = Field(default="127.0.0.1", alias="INVOKE_HOST")
    invoke_port: int = Field(default=9091, alias="INVOKE_PORT")
    a1111_base_url: str = Field(default="http://127.0.0.1:7860", alias="A1111_BASE_URL")
    a1111_api_auth: str | None = Field(default=None, alias="A1111_API_AUTH")
    """``user:password`` for a server started with ``--api-auth``."""
    comfyui_url: str = Field(default="http://127.0.0.1:8188", alias="COMFYUI_URL")
    engine_connect_timeout_s: float = Field(default=3.0, gt=0, alias="IMAGES_ENGINE_CONNECT_TIMEOUT")
    """How long to wait for a ComfyUI/A1111/InvokeAI server to accept a connection."""
    engine_poll_interval_s: float = Field(default=0.5, gt=0, alias="IMAGES_ENGINE_POLL_INTERVAL")
    """How often server engines are polled for progress when no event stream is available."""
    s3_endpoint_url: str | None = Field(default=None, alias="S3_ENDPOINT_URL")
    s3_bucket: str | None = Field(default=None, alias="S3_BUCKET")
    s3_region: str = Field(default="us-east-1", alias="S3_REGION")
    s3_access_key: str | None = Field(default=None, alias="S3_ACCESS_KEY")
    s3_secret_key: str | None = Field(default=None, alias="S3_SECRET_KEY")
    s3_prefix: str = Field(default="images/", alias="S3_PREFIX")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    models_yaml: Path = Field(default=Path("var/models.yaml"), alias="MODELS_YAML")
    hf_home: Path | None = Field(default=None, alias="HF_HOME")
    pytorch_mps_high_watermark_ratio: str | None = Field(
        default=None, alias="PYTORCH_MPS_HIGH_WATERMARK_RATIO"
    )

    # --- ours ---------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", alias="IMAGES_HOST")
    port: int = Field(default=8089, alias="IMAGES_PORT")
    public_url: str | None = Field(default=None, alias="IMAGES_PUBLIC_URL")
    """Base URL clients use to reach the filesystem store's download route (default: as requested)."""
    data_dir: Path = Field(default=Path("var"), alias="IMAGES_DATA_DIR")
    """Embedded state: the filesystem store (``store/``), the signing key, Redis data."""
    s3_public_endpoint_url: str | None = Field(default=None, alias="S3_PUBLIC_ENDPOINT_URL")
    """Endpoint written into presigned URLs when clients reach S3 by another name (compose: minio:9000)."""
    s3_create_bucket: bool = Field(default=True, alias="IMAGES_S3_CREATE_BUCKET")
    uploads_prefix: str = Field(default="uploads/", alias="IMAGES_UPLOADS_PREFIX")
    """Key prefix of input images (``POST /api/images/uploads``); apart from S3_PREFIX, so uploads
    never show in the gallery or its index rebuild."""
    uploads_ttl_days: float = Field(default=7.0, ge=0, alias="IMAGES_UPLOADS_TTL_DAYS")
    """Uploads older than this are deleted by the janitor (0 keeps them forever)."""
    uploads_sweep_interval_s: float = Field(default=3600.0, gt=0, alias="IMAGES_UPLOADS_SWEEP_INTERVAL")
    """Seconds between the janitor's looks for expired uploads (a full listing of the prefix)."""
    signing_key: str | None = Field(default=None, alias="IMAGES_SIGNING_KEY")
    """HMAC key of the filesystem store's download URLs; generated under IMAGES_DATA_DIR when unset."""
    url_ttl_s: int = Field(default=24 * 3600, ge=60, le=MAX_PRESIGN_TTL_S, alias="IMAGES_URL_TTL")
    default_model: str | None = Field(default=None, alias="IMAGES_DEFAULT_MODEL")
    """Model used when a request names none; the first entry of models.yaml when unset."""
    job_timeout_s: int = Field(default=600, ge=1, alias="IMAGES_JOB_TIMEOUT")
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, alias="IMAGES_RESULT_TTL")
    queue_prefix: str = Field(default="kitty-images", alias="IMAGES_QUEUE_PREFIX")
    preview_every: int | None = Field(default=None, ge=0, alias="IMAGES_PREVIEW_EVERY")
    """Steps between a diffusers job's live previews (0: off); unset: every 2 on CUDA/MPS, off on CPU."""
    lost_job_retries: int = Field(default=1, ge=0, le=5, alias="IMAGES_LOST_JOB_RETRIES")
    """Times a job whose worker died is run again (on any worker) before it ends as WORKER_LOST."""
    dispatch_wait_s: float = Field(default=2.0, ge=0, le=600, alias="IMAGES_DISPATCH_WAIT_S")
    """How long a job queued for the workers that hold its model waits before any idle worker takes
    it (dispatch.py); 0: no model-aware dispatch, first come first served."""
    heartbeat_s: float = Field(default=10.0, gt=0, alias="IMAGES_WORKER_HEARTBEAT")
    """Seconds between a busy worker's heartbeats; three missed ones mark its job lost."""
    spool_retry_s: float = Field(default=5.0, gt=0, alias="IMAGES_SPOOL_RETRY")
    """Seconds between a worker's attempts to upload images kept while storage was down."""
    janitor_interval_s: float = Field(default=10.0, gt=0, alias="IMAGES_JANITOR_INTERVAL")
    """Seconds between the images-service's looks for jobs of dead workers."""
    model_cache_size: int = Field(default=1, ge=1, alias="IMAGES_MODEL_CACHE_SIZE")
    """Pipelines kept resident per worker (LRU)."""
    torch_compile: str | None = Field(default=None, alias="IMAGES_TORCH_COMPILE")
    """CUDA only: ``1`` compiles the UNet (max-autotune-no-cudagraphs), or a torch.compile mode name;
    warmed by ``images-worker --preload MODEL``."""
    device: str | None = Field(default=None, alias="IMAGES_DEVICE")
    """Force ``cuda``, ``cuda:1``, ``mps`` or ``cpu``; detected when unset."""
    worker_metrics_port: int = Field(default=9109, ge=0, alias="IMAGES_WORKER_METRICS_PORT")
    """The worker's /metrics port; 0 disables it."""
    log_level: str = Field(default="INFO", alias="IMAGES_LOG_LEVEL")

    # --- pinned models (engines/diffusers/cache.py) ---------------------------------------------
    pinned_models: str | None = Field(default=None, alias="IMAGES_PINNED_MODELS")
    """``a,b``: models a worker's cache never evicts once loaded. When every resident model is
    pinned and another is needed, it is loaded beyond IMAGES_MODEL_CACHE_SIZE (the unpinned ones
    leave first as soon as there are any): pinning costs memory, never a refused job."""

    @property
    def pinned_model_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in (self.pinned_models or "").split(",") if name.strip())

    # --- security (API keys and quotas) ---------------------------------------------------------
    api_keys: str | None = Field(default=None, alias="IMAGES_API_KEYS")
    """``key1,key2:pro,key3:enterprise``: keys accepted as ``X-API-Key`` or ``Authorization: Bearer``,
    each with an optional tier. Unset: the API is open (fine on 127.0.0.1, warned about elsewhere)."""
    default_tier: str = Field(default="pro", alias="IMAGES_DEFAULT_TIER")
    """Tier of a key listed without one: free | pro | enterprise (HIP-35's limits, see quotas.py)."""
    max_side: int = Field(default=MAX_SIDE, ge=MIN_SIDE, le=MAX_SIDE, alias="IMAGES_MAX_SIDE")
    """The deployment's largest image side, for every caller (tiers and no keys alike): HIP-35's
    enterprise 4096 by default; lower it to what this deployment's GPUs were measured to render."""
    max_images: int = Field(default=MAX_IMAGES, ge=1, le=MAX_IMAGES, alias="IMAGES_MAX_IMAGES")
    """The deployment's largest ``num_images`` per job, for every caller (HIP-35's 8 by default)."""

    # --- audit log (services/images_service/audit.py) ------------------------------------------
    audit_max_entries: int = Field(default=100_000, ge=1, alias="IMAGES_AUDIT_MAX_ENTRIES")
    """Entries the audit stream keeps (approximately: Redis trims whole stream nodes)."""
    audit_retention_days: float = Field(default=90.0, ge=0, alias="IMAGES_AUDIT_RETENTION_DAYS")
    """Entries older than this are trimmed as new ones are written (0: by count only)."""
    audit_prompts: Literal["full", "hash", "none"] = Field(default="hash", alias="IMAGES_AUDIT_PROMPTS")
    """How prompts appear in audit entries: ``hash`` (a SHA-256 prefix: repeats are visible, the
    text is not), ``full`` (the text) or ``none`` (left out)."""

    @field_validator("default_tier")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        if value not in TIER_NAMES:
            raise ValueError(f"IMAGES_DEFAULT_TIER must be one of {', '.join(TIER_NAMES)}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str | None) -> str | None:
        # Checked at startup so a typo in a tier fails loudly instead of locking callers out; the
        # message names a key by its position, never by its text.
        parse_api_keys(value, "pro")
        return value

    @field_validator("s3_prefix", "uploads_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("S3_PREFIX and IMAGES_UPLOADS_PREFIX must be relative prefixes like 'images/'")
        return value if not value or value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _uploads_apart_from_images(self) -> Settings:
        if self.uploads_prefix.startswith(self.s3_prefix) or self.s3_prefix.startswith(self.uploads_prefix):
            raise ValueError(
                f"IMAGES_UPLOADS_PREFIX {self.uploads_prefix!r} and S3_PREFIX {self.s3_prefix!r} overlap: "
                "uploads would show in the gallery; give each its own prefix (uploads/, images/)"
            )
        return self

    # --- completion webhooks (services/images_service/webhooks.py) -------------------------------
    webhook_secret: str | None = Field(default=None, alias="IMAGES_WEBHOOK_SECRET")
    """HMAC-SHA256 key of ``X-Kitty-Signature``. Unset: requests with `webhook` are refused (400); no
    secret is derived, since the receiver must be told it."""
    webhook_allow_private: bool = Field(default=False, alias="IMAGES_WEBHOOK_ALLOW_PRIVATE")
    """Allow webhooks to loopback, private, link-local and reserved addresses (a receiver on the same
    host or LAN). Off by default: a webhook is a request made from inside the deployment (SSRF)."""
    webhook_attempts: int = Field(default=5, ge=1, le=10, alias="IMAGES_WEBHOOK_ATTEMPTS")
    """Tries per delivery; connection errors, timeouts, 429 and 5xx are retried, other 4xx are not."""
    webhook_backoff_s: float = Field(default=1.0, ge=0, le=60, alias="IMAGES_WEBHOOK_BACKOFF")
    """Seconds before the first retry, doubling after each (1, 2, 4, 8)."""
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60, alias="IMAGES_WEBHOOK_TIMEOUT")
    """Connect/read timeout of one attempt."""

    # --- presets (services/images_service/presets.py) ---------------------------------------------
    presets_file: Path = Field(default=Path("var/presets.yaml"), alias="IMAGES_PRESETS_FILE")
    """Your presets, beside the built-in ones (presets.yaml's shape; a built-in name replaces that
    preset). Read when it changes; a file that does not validate stops the service at start."""

    # --- raw ComfyUI workflows (services/images_service/workflow_admission.py) -------------------
    workflow_nodes: str | None = Field(default=None, alias="IMAGES_WORKFLOW_NODES")
    """Node types a raw ComfyUI workflow may use, comma-separated. Unset or empty: the default list
    (workflow_admission.DEFAULT_NODE_TYPES, ComfyUI core nodes). ``A,B``: only those; ``+A,-B``: the
    default plus A, without B. A node added here has no cost model: a sampler or image node fed from
    it counts the tier's largest picture."""

    @field_validator("workflow_nodes")
    @classmethod
    def _workflow_nodes_parse(cls, value: str | None) -> str | None:
        # Checked at startup, so a typo fails loudly instead of refusing (or allowing) nodes later.
        from .workflow_admission import allowed_node_types

        allowed_node_types(value)
        return value

    # --- content gate and watermark (services/images_service/safety.py, watermark.py) ----------------
    safety_policy: str | None = Field(default=None, alias="IMAGES_SAFETY_POLICY")
    """What a rendered image the safety checker flags becomes: ``off`` (no check), ``blur`` (stored
    blurred, flagged in its sidecar) or ``block`` (the job ends SAFETY_FILTER, nothing stored).
    Unset: ``block`` when IMAGES_API_KEYS is set (others submit prompts), ``off`` without keys."""
    safety_policy_by_tier: str | None = Field(default=None, alias="IMAGES_SAFETY_POLICY_BY_TIER")
    """``free:block,pro:blur``: a tier's own policy, over IMAGES_SAFETY_POLICY (keys on only)."""
    safety_threshold: float = Field(default=0.5, gt=0, le=1, alias="IMAGES_SAFETY_THRESHOLD")
    """NudeNet's confidence at which an exposed-body detection flags an image."""
    prompt_blocklist: str | None = Field(default=None, alias="IMAGES_PROMPT_BLOCKLIST")
    """``word, two words, /regex/``: prompts matching any entry (case-insensitive; plain entries as
    whole words) are refused at submit with 400 SAFETY_FILTER."""
    watermark: str = Field(default="", alias="IMAGES_WATERMARK")
    """A short text (1–16 bytes, e.g. ``kitty``) hidden in every stored image (dwtDct); empty: none.
    ``kitty-images verify-watermark FILE`` reads it back."""

    # Each is checked at startup, so a typo fails loudly rather than filtering nothing (or everything).
    @field_validator("safety_policy")
    @classmethod
    def _safety_policy_parse(cls, value: str | None) -> str | None:
        from .safety import parse_policy

        return parse_policy(value) if value else None

    @field_validator("safety_policy_by_tier")
    @classmethod
    def _safety_policy_by_tier_parse(cls, value: str | None) -> str | None:
        from .safety import parse_policy_by_tier

        parse_policy_by_tier(value)
        return value

    @field_validator("prompt_blocklist")
    @classmethod
    def _prompt_blocklist_parse(cls, value: str | None) -> str | None:
        from .safety import parse_blocklist

        parse_blocklist(value)
        return value

    @field_validator("watermark")
    @classmethod
    def _watermark_parse(cls, value: str) -> str:
        from .watermark import payload_bytes

        if value:
            payload_bytes(value)
        return value

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket)

    @property
    def images_dir(self) -> Path:
        """Root of the filesystem store. Keys already start with S3_PREFIX (``images/``), so files
        land in ``store/images/…``; a root of its own keeps the signing key and Redis data out of
        reach of any key."""
        return self.data_dir / "store"

    @property
    def invokeai_url(self) -> str:
        return f"http://{self.invoke_host}:{self.invoke_port}"

    def queue_name(self, engine: str, *, priority: bool = False) -> str:
        """An engine's RQ queue; tiers with priority (pro, enterprise) use its ``:priority`` twin."""
        return f"{self.queue_prefix}:{engine}:priority" if priority else f"{self.queue_prefix}:{engine}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
