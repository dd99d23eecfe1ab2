"""Per-key quotas (only when API keys are configured): HIP-35's tiers as ceilings on one request
(size, steps, images) and a daily count of images per key id, kept in Redis per UTC day.

Ceilings answer 400 (retrying cannot help); the daily count answers 429 with ``Retry-After`` set to
the seconds left until 00:00 UTC, when a new day's counter starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from redis import Redis

from services.common.api_keys import TIER_NAMES, ApiKey
from services.contracts import RenderSpec

from .errors import RateLimited, ValidationFailed
from .models import ModelRegistry
from .queue import redis_errors
from .settings import Settings
from .workflow_admission import OPEN_LIMITS, Limits, admit_workflow, allowed_node_types, open_limits


@dataclass(frozen=True)
class Tier:
    name: str
    images_per_day: int | None
    """Images (not jobs) a key may have generated per UTC day; None is unlimited."""
    max_side: int
    max_pixels: int
    """width × height of one image."""
    max_steps: int
    max_images: int
    """``num_images`` of one job."""
    priority: bool = False
    """Jobs go to the engine's priority queue, which workers empty before the normal one."""


TIERS: dict[str, Tier] = {
    "free": Tier(
        "free", images_per_day=50, max_side=1024, max_pixels=1024 * 1024, max_steps=30, max_images=1
    ),
    "pro": Tier(
        "pro",
        images_per_day=1000,
        max_side=2048,
        max_pixels=2048 * 2048,
        max_steps=50,
        max_images=4,
        priority=True,
    ),
    "enterprise": Tier(
        "enterprise",
        images_per_day=None,
        max_side=4096,
        max_pixels=4096 * 4096,
        max_steps=100,
        max_images=8,
        priority=True,
    ),
}
"""HIP-35's tiers, as it states them. HIP-35 gives pro a priority queue; enterprise, above pro, has
it too. A deployment's IMAGES_MAX_SIDE / IMAGES_MAX_IMAGES bind below any tier (`within`)."""

assert tuple(TIERS) == TIER_NAMES, "the tiers keys may name and the tiers with limits must agree"

VIDEO_BUDGET_FRAMES = 16
"""A video job may cost (frames × width × height × steps) what this many of its tier's largest images
at its most steps cost: free allows SVD's 14 frames of 1024×576 at 25 steps (0.21 of its budget) and
AnimateDiff's 32 of 512×512 at 30, not 64 frames of 1024×1024 at 30. Proportional to the image
ceilings, so IMAGES_MAX_SIDE and the tiers bind clips as they bind pictures."""

QUOTA_KEY = "{prefix}:quota:{key_id}:{day}"
"""One counter per key id and UTC day (``YYYYmmdd``)."""

QUOTA_EXPIRY_MARGIN_S = 3600
"""A day's counter outlives its day by this much, so a refund arriving just after midnight still
finds it; then Redis drops it."""

RESERVE_SCRIPT = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return {0, used - tonumber(ARGV[1])}
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, used}
"""
"""Count ``ARGV[1]`` images against a limit of ``ARGV[2]`` atomically, so two requests racing for the
last images cannot both get them: ``{1, new total}``, or ``{0, unchanged total}`` (nothing counted)."""

REFUND_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECRBY', KEYS[1], ARGV[1])
end
return 0
"""
"""Give images back, unless the day's counter is already gone (a counter without expiry must not
be created by a late refund)."""


def tier_of(caller: ApiKey) -> Tier:
    return TIERS[caller.tier]


def within(tier: Tier, settings: Settings | None) -> Tier:
    """`tier` held to the deployment's own ceilings (IMAGES_MAX_SIDE, IMAGES_MAX_IMAGES)."""
    if settings is None:
        return tier
    side = min(tier.max_side, settings.max_side)
    return replace(
        tier,
        max_side=side,
        max_pixels=min(tier.max_pixels, side * side),
        max_images=min(tier.max_images, settings.max_images),
    )


def has_priority(caller: ApiKey | None) -> bool:
    """Whether the caller's jobs go to the priority queue; without API keys there are no tiers."""
    return caller is not None and tier_of(caller).priority


def seconds_until_utc_midnight(now: datetime) -> int:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


def _refuse(
    limits: Tier | Limits, what: str, limit: str, requested: object, allowed: object, fix: str
) -> ValidationFailed:
    if isinstance(limits, Tier):
        message = f"tier '{limits.name}' allows {what}; this request asks for {requested}"
        remediation = [fix, "Or use a key of a higher tier (free < pro < enterprise)."]
        detail = {"tier": limits.name, "limit": limit, "allowed": allowed, "requested": requested}
    else:
        message = f"this deployment allows {what}; this request asks for {requested}"
        remediation = [fix, "The operator sets this ceiling with IMAGES_MAX_SIDE / IMAGES_MAX_IMAGES."]
        detail = {"limit": limit, "allowed": allowed, "requested": requested}
    return ValidationFailed(message, remediation=remediation, detail=detail)


def check_ceilings(spec: RenderSpec, caller: ApiKey | None, settings: Settings | None = None) -> None:
    """Refuse a request beyond its caller's tier, held to the deployment's IMAGES_MAX_SIDE and
    IMAGES_MAX_IMAGES; without API keys, beyond those alone. Checked on the resolved spec, so a
    model's default size or steps count as if the caller had asked for them, and a hires fix counts
    at the size it comes out.

    A raw workflow is admitted here too (`admit_workflow`: node types from `settings`'
    IMAGES_WORKFLOW_NODES, or the default list without `settings`; values, links, file names and
    cost), held to the same limits: unlike the template's, its cost has no other bound.
    """
    limits: Tier | Limits
    if caller is None:
        limits = open_limits(settings.max_side, settings.max_images) if settings else OPEN_LIMITS
    else:
        limits = within(tier_of(caller), settings)
    width, height = spec.output_size
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise _refuse(
            limits,
            f"images of at most {limits.max_side}×{limits.max_side} pixels",
            "size",
            f"{width}×{height}",
            f"{limits.max_side}×{limits.max_side}",
            f"Set width and height to {limits.max_side} or less (a preset's or the model's default size "
            "counts when unset, and a hires fix counts at its scaled size).",
        )
    if spec.steps > limits.max_steps:
        raise _refuse(
            limits,
            f"at most {limits.max_steps} steps",
            "steps",
            spec.steps,
            limits.max_steps,
            f"Set steps to {limits.max_steps} or less, or a lower quality (a quality level's or the "
            "model's default counts when steps is unset).",
        )
    if spec.num_images > limits.max_images:
        raise _refuse(
            limits,
            f"at most {limits.max_images} image(s) per job",
            "num_images",
            spec.num_images,
            limits.max_images,
            f"Set num_images to {limits.max_images} or less.",
        )
    if spec.video is not None:
        check_video_budget(spec, limits)
    if spec.workflow is not None:
        admit_workflow(spec.workflow, limits, _workflow_node_types(settings))


def video_budget(limits: Tier | Limits) -> int:
    """The most frames × pixels × steps one video job of `limits` may ask for."""
    return limits.max_pixels * limits.max_steps * VIDEO_BUDGET_FRAMES


def check_video_budget(spec: RenderSpec, limits: Tier | Limits) -> None:
    assert spec.video is not None
    frames = spec.video.frames
    work = frames * spec.width * spec.height * spec.steps
    budget = video_budget(limits)
    if work <= budget:
        return
    most_frames = budget // (spec.width * spec.height * spec.steps)
    raise _refuse(
        limits,
        f"video jobs of at most {budget:,} frames × pixels × steps ({VIDEO_BUDGET_FRAMES} of its largest "
        "images at its most steps)",
        "video",
        f"{frames} × {spec.width}×{spec.height} × {spec.steps} = {work:,}",
        budget,
        f"Ask for fewer frames (at most {most_frames} at this size and steps), a smaller size, "
        "or fewer steps.",
    )


def check_model_tier(spec: RenderSpec, caller: ApiKey | None, registry: ModelRegistry) -> None:
    """Refuse a model whose models.yaml entry lists ``tiers:`` without the caller's (HIP-35's
    per-tier model access). Without keys there are no tiers; a server engine's own checkpoint that
    models.yaml does not list has no allow-list."""
    if caller is None or spec.model is None:
        return
    entry = registry.entries().get(spec.model)
    if entry is None or entry.tiers is None or caller.tier in entry.tiers:
        return
    allowed = models_for_tier(registry, caller.tier)
    raise ValidationFailed(
        f"tier '{caller.tier}' may not use model '{spec.model}' (it is for: {', '.join(entry.tiers)})",
        remediation=[
            f"Use one of: {', '.join(allowed)}" if allowed else "No model is open to this tier.",
            "Or use a key of a tier the model lists (models.yaml `tiers:`).",
        ],
        detail={"tier": caller.tier, "limit": "model", "allowed": allowed, "requested": spec.model},
    )


def models_for_tier(registry: ModelRegistry, tier: str | None) -> list[str]:
    """The models a caller of `tier` may use (None: keys off, every model)."""
    return [
        name
        for name, entry in registry.entries().items()
        if tier is None or entry.tiers is None or tier in entry.tiers
    ]


def _workflow_node_types(settings: Settings | None) -> frozenset[str]:
    return allowed_node_types(settings.workflow_nodes if settings is not None else None)


@dataclass(frozen=True)
class Reservation:
    """Images counted for one request; refunded when the job could not be enqueued."""

    counter_key: str
    images: int


class QuotaLedger:
    """The daily image counters in Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._reserve = redis.register_script(RESERVE_SCRIPT)
        self._refund = redis.register_script(REFUND_SCRIPT)

    def counter_key(self, key_id: str, now: datetime) -> str:
        return QUOTA_KEY.format(prefix=self.prefix, key_id=key_id, day=now.strftime("%Y%m%d"))

    def used(self, key_id: str, now: datetime | None = None) -> int:
        with redis_errors():
            value = self.redis.get(self.counter_key(key_id, now or datetime.now(UTC)))
        return int(value or 0)

    def reserve(self, caller: ApiKey | None, images: int, now: datetime | None = None) -> Reservation | None:
        """Count ``images`` against the caller's day, or raise `RateLimited` counting nothing.
        None when nothing is counted (keys off, or an unlimited tier)."""
        if caller is None:
            return None
        tier = tier_of(caller)
        if tier.images_per_day is None:
            return None
        now = now or datetime.now(UTC)
        key = self.counter_key(caller.key_id, now)
        retry_after = seconds_until_utc_midnight(now)
        expire_at = int(now.timestamp()) + retry_after + QUOTA_EXPIRY_MARGIN_S
        with redis_errors():
            fits, used = self._reserve(keys=[key], args=[images, tier.images_per_day, expire_at])
        if int(fits):
            return Reservation(key, images)
        used = int(used)
        left = max(0, tier.images_per_day - used)
        raise RateLimited(
            f"daily quota of tier '{tier.name}' reached: {used} of {tier.images_per_day} images used today "
            f"(UTC), {left} left, this request asks for {images}",
            remediation=[
                f"Try again after 00:00 UTC (in {retry_after} s, see Retry-After)"
                + (f", or ask for at most {left} image(s) now." if left else "."),
                "Or use a key of a higher tier (free < pro < enterprise).",
            ],
            detail={"tier": tier.name, "limit": tier.images_per_day, "used": used, "requested": images},
            headers={"Retry-After": str(retry_after)},
        )

    def refund(self, reservation: Reservation | None) -> None:
        if reservation is None:
            return
        with redis_errors():
            self._refund(keys=[reservation.counter_key], args=[reservation.images])
