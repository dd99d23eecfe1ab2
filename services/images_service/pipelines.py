"""Pipelines: jobs that read the images of jobs before them, each its own RQ job that RQ defers
until those finish (`depends_on`), under one id whose record lists them. Two shapes:

- a generate followed by steps (refine, upscale, postprocess), each after the one before;
- a storyboard (storyboard.py): one shot per beat, each followed by those steps, and a contact
  sheet after every shot's last step.

The record (``{prefix}:pipeline:{id}``) holds the jobs' ids, kinds and what each runs after, the
owner's key id and the created time; the id is what POST /generate answers and what the job history
lists. A step's job reads the images of the jobs before it when it runs (`worker/tasks.render_step`)
and runs once on each (a contact sheet: once on all), so its spec is resolved at submit with the
source left empty (`PENDING_SOURCE`).

Quota and ceilings are checked once, at submit, for the whole pipeline: every job stores new
images, so a pipeline of n steps counts num_images × (1 + n) images against the day (a storyboard
of b beats: b × (1 + n) + 1), and every job's size must fit the caller's tier (an upscale ×4 of
1024² is a 4096² image: enterprise only).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rq.exceptions import InvalidJobOperation
from rq.job import Job

from services.contracts import (
    ContactSheetSpec,
    JobResult,
    JobStatus,
    JobView,
    PipelineStep,
    PostprocessSpec,
    Progress,
    RenderSpec,
    StepView,
    UpscaleRequest,
    UpscaleSpec,
)

from .engines.descriptors import descriptor_for, engines_with
from .errors import JobNotFound, KittyError, ValidationFailed
from .models import ModelRegistry
from .postprocess import resolve_steps
from .storyboard import sheet_layout
from .upscale_jobs import COPIED_FIELDS, UPSCALE_STEPS, pick_upscaler, upscale_engine

if TYPE_CHECKING:
    from .queue import JobQueue

PIPELINE_KEY = "{prefix}:pipeline:{pipeline_id}"

PENDING_SOURCE = ""
"""A step's source (`image`, `upscale.source`, `postprocess.source`) until its job runs and reads
the image of the step before it."""

POSTPROCESS_STEPS = 1
"""A postprocess job's `steps`: one pass, which is also what its progress counts."""

GENERATE = "generate"
"""The kind of a pipeline's first step: the render the request describes."""
SHOT = "shot"
"""A storyboard's render of one beat."""
CONTACT_SHEET = "contact_sheet"
"""A storyboard's last job: every shot in one picture."""
CONTACT_SHEET_RETRIES = 1


@dataclass(frozen=True)
class PlannedStep:
    """A job of a pipeline, resolved at submit: what it renders (a step's source pending) and the
    jobs, by index in the plan, whose images it reads."""

    kind: str
    spec: RenderSpec
    retries: int
    after: tuple[int, ...] = ()


@dataclass(frozen=True)
class PipelineRecord:
    id: str
    kinds: list[str]
    job_ids: list[str]
    key_id: str | None
    created_at: float
    after: list[list[int]] = field(default_factory=list)
    """Per job, the indices of the jobs it runs after (a record written before storyboards has
    none: each job then runs after the one before it)."""

    def __post_init__(self) -> None:
        if not self.after:
            self.after.extend([index - 1] if index else [] for index in range(len(self.job_ids)))

    def dump(self) -> str:
        steps = zip(self.kinds, self.job_ids, self.after, strict=True)
        return json.dumps(
            {
                "id": self.id,
                "steps": [{"kind": k, "job_id": j, "after": a} for k, j, a in steps],
                "key_id": self.key_id,
                "created_at": self.created_at,
            }
        )

    @classmethod
    def load(cls, raw: bytes | str) -> PipelineRecord:
        data = json.loads(raw)
        steps = data["steps"]
        return cls(
            id=data["id"],
            kinds=[step["kind"] for step in steps],
            job_ids=[step["job_id"] for step in steps],
            key_id=data.get("key_id"),
            created_at=float(data["created_at"]),
            after=[list(step["after"]) for step in steps] if all("after" in s for s in steps) else [],
        )


def pipeline_key(prefix: str, pipeline_id: str) -> str:
    return PIPELINE_KEY.format(prefix=prefix, pipeline_id=pipeline_id)


# -- submit ------------------------------------------------------------------------------------------


def plan_pipeline(
    spec: RenderSpec, steps: Sequence[PipelineStep], registry: ModelRegistry
) -> list[PlannedStep]:
    """The generate `spec` and each of `steps` after it (none: [], a job of its own)."""
    if not steps:
        return []
    return _webhook_on_last(spec, [PlannedStep(GENERATE, spec, 0), *plan_chain(spec, steps, registry, 0)])


def plan_storyboard(
    shots: Sequence[RenderSpec],
    beats: Sequence[str],
    prompt: str,
    steps: Sequence[PipelineStep],
    registry: ModelRegistry,
) -> list[PlannedStep]:
    """Each shot (one per beat) with its own chain of `steps`, then the contact sheet after every
    chain's last job, at a size that fits within the shots' own (`storyboard.sheet_layout`)."""
    planned: list[PlannedStep] = []
    ends: list[int] = []
    for shot in shots:
        first = len(planned)
        planned.append(PlannedStep(SHOT, shot, 0))
        planned += plan_chain(shot, steps, registry, first)
        ends.append(len(planned) - 1)
    last = planned[-1].spec
    layout = sheet_layout(len(shots), last.output_size)
    sheet = RenderSpec(
        **{**_copied(shots[0]), "prompt": prompt, "model": None, "cfg": 0.0},
        width=layout.size[0],
        height=layout.size[1],
        steps=POSTPROCESS_STEPS,
        seed=shots[0].seed,
        num_images=1,
        engine=upscale_engine(),  # drawn in-process by the local worker, as a postprocess step
        contact_sheet=ContactSheetSpec(
            captions=list(beats), columns=layout.columns, shot_size=last.output_size
        ),
    )
    planned.append(PlannedStep(CONTACT_SHEET, sheet, CONTACT_SHEET_RETRIES, tuple(ends)))
    return _webhook_on_last(shots[0], planned)


def _webhook_on_last(spec: RenderSpec, planned: list[PlannedStep]) -> list[PlannedStep]:
    """The caller's webhook hears of the pipeline once: when its last job ends."""
    quiet = [replace(step, spec=step.spec.model_copy(update={"webhook": None})) for step in planned]
    quiet[-1] = replace(quiet[-1], spec=quiet[-1].spec.model_copy(update={"webhook": spec.webhook}))
    return quiet


def images_stored(planned: Sequence[PlannedStep]) -> int:
    """How many images the pipeline stores: a render its `num_images`, a step one per image of the
    job before it, a contact sheet one."""
    counts: list[int] = []
    for step in planned:
        if step.kind == CONTACT_SHEET:
            counts.append(1)
        elif step.after:
            counts.append(counts[step.after[0]])
        else:
            counts.append(step.spec.num_images)
    return sum(counts)


def plan_chain(
    spec: RenderSpec, steps: Sequence[PipelineStep], registry: ModelRegistry, first: int
) -> list[PlannedStep]:
    """Each of `steps` resolved against the render `spec` (at index `first` of the plan), each
    after the one before, at the size the one before makes; refuses what no job could run (an
    engine without img2img, bad ops). Each step runs on every image of the one before
    (`num_images` of them), in one job."""
    planned: list[PlannedStep] = []
    previous = spec
    for index, step in enumerate(steps, start=1):
        width, height = previous.output_size
        if step.kind == "refine":
            made = _refine_spec(spec, step, width, height, index)
        elif step.kind == "upscale":
            made = _upscale_spec(spec, step, width, height, registry)
        else:
            made = _postprocess_spec(spec, step, width, height, index)
        planned.append(PlannedStep(step.kind, made, step.retries, (first + index - 1,)))
        previous = made
    return planned


def _refine_spec(spec: RenderSpec, step: PipelineStep, width: int, height: int, index: int) -> RenderSpec:
    if not descriptor_for(spec.engine).capabilities.img2img:
        takers = engines_with("img2img")
        raise ValidationFailed(
            f"pipeline step {index} (refine) is an image-to-image pass, "
            f"which engine '{spec.engine}' does not run",
            remediation=[f'Send "engine": "{takers[0]}", or drop the refine step.' if takers else "Drop it."],
            detail={"step": index, "engine": spec.engine},
        )
    # The generate's prompt, model, sampler and seed over the previous image; what shaped the first
    # render (graph, mask, control maps, reference, hires) stays with it.
    return spec.model_copy(
        update={
            "width": width,
            "height": height,
            "image": PENDING_SOURCE,
            "strength": step.strength,
            "num_images": 1,  # one pass per image of the step before
            "workflow": None,
            "mask": None,
            "controls": [],
            "reference_image": None,
            "reference_model": None,
            "hires": None,
            "refiner": False,
            "webhook": None,
        }
    )


def _copied(spec: RenderSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in COPIED_FIELDS if getattr(spec, name) is not None}


def _upscale_spec(
    spec: RenderSpec, step: PipelineStep, width: int, height: int, registry: ModelRegistry
) -> RenderSpec:
    # `pick_upscaler` reads only `scale` and `model`; the key is the previous step's, known later.
    entry = pick_upscaler(UpscaleRequest(key="pending", scale=step.scale, model=step.model), registry)
    return RenderSpec(
        **{"prompt": "", "model": None, "cfg": 0.0, **_copied(spec)},
        width=width * step.scale,
        height=height * step.scale,
        steps=UPSCALE_STEPS,
        seed=spec.seed,
        num_images=1,
        engine=upscale_engine(),
        upscale=UpscaleSpec(source=PENDING_SOURCE, scale=step.scale, model=entry.name if entry else None),
    )


def _postprocess_spec(
    spec: RenderSpec, step: PipelineStep, width: int, height: int, index: int
) -> RenderSpec:
    if not step.ops:
        raise ValidationFailed(
            f"pipeline step {index} (postprocess) lists no ops",
            remediation=['Add "ops", e.g. [{"op": "tone_map", "operator": "aces"}].'],
            detail={"step": index},
        )
    try:
        resolve_steps(step.ops, spec.seed)
    except ValueError as exc:
        raise ValidationFailed(
            f"pipeline step {index} (postprocess): {exc}", detail={"step": index}
        ) from None
    return RenderSpec(
        **{"prompt": "", "model": None, "cfg": 0.0, **_copied(spec)},
        width=width,
        height=height,
        steps=POSTPROCESS_STEPS,
        seed=spec.seed,
        num_images=1,
        engine=upscale_engine(),  # no engine renders: the local worker runs the ops in-process
        postprocess=PostprocessSpec(source=PENDING_SOURCE, ops=step.ops),
    )


def enqueue_pipeline(
    queue: JobQueue, planned: Sequence[PlannedStep], *, priority: bool, key_id: str | None
) -> str:
    """Write the pipeline's record, then enqueue every job at once, each after those it reads;
    returns the pipeline's id, indexed in the job history in their stead."""
    pipeline_id = uuid.uuid4().hex
    job_ids = [uuid.uuid4().hex for _ in planned]
    kinds = [step.kind for step in planned]
    after = [list(step.after) for step in planned]
    record = PipelineRecord(pipeline_id, kinds, job_ids, key_id, time.time(), after)
    key = pipeline_key(queue.settings.queue_prefix, pipeline_id)
    # As long as RQ keeps a step's result or failure: a failed pipeline can be retried, and its
    # history entry shown, for that long.
    queue.redis.set(key, record.dump(), ex=queue.record_ttl_s)
    enqueued: list[str] = []
    try:
        for index, step in enumerate(planned):
            queue.enqueue(
                step.spec,
                priority=priority,
                job_id=job_ids[index],
                after=[job_ids[i] for i in step.after] or None,
                retries=step.retries,
                meta={
                    "pipeline": {"id": pipeline_id, "step": index, "kind": step.kind},
                    "step_retries": step.retries,
                    "step_retries_left": step.retries,
                },
                index=False,
            )
            enqueued.append(job_ids[index])
        queue.index(pipeline_id)
    except BaseException:
        for job_id in reversed(enqueued):
            _quietly(lambda job_id=job_id: queue.cancel_job(queue.fetch(job_id)))
        _quietly(lambda: queue.redis.delete(key))
        raise
    return pipeline_id


def _quietly(action: Any) -> None:
    try:
        action()
    except Exception:  # undoing a half-made pipeline; the error that made it necessary is raised
        pass


# -- view, cancel, retry --------------------------------------------------------------------------------


def load_pipeline(queue: JobQueue, pipeline_id: str) -> PipelineRecord | None:
    raw = queue.redis.get(pipeline_key(queue.settings.queue_prefix, pipeline_id))
    return PipelineRecord.load(raw) if raw else None  # type: ignore[arg-type]


def _job_views(queue: JobQueue, record: PipelineRecord) -> list[JobView]:
    try:
        return [queue.view_job(queue.fetch(job_id)) for job_id in record.job_ids]
    except JobNotFound:  # a step's job expired before the record: the pipeline is gone too
        raise JobNotFound(f"no job with id '{record.id}'") from None


def _step_view(index: int, kind: str, after: list[int], view: JobView) -> StepView:
    return StepView(
        index=index,
        kind=kind,
        job_id=view.job_id,
        after=after,
        status=view.status,
        progress=view.progress,
        result=view.result,
        error=view.error,
    )


def pipeline_view(queue: JobQueue, record: PipelineRecord) -> JobView:
    """The pipeline as one job: queued until its first step starts, started while any step runs or
    waits, done when the last is, else error or canceled as the first step that failed or was canceled;
    progress counts across the steps, and the result is the last step's (a storyboard's: every
    shot's last image, then the contact sheet's)."""
    views = _job_views(queue, record)
    pairs = zip(record.kinds, record.after, views, strict=True)
    steps = [_step_view(index, kind, after, view) for index, (kind, after, view) in enumerate(pairs)]
    first, last = views[0], views[-1]
    stopped = next((v for v in views if v.status in (JobStatus.ERROR, JobStatus.CANCELED)), None)
    status, error, ended, waiting_for = JobStatus.STARTED, None, None, None
    if any(v.status is JobStatus.STARTED for v in views):
        pass  # a step still runs (one being canceled stops at its next denoising step)
    elif stopped is not None:
        status, error, ended = stopped.status, stopped.error, stopped.ended_at
    elif all(v.status is JobStatus.DONE for v in views):
        status, ended = JobStatus.DONE, last.ended_at
    elif all(v.status is JobStatus.QUEUED for v in views):
        status, waiting_for = JobStatus.QUEUED, first.waiting_for
    return JobView(
        job_id=record.id,
        status=status,
        progress=Progress(
            step=sum(v.progress.step for v in views), total=sum(v.progress.total for v in views)
        ),
        result=_result(record, views) if status is JobStatus.DONE else None,
        error=error,
        engine=first.engine,
        model=first.model,
        enqueued_at=first.enqueued_at,
        started_at=first.started_at,
        ended_at=ended,
        waiting_for=waiting_for,
        steps=steps,
    )


def _result(record: PipelineRecord, views: Sequence[JobView]) -> JobResult | None:
    last = views[-1].result
    if last is None or record.kinds[-1] != CONTACT_SHEET:
        return last
    shots = [image for index in record.after[-1] for image in getattr(views[index].result, "images", [])]
    return last.model_copy(update={"images": [*shots, *last.images]})


def pipeline_request(queue: JobQueue, record: PipelineRecord) -> dict[str, Any] | None:
    """What the pipeline was asked to render, for the job history: the generate's request and the
    kinds of the steps after it."""
    request = queue.request_of_job(record.job_ids[0])
    if request is None:
        return None
    if record.kinds[-1] == CONTACT_SHEET:
        sheet = queue.request_of_job(record.job_ids[-1]) or {}
        request["beats"] = (sheet.get("contact_sheet") or {}).get("captions")
        request["pipeline"] = record.kinds[1 : record.after[-1][0] + 1]  # the first shot's steps
    else:
        request["pipeline"] = record.kinds[1:]
    return request


def cancel_pipeline(queue: JobQueue, record: PipelineRecord) -> None:
    """Cancel every step not yet ended, the last first: a step finishing meanwhile then finds its
    dependents canceled, and RQ enqueues none of them."""
    for job_id in reversed(record.job_ids):
        queue.cancel_job(queue.fetch(job_id))


def retry_pipeline(queue: JobQueue, record: PipelineRecord) -> PipelineRecord:
    """Run a failed or canceled pipeline on from where it stopped; the jobs that finished keep
    their jobs and images. Each failed job is enqueued again, and the jobs after it, still
    deferred, run after it as before; each canceled job becomes a new job (RQ requeues no canceled
    job), in the record in its stead, after the same jobs (or those that replace them). A storyboard
    whose shot failed may be retried while other shots still render. Returns the record as it is now."""
    views = _job_views(queue, record)
    failed = [index for index, view in enumerate(views) if view.status is JobStatus.ERROR]
    canceled = [index for index, view in enumerate(views) if view.status is JobStatus.CANCELED]
    being_canceled = canceled and any(v.status is JobStatus.STARTED for v in views)
    if not (failed or canceled) or being_canceled:
        status = pipeline_view(queue, record).status
        raise ValidationFailed(
            f"pipeline '{record.id}' is {status.value}: only a failed or canceled pipeline can be retried"
            + (" (a step is still stopping: retry once it has)" if being_canceled else ""),
            remediation=["Re-run one of its images instead: POST /api/images/rerun with the image's key."],
        )
    key = pipeline_key(queue.settings.queue_prefix, record.id)
    for index in failed:
        _requeue(queue, queue.fetch(record.job_ids[index]), views[index].progress.total)
    if not canceled:
        queue.redis.expire(key, queue.record_ttl_s)
        return record
    job_ids = list(record.job_ids)
    for index in canceled:  # in order: what a job runs after is replaced before it
        old = queue.fetch(job_ids[index])
        meta = {name: old.meta[name] for name in RETRY_META if name in old.meta}
        if "step_retries" in meta:
            meta["step_retries_left"] = meta["step_retries"]
        job_ids[index] = queue.enqueue(
            RenderSpec.model_validate(old.args[0]),
            priority=old.origin == queue.settings.queue_name(str(old.meta.get("engine")), priority=True),
            after=[job_ids[i] for i in record.after[index]] or None,
            retries=int(meta.get("step_retries", 0)),
            meta=meta,
            index=False,
        )
    retried = replace(record, job_ids=job_ids)
    queue.redis.set(key, retried.dump(), ex=queue.record_ttl_s)
    return retried


RETRY_META = ("pipeline", "step_retries", "key_id", "tier", "request_id")
"""What a canceled step's job passes on to the job that replaces it: its place in the pipeline,
its own retries, and who submitted it (an admin retrying a pipeline does not become its owner)."""


def _requeue(queue: JobQueue, job: Job, total: int) -> None:
    """A failed step's job back on its queue, as it was first enqueued (no error, no progress, its
    own retries and the lost-worker ones again)."""
    job.meta.pop("error", None)
    job.meta["progress"] = {"step": 0, "total": total}
    if "step_retries" in job.meta:
        job.meta["step_retries_left"] = job.meta["step_retries"]
    job.retries_left = queue.settings.lost_job_retries or None
    try:
        job.requeue()  # saves the meta above with the job
    except InvalidJobOperation:
        raise KittyError(f"job '{job.id}' of a pipeline could not be enqueued again") from None
