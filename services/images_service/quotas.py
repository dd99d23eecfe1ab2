"""Per-key quotas (only when API keys are configured): HIP-35's tiers as ceilings on one request
(size, steps, images) and a daily count of images per key id, kept in Redis per UTC day.

Ceilings answer 400 (retrying cannot help); the daily count answers 429 with ``Retry-After`` set to
the seconds left until 00:00 UTC, when a new day's counter starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis

from services.common.api_keys import TIER_NAMES, ApiKey
from services.contracts import RenderSpec
from services.contracts.schema import MAX_IMAGES, MAX_SIDE

from .errors import RateLimited, ValidationFailed
from .queue import redis_errors
from .settings import Settings
from .workflow_admission import OPEN_LIMITS, admit_workflow, allowed_node_types


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
    # HIP-35 allows enterprise 4096² and batches of 8; the wire stops at 2048 and 4, so those bind.
    "enterprise": Tier(
        "enterprise",
        images_per_day=None,
        max_side=MAX_SIDE,
        max_pixels=MAX_SIDE * MAX_SIDE,
        max_steps=100,
        max_images=MAX_IMAGES,
        priority=True,
    ),
}
"""HIP-35's tiers. HIP-35 gives pro a priority queue; enterprise, above pro, has it too."""

assert tuple(TIERS) == TIER_NAMES, "the tiers keys may name and the tiers with limits must agree"

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


def has_priority(caller: ApiKey | None) -> bool:
    """Whether the caller's jobs go to the priority queue; without API keys there are no tiers."""
    return caller is not None and tier_of(caller).priority


def seconds_until_utc_midnight(now: datetime) -> int:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


def _refuse(
    tier: Tier, what: str, limit: str, requested: object, allowed: object, fix: str
) -> ValidationFailed:
    return ValidationFailed(
        f"tier '{tier.name}' allows {what}; this request asks for {requested}",
        remediation=[fix, "Or use a key of a higher tier (free < pro < enterprise)."],
        detail={"tier": tier.name, "limit": limit, "allowed": allowed, "requested": requested},
    )


def check_ceilings(spec: RenderSpec, caller: ApiKey | None, settings: Settings | None = None) -> None:
    """Refuse a request beyond its caller's tier. Checked on the resolved spec, so a model's default
    size or steps count as if the caller had asked for them.

    A raw workflow is admitted here too (`admit_workflow`: node types from `settings`'
    IMAGES_WORKFLOW_NODES, or the default list without `settings`; values, links, file names and
    cost). Without API keys there are no tiers, but a raw graph is still held to the wire's largest
    request (`OPEN_LIMITS`): unlike the template's, its cost has no other bound.
    """
    if caller is None:
        if spec.workflow is not None:
            admit_workflow(spec.workflow, OPEN_LIMITS, _workflow_node_types(settings))
        return
    tier = tier_of(caller)
    side = max(spec.width, spec.height)
    if side > tier.max_side or spec.width * spec.height > tier.max_pixels:
        raise _refuse(
            tier,
            f"images of at most {tier.max_side}×{tier.max_side} pixels",
            "size",
            f"{spec.width}×{spec.height}",
            f"{tier.max_side}×{tier.max_side}",
            f"Set width and height to {tier.max_side} or less (a preset's or the model's default size "
            "counts when unset).",
        )
    if spec.steps > tier.max_steps:
        raise _refuse(
            tier,
            f"at most {tier.max_steps} steps",
            "steps",
            spec.steps,
            tier.max_steps,
            f"Set steps to {tier.max_steps} or less, or a lower quality (a quality level's or the "
            "model's default counts when steps is unset).",
        )
    if spec.num_images > tier.max_images:
        raise _refuse(
            tier,
            f"at most {tier.max_images} image(s) per job",
            "num_images",
            spec.num_images,
            tier.max_images,
            f"Set num_images to {tier.max_images} or less.",
        )
    if spec.workflow is not None:
        admit_workflow(spec.workflow, tier, _workflow_node_types(settings))


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
