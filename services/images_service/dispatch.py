"""Model-aware dispatch on RQ's own queues: a job goes to a worker that already holds its model.

No second scheduler. Each engine has, besides its queue and its ``:priority`` twin, one queue per
model (``{prefix}:{engine}:model:{model}``), and the workers say which models they hold:

- A worker lists its queues in this order before each dequeue (RQ takes from the first that has a
  job): the priority queue, the queues of the models it holds (most recently used first), the
  engine's queue. So a warm worker takes its models' jobs before anything that would make it load.
- It writes the models it holds to ``{prefix}:warm:{engine}`` (model → until when, refreshed with
  its card and after every job), so a model evicted or a worker killed drops out within
  `WARM_TTL_S`.
- The API enqueues a job into its model's queue when a live worker holds that model, else into the
  engine's queue, where any worker takes it at once (and then holds the model).
- A job in a model's queue is never stranded: a worker with nothing to do looks, every
  `IMAGES_DISPATCH_WAIT_S` seconds, at the other models' queues and takes the oldest job there that
  has waited at least that long (its warm workers are busy, or gone), or at once when no worker
  holds that model any more (a worker says which models it dropped) — an `LREM` of that job's id,
  so two workers never take the same one.

Priority jobs skip all this: they go to the priority queue, which every worker takes from first
(a pro key's wait is worth more than a model load). `IMAGES_DISPATCH_WAIT_S=0` turns dispatch off:
every job goes to the engine's queue, first come first served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from .settings import Settings

log = logging.getLogger("kitty.images.dispatch")

WARM_KEY = "{prefix}:warm:{engine}"
WARM_TTL_S = 30.0
"""How long a worker's word that it holds a model stands without being said again (its card says
it every 10 s, and every job it finishes)."""


def model_queue_name(settings: Settings, engine: str, model: str) -> str:
    return f"{settings.queue_prefix}:{engine}:model:{model}"


def advertise(
    redis: Redis, settings: Settings, engine: str, models: Sequence[str], dropped: Sequence[str] = ()
) -> None:
    """Say that this worker holds `models` now (until `WARM_TTL_S` from now), and no longer holds
    `dropped`: their jobs then go to the engine's queue, and those already in their queues may be
    taken by any worker at once (another worker still holding one says so again within seconds)."""
    key = WARM_KEY.format(prefix=settings.queue_prefix, engine=engine)
    with redis.pipeline(transaction=False) as pipe:
        if dropped:
            pipe.hdel(key, *dropped)
        if models:
            pipe.hset(key, mapping=dict.fromkeys(models, time.time() + WARM_TTL_S))
        pipe.execute()


def is_warm(redis: Redis, settings: Settings, engine: str, model: str) -> bool:
    """Whether a live worker of `engine` holds `model` (said within `WARM_TTL_S`)."""
    until = redis.hget(WARM_KEY.format(prefix=settings.queue_prefix, engine=engine), model)
    return until is not None and float(until) > time.time()


def queue_for(redis: Redis, settings: Settings, engine: str, model: str | None, *, priority: bool) -> str:
    """The queue a job of `model` goes into (see the module's docstring)."""
    if priority or model is None or settings.dispatch_wait_s <= 0:
        return settings.queue_name(engine, priority=priority)
    if is_warm(redis, settings, engine, model):
        return model_queue_name(settings, engine, model)
    return settings.queue_name(engine)


def model_queues(redis: Redis, settings: Settings, engine: str) -> list[Queue]:
    """Every model queue of `engine` RQ knows (it registers a queue when a job is first put in it)."""
    prefix = model_queue_name(settings, engine, "")
    return [
        Queue(name, connection=redis, serializer=JSONSerializer)
        for name in sorted(_queue_names(redis))
        if name.startswith(prefix)
    ]


def _queue_names(redis: Redis) -> set[str]:
    keys = redis.smembers(Queue.redis_queues_keys)
    names = (key.decode() if isinstance(key, bytes) else str(key) for key in keys)
    return {name.removeprefix(Queue.redis_queue_namespace_prefix) for name in names}


class Dispatch:
    """A worker's side: its queues in the order to take from them, and taking over a model queue's
    job that waited too long."""

    def __init__(
        self, redis: Redis, settings: Settings, engine: str, resident: Callable[[], list[str]]
    ) -> None:
        self.redis, self.settings, self.engine = redis, settings, engine
        self.resident = resident
        """The models the worker's engine holds, least recently used first."""
        self.wait_s = settings.dispatch_wait_s
        self._advertised: list[str] = []

    def queues(self) -> list[Queue]:
        """Priority, then the held models' queues (most recent first), then the engine's queue."""
        names = [
            self.settings.queue_name(self.engine, priority=True),
            *(model_queue_name(self.settings, self.engine, m) for m in reversed(self.resident())),
            self.settings.queue_name(self.engine),
        ]
        return [Queue(name, connection=self.redis, serializer=JSONSerializer) for name in names]

    def advertise(self) -> None:
        held = self.resident()
        dropped = [model for model in self._advertised if model not in held]
        advertise(self.redis, self.settings, self.engine, held, dropped)
        self._advertised = list(held)

    def steal(self, own: Sequence[Queue], *, min_age_s: float) -> tuple[Job, Queue] | None:
        """The oldest job at the head of another model's queue that has waited `min_age_s` or
        longer, taken from that queue (None if there is none, or another worker took it first)."""
        mine = {queue.name for queue in own}
        candidates: list[tuple[datetime, Queue, str]] = []
        for queue in model_queues(self.redis, self.settings, self.engine):
            if queue.name in mine:
                continue
            head = self.redis.lindex(queue.key, 0)
            if head is None:
                continue
            job_id = head.decode() if isinstance(head, bytes) else str(head)
            enqueued = self.redis.hget(f"{Job.redis_job_namespace_prefix}{job_id}", "enqueued_at")
            at = _parse(enqueued)
            if at is None:
                continue
            young = (datetime.now(UTC) - at).total_seconds() < min_age_s
            model = queue.name.removeprefix(model_queue_name(self.settings, self.engine, ""))
            if young and is_warm(self.redis, self.settings, self.engine, model):
                continue  # a worker holding its model may yet take it
            candidates.append((at, queue, job_id))
        for _, queue, job_id in sorted(candidates, key=lambda c: c[0]):
            if self.redis.lrem(queue.key, 1, job_id) != 1:
                continue  # another worker took it
            try:
                job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            except Exception:  # deleted meanwhile (canceled and cleaned up): nothing to run
                continue
            log.info(
                "took a job waiting for a busy or gone warm worker",
                extra={"job_id": job_id, "queue": queue.name},
            )
            return job, queue
        return None


def _parse(value: bytes | str | None) -> datetime | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
