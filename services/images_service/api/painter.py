"""`/api/painter/*`: HIP-35's simple "Painter" API, a thin layer over `/api/images/generate`. A Painter
request becomes a `GenerateRequest` and goes through the same `submit` (keys, tier ceilings, quota,
Idempotency-Key, ownership, audit) onto the same queue; the answer is read from the same job.

HIP-35 answers a generation with its images, so `POST /api/painter/generate` waits for the job (up to
`wait` seconds, under the gateway's 30 s upstream timeout) and answers 200 with the images' URLs;
a job still running then, or one no worker serves (answered at once), answers 202 with its id, and
`GET /api/painter/jobs/{job_id}` gives the same response once it is done."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError as PydanticValidationError

from services.common.api_keys import ApiKey
from services.contracts import CONTROL_TYPES, ControlInput, ErrorBody, GenerateRequest, JobStatus, JobView
from services.contracts.painter import RANDOM_SEED, PainterImage, PainterRequest, PainterUsage, PainterView

from ..audit import audit_submission
from ..errors import KittyError, ValidationFailed
from ..idempotency import REPLAYED_HEADER
from ..presets import COMMON_NEGATIVES, PRESETS, Preset, preset_book
from ..queue import JobQueue
from ..settings import Settings
from ..storage import Store
from ..submission import submit
from .deps import BaseUrlDep, CallerDep, JsonBody, QueueDep, SettingsDep, StoreDep
from .images import AdmissionDep

log = logging.getLogger("kitty.images.api")

DEFAULT_NEGATIVE_PROMPT = COMMON_NEGATIVES
"""HIP-35's "quality negatives by default": sent when a Painter request has no negative prompt and
no style (a style brings its own negatives, which already include these)."""

PAINTER_WAIT_S = 25.0
"""How long `POST /api/painter/generate` waits for its job by default, and at most: under the
gateway's 30 s upstream timeout, so a slow render answers 202 rather than a gateway 504."""

PAINTER_POLL_S = 0.1
"""How often a waiting Painter call looks at its job (a Redis read; a render step takes longer)."""


router = APIRouter(
    prefix="/api/painter",
    tags=["painter"],
    responses={code: {"model": ErrorBody} for code in (400, 401, 404, 409, 429, 503)},  # type: ignore[arg-type]
)


def controls_of(body: PainterRequest) -> list[ControlInput]:
    """The one ControlNet input a Painter request may carry: `control_image` of `control_type`,
    with the wire's defaults (weight 1 over every step; canny's edge map computed). Either field
    alone is refused: neither says what to do without the other."""
    if body.control_image is None and body.control_type is None:
        return []
    if body.control_image is None or body.control_type is None:
        given, missing = (
            ("control_image", "control_type")
            if body.control_type is None
            else ("control_type", "control_image")
        )
        raise ValidationFailed(
            f"`{given}` needs `{missing}`: a control is a picture and what kind of map it is",
            remediation=[
                f"Send both: `control_image` (an upload's key, POST /api/images/uploads) and "
                f"`control_type` ({', '.join(CONTROL_TYPES)}); or neither.",
            ],
            detail=[{"field": missing, "message": f"required with `{given}`"}],
        )
    return [ControlInput(image=body.control_image, type=body.control_type)]


def to_generate_request(body: PainterRequest, styles: Mapping[str, Preset] = PRESETS) -> GenerateRequest:
    """HIP-35's fields in our names: `cfg_scale` → `cfg`, seed −1 → a random one, `style` → `preset`,
    no negative prompt → the quality negatives, `control_image` + `control_type` → `controls`
    (`reference_image` and `consent` keep their names)."""
    controls = controls_of(body)
    if body.style is not None and body.style not in styles:
        raise ValidationFailed(
            f"unknown style '{body.style}'; the styles are: {', '.join(styles)}",
            remediation=[
                "Name one of the styles, or leave style out. GET /api/images/presets describes them."
            ],
            detail={"styles": list(styles)},
        )
    negative = body.negative_prompt
    if negative is None:
        negative = "" if body.style else DEFAULT_NEGATIVE_PROMPT
    try:
        return GenerateRequest(
            prompt=body.prompt,
            negative_prompt=negative,
            model=body.model,
            width=body.width,
            height=body.height,
            steps=body.steps,
            cfg=body.cfg_scale,
            seed=None if body.seed == RANDOM_SEED else body.seed,
            preset=body.style,
            num_images=body.num_images,
            controls=controls,
            reference_image=body.reference_image,
            consent=body.consent,
        )
    except PydanticValidationError as exc:  # the two schemas share their bounds; this is a backstop
        raise ValidationFailed(f"invalid Painter request: {exc.errors()[0]['msg']}") from exc


def compute_ms(store: Store, meta_key: str) -> int | None:
    """The worker's render time from the image's sidecar; None when the sidecar cannot be read."""
    try:
        timings = json.loads(store.get(meta_key)).get("timings") or {}
    except (KittyError, ValueError) as exc:
        log.debug("painter usage without timings", extra={"key": meta_key, "error": str(exc)})
        return None
    seconds = timings.get("total_s", timings.get("render_s"))
    return round(float(seconds) * 1000) if isinstance(seconds, int | float) else None


def painter_view(
    view: JobView, queue: JobQueue, store: Store, settings: Settings, base_url: str
) -> PainterView:
    """The Painter response of a job: images and usage once done; the job's error once it failed or
    was canceled (a 200 like GET /api/images/jobs/{id}'s: the call worked, the render did not)."""
    if view.status is not JobStatus.DONE or view.result is None:
        return PainterView(
            job_id=view.job_id, status=view.status, waiting_for=view.waiting_for, error=view.error
        )
    # A preset with steps (cinematic's post-processing) made a pipeline: its generate step's spec
    # says what rendered; compute is every step's.
    spec = queue.spec_of(queue.fetch(view.steps[0].job_id if view.steps else view.job_id))
    results = [step.result for step in view.steps or [] if step.result is not None] or [view.result]
    images = [
        PainterImage(
            url=store.presign(image.key, settings.url_ttl_s, base_url=base_url),
            key=image.key,
            width=image.width,
            height=image.height,
            size=f"{image.width}x{image.height}" if image.width and image.height else None,
            seed=image.seed,
            workflow_id=view.job_id,
        )
        for image in view.result.images
    ]
    spent = [compute_ms(store, result.meta_key) for result in results]
    usage = PainterUsage(
        model=spec.model,
        steps=spec.steps,
        compute_ms=sum(ms for ms in spent if ms is not None) if any(ms is not None for ms in spent) else None,
    )
    return PainterView(job_id=view.job_id, status=view.status, images=images, usage=usage)


def answer(painted: PainterView) -> JSONResponse:
    """200 once the job is over (its images, or its error), 202 while it is still on its way."""
    status = 200 if painted.status.is_terminal else 202
    return JSONResponse(painted.model_dump(mode="json"), status_code=status)


def wait_for(queue: JobQueue, job_id: str, caller: ApiKey | None, wait_s: float) -> JobView:
    """The job's view once terminal or after `wait_s`; at once when no worker serves its engine, so
    a client is not held for a render nobody will start (its 202 says what the job waits for)."""
    deadline = time.monotonic() + wait_s
    view = queue.view(job_id, caller)
    if view.status is JobStatus.QUEUED and view.engine and queue.live_workers(view.engine) == 0:
        return view
    while not view.status.is_terminal and time.monotonic() < deadline:
        time.sleep(PAINTER_POLL_S)
        view = queue.view(job_id, caller)
    return view


@router.post("/generate", response_model=PainterView, dependencies=[JsonBody])
def generate(
    body: PainterRequest,
    request: Request,
    admission: AdmissionDep,
    store: StoreDep,
    settings: SettingsDep,
    base_url: BaseUrlDep,
    wait: Annotated[float, Query(ge=0, le=PAINTER_WAIT_S)] = PAINTER_WAIT_S,
) -> JSONResponse:
    """Render HIP-35's Painter request through the images queue and answer with the images (200),
    or, if the job is not done within `wait` seconds, with its id (202) to poll at
    `GET /api/painter/jobs/{job_id}`. `Idempotency-Key` works as on /api/images/generate."""
    generate_request = to_generate_request(body, preset_book(settings.presets_file))
    admitted = audit_submission(request, generate_request, lambda: submit(generate_request, admission))
    view = wait_for(admission.queue, admitted.job_id, admission.caller, wait)
    response = answer(painter_view(view, admission.queue, store, settings, base_url))
    if admitted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


@router.get("/jobs/{job_id}", response_model=PainterView)
def job(
    job_id: str,
    queue: QueueDep,
    caller: CallerDep,
    store: StoreDep,
    settings: SettingsDep,
    base_url: BaseUrlDep,
) -> JSONResponse:
    """A Painter job's response: 200 with the images when done (or with `status` "error" and the
    job's `error`), 202 while queued or rendering. Another key's job is unknown here (404), as on
    /api/images/jobs."""
    return answer(painter_view(queue.view(job_id, caller), queue, store, settings, base_url))
