"""Model-aware dispatch against a real Redis: where a job is enqueued, the order a worker takes its
queues in, and taking over a job its warm workers left waiting."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from services.images_service.dispatch import (
    Dispatch,
    advertise,
    is_warm,
    model_queue_name,
    model_queues,
    queue_for,
)
from services.images_service.settings import Settings
from services.images_service.worker.rq_worker import KittyWorker
from tests.support.harness import make_settings


def settings_for(tmp_path: Path, redis_url: str, wait: float = 2.0) -> Settings:
    return make_settings(tmp_path, redis_url, dispatch_wait_s=wait)


def enqueue(redis: Redis, name: str, job_id: str, *, age_s: float = 0.0) -> None:
    queue = Queue(name, connection=redis, serializer=JSONSerializer)
    job = queue.enqueue("builtins.print", job_id=job_id)
    if age_s:
        job.enqueued_at = datetime.now(UTC) - timedelta(seconds=age_s)
        job.save()


def test_a_job_goes_to_its_models_queue_only_while_a_worker_holds_it(tmp_path: Path, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    settings = settings_for(tmp_path, redis_url)
    general = settings.queue_name("diffusers")
    assert queue_for(redis, settings, "diffusers", "sd15", priority=False) == general
    advertise(redis, settings, "diffusers", ["sd15"])
    assert is_warm(redis, settings, "diffusers", "sd15") and not is_warm(redis, settings, "diffusers", "sdxl")
    assert queue_for(redis, settings, "diffusers", "sd15", priority=False) == model_queue_name(
        settings, "diffusers", "sd15"
    )
    assert queue_for(redis, settings, "diffusers", "sdxl", priority=False) == general
    # Priority jobs and jobs of no model skip dispatch; so does every job with dispatch off.
    assert queue_for(redis, settings, "diffusers", "sd15", priority=True) == settings.queue_name(
        "diffusers", priority=True
    )
    assert queue_for(redis, settings, "diffusers", None, priority=False) == general
    off = settings_for(tmp_path, redis_url, wait=0)
    assert queue_for(redis, off, "diffusers", "sd15", priority=False) == general
    # A word not said again lapses.
    key = f"{settings.queue_prefix}:warm:diffusers"
    redis.hset(key, "sd15", time.time() - 1)
    assert queue_for(redis, settings, "diffusers", "sd15", priority=False) == general


def test_a_worker_takes_its_models_queues_before_the_engines_and_steals_only_old_jobs(
    tmp_path: Path, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    settings = settings_for(tmp_path, redis_url)
    held = ["sdxl", "sd15"]  # least recently used first
    dispatch = Dispatch(redis, settings, "diffusers", lambda: held)
    names = [queue.name for queue in dispatch.queues()]
    assert names == [
        settings.queue_name("diffusers", priority=True),
        model_queue_name(settings, "diffusers", "sd15"),
        model_queue_name(settings, "diffusers", "sdxl"),
        settings.queue_name("diffusers"),
    ]
    flux = model_queue_name(settings, "diffusers", "flux")
    advertise(redis, settings, "diffusers", ["flux", "sd3"])  # another worker holds these
    enqueue(redis, flux, "young")
    assert [q.name for q in model_queues(redis, settings, "diffusers")] == [flux]
    assert dispatch.steal(dispatch.queues(), min_age_s=2.0) is None  # its warm worker may yet come
    enqueue(redis, model_queue_name(settings, "diffusers", "sd3"), "old", age_s=5)
    stolen = dispatch.steal(dispatch.queues(), min_age_s=2.0)
    assert stolen is not None and stolen[0].id == "old"
    assert dispatch.steal(dispatch.queues(), min_age_s=2.0) is None  # taken once, by one worker


def test_a_burst_worker_drains_every_model_queue_and_records_where_each_job_ran(
    tmp_path: Path, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    settings = settings_for(tmp_path, redis_url)
    enqueue(redis, model_queue_name(settings, "diffusers", "sdxl"), "elsewhere")
    enqueue(redis, settings.queue_name("diffusers"), "general")
    worker = KittyWorker(
        [Queue(settings.queue_name("diffusers"), connection=redis, serializer=JSONSerializer)],
        connection=redis,
        serializer=JSONSerializer,
    )
    worker.dispatch = Dispatch(redis, settings, "diffusers", lambda: ["sd15"])
    taken = []
    while (result := worker.dequeue_job_and_maintain_ttl(None)) is not None:
        job, _queue = result
        job.meta["model"] = "sdxl" if job.id == "elsewhere" else "sd15"
        worker.note_dispatch(job)
        taken.append((job.id, job.meta["worker"] == worker.name, job.meta["warm"]))
    assert taken == [("general", True, True), ("elsewhere", True, False)]


def test_a_job_of_a_model_its_worker_dropped_is_taken_at_once(tmp_path: Path, redis_url: str) -> None:
    """One worker switching models: the job routed to the model it held must not wait the bound."""
    redis = Redis.from_url(redis_url)
    settings = settings_for(tmp_path, redis_url)
    held = ["sd15"]
    dispatch = Dispatch(redis, settings, "diffusers", lambda: held)
    dispatch.advertise()
    sd15 = model_queue_name(settings, "diffusers", "sd15")
    assert queue_for(redis, settings, "diffusers", "sd15", priority=False) == sd15
    enqueue(redis, sd15, "routed-while-warm")
    held[:] = ["sdxl"]  # it loaded sdxl for another job, evicting sd15
    assert dispatch.steal(dispatch.queues(), min_age_s=2.0) is None  # not said yet: it may come back
    dispatch.advertise()
    assert not is_warm(redis, settings, "diffusers", "sd15") and is_warm(redis, settings, "diffusers", "sdxl")
    stolen = dispatch.steal(dispatch.queues(), min_age_s=2.0)
    assert stolen is not None and stolen[0].id == "routed-while-warm"
    assert queue_for(redis, settings, "diffusers", "sd15", priority=False) == settings.queue_name("diffusers")
