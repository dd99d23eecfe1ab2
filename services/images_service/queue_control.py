"""Pausing, resuming and reordering queued jobs, on RQ's own queues (no second scheduler).

- A caller's pause is a flag (``{prefix}:paused:owners``, owner → since when). Nothing moves when it
  is set: each job keeps its place. A worker that pops a job of a paused owner sets it aside, in
  the order popped, in the owner's held list (``{prefix}:held:{owner}``) instead of running it. A
  resume clears the flag and pushes the held jobs back to the front of their queues, in that order:
  they were at the front when set aside, so each gets its place back. The job stays ``queued`` in
  RQ all along (its history, view, cancel and TTL are RQ's), so a restart of the service or the
  worker loses nothing.
- An admin's pause of the whole queue (``{prefix}:paused``) moves nothing either: workers take no
  new job while it is set (one popped as it was set goes back to the front of its queue).
- Moving a job to the front takes the places of the caller's own jobs only: the job takes the
  first of them and each of the caller's jobs before it moves one of its places back, so another
  caller's job keeps its place. An admin (or anyone without API keys: there is one owner) moves a
  job to the very front of its queue. Each move is one Lua script: a worker popping meanwhile
  never loses or doubles a job.

Jobs that RQ enqueues later (a pipeline's next step, a lost worker's retry) meet the same check as
they are popped. RQ's own ``rq suspend`` is Redis-wide, so it would pause every deployment sharing
the Redis: these flags live under IMAGES_QUEUE_PREFIX like every key of ours.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import IntEnum

from redis import Redis
from rq import Queue
from rq.job import Job

from services.contracts import ErrorCode

from .errors import KittyError
from .settings import Settings

log = logging.getLogger("kitty.images.queue_control")

PAUSED_ALL_KEY = "{prefix}:paused"
PAUSED_OWNERS_KEY = "{prefix}:paused:owners"
HELD_KEY = "{prefix}:held:{owner}"
OWNER_JOBS_KEY = "{prefix}:jobs:order:{owner}"
"""The owner's job history (queue.py's JOBS_OWNER_KEY): which ids in a queue are the caller's."""

NO_OWNER = "-"
"""The owner of jobs submitted without API keys (then there is one owner, everyone)."""

PAUSE_POLL_S = 1.0
"""How often a worker looks whether the whole queue was resumed (it heartbeats meanwhile)."""


class JobNotMovable(KittyError):
    """A job that is not waiting in a queue (running, finished, a pipeline step waiting for the one
    before it) cannot change its place."""

    code, status = ErrorCode.VALIDATION_ERROR, 409


class AdminOnly(KittyError):
    code, status = ErrorCode.UNAUTHORIZED, 403
    default_remediation = ("Pause or resume your own jobs: leave out scope=all.",)


class Diverted(IntEnum):
    """What `QueueControl.divert` did with a popped job."""

    RUN = 0
    """Nobody paused it: run it."""
    PUT_BACK = 1
    """The whole queue is paused: back to the front of its queue."""
    HELD = 2
    """Its owner paused: set aside in the owner's held list."""


DIVERT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('LREM', KEYS[5], 1, ARGV[1])
  return 1
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[4], ARGV[1])
  redis.call('LREM', KEYS[5], 1, ARGV[1])
  return 2
end
return 0
"""
"""KEYS: paused-all flag, paused owners, the queue it was popped from, the owner's held list, that
queue's intermediate list (RQ's single-queue dequeue moves a job there). ARGV: job id, owner."""

RESUME_SCRIPT = """
redis.call('HDEL', KEYS[1], ARGV[1])
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local resumed = 0
for i = #ids, 1, -1 do
  local fields = redis.call('HMGET', ARGV[2] .. ids[i], 'status', 'origin')
  if fields[1] == 'queued' and fields[2] then
    redis.call('LPUSH', ARGV[3] .. fields[2], ids[i])
    resumed = resumed + 1
  end
end
redis.call('DEL', KEYS[2])
return resumed
"""
"""KEYS: paused owners, the owner's held list. ARGV: owner, RQ's job key prefix, RQ's queue key
prefix. Last held first, each to the front of its queue: the first held ends up first. A job
canceled or expired while held is dropped."""

TO_FRONT_SCRIPT = """
local pos = redis.call('LPOS', KEYS[1], ARGV[1])
if not pos then return -1 end
if pos > 0 then
  redis.call('LREM', KEYS[1], 1, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
return 0
"""
"""KEYS: a list (a queue, a held list). ARGV: job id. Its new index (0), or -1: not in the list."""

OWN_FRONT_SCRIPT = """
local pos = redis.call('LPOS', KEYS[1], ARGV[1])
if not pos then return -1 end
if pos == 0 then return 0 end
local ids = redis.call('LRANGE', KEYS[1], 0, pos)
local slots = {}
for i = 1, pos do
  if redis.call('ZSCORE', KEYS[2], ids[i]) then slots[#slots + 1] = i end
end
slots[#slots + 1] = pos + 1
for j = #slots, 2, -1 do
  redis.call('LSET', KEYS[1], slots[j] - 1, ids[slots[j - 1]])
end
redis.call('LSET', KEYS[1], slots[1] - 1, ARGV[1])
return slots[1] - 1
"""
"""KEYS: the queue, the owner's job ids (a sorted set). ARGV: job id. The job takes the place of
the owner's first job ahead of it, each of the owner's jobs ahead of it the next of the owner's
places; every other place keeps its job. Its new index, or -1: not in the queue."""


def owner_token(key_id: str | None) -> str:
    return key_id or NO_OWNER


def owner_of_job(job: Job) -> str:
    return owner_token((job.meta or {}).get("key_id"))


@dataclass(frozen=True)
class PauseState:
    """The pause flags at one moment: read once for a whole job listing."""

    everyone: bool = False
    owners: frozenset[str] = field(default_factory=frozenset)

    def is_paused(self, owner: str) -> bool:
        return self.everyone or owner in self.owners


class QueueControl:
    """The flags, held lists and moves above; used by the API (pause, resume, move, views) and by
    the worker (`divert` each popped job, `wait_while_paused`)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.prefix = settings.queue_prefix
        self.all_key = PAUSED_ALL_KEY.format(prefix=self.prefix)
        self.owners_key = PAUSED_OWNERS_KEY.format(prefix=self.prefix)
        self._divert = redis.register_script(DIVERT_SCRIPT)
        self._resume = redis.register_script(RESUME_SCRIPT)
        self._to_front = redis.register_script(TO_FRONT_SCRIPT)
        self._own_front = redis.register_script(OWN_FRONT_SCRIPT)

    def held_key(self, owner: str) -> str:
        return HELD_KEY.format(prefix=self.prefix, owner=owner)

    # --- the flags ---------------------------------------------------------------------------------
    def state(self) -> PauseState:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.all_key)
            pipe.hkeys(self.owners_key)
            everyone, owners = pipe.execute()
        return PauseState(bool(everyone), frozenset(_text(owner) for owner in owners))

    def pause(self, owner: str) -> None:
        self.redis.hset(self.owners_key, owner, time.time())
        log.info("queue paused", extra={"owner": owner})

    def resume(self, owner: str) -> int:
        """Clear `owner`'s pause; its held jobs go back to the front of their queues. How many."""
        resumed = int(
            self._resume(
                keys=[self.owners_key, self.held_key(owner)],
                args=[owner, Job.redis_job_namespace_prefix, Queue.redis_queue_namespace_prefix],
            )
        )
        log.info("queue resumed", extra={"owner": owner, "resumed": resumed})
        return resumed

    def pause_everyone(self) -> None:
        self.redis.set(self.all_key, time.time())
        log.info("whole queue paused")

    def resume_everyone(self) -> None:
        self.redis.delete(self.all_key)
        log.info("whole queue resumed")

    def held(self, owner: str) -> int:
        return int(self.redis.llen(self.held_key(owner)))

    def is_held(self, job: Job) -> bool:
        return self.redis.lpos(self.held_key(owner_of_job(job)), job.id) is not None

    def forget(self, job: Job) -> None:
        """A held job canceled: out of its owner's held list."""
        self.redis.lrem(self.held_key(owner_of_job(job)), 0, job.id)

    # --- the worker's side -------------------------------------------------------------------------
    def divert(self, job: Job, queue: Queue) -> Diverted:
        """Run `job` (just popped from `queue`), or put it where a pause says it waits."""
        owner = owner_of_job(job)
        keys = [self.all_key, self.owners_key, queue.key, self.held_key(owner), queue.intermediate_queue_key]
        diverted = Diverted(int(self._divert(keys=keys, args=[job.id, owner])))
        if diverted is not Diverted.RUN:
            log.info("job waits: its queue is paused", extra={"job_id": job.id, "how": diverted.name})
        return diverted

    def is_everyone_paused(self) -> bool:
        return bool(self.redis.exists(self.all_key))

    # --- moves -------------------------------------------------------------------------------------
    def to_front(self, job: Job, owner: str | None) -> int:
        """Move `job` to the front of its owner's jobs (`owner`: the caller's key id) or, with
        `owner` None (an admin, no keys), of its queue. Its new index in its queue or held list."""
        held = self.held_key(owner_of_job(job))
        if owner is None:
            index = int(self._to_front(keys=[job_queue_key(job)], args=[job.id]))
        else:
            owned = OWNER_JOBS_KEY.format(prefix=self.prefix, owner=owner)
            index = int(self._own_front(keys=[job_queue_key(job), owned], args=[job.id]))
        if index < 0:  # set aside by a pause: every job in a held list is its owner's
            index = int(self._to_front(keys=[held], args=[job.id]))
        if index < 0:
            raise JobNotMovable(
                f"job {job.id} is not waiting in a queue, so it has no place to change",
                remediation=["Only a queued job can be moved; a pipeline's step moves once it is queued."],
                detail={"job_id": job.id},
            )
        log.info("job moved to the front", extra={"job_id": job.id, "index": index, "own": owner is not None})
        return index


def job_queue_key(job: Job) -> str:
    return f"{Queue.redis_queue_namespace_prefix}{job.origin}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
