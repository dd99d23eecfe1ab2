"""The job: render a `RenderSpec` with its engine, store each PNG and sidecar, return the keys.

RQ calls `render_job` inside the long-lived worker process; the engines (and the pipelines they
hold) live in a `Runtime` made once per process, so a model loaded by one job serves the next.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from services.common.logs import log_context
from services.contracts import ImageInfo, JobResult, RenderSpec

from ..engines import Engine, JobCanceled, RenderResult, make_engine
from ..errors import Canceled, EngineError, EngineTimeout, KittyError
from ..gallery import GalleryIndex, item_from_sidecar, thumb_key_for
from ..metadata import build_sidecar, encode_png, encode_thumbnail, infotext
from ..models import ModelRegistry
from ..queue import CANCEL_KEY
from ..settings import Settings, get_settings
from ..storage import Store, make_store
from ..storage.keys import new_image_key
from .metrics import BYTES_STORED, JOB_RUN_SECONDS, JOBS_FINISHED, QUEUE_WAIT_SECONDS

log = logging.getLogger("kitty.images.worker")


@dataclass
class Runtime:
    """What a worker process keeps between jobs."""

    settings: Settings
    registry: ModelRegistry
    store: Store
    engines: dict[str, Engine] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            settings, ModelRegistry(settings.models_yaml, settings.default_model), make_store(settings)
        )

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            self.engines[name] = make_engine(name, self.settings, self.registry)
        return self.engines[name]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


_runtime: Runtime | None = None


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime.from_settings(get_settings())
    return _runtime


class JobReporter:
    """Writes progress into the job's meta and turns a cancel request into `JobCanceled`."""

    def __init__(self, job: Job | None, redis: Redis | None) -> None:
        self.job = job
        self.redis = redis

    def progress(self, step: int, total: int) -> None:
        if self.job is None or self.redis is None:
            return
        self.job.meta["progress"] = {"step": step, "total": total}
        with self.redis.pipeline() as pipe:
            self.job.save_meta()
            pipe.exists(CANCEL_KEY.format(job_id=self.job.id))
            (canceled,) = pipe.execute()
        if canceled:
            raise JobCanceled(self.job.id)

    def fail(self, error: KittyError) -> None:
        if self.job is not None:
            self.job.meta["error"] = error.to_info().model_dump(mode="json")
            self.job.save_meta()


def store_result(
    runtime: Runtime,
    job_id: str,
    spec: RenderSpec,
    result: RenderResult,
    engine: str,
    index: GalleryIndex | None = None,
) -> JobResult:
    """Sidecar and thumbnail first, then the PNG, then the gallery index: a listed PNG always has
    its sidecar beside it, and the index never names an image the store does not hold."""
    images: list[ImageInfo] = []
    for position, rendered in enumerate(result.images):
        created_at = datetime.now(UTC)
        base = new_image_key(runtime.settings.s3_prefix, created_at)
        png_key, meta_key = f"{base}.png", f"{base}.json"
        thumb_key = thumb_key_for(png_key)
        width, height = rendered.image.size
        sidecar = build_sidecar(
            job_id=job_id,
            engine=engine,
            spec=spec,
            seed=rendered.seed,
            width=width,
            height=height,
            device=result.device,
            png_key=png_key,
            meta_key=meta_key,
            engine_info=result.engine_info,
            timings=result.timings,
            created_at=created_at,
            index=position,
        )
        sidecar["thumb_key"] = thumb_key
        png = encode_png(
            rendered.image,
            parameters=infotext(
                spec, seed=rendered.seed, version=sidecar.get("versions", {}).get("kitty-images")
            ),
            sidecar=sidecar,
            extra_chunks=rendered.text_chunks,
        )
        meta, thumb = json.dumps(sidecar, indent=2).encode(), encode_thumbnail(rendered.image)
        runtime.store.put(meta_key, meta, "application/json")
        runtime.store.put(thumb_key, thumb, "image/webp")
        runtime.store.put(png_key, png, "image/png")
        for kind, data in (("sidecar", meta), ("thumbnail", thumb), ("png", png)):
            BYTES_STORED.labels(kind=kind).inc(len(data))
        if index is not None:
            index.add(item_from_sidecar(sidecar, size=len(png), last_modified=created_at))
        images.append(
            ImageInfo(key=png_key, meta_key=meta_key, seed=rendered.seed, width=width, height=height)
        )
    return JobResult(png_key=images[0].key, meta_key=images[0].meta_key, images=images)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _as_kitty_error(exc: Exception, settings: Settings) -> KittyError:
    """The error a user sees. RQ's timeout fires inside whatever the engine was doing, and an
    engine may have wrapped it, so the whole cause chain is looked at."""
    chain = _causes(exc)
    if any(isinstance(e, JobTimeoutException) for e in chain):
        return EngineTimeout(f"the job ran longer than its {settings.job_timeout_s}s timeout")
    if any(isinstance(e, JobCanceled) for e in chain):
        return Canceled("the job was canceled")
    if isinstance(exc, KittyError):
        return exc
    return EngineError(f"rendering failed: {type(exc).__name__}: {exc}")


def render_job(spec_data: dict[str, Any]) -> dict[str, Any]:
    """The RQ job function: log lines inside carry the job id and the request id that submitted it."""
    job = get_current_job()
    request_id = job.meta.get("request_id") if job else None
    with log_context(request_id=request_id, job_id=job.id if job else None):
        return _render(job, spec_data)


def _render(job: Job | None, spec_data: dict[str, Any]) -> dict[str, Any]:
    """Failures are recorded as a wire error in the job's meta, then re-raised so RQ marks the job
    failed."""
    runtime = get_runtime()
    reporter = JobReporter(job, job.connection if job else None)
    job_id = job.id if job else "local"
    spec = RenderSpec.model_validate(spec_data)
    if job is not None and job.enqueued_at is not None:
        waited = datetime.now(UTC) - job.enqueued_at.replace(tzinfo=job.enqueued_at.tzinfo or UTC)
        QUEUE_WAIT_SECONDS.labels(engine=spec.engine).observe(max(0.0, waited.total_seconds()))
    started = time.perf_counter()
    status = "error"
    try:
        result = runtime.engine(spec.engine).render(spec, reporter.progress)
        result.timings.setdefault("total_s", time.perf_counter() - started)
        index = GalleryIndex(job.connection, runtime.settings.queue_prefix) if job else None
        stored = store_result(runtime, job_id, spec, result, spec.engine, index)
        status = "done"
        return stored.model_dump()
    except Exception as exc:
        if job is not None:
            job.retries_left = 0  # an engine's own failure would only fail again
        error = _as_kitty_error(exc, runtime.settings)
        reporter.fail(error)
        if isinstance(error, Canceled):
            status = "canceled"
        elif not isinstance(exc, KittyError | JobTimeoutException):
            log.exception("job failed")
        raise
    finally:
        elapsed = time.perf_counter() - started
        JOBS_FINISHED.labels(engine=spec.engine, status=status).inc()
        JOB_RUN_SECONDS.labels(engine=spec.engine).observe(elapsed)
        log.info("job finished", extra={"job_id": job_id, "status": status, "seconds": round(elapsed, 3)})
