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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from services.common.logs import log_context
from services.contracts import ImageInfo, JobResult, LatestItem, RenderSpec

from ..audit import record_job_end
from ..content import finish_render, sidecar_fields
from ..engines import Engine, JobCanceled, ProgressFn, RenderedImage, RenderResult, make_engine
from ..errors import Canceled, EngineError, EngineTimeout, KittyError, StorageUnavailable, ValidationFailed
from ..gallery import GalleryIndex, item_from_sidecar, thumb_key_for
from ..metadata import build_sidecar, encode_png, encode_thumbnail, infotext
from ..models import ModelRegistry
from ..pipelines import POSTPROCESS_STEPS
from ..postprocess import apply_steps
from ..previews import PREVIEW_TTL_S, PreviewingProgress, preview_key
from ..provenance import Provenance, provenance
from ..queue import cancel_key
from ..settings import Settings, get_settings
from ..storage import Store, make_store
from ..storage.keys import new_image_key
from ..storyboard import compose_sheet, sheet_layout
from ..uploads import read_image
from ..upscale_jobs import UPSCALE_STEPS
from ..video.storing import frames_as_images, prepare_video_objects, with_frames
from ..webhooks import job_ended
from .metrics import BYTES_STORED, JOB_RUN_SECONDS, JOBS_FINISHED, QUEUE_WAIT_SECONDS
from .spool import UPLOAD_META, Spool, StoredObject, put_with_retry

log = logging.getLogger("kitty.images.worker")


@dataclass
class Runtime:
    """What a worker process keeps between jobs."""

    settings: Settings
    registry: ModelRegistry
    store: Store
    engines: dict[str, Engine] = field(default_factory=dict)
    spool: Spool = field(init=False)
    """Images storage could not take yet, on this worker's disk (IMAGES_DATA_DIR/spool)."""

    def __post_init__(self) -> None:
        self.spool = Spool(self.settings.data_dir / "spool")

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(
            settings, ModelRegistry(settings.models_yaml, settings.default_model), make_store(settings)
        )

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            self.engines[name] = make_engine(name, self.settings, self.registry, self.store)
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
    """Writes progress into the job's meta, turns a cancel request into `JobCanceled`, and keeps the
    job's live preview (a `PreviewSink`)."""

    def __init__(
        self, job: Job | None, redis: Redis | None, prefix: str, preview_every: int | None = 0
    ) -> None:
        self.job = job
        self.redis = redis
        self.prefix = prefix
        """IMAGES_QUEUE_PREFIX: the cancel requests of this deployment alone."""
        self.preview_every = preview_every
        """IMAGES_PREVIEW_EVERY (None: by device; 0: off)."""
        self.redis_lost = False
        """The last progress write found Redis unreachable (said once in the log, not every step)."""

    @property
    def previewing(self) -> ProgressFn:
        """`progress`, carrying this reporter as the engine's preview sink."""
        return PreviewingProgress(self.progress, self)

    def publish_preview(self, webp: bytes, step: int) -> None:
        if self.job is None or self.redis is None:
            return
        # The key first, then the step in the meta (written by the next `progress`): a client that
        # sees `preview_step` finds the picture.
        self.redis.set(preview_key(self.prefix, self.job.id), webp, ex=PREVIEW_TTL_S)
        self.job.meta["preview_step"] = step

    def progress(self, step: int, total: int) -> None:
        if self.job is None or self.redis is None:
            return
        self.job.meta["progress"] = {"step": step, "total": total}
        # One round trip per step: the meta write (what RQ's save_meta does) and the cancel check.
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.job.key, "meta", self.job.serializer.dumps(self.job.meta))
                pipe.exists(cancel_key(self.prefix, self.job.id))
                _, canceled = pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis restarting or failing over: the render goes on (its progress shows again at a
            # later step, and its end is recorded once Redis is back); a cancel meanwhile waits.
            if not self.redis_lost:
                log.warning("progress not recorded: Redis unreachable", extra={"error": str(exc)})
            self.redis_lost = True
            return
        self.redis_lost = False
        if canceled:
            raise JobCanceled(self.job.id)

    def fail(self, error: KittyError) -> None:
        if self.job is not None:
            self.job.meta["error"] = error.to_info().model_dump(mode="json")
            self.job.save_meta()


def prepare_objects(
    runtime: Runtime,
    job_id: str,
    spec: RenderSpec,
    result: RenderResult,
    engine: str,
    owner: str | None = None,
    pipeline: dict[str, Any] | None = None,
) -> tuple[list[StoredObject], list[LatestItem], JobResult]:
    """Every object to store for a job's images (per image: sidecar, thumbnail, then PNG, so a
    listed PNG always has its sidecar), their gallery entries, and the job's result. `owner` (the
    submitting key's id) goes into the JSON sidecar and the gallery entry, not into the PNG;
    `pipeline` (``{id, step}``, a pipeline step's) into both."""
    objects: list[StoredObject] = []
    items: list[LatestItem] = []
    images: list[ImageInfo] = []
    for position, rendered in enumerate(result.images):
        created_at = datetime.now(UTC)
        base = new_image_key(runtime.settings.s3_prefix, created_at)
        png_key, meta_key = f"{base}.png", f"{base}.json"
        thumb_key = thumb_key_for(png_key)
        width, height = rendered.image.size
        # An upscale, postprocess or sheet ran no graph: its PNG carries none (a txt2img would mislead).
        ran_graph = spec.is_sampled
        made = provenance(spec, engine, result, rendered) if ran_graph else Provenance(None)
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
            settings_used=result.settings_used,
            pipeline=pipeline,
        )
        sidecar["thumb_key"] = thumb_key
        if made.graph is not None:
            sidecar["comfyui_workflow"] = made.graph  # API format: POST /prompt reproduces it
        sidecar.update(sidecar_fields(rendered))  # content gate and watermark records
        png = encode_png(
            rendered.image,
            parameters=infotext(
                spec,
                seed=rendered.seed,
                version=sidecar["versions"].get("kitty-images"),
                settings_used=result.settings_used,
                sampler=made.sampler.a1111 if made.sampler else None,
            ),
            sidecar=sidecar,
            extra_chunks={**made.chunks, **rendered.text_chunks},
        )
        if owner:
            sidecar["owner"] = owner
        objects += [
            StoredObject(meta_key, json.dumps(sidecar, indent=2).encode(), "application/json"),
            StoredObject(thumb_key, encode_thumbnail(rendered.image), "image/webp"),
            StoredObject(png_key, png, "image/png"),
        ]
        items.append(item_from_sidecar(sidecar, size=len(png), last_modified=created_at))
        images.append(
            ImageInfo(key=png_key, meta_key=meta_key, seed=rendered.seed, width=width, height=height)
        )
    return objects, items, JobResult(png_key=images[0].key, meta_key=images[0].meta_key, images=images)


OBJECT_KINDS = {
    "application/json": "sidecar",
    "image/webp": "thumbnail",
    "image/png": "png",
    "video/mp4": "video",
}


def store_result(
    runtime: Runtime,
    job_id: str,
    spec: RenderSpec,
    result: RenderResult,
    engine: str,
    index: GalleryIndex | None = None,
    owner: str | None = None,
    pipeline: dict[str, Any] | None = None,
) -> tuple[JobResult, bool]:
    """Store the job's images, then index them. When storage stays down through the retries, the
    rest go to the worker's spool; returns the result and whether anything was spooled. A clip is
    stored as MP4, poster and sidecar, and not indexed (the gallery lists images)."""
    if result.video is not None:
        objects, job_result = prepare_video_objects(
            runtime.settings.s3_prefix, job_id, spec, result, engine, owner, pipeline
        )
        items: list[LatestItem] = []
    else:
        objects, items, job_result = prepare_objects(runtime, job_id, spec, result, engine, owner, pipeline)
    for position, obj in enumerate(objects):
        try:
            put_with_retry(runtime.store, obj)
        except StorageUnavailable:
            runtime.spool.keep(job_id, objects[position:], items)
            return job_result, True
        BYTES_STORED.labels(kind=OBJECT_KINDS[obj.content_type]).inc(len(obj.data))
    if index is not None:
        for item in items:
            index.add(item)
    return job_result, False


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


def run_upscale(runtime: Runtime, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
    """An upscale job (`spec.upscale` set): its source read from the store and made larger by the
    upscaler it names (Lanczos for none); no engine renders, no pipeline is loaded."""
    # torch (and diffusers, for the device) only in the jobs that need them.
    from ..engines.diffusers.device import pick_device
    from ..engines.upscaling import upscale_image

    job = spec.upscale
    if job is None:
        raise ValueError("run_upscale needs a spec with `upscale` set")
    progress(0, UPSCALE_STEPS)
    started = time.perf_counter()
    entry = runtime.registry.addon("upscalers", job.model) if job.model else None
    source = read_image(runtime.store, job.source)
    device = str(pick_device(runtime.settings.device)) if entry is not None else "cpu"
    # A network reports each tile (minutes on a CPU: the job view moves, and a cancel stops it).
    image = upscale_image(source, job.scale, entry, device=device, progress=progress)
    elapsed = time.perf_counter() - started
    if entry is None:  # Lanczos: one step
        progress(UPSCALE_STEPS, UPSCALE_STEPS)
    return RenderResult(
        images=[RenderedImage(image, spec.seed)],
        device=device,
        engine_info={"upscaler": job.model or "lanczos", "scale": job.scale, "source": job.source},
        timings={"upscale_s": round(elapsed, 4)},
    )


def run_postprocess(runtime: Runtime, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
    """A postprocess job (`spec.postprocess` set, a pipeline's step): its source read from the store
    and run through its ops; the resolved ops (defaults, seed) replace the asked ones in `spec`, so
    the sidecar records what ran."""
    job = spec.postprocess
    if job is None:
        raise ValueError("run_postprocess needs a spec with `postprocess` set")
    progress(0, POSTPROCESS_STEPS)
    started = time.perf_counter()
    try:
        image, resolved = apply_steps(read_image(runtime.store, job.source), job.ops, spec.seed)
    except ValueError as exc:  # validated at submit: only a LUT gone since fails here
        raise ValidationFailed(f"post-processing failed: {exc}") from exc
    job.ops = resolved
    progress(POSTPROCESS_STEPS, POSTPROCESS_STEPS)
    return RenderResult(
        images=[RenderedImage(image, spec.seed)],
        device="cpu",
        engine_info={"postprocess": resolved, "source": job.source},
        timings={"postprocess_s": round(time.perf_counter() - started, 4)},
    )


def run_contact_sheet(runtime: Runtime, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
    """A storyboard's contact sheet (`spec.contact_sheet` set, its sources filled in): the shots
    read from the store and laid out at the spec's size, each under its beat."""
    job = spec.contact_sheet
    if job is None or len(job.sources) != len(job.captions):
        raise ValueError("run_contact_sheet needs a spec whose contact sheet has one source per caption")
    progress(0, POSTPROCESS_STEPS)
    started = time.perf_counter()
    layout = sheet_layout(len(job.sources), job.shot_size, job.columns)
    shots = [read_image(runtime.store, key) for key in job.sources]
    image = compose_sheet(shots, job.captions, layout)
    progress(POSTPROCESS_STEPS, POSTPROCESS_STEPS)
    return RenderResult(
        images=[RenderedImage(image, spec.seed)],
        device="cpu",
        engine_info={"contact_sheet": {"columns": layout.columns, "sources": job.sources}},
        timings={"contact_sheet_s": round(time.perf_counter() - started, 4)},
    )


def render_job(spec_data: dict[str, Any]) -> dict[str, Any]:
    """The RQ job function: log lines inside carry the job id and the request id that submitted it."""
    job = get_current_job()
    request_id = job.meta.get("request_id") if job else None
    with log_context(request_id=request_id, job_id=job.id if job else None):
        return _render(job, spec_data)


def render_step(spec_data: dict[str, Any], after: str | list[str]) -> dict[str, Any]:
    """A pipeline step's RQ job: `render_job` on each image of the jobs `after` (the steps before,
    which RQ ran to the end before this one), read now that they exist; a contact sheet once, on
    them all. (A step enqueued before storyboards names one job.)"""
    job = get_current_job()
    request_id = job.meta.get("request_id") if job else None
    with log_context(request_id=request_id, job_id=job.id if job else None):
        spec = RenderSpec.model_validate(spec_data)
        if job is not None:
            job.meta.pop("error", None)  # a retried step's last failure is no longer its state
            try:
                afters = [after] if isinstance(after, str) else after
                sources = [image for one in afters for image in previous_images(job, one)]
            except KittyError as exc:
                job.retries_left = 0
                JobReporter(job, job.connection, get_runtime().settings.queue_prefix).fail(exc)
                raise
            if spec.contact_sheet is not None:
                sheet = spec.contact_sheet.model_copy(update={"sources": [key for key, _ in sources]})
                return _render(job, spec.model_copy(update={"contact_sheet": sheet}).model_dump())
            return _render(job, spec.model_dump(), sources)
        return _render(job, spec.model_dump())


def _pass_progress(progress: ProgressFn, position: int, passes: int) -> ProgressFn:
    """Pass `position` of `passes`'s (step, total) as one count across them all."""
    if passes == 1:
        return progress
    return lambda step, total: progress(position * total + step, passes * total)


def previous_images(job: Job, after: str) -> list[tuple[str, int | None]]:
    """The images job `after` stored, in order: each key and its seed."""
    try:
        previous = Job.fetch(after, connection=job.connection, serializer=job.serializer)
    except NoSuchJobError:
        raise EngineError(f"the pipeline step before this one (job '{after}') has expired") from None
    stored = previous.return_value()
    images = (stored or {}).get("images") or []
    if not images:
        raise EngineError(f"the pipeline step before this one (job '{after}') stored no image")
    return [(str(image["key"]), image.get("seed")) for image in images]


def with_source(spec: RenderSpec, key: str, seed: int | None = None) -> RenderSpec:
    """`spec` on the image `key`: an upscale's or postprocess's source, else a refine's `image`; with
    that image's `seed`, so a batch's images keep theirs through the steps (and grain differs)."""
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    if spec.upscale is not None:
        return spec.model_copy(update={"upscale": spec.upscale.model_copy(update={"source": key})})
    if spec.postprocess is not None:
        return spec.model_copy(update={"postprocess": spec.postprocess.model_copy(update={"source": key})})
    return spec.model_copy(update={"image": key})


def retries_after(job: Job, error: KittyError) -> int:
    """RQ's retries left after `error`: lost workers' only, except for a pipeline step whose own
    `retries` are not used up and whose failure is the service's or engine's (5xx): a refused
    input or a cancel would only fail again."""
    left = int(job.meta.get("step_retries_left", 0))
    if left <= 0 or error.status < 500 or isinstance(error, Canceled):
        return 0
    job.meta["step_retries_left"] = left - 1
    log.warning("pipeline step failed; trying again", extra={"job_id": job.id, "retries_left": left - 1})
    return max(job.retries_left or 0, 1)


def _render(
    job: Job | None, spec_data: dict[str, Any], sources: list[tuple[str, int | None]] | None = None
) -> dict[str, Any]:
    """Failures are recorded as a wire error in the job's meta, then re-raised so RQ marks the job
    failed. `sources`: a pipeline step's, the images of the step before; the step runs on each in
    turn (`with_source`, with that image's seed), every image stored with its own source, progress
    across them all."""
    runtime = get_runtime()
    reporter = JobReporter(
        job, job.connection if job else None, runtime.settings.queue_prefix, runtime.settings.preview_every
    )
    job_id = job.id if job else "local"
    spec = RenderSpec.model_validate(spec_data)
    if job is not None and job.enqueued_at is not None:
        waited = datetime.now(UTC) - job.enqueued_at.replace(tzinfo=job.enqueued_at.tzinfo or UTC)
        QUEUE_WAIT_SECONDS.labels(engine=spec.engine).observe(max(0.0, waited.total_seconds()))
    started = time.perf_counter()
    status = "error"
    outcome: dict[str, Any] | None = None  # the job's result, or its error, for the webhook
    try:
        passes = [with_source(spec, key, seed) for key, seed in sources] if sources else [spec]
        tier, owner = (job.meta.get("tier"), job.meta.get("key_id")) if job else (None, None)
        index = GalleryIndex(job.connection, runtime.settings.queue_prefix) if job else None
        pipeline = job.meta.get("pipeline") if job else None
        parts: list[JobResult] = []
        spooled = False
        for position, one in enumerate(passes):
            progress = _pass_progress(reporter.previewing, position, len(passes))
            if one.upscale is not None:
                result = run_upscale(runtime, one, progress)
            elif one.postprocess is not None:
                result = run_postprocess(runtime, one, progress)
            elif one.contact_sheet is not None:
                result = run_contact_sheet(runtime, one, progress)
            else:
                result = runtime.engine(one.engine).render(one, progress)
            result.timings.setdefault("total_s", time.perf_counter() - started)
            # Content gate (may raise SafetyFiltered: nothing stored) and watermark, before storing;
            # a clip's every frame goes through them as an image would.
            checked = frames_as_images(result) if result.video is not None else result
            checked = finish_render(runtime.settings, runtime.registry, one, checked, tier=tier, key_id=owner)
            result = with_frames(result, checked) if result.video is not None else checked
            part, part_spooled = store_result(
                runtime, job_id, one, result, one.engine, index, owner, pipeline
            )
            parts.append(part)
            spooled = spooled or part_spooled
        stored = (
            parts[0]
            if len(parts) == 1
            else parts[0].model_copy(update={"images": [image for part in parts for image in part.images]})
        )
        if spooled and job is not None:
            job.meta[UPLOAD_META] = "pending"  # done only once the spool is uploaded
            job.save_meta()
        status = "done"
        outcome = stored.model_dump()
        return outcome
    except Exception as exc:
        error = _as_kitty_error(exc, runtime.settings)
        if job is not None:
            # An engine's own failure would only fail again (a pipeline step may have tries left).
            job.retries_left = retries_after(job, error)
        reporter.fail(error)
        outcome = error.to_info().model_dump(mode="json")
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
        record_job_end(job, spec, status, runtime.settings)  # the audit log's done/error; never raises
        job_ended(job, spec.webhook, status, outcome, outcome, runtime.settings)  # off-thread; never raises
