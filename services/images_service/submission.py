"""Admitting a generate or re-run request: idempotency claim, spec resolution (or the stored spec of
a re-run), the caller's tier ceilings and daily quota, enqueue — in that order, each undone when a
later step fails, so a refused or failed submit neither spends quota nor blocks its Idempotency-Key."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pydantic import BaseModel

from services.common.api_keys import ApiKey
from services.contracts import (
    GenerateRequest,
    JobStatus,
    RenderSpec,
    RerunRequest,
    RetryRequest,
    UpscaleRequest,
)

from .engines import EngineHealth
from .engines.descriptors import descriptor_for, is_local_engine, worker_command
from .errors import EngineOffline, KittyError, ValidationFailed
from .idempotency import Claim, IdempotencyStore, Replay, check_idempotency_key, fingerprint, scope_of
from .metrics import JOBS_ENQUEUED
from .models import ModelRegistry
from .ownership import Ownership
from .pipelines import (
    PipelineRecord,
    PlannedStep,
    enqueue_pipeline,
    images_stored,
    plan_pipeline,
    plan_storyboard,
    retry_pipeline,
)
from .presets import preset_book, with_preset_defaults
from .queue import JobQueue, redis_errors
from .quotas import QuotaLedger, check_ceilings, check_model_tier, has_priority
from .rerun import rerun_spec
from .safety import check_prompt
from .settings import Settings
from .spec import resolve_spec
from .storage import Store
from .storyboard import shot_prompt
from .upscale_jobs import resolve_upscale

log = logging.getLogger("kitty.images.api")


@dataclass(frozen=True)
class Admitted:
    job_id: str
    status: JobStatus
    replayed: bool = False
    """True when an Idempotency-Key named an existing job: nothing new was enqueued."""


def _best_effort(step: str, action: Callable[[], None]) -> None:
    """Run a bookkeeping step (a refund, a release) without hiding the failure that made it
    necessary, or failing a submit whose job already exists."""
    try:
        action()
    except KittyError as exc:
        log.warning("submit bookkeeping failed", extra={"step": step, "error": exc.message})


@dataclass(frozen=True)
class Admission:
    """Who asks, under which Idempotency-Key, and the collaborators that admit a job."""

    caller: ApiKey | None
    idempotency_key: str | None
    queue: JobQueue
    registry: ModelRegistry
    settings: Settings
    quotas: QuotaLedger
    idempotency: IdempotencyStore
    store: Store | None = None
    """Where `image`/`mask` keys must exist, and where a re-run's sidecar is read."""
    engine_health: Callable[[str], EngineHealth] | None = None
    """Whether a server engine's server answers (cached); asked only when it has no live worker."""
    ownership: Ownership | None = None
    """Who owns the images and uploads a job reads; None: no ownership checks (keys off, tests)."""


def check_servable(engine: str, admission: Admission) -> None:
    """Refuse (503 ENGINE_OFFLINE) a job nobody could run: its engine has no live worker and its
    server does not answer. Jobs of a local engine always queue (their worker is their server, and
    one may be starting); their view says what they wait for."""
    if is_local_engine(engine) or admission.engine_health is None:
        return
    if admission.queue.live_workers(engine) > 0:
        return
    health = admission.engine_health(engine)
    if health.status == "ready":
        return  # its jobs wait for a worker; the job view says so
    command = worker_command(engine, admission.settings.image_engine)
    raise EngineOffline(
        f"engine '{engine}' cannot run jobs now: no worker serves it and its server is not available "
        f"({health.detail})",
        remediation=[
            f"Start the {engine} server, then a worker for it: `{command}` "
            "(`kitty-images up` starts one when its URL is set).",
            "GET /api/images/engines shows every engine's state; `kitty-images doctor` says what to fix.",
            "Or submit the request with another engine.",
        ],
    )


def submit(body: GenerateRequest, admission: Admission) -> Admitted:
    """Admit a generate request; its preset's engine preference and pipeline steps apply first.
    A storyboard's spec is its first shot's; the other shots take its seed."""
    a = admission
    body = with_preset_defaults(body, preset_book(a.settings.presets_file), partial(can_run, admission=a))
    first = shot_request(body, body.beats[0]) if body.beats else body
    return admit(
        body,
        partial(resolve_spec, first, a.registry, a.settings, a.store),
        admission,
        plan=partial(plan_request, body, a),
    )


def shot_request(body: GenerateRequest, beat: str) -> GenerateRequest:
    """A storyboard's shot as a request of its own: the beat before the shared prompt."""
    return body.model_copy(update={"prompt": shot_prompt(beat, body.prompt)})


def plan_request(body: GenerateRequest, admission: Admission, spec: RenderSpec) -> list[PlannedStep]:
    """The jobs `body` makes when it is more than one (`spec` is its first's): a pipeline's steps
    after the render, or a storyboard's shots (one seed: `spec`'s) and contact sheet."""
    a = admission
    if not body.beats:
        return plan_pipeline(spec, body.pipeline, a.registry)
    shots = [spec]
    for beat in body.beats[1:]:
        shot = shot_request(body, beat).model_copy(update={"seed": spec.seed})
        shots.append(resolve_spec(shot, a.registry, a.settings, a.store))
    return plan_storyboard(shots, body.beats, body.prompt, body.pipeline, a.registry)


def can_run(engine: str, *, admission: Admission) -> bool:
    """Whether `engine` can take a job now: a live worker serves it, or its server answers (its jobs
    then wait for a worker that `kitty-images up` starts). Picks a preset's preferred engine."""
    if admission.queue.live_workers(engine) > 0:
        return True
    if is_local_engine(engine) or admission.engine_health is None:
        return False
    return admission.engine_health(engine).status == "ready"


def rerun(body: RerunRequest, admission: Admission) -> Admitted:
    """Admit the stored request of an image again, through the same checks as a new one: a key of a
    lower tier cannot re-run what only a higher one may render."""
    a = admission
    if a.store is None:
        raise ValueError("a re-run reads the image's sidecar: Admission.store is required")
    if a.ownership is not None:
        a.ownership.require_image(a.caller, body.key)
    return admit(body, partial(rerun_spec, body, a.registry, a.settings, a.store), admission)


def upscale(body: UpscaleRequest, admission: Admission) -> Admitted:
    """Admit making a stored image larger, as a new image: only a caller who may see the image may,
    and the result's size is held to the caller's tier like a render's."""
    a = admission
    if a.store is None:
        raise ValueError("an upscale reads the image's sidecar: Admission.store is required")
    if a.ownership is not None:
        a.ownership.require_image(a.caller, body.key)
    return admit(body, partial(resolve_upscale, body, a.registry, a.settings, a.store), admission)


RETRYABLE = frozenset({JobStatus.ERROR, JobStatus.CANCELED})


def retry_job(job_id: str, body: RetryRequest, admission: Admission) -> Admitted:
    """A failed or canceled job of the caller's, enqueued again as a new job with `body`'s changes,
    through every check a new request passes."""
    a = admission
    record = a.queue.pipeline_record(job_id, a.caller)
    if record is not None:
        return resume_pipeline(record, body, admission)
    job = a.queue.fetch_visible(job_id, a.caller)
    status = a.queue.view(job_id).status
    if status not in RETRYABLE:
        raise ValidationFailed(
            f"job '{job_id}' is {status.value}: only a failed or canceled job can be retried",
            remediation=["Re-run one of its images instead: POST /api/images/rerun with the image's key."],
        )
    changes = body.model_dump(exclude_none=True)

    def resolve() -> RenderSpec:
        spec = a.queue.spec_of(job)
        changed = RenderSpec.model_validate({**spec.model_dump(), **changes})
        if changed.workflow is not None and not descriptor_for(changed.engine).capabilities.raw_workflow:
            raise ValidationFailed(f"the job's raw workflow cannot run on the {changed.engine} engine")
        return changed

    return admit(body, resolve, admission)


def resume_pipeline(record: PipelineRecord, body: RetryRequest, admission: Admission) -> Admitted:
    """A failed or canceled pipeline run on from the step that stopped it, the steps before it not
    redone; its images were counted when the pipeline was admitted, and nothing about it may change."""
    changes = body.model_dump(exclude_none=True)
    if changes:
        raise ValidationFailed(
            f"job '{record.id}' is a pipeline: it runs on from the step that stopped it as it was, "
            f"without changes ({', '.join(sorted(changes))})",
            remediation=["Retry with an empty body, or submit the request again with the changes."],
        )
    with redis_errors():
        retry_pipeline(admission.queue, record)
    return Admitted(record.id, admission.queue.view(record.id).status)


def admit(
    body: BaseModel,
    resolve: Callable[[], RenderSpec],
    admission: Admission,
    plan: Callable[[RenderSpec], list[PlannedStep]] | None = None,
) -> Admitted:
    """Claim the Idempotency-Key for `body`, `resolve` it into a spec (and `plan` the pipeline it
    makes, if any), check the caller's ceilings, count its quota and enqueue; `resolve` and `plan`
    run only when the key is not a replay."""
    caller, idempotency_key = admission.caller, admission.idempotency_key
    queue, quotas, idempotency = admission.queue, admission.quotas, admission.idempotency
    claim: Claim | None = None
    if idempotency_key is not None:
        key = check_idempotency_key(idempotency_key)
        # Claimed before anything else, so a replay costs no quota and sees no newer refusal.
        outcome = idempotency.claim(scope_of(caller), key, fingerprint(body))
        if isinstance(outcome, Replay):
            return Admitted(outcome.job_id, queue.view(outcome.job_id).status, replayed=True)
        claim = outcome
    try:
        spec = resolve()
        if admission.ownership is not None:
            admission.ownership.require_inputs(caller, spec)
        steps = plan(spec) if plan is not None else []
        for checked in [step.spec for step in steps] or [spec]:  # a plan's first job is `spec`
            check_prompt(checked, admission.settings)  # IMAGES_PROMPT_BLOCKLIST (a storyboard's beats too)
            check_ceilings(checked, caller, admission.settings)
        check_model_tier(spec, caller, admission.registry)
        check_servable(spec.engine, admission)
        # Every pipeline job stores images of its own: each counts.
        reservation = quotas.reserve(caller, images_stored(steps) if steps else spec.num_images)
        try:
            if steps:
                owner = caller.key_id if caller else None
                job_id = enqueue_pipeline(queue, steps, priority=has_priority(caller), key_id=owner)
            else:
                job_id = queue.enqueue(spec, priority=has_priority(caller))
        except BaseException:
            _best_effort("quota refund", partial(quotas.refund, reservation))
            raise
    except BaseException:
        if claim is not None:
            _best_effort("idempotency release", partial(idempotency.release, claim))
        raise
    JOBS_ENQUEUED.labels(engine=spec.engine).inc()
    if claim is not None:
        # The job exists: answer with it even if the record cannot be written (the claim then
        # expires in a minute and the key is free again).
        _best_effort("idempotency record", partial(idempotency.complete, claim, job_id))
    return Admitted(job_id, JobStatus.QUEUED)
