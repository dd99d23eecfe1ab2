"""``Idempotency-Key`` on ``POST /api/images/generate`` and ``/rerun``: the same key (per caller) and
the same request give the same job for 24 hours, however often and however concurrently they are sent.

Redis holds ``{scope}:{sha256(key)} → {fp, state, job_id}``. A submit first *claims* the key (SET NX,
a short-lived ``pending`` record), enqueues, then *completes* it with the job id (24 h). A second
submit meanwhile finds the pending record and waits briefly for the job id; a different request under
the same key is refused with 409.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from pydantic import BaseModel
from redis import Redis

from services.common.api_keys import ApiKey

from .errors import IdempotencyConflict, ValidationFailed
from .queue import redis_errors

log = logging.getLogger("kitty.images.idempotency")

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IDEMPOTENCY_TTL_S = 24 * 3600
"""How long a key keeps answering with its job, counted from when the job was enqueued."""

PENDING_TTL_S = 60
"""How long a claim without a job id lives: a submit that died between claim and enqueue frees the
key after this, instead of blocking it for a day."""

WAIT_FOR_FIRST_S = 5.0
"""How long a concurrent duplicate waits for the first request's job id before answering 409."""

WAIT_POLL_S = 0.05

KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,200}$")
"""Keys a client may choose: 1-200 printable ASCII characters (a UUID is the usual choice)."""

RECORD_KEY = "{prefix}:idempotency:{scope}:{key_hash}"

OPEN_SCOPE = "open"
"""The scope of every caller when API keys are off: one shared namespace."""

COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
"""Replace our own pending record only: if it expired and another request claimed the key, theirs stays."""

COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def check_idempotency_key(value: str) -> str:
    if not KEY_PATTERN.match(value):
        raise ValidationFailed(
            f"{IDEMPOTENCY_HEADER} must be 1-200 printable ASCII characters",
            remediation=[f"Send a fresh UUID per new request as {IDEMPOTENCY_HEADER}, or omit the header."],
            detail=[{"field": f"header.{IDEMPOTENCY_HEADER}", "message": "1-200 printable ASCII characters"}],
        )
    return value


def fingerprint(body: BaseModel) -> str:
    """The request as parsed, so field order, spacing and explicitly sent defaults do not matter.
    A generate and a re-run body never match, so one key cannot name one of each."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def scope_of(caller: ApiKey | None) -> str:
    return caller.key_id if caller else OPEN_SCOPE


@dataclass(frozen=True)
class Claim:
    """This request owns the key: it enqueues, then completes or releases the claim."""

    redis_key: str
    pending: str
    """The exact record written, so only this claim's owner can complete or release it."""
    fp: str


@dataclass(frozen=True)
class Replay:
    """The key already names a job for this very request."""

    job_id: str


class IdempotencyStore:
    def __init__(self, redis: Redis, prefix: str, *, wait_s: float = WAIT_FOR_FIRST_S) -> None:
        self.redis = redis
        self.prefix = prefix
        self.wait_s = wait_s
        self._compare_and_set = redis.register_script(COMPARE_AND_SET)
        self._compare_and_delete = redis.register_script(COMPARE_AND_DELETE)

    def record_key(self, scope: str, key: str) -> str:
        # Hashed: a client's key may hold any printable character, a Redis key name should not.
        key_hash = hashlib.sha256(key.encode()).hexdigest()[:32]
        return RECORD_KEY.format(prefix=self.prefix, scope=scope, key_hash=key_hash)

    def claim(self, scope: str, key: str, fp: str) -> Claim | Replay:
        """Own the key, or learn the job it already names (waiting up to ``wait_s`` for a concurrent
        first request to get one). Raises `IdempotencyConflict` for a different request."""
        redis_key = self.record_key(scope, key)
        deadline = time.monotonic() + self.wait_s
        while True:
            pending = json.dumps({"state": "pending", "fp": fp, "token": uuid.uuid4().hex})
            with redis_errors():
                if self.redis.set(redis_key, pending, nx=True, ex=PENDING_TTL_S):
                    return Claim(redis_key, pending, fp)
                raw = self.redis.get(redis_key)
            if raw is not None:
                record = json.loads(raw)
                if record.get("fp") != fp:
                    raise IdempotencyConflict(
                        f"this {IDEMPOTENCY_HEADER} was already used for a different request",
                        remediation=[
                            f"Use a new {IDEMPOTENCY_HEADER} for a new request; "
                            "resend a key only with the very same request (for 24 hours).",
                        ],
                    )
                if record.get("state") == "done":
                    return Replay(str(record["job_id"]))
            # Pending (or released just now): the first request is still being admitted.
            if time.monotonic() >= deadline:
                raise IdempotencyConflict(
                    f"a request with this {IDEMPOTENCY_HEADER} is still in progress",
                    remediation=["Retry in a moment: the answer will then be the first request's job."],
                    headers={"Retry-After": "1"},
                )
            time.sleep(WAIT_POLL_S)

    def complete(self, claim: Claim, job_id: str) -> None:
        done = json.dumps({"state": "done", "fp": claim.fp, "job_id": job_id})
        with redis_errors():
            kept = self._compare_and_set(
                keys=[claim.redis_key], args=[claim.pending, done, IDEMPOTENCY_TTL_S]
            )
        if not int(kept):
            log.warning("idempotency claim expired before its job was recorded", extra={"job_id": job_id})

    def release(self, claim: Claim) -> None:
        """Free the key after a failed submit, so resending the same request can succeed."""
        with redis_errors():
            self._compare_and_delete(keys=[claim.redis_key], args=[claim.pending])
