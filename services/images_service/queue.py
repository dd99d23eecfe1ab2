"""The job queue: RQ on Redis with a JSON serializer. Enqueue a resolved spec, read a job back as
the wire's `JobView`, cancel. Each engine has its own RQ queue, so each worker takes only what it can
run, and a priority twin (pro and enterprise keys) that its workers always empty first."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, Retry
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from services.common.api_keys import ApiKey, caller_var, can_see
from services.common.logs import request_id_var
from services.common.redisconn import connect
from services.contracts import ErrorCode, ErrorInfo, JobResult, JobStatus, JobView, Progress, RenderSpec
from services.contracts.schema import JobWaiting, QueueView, WaitReason

from .dispatch import model_queues, queue_for
from .engines import ENGINES
from .engines.descriptors import worker_command
from .errors import EngineError, EngineTimeout, JobNotFound, QueueUnavailable
from .pipelines import PipelineRecord, cancel_pipeline, load_pipeline, pipeline_request, pipeline_view
from .presets import failure_remediation, preset_book
from .queue_control import JobNotMovable, PauseState, QueueControl, owner_of_job, owner_token
from .redaction import redact
from .settings import Settings
from .worker.rq_worker import live_workers

log = logging.getLogger("kitty.images.queue")

TASK = "services.images_service.worker.tasks.render_job"
"""Import path of the job function; with the JSON serializer RQ stores it as a string."""

STEP_TASK = "services.images_service.worker.tasks.render_step"
"""A pipeline step's job function: `TASK` on the image of the step before it."""

REDIS_CONNECT_TIMEOUT_S = 2.0
"""Fail fast when Redis is down, so the API can answer 503 rather than hang."""

REDIS_SOCKET_TIMEOUT_S = 5.0

CANCEL_KEY = "{prefix}:cancel:{job_id}"
"""Set when a running job is canceled; the worker checks it at every progress step. Under
IMAGES_QUEUE_PREFIX like every key of ours, so deployments sharing a Redis never cancel each other's
jobs (RQ's job records are shared: another deployment's API can still fetch a job by its id)."""

FAILURE_TTL_S = 7 * 24 * 3600

LIVE_WORKERS_CACHE_S = 2.0
"""How long a count of an engine's live workers is reused: job views are polled, submits are many."""

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

JOBS_ORDER_KEY = "{prefix}:jobs:order"
JOBS_OWNER_KEY = "{prefix}:jobs:order:{owner}"
"""Every job id by enqueue time (score: epoch seconds), and each owner's: job history pages these;
ids whose RQ record has expired are dropped as they are met."""

JOBS_PAGE_SCAN = 200
"""Job ids read per round trip while filling a history page (a status filter may skip many)."""
"""Job ids we make are 32 hex digits; RQ accepts letters, digits, `_` and `-`."""

_STATUS = {
    RQStatus.QUEUED: JobStatus.QUEUED,
    RQStatus.DEFERRED: JobStatus.QUEUED,
    RQStatus.SCHEDULED: JobStatus.QUEUED,
    RQStatus.STARTED: JobStatus.STARTED,
    RQStatus.FINISHED: JobStatus.DONE,
    RQStatus.FAILED: JobStatus.ERROR,
    RQStatus.STOPPED: JobStatus.CANCELED,
    RQStatus.CANCELED: JobStatus.CANCELED,
}


def caller_meta() -> dict[str, str]:
    """Who submitted the job, by key id and tier (never the key itself); empty when keys are off."""
    caller = caller_var.get()
    return {"key_id": caller.key_id, "tier": caller.tier} if caller else {}


def cancel_key(prefix: str, job_id: str) -> str:
    return CANCEL_KEY.format(prefix=prefix, job_id=job_id)


def connect_redis(url: str) -> Redis:
    """The client of the API, its janitor and the workers: any REDIS_URL `connect` takes, Sentinel's
    `redis+sentinel://` included. No retry beyond redis-py's one immediate reconnect: while Redis is
    away (a Sentinel failover too) a request fails in milliseconds and the API answers 503."""
    return connect(
        url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
        retry_on_timeout=True,
    )


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn any Redis failure into `QueueUnavailable` (503), never a 500."""
    try:
        yield
    except RedisError as exc:
        raise QueueUnavailable(f"the job queue (Redis) is not reachable: {exc}") from exc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def error_from_failure(job: Job) -> ErrorInfo:
    """What the user sees for a failed job: the error the task recorded, else one derived from RQ."""
    recorded = job.meta.get("error")
    if recorded:
        return ErrorInfo.model_validate(recorded)
    exc_string = ""
    result = job.latest_result()
    if result is not None and result.exc_string:
        exc_string = result.exc_string
    if "JobTimeoutException" in exc_string:
        return EngineTimeout("the job ran longer than its timeout").to_info()
    if "abandoned" in exc_string.lower() or "terminated" in exc_string.lower():
        return ErrorInfo(
            code=ErrorCode.WORKER_LOST,
            message="the worker running this job stopped before it finished",
            remediation=["Submit the request again; check the worker's log and memory."],
        )
    return EngineError("the job failed without a recorded reason").to_info()


def waiting(
    reason: WaitReason,
    message: str,
    engine: str | None,
    remediation: list[str] | None = None,
    *,
    ahead: int | None = None,
) -> JobWaiting:
    return JobWaiting(
        reason=reason, message=message, engine=engine, ahead=ahead, remediation=remediation or []
    )


def engine_queues(redis: Redis, settings: Settings, engine: str) -> list[Queue]:
    """The queues of `engine` in the order a worker takes from them: priority first (RQ's workers
    try their queues in order, and block on all of them at once when every one is empty)."""
    return [
        Queue(settings.queue_name(engine, priority=priority), connection=redis, serializer=JSONSerializer)
        for priority in (True, False)
    ]


class JobQueue:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._live: dict[str, tuple[float, int]] = {}
        self._live_lock = threading.Lock()
        self.control = QueueControl(redis, settings)

    def queue(self, engine: str, *, priority: bool = False) -> Queue:
        name = self.settings.queue_name(engine, priority=priority)
        return Queue(name, connection=self.redis, serializer=JSONSerializer)

    def queues(self, engine: str) -> list[Queue]:
        return engine_queues(self.redis, self.settings, engine)

    def ping(self) -> None:
        with redis_errors():
            self.redis.ping()

    def enqueue(
        self,
        spec: RenderSpec,
        *,
        priority: bool = False,
        job_id: str | None = None,
        after: list[str] | None = None,
        retries: int = 0,
        meta: dict[str, Any] | None = None,
        index: bool = True,
    ) -> str:
        """Enqueue `spec` as a job (its history entry too, unless `index` is off). With `after` (a
        pipeline step): the step task, which RQ defers until every job in `after` finishes;
        `retries` more tries after an engine failure, on top of the lost-worker ones."""
        job_id = job_id or uuid.uuid4().hex
        tries = self.settings.lost_job_retries + retries
        options: dict[str, Any] = {
            "job_id": job_id,
            "job_timeout": self.settings.job_timeout_s,
            # Retries are for lost workers (and a step's own `retries`): the task zeroes them when
            # an engine fails for good.
            "retry": Retry(max=tries, enqueue_at_front=True) if tries else None,
            "result_ttl": self.settings.result_ttl_s,
            "failure_ttl": FAILURE_TTL_S,
            "meta": {
                "engine": spec.engine,
                "model": spec.model,
                "progress": {"step": 0, "total": spec.steps},
                "request_id": request_id_var.get(),
                **caller_meta(),
                **(meta or {}),
            },
        }
        with redis_errors():
            name = queue_for(self.redis, self.settings, spec.engine, spec.model, priority=priority)
            queue = Queue(name, connection=self.redis, serializer=JSONSerializer)
            if after is None:
                with self.redis.pipeline() as pipe:
                    # One round trip: RQ registers the queue, saves the job and pushes it all on `pipe`.
                    queue.enqueue(TASK, spec.model_dump(), pipeline=pipe, **options)
                    if index:
                        self._index(pipe, job_id, caller_meta().get("key_id"))
                    pipe.execute()
            else:
                # A step whose predecessor failed for good stays deferred: it expires with its
                # pipeline. RQ watches the job depended on while it enqueues: no shared round trip.
                options["ttl"] = self.record_ttl_s
                queue.enqueue(STEP_TASK, spec.model_dump(), after, depends_on=list(after), **options)
                if index:
                    self.index(job_id)
        log.info(
            "job enqueued",
            extra={"job_id": job_id, "engine": spec.engine, "model": spec.model, "priority": priority},
        )
        return job_id

    @property
    def record_ttl_s(self) -> int:
        """How long RQ keeps the longest-kept job record (a result, or a failure)."""
        return max(self.settings.result_ttl_s, FAILURE_TTL_S)

    def index(self, job_id: str) -> None:
        """Add `job_id` (a job's or a pipeline's) to the caller's job history."""
        with redis_errors(), self.redis.pipeline() as pipe:
            self._index(pipe, job_id, caller_meta().get("key_id"))
            pipe.execute()

    def fetch(self, job_id: str) -> Job:
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFound(f"no job with id '{job_id[:80]}'")  # RQ refuses such ids outright
        with redis_errors():
            try:
                return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            except NoSuchJobError:
                raise JobNotFound(f"no job with id '{job_id}'") from None

    def _history_keys(self, owner: str | None) -> list[str]:
        prefix = self.settings.queue_prefix
        keys = [JOBS_ORDER_KEY.format(prefix=prefix)]
        return keys + ([JOBS_OWNER_KEY.format(prefix=prefix, owner=owner)] if owner else [])

    def _index(self, pipe: Any, job_id: str, owner: str | None) -> None:
        """Add the job to the history (in the enqueue's round trip) and drop ids older than any
        job record RQ still keeps."""
        now = time.time()
        oldest = now - max(self.settings.result_ttl_s, FAILURE_TTL_S) - 86400
        for key in self._history_keys(owner):
            pipe.zadd(key, {job_id: now})
            pipe.zremrangebyscore(key, 0, oldest)

    def history(
        self,
        caller: ApiKey | None,
        *,
        status: JobStatus | None = None,
        limit: int = 20,
        cursor: str | None = None,
        everyone: bool = False,
    ) -> tuple[list[JobView], str | None]:
        """The caller's jobs newest first (an admin's with `everyone`: all), `status` only when
        given, older than `cursor`; and the cursor of the next page."""
        owner = None if caller is None or (caller.is_admin and everyone) else caller.key_id
        key = self._history_keys(owner)[-1]
        upper = f"({cursor}" if cursor else "+inf"
        views: list[JobView] = []
        next_cursor: str | None = None
        with redis_errors():
            paused = self.control.state()  # once per listing, not per job
            while len(views) < limit:
                batch: list[tuple[bytes, float]] = self.redis.zrevrangebyscore(  # type: ignore[assignment]
                    key, upper, "-inf", start=0, num=JOBS_PAGE_SCAN, withscores=True
                )
                if not batch:
                    break
                for raw, score in batch:
                    job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                    upper = f"({score!r}"
                    try:
                        view = self.view(job_id, paused=paused)
                    except JobNotFound:  # expired from RQ: no longer history
                        self.redis.zrem(key, job_id)
                        continue
                    if status is None or view.status is status:
                        view.request = self._request_of(job_id)
                        views.append(view)
                        if len(views) == limit:
                            next_cursor = repr(score)
                            break
        return views, next_cursor

    def _request_of(self, job_id: str) -> dict[str, Any] | None:
        record = self.pipeline_record(job_id)
        return pipeline_request(self, record) if record is not None else self.request_of_job(job_id)

    def request_of_job(self, job_id: str) -> dict[str, Any] | None:
        """What job `job_id` was asked to render (secrets redacted)."""
        job = self.fetch(job_id)
        args = job.args or ()
        return redact(args[0]) if args and isinstance(args[0], dict) else None

    def spec_of(self, job: Job) -> RenderSpec:
        """The spec a job was enqueued with."""
        return RenderSpec.model_validate(job.args[0])

    def fetch_visible(self, job_id: str, caller: ApiKey | None) -> Job:
        """The job, when `caller` may see it: a job another key submitted is as unknown to this
        caller as one that never existed (same 404, same message)."""
        job = self.fetch(job_id)
        if not can_see(caller, (job.meta or {}).get("key_id")):
            raise JobNotFound(f"no job with id '{job_id}'")
        return job

    def pipeline_record(self, job_id: str, caller: ApiKey | None = None) -> PipelineRecord | None:
        """The pipeline of id `job_id` when there is one (None: a job's id, or none at all); one
        another key submitted is as unknown as one that never existed."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        with redis_errors():
            record = load_pipeline(self, job_id)
        if record is not None and not can_see(caller, record.key_id):
            raise JobNotFound(f"no job with id '{job_id}'")
        return record

    def view(self, job_id: str, caller: ApiKey | None = None, *, paused: PauseState | None = None) -> JobView:
        """The job's or pipeline's state for `caller` (None: keys off, or the service itself);
        `paused`: the pause flags when already read (a listing reads them once)."""
        record = self.pipeline_record(job_id, caller)
        if record is not None:
            with redis_errors():
                return pipeline_view(self, record)
        return self.view_job(self.fetch_visible(job_id, caller), paused=paused)

    def _with_preset_advice(self, error: ErrorInfo, job: Job) -> ErrorInfo:
        """`error` with what the job's preset says to do about its code first (its failure modes)."""
        args = job.args or ()
        preset = args[0].get("preset") if args and isinstance(args[0], dict) else None
        advice = failure_remediation(preset_book(self.settings.presets_file), preset, error.code.value)
        if not advice:
            return error
        return error.model_copy(
            update={"remediation": advice + [s for s in error.remediation if s not in advice]}
        )

    def view_job(self, job: Job, *, paused: PauseState | None = None) -> JobView:
        """One RQ job's state (a pipeline's step, or a job of its own)."""
        with redis_errors():
            rq_status = job.get_status(refresh=False)
            meta: dict[str, Any] = job.meta or {}
            status = _STATUS.get(rq_status, JobStatus.QUEUED) if rq_status else JobStatus.QUEUED
            result = error = waiting_for = waiting = position = None
            is_paused = False
            if status is JobStatus.QUEUED:
                paused = paused if paused is not None else self.control.state()
                is_paused = paused.is_paused(owner_of_job(job))
                waiting_for, waiting, position = self.waiting(job, meta.get("engine"), paused)
            elif status is JobStatus.DONE and meta.get("upload") == "pending":
                # Rendered, but its images wait in the worker's spool for storage to return.
                status = JobStatus.STARTED
            elif status is JobStatus.DONE:
                result = JobResult.model_validate(job.return_value())
            elif status is JobStatus.ERROR:
                error = error_from_failure(job)
                if error.code is ErrorCode.CANCELED:
                    status = JobStatus.CANCELED
                else:
                    error = self._with_preset_advice(error, job)
            elif status is JobStatus.CANCELED:
                error = ErrorInfo(code=ErrorCode.CANCELED, message="the job was canceled")
        return JobView(
            job_id=job.id,
            status=status,
            progress=Progress.model_validate(meta.get("progress") or {}),
            preview_step=meta.get("preview_step"),
            result=result,
            error=error,
            engine=meta.get("engine"),
            model=meta.get("model"),
            enqueued_at=_iso(job.enqueued_at),
            started_at=_iso(job.started_at),
            ended_at=_iso(job.ended_at),
            waiting_for=waiting_for,
            waiting=waiting,
            position=position,
            paused=is_paused,
            worker=meta.get("worker"),
            warm=meta.get("warm"),
        )

    def cancel(self, job_id: str, caller: ApiKey | None = None) -> JobView:
        """Queued: removed from the queue. Started: flagged; the worker stops at its next step. A
        pipeline: its running step flagged, every later one removed."""
        record = self.pipeline_record(job_id, caller)
        if record is not None:
            with redis_errors():
                cancel_pipeline(self, record)
        else:
            self.cancel_job(self.fetch_visible(job_id, caller))
        return self.view(job_id)

    def cancel_job(self, job: Job) -> None:
        with redis_errors():
            status = job.get_status(refresh=True)
            if status in (RQStatus.QUEUED, RQStatus.DEFERRED, RQStatus.SCHEDULED):
                job.cancel()
                self.control.forget(job)  # set aside by a pause: out of its held list too
            elif status == RQStatus.STARTED:
                key = cancel_key(self.settings.queue_prefix, job.id)
                self.redis.set(key, 1, ex=self.settings.job_timeout_s + 60)

    def reap_lost_jobs(self) -> None:
        """Jobs whose worker stopped heartbeating go back to the queue (retries left) or fail as
        WORKER_LOST; RQ's own registry cleanup does both."""
        with redis_errors():
            for engine in ENGINES:
                for queue in self.queues(engine) + model_queues(self.redis, self.settings, engine):
                    StartedJobRegistry(queue=queue).cleanup()

    def live_workers(self, engine: str) -> int:
        """Workers of `engine` that heartbeated lately (a killed worker's RQ key lingers for minutes)."""
        now = time.monotonic()
        with self._live_lock:
            cached = self._live.get(engine)
        if cached and now - cached[0] < LIVE_WORKERS_CACHE_S:
            return cached[1]
        with redis_errors():
            count = len(live_workers(self.redis, self.queues(engine)))
        with self._live_lock:
            self._live[engine] = (now, count)
        return count

    def waiting(
        self, job: Job, engine: str | None, paused: PauseState
    ) -> tuple[str | None, JobWaiting | None, int | None]:
        """Why a queued job has not started: in words that follow "waiting for", and structured
        for a program to act on; and its place in its queue (1: next), when it is in one."""
        position = self.position(job, engine)
        if paused.everyone:
            message = "an admin paused the whole queue: no worker takes a new job until it is resumed"
            remediation = ["An admin resumes it: `kitty-cli images.resume --everyone`."]
            return (
                f"a resume: {message}",
                waiting(WaitReason.QUEUE_PAUSED, message, engine, remediation),
                position,
            )
        if owner_of_job(job) in paused.owners:
            message = "your queue is paused: this job starts after a resume, in its place"
            remediation = ["Resume it: Resume in the gallery's queue, or `kitty-cli images.resume`."]
            return f"a resume: {message}", waiting(WaitReason.PAUSED, message, engine, remediation), position
        if engine is None:
            return None, None, position
        if self.live_workers(engine) == 0:
            command = worker_command(engine, self.settings.image_engine)
            message = f"no worker serves engine '{engine}' now"
            remediation = [
                f"Start one: `{command}`.",
                "Or cancel it and submit it to an engine with a worker (`kitty-cli images.engines`).",
            ]
            said = f"a worker: none serves engine '{engine}' now; start one with `{command}`"
            return said, waiting(WaitReason.NO_WORKER, message, engine, remediation), position
        if position is None:
            return None, None, None  # a pipeline step waiting for the step before it
        if position == 1:
            message = "every worker serving this engine is busy"
            return (
                "a worker: every one serving this engine is busy",
                waiting(WaitReason.BUSY, message, engine, ahead=0),
                position,
            )
        ahead = position - 1
        message = f"{ahead} job{'s' if ahead != 1 else ''} ahead"
        return f"its turn: {message}", waiting(WaitReason.TURN, message, engine, ahead=ahead), position

    def position(self, job: Job, engine: str | None) -> int | None:
        """The job's place among those its engine's workers take (1: next): the priority queue
        first. None when it is in no queue (held by a pause, deferred)."""
        index = job.get_position()
        if index is None or engine is None:
            return None
        priority = self.settings.queue_name(engine, priority=True)
        return index + 1 + (0 if job.origin == priority else self.queue(engine, priority=True).count)

    # --- pausing and reordering (queue_control.py) -------------------------------------------------
    def queue_view(self, caller: ApiKey | None, *, resumed: int | None = None) -> QueueView:
        owner = owner_token(caller.key_id if caller else None)
        with redis_errors():
            paused = self.control.state()
            held = self.control.held(owner)
        return QueueView(
            paused=owner in paused.owners, everyone_paused=paused.everyone, held=held, resumed=resumed
        )

    def pause(self, caller: ApiKey | None, *, everyone: bool = False) -> QueueView:
        """Hold the caller's queued jobs after their running one (an admin's `everyone`: every
        caller's; workers take no new job)."""
        with redis_errors():
            if everyone:
                self.control.pause_everyone()
            else:
                self.control.pause(owner_token(caller.key_id if caller else None))
        return self.queue_view(caller)

    def resume(self, caller: ApiKey | None, *, everyone: bool = False) -> QueueView:
        """Start the caller's held jobs again, in their places (`everyone`: the whole queue; each
        caller's own pause stays)."""
        resumed = None
        with redis_errors():
            if everyone:
                self.control.resume_everyone()
            else:
                resumed = self.control.resume(owner_token(caller.key_id if caller else None))
        return self.queue_view(caller, resumed=resumed)

    def to_front(self, job_id: str, caller: ApiKey | None) -> JobView:
        """Move a queued job before the caller's other queued jobs in its queue (an admin's, or
        any without keys: to the very front)."""
        if self.pipeline_record(job_id, caller) is not None:
            raise JobNotMovable(
                f"job {job_id} is a pipeline: its steps are queued one after the other",
                remediation=["Move its queued step: the pipeline's view lists each step's job_id."],
                detail={"job_id": job_id},
            )
        job = self.fetch_visible(job_id, caller)
        with redis_errors():
            status = job.get_status(refresh=True)
            if status != RQStatus.QUEUED:
                shown = _STATUS.get(status, JobStatus.QUEUED) if status else JobStatus.QUEUED
                state = "waiting for the step before it" if status == RQStatus.DEFERRED else shown.value
                raise JobNotMovable(
                    f"job {job_id} is {state}: only a job waiting in a queue can be moved",
                    remediation=["Move a job whose status is queued; `kitty-cli images.jobs` lists them."],
                    detail={"job_id": job_id, "status": shown.value},
                )
            own = caller is not None and not caller.is_admin
            self.control.to_front(job, caller.key_id if own and caller else None)
        return self.view_job(job)

    def depth(self, engine: str) -> int:
        """Jobs waiting for `engine`, in its queues and its models' queues."""
        with redis_errors():
            queues = self.queues(engine) + model_queues(self.redis, self.settings, engine)
            return sum(queue.count for queue in queues)
