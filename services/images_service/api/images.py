"""`/api/images/*`: generate and re-run, job views and their event stream, cancel, pause, resume and
reorder the queue, latest, select, delete, models, presets, and the filesystem store's signed
downloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from services.common.api_keys import ApiKey
from services.contracts import (
    LATEST_DEFAULT,
    LATEST_MAX,
    AddonInfo,
    ErrorBody,
    GenerateRequest,
    GenerateView,
    ImageRef,
    JobStatus,
    JobsView,
    JobView,
    LatestView,
    LoraInfo,
    ModelInfo,
    ModelsView,
    PresetsView,
    RerunRequest,
    RetryRequest,
    SelectRequest,
    SelectView,
    VideoRef,
)
from services.contracts.schema import QueueView

from ..audit import audit_cancel, audit_event, audit_image, audit_submission
from ..delivery import DEFAULT_QUALITY, FORMATS, DeliveryFormat, convert, copies_of, ensure_copy
from ..errors import KeyNotFound, KittyError, ModelNotFound, Unauthorized, ValidationFailed
from ..gallery import THUMB_SUFFIX, TOKEN_PATTERN, GalleryIndex
from ..idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER
from ..models import ADDON_SECTIONS, AddonEntry
from ..ownership import Ownership, listing_owner
from ..presets import preset_book
from ..previews import PreviewNotFound, preview_key
from ..queue import redis_errors
from ..queue_control import AdminOnly
from ..quotas import models_for_tier
from ..storage import FilesystemStore, Store
from ..storage.keys import (
    MEDIA_SUFFIXES,
    VIDEO_SUFFIX,
    is_video_key,
    meta_key_for,
    poster_key_for,
    validate_image_key,
)
from ..submission import Admission, Admitted, rerun, retry_job, submit
from .collections import CollectionsDep, FindDep
from .deps import (
    BaseUrlDep,
    CallerDep,
    IdempotencyDep,
    JsonBody,
    QueueDep,
    QuotasDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
)

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 429, 503)}

THUMB_URL_TTL_S = 3600
"""Thumbnail links in a listing live an hour: long enough to scroll, short enough to not leak."""

EVENTS_POLL_S = 0.2
"""How often the event stream looks at a job; a denoising step takes longer on any real model."""

EVENTS_KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""

CURSOR_PATTERN = rf"^{TOKEN_PATTERN}$"

MEDIA_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    THUMB_SUFFIX: "image/webp",
    VIDEO_SUFFIX: "video/mp4",
    **{suffix: media for suffix, media, _ in FORMATS.values()},  # delivery copies (.jpg, .webp)
}

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERRORS)  # type: ignore[arg-type]


def gallery_of(request: Request) -> GalleryIndex:
    return request.app.state.gallery  # type: ignore[no-any-return]


def ownership_of(request: Request) -> Ownership:
    return request.app.state.ownership  # type: ignore[no-any-return]


async def admission_of(
    request: Request,
    queue: QueueDep,
    registry: RegistryDep,
    settings: SettingsDep,
    caller: CallerDep,
    quotas: QuotasDep,
    idempotency: IdempotencyDep,
    store: StoreDep,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Admission:
    health = partial(request.app.state.engine_probe.cached_health, settings=settings, registry=registry)
    ownership = ownership_of(request)
    return Admission(
        caller, idempotency_key, queue, registry, settings, quotas, idempotency, store, health, ownership
    )


AdmissionDep = Annotated[Admission, Depends(admission_of)]


@router.post("/generate", status_code=202, response_model=GenerateView, dependencies=[JsonBody])
def generate(
    body: GenerateRequest, request: Request, response: Response, admission: AdmissionDep
) -> GenerateView:
    """Enqueue a render. With an `Idempotency-Key`, the same request under the same key answers
    with the same job for 24 h (and `Idempotent-Replayed: true`). With a `pipeline`, the render
    and each step after it are jobs of their own, and the id answered is the pipeline's: its view
    lists the steps."""
    return accepted(audit_submission(request, body, partial(submit, body, admission)), response)


@router.post("/rerun", status_code=202, response_model=GenerateView, dependencies=[JsonBody])
def rerun_image(
    body: RerunRequest, request: Request, response: Response, admission: AdmissionDep
) -> GenerateView:
    """Enqueue exactly the request stored with image `key` again (its preset already applied), with
    its seed (the same pixels), `seed`, or a fresh one with `new_seed`. Checked like a generate:
    tier ceilings, daily quota, `Idempotency-Key`."""
    return accepted(audit_submission(request, body, partial(rerun, body, admission)), response)


def accepted(admitted: Admitted, response: Response) -> GenerateView:
    if admitted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return GenerateView(job_id=admitted.job_id, status=admitted.status)


@router.get("/jobs/{job_id}", response_model=JobView)
def job(job_id: str, queue: QueueDep, caller: CallerDep) -> JobView:
    return queue.view(job_id, caller)


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def job_events(job_id: str, queue: QueueDep, caller: CallerDep) -> StreamingResponse:
    """Server-sent events: a `job` event with the job view each time it changes, the last one
    terminal (done, error or canceled), then the stream ends."""
    # An unknown job, or another key's: 404 before streaming.
    first = await run_in_threadpool(queue.view, job_id, caller)

    async def stream() -> AsyncIterator[str]:
        view, last, quiet = first, None, 0.0
        while True:
            if view != last:
                yield f"event: job\ndata: {view.model_dump_json()}\n\n"
                last, quiet = view, 0.0
            if view.status.is_terminal:
                return
            await asyncio.sleep(EVENTS_POLL_S)
            quiet += EVENTS_POLL_S
            if quiet >= EVENTS_KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
            view = await run_in_threadpool(queue.view, job_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/jobs/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}}, 404: {"model": ErrorBody}},
)
def job_preview(job_id: str, queue: QueueDep, caller: CallerDep) -> Response:
    """The job's latest live preview, a small WebP (a pipeline's: its latest step's); 404
    ``NOT_FOUND`` while there is none, ``JOB_NOT_FOUND`` for an unknown job or another key's."""
    view = queue.view(job_id, caller)
    candidates = [step.job_id for step in reversed(view.steps)] if view.steps else [job_id]
    with redis_errors():
        for candidate in candidates:
            webp = queue.redis.get(preview_key(queue.settings.queue_prefix, candidate))
            if webp:
                return Response(webp, media_type="image/webp", headers={"Cache-Control": "no-store"})
    raise PreviewNotFound(f"job {job_id} has no preview (yet)")


@router.get("/jobs", response_model=JobsView, response_model_exclude_none=True)
def jobs(
    queue: QueueDep,
    caller: CallerDep,
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=LATEST_MAX)] = LATEST_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,12}(\.\d{1,9})?$")] = None,
    scope: Annotated[Literal["mine", "all"], Query()] = "mine",
) -> JobsView:
    """The caller's jobs newest first, from any client (CLI, gallery, API), with what each asked
    for (secrets redacted), its result or error and its times; `status` filters, `next_cursor`
    pages. An admin key lists everyone's with `scope=all`."""
    everyone = scope == "all"
    views, next_cursor = queue.history(caller, status=status, limit=limit, cursor=cursor, everyone=everyone)
    return JobsView(jobs=views, next_cursor=next_cursor)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=GenerateView, dependencies=[JsonBody])
def retry(
    job_id: str, body: RetryRequest, request: Request, response: Response, admission: AdmissionDep
) -> GenerateView:
    """Submit a failed or canceled job's request again as a new job, with `engine`, `steps`, `width`
    or `height` changed when given; checked like a generate (tier, quota, engine). A pipeline runs
    on from the step that stopped it, under the same id, without changes; the steps before are not
    redone."""
    try:
        admitted = retry_job(job_id, body, admission)
    except KittyError as exc:
        audit_event(request, "retry", outcome="refused", job_id=job_id, error_code=exc.code)
        raise
    audit_event(request, "retry", outcome="accepted", job_id=admitted.job_id, what={"retry_of": job_id})
    return accepted(admitted, response)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel(job_id: str, request: Request, queue: QueueDep, caller: CallerDep) -> JobView:
    """A queued job is removed, a running one stops at its next step; a pipeline's running step
    stops and every later one is removed."""
    return audit_cancel(request, queue.cancel(job_id, caller))


@router.post("/jobs/{job_id}/front", response_model=JobView)
def to_front(job_id: str, queue: QueueDep, caller: CallerDep) -> JobView:
    """Move a queued job before the caller's other queued jobs in its queue; other callers' jobs
    keep their places. An admin key moves any job to the very front of its queue. 409 for a job
    that is not waiting in a queue (running, finished, a pipeline)."""
    return queue.to_front(job_id, caller)


ADMIN_ONLY: dict[int | str, dict[str, object]] = {403: {"model": ErrorBody}}
"""`scope=all` from a key that is not an admin's."""

QueueScope = Annotated[Literal["mine", "all"], Query()]
"""``mine``: the caller's queued jobs; ``all`` (admin keys): the whole queue."""


def is_everyone(caller: ApiKey | None, scope: str) -> bool:
    if scope == "all" and caller is not None and not caller.is_admin:
        raise AdminOnly("only an admin key may pause or resume the whole queue (scope=all)")
    return scope == "all"


@router.get("/queue", response_model=QueueView, response_model_exclude_none=True)
def queue_state(queue: QueueDep, caller: CallerDep) -> QueueView:
    """Whether the caller's queue is paused (and the whole queue), and how many of the caller's
    jobs a worker set aside while paused."""
    return queue.queue_view(caller)


@router.post("/queue/pause", response_model=QueueView, response_model_exclude_none=True, responses=ADMIN_ONLY)
def pause_queue(queue: QueueDep, caller: CallerDep, scope: QueueScope = "mine") -> QueueView:
    """Hold the caller's queued jobs, and those submitted meanwhile, after the running one: each
    keeps its place, and stays listed, queued with `paused: true`, cancelable. With `scope=all`
    (admin keys) every caller's: workers take no new job."""
    return queue.pause(caller, everyone=is_everyone(caller, scope))


@router.post(
    "/queue/resume", response_model=QueueView, response_model_exclude_none=True, responses=ADMIN_ONLY
)
def resume_queue(queue: QueueDep, caller: CallerDep, scope: QueueScope = "mine") -> QueueView:
    """Start the caller's held jobs again, in their places and their order (`resumed`: how many a
    worker had set aside). With `scope=all` (admin keys): the whole queue; each caller's own pause
    stays."""
    return queue.resume(caller, everyone=is_everyone(caller, scope))


@router.get("/latest", response_model=LatestView, response_model_exclude_none=True)
def latest(
    request: Request,
    store: StoreDep,
    base_url: BaseUrlDep,
    caller: CallerDep,
    find: FindDep,
    collections: CollectionsDep,
    limit: Annotated[int, Query(ge=1, le=LATEST_MAX)] = LATEST_DEFAULT,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    scope: Annotated[Literal["mine", "all"], Query()] = "mine",
) -> LatestView:
    """Newest first from the gallery index; `next_cursor` pages to older images. With API keys a
    key lists its own images; an admin key lists everyone's with `scope=all`. Filters (prompt text,
    model, engine, dates, size, favourites, a board, a job's images) and `sort=oldest` walk the
    index a bounded stretch per request: a filtered page may hold fewer than `limit` items, even
    none, and still answer a `next_cursor` to go on with. Each item says whether the caller
    starred it and which of its boards hold it."""
    owner = listing_owner(caller, everyone=scope == "all")
    if find.is_plain:
        items, next_cursor = gallery_of(request).page(limit, cursor, owner=owner)
    else:
        items, next_cursor = collections.find(
            caller,
            find.query,
            limit,
            cursor,
            owner=owner,
            favourite=find.favourite,
            board=find.board,
            oldest_first=find.oldest_first,
        )
    collections.annotate(caller, items)
    for item in items:
        if item.thumb_key:
            item.thumb_url = store.presign(item.thumb_key, THUMB_URL_TTL_S, base_url=base_url)
    return LatestView(items=items, next_cursor=next_cursor)


@router.post("/select", response_model=SelectView, response_model_exclude_none=True, dependencies=[JsonBody])
def select(
    body: SelectRequest,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    base_url: BaseUrlDep,
    caller: CallerDep,
) -> SelectView:
    """An image's `imageRef`, or a video job's clip's `videoRef` (its key ends in ``.mp4``)."""
    key = validate_image_key(body.key, settings.s3_prefix, suffixes=MEDIA_SUFFIXES)
    if store.head(key) is None:
        raise KeyNotFound(f"no {'video' if is_video_key(key) else 'image'} with key '{key}'")
    ownership_of(request).require_image(caller, key)
    audit_image(request, "select", key)
    if is_video_key(key):
        return select_video(key, body, store, settings.url_ttl_s, base_url)
    # A JPEG/WebP copy is made once and cached beside the PNG: an S3 URL can only name an object.
    delivered = ensure_copy(store, key, body.format, body.quality)
    return SelectView(
        imageRef=ImageRef(
            downloadUrl=store.presign(delivered, settings.url_ttl_s, base_url=base_url),
            storageUri=store.storage_uri(delivered),
        )
    )


def select_video(key: str, body: SelectRequest, store: Store, ttl_s: int, base_url: str) -> SelectView:
    if "format" in body.model_fields_set and body.format != "png":
        raise ValidationFailed(
            f"`format` converts an image; '{key}' is a video (MP4)",
            remediation=["Drop `format`: a clip is delivered as its stored MP4."],
        )
    return SelectView(
        videoRef=VideoRef(
            downloadUrl=store.presign(key, ttl_s, base_url=base_url),
            storageUri=store.storage_uri(key),
            posterUrl=store.presign(poster_key_for(key), ttl_s, base_url=base_url),
        )
    )


@router.delete("/items/{key:path}", status_code=204, response_class=Response)
def delete(key: str, request: Request, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> Response:
    """Remove an image, its sidecar, thumbnail and delivery copies from storage and the gallery."""
    key = validate_image_key(key, settings.s3_prefix)
    gallery = gallery_of(request)
    if store.head(key) is None and gallery.get(key) is None:
        raise KeyNotFound(f"no image with key '{key}'")
    ownership_of(request).require_image(caller, key)
    gallery.remove(key)
    for part in (key, meta_key_for(key), key.removesuffix(".png") + THUMB_SUFFIX, *copies_of(store, key)):
        store.delete(part)
    audit_image(request, "delete", key)
    return Response(status_code=204)


@router.get("/models", response_model=ModelsView)
def models(registry: RegistryDep, caller: CallerDep) -> ModelsView:
    """Registered models with their defaults, the LoRAs a request may list and the guided-generation
    add-ons (local paths are not shown). A key sees the models its tier may use; an admin key, all."""
    tier = None if caller is None or caller.is_admin else caller.tier
    allowed = set(models_for_tier(registry, tier))
    entries = {name: entry for name, entry in registry.entries().items() if name in allowed}
    try:
        default = registry.default_name() if entries else None
    except ModelNotFound:
        default = None
    return ModelsView(
        models=[
            ModelInfo(
                name=e.name,
                local=e.is_local,
                refiner=e.refiner,
                defaults=e.defaults,
                description=e.extra.get("description"),
                license=e.license,
                family=e.family,
                kind=e.kind,
                sha256=e.sha256,
                tiers=list(e.tiers) if e.tiers is not None else None,
            )
            for e in entries.values()
        ],
        default=default if default in entries else None,
        loras=[
            LoraInfo(name=lora.name, base=lora.base, description=lora.description)
            for lora in registry.loras().values()
        ],
        **{kind: [addon_info(entry) for entry in registry.addons(kind).values()] for kind in ADDON_SECTIONS},
    )


def addon_info(entry: AddonEntry) -> AddonInfo:
    return AddonInfo(
        name=entry.name,
        base=entry.base,
        type=entry.type,
        scale=entry.scale,
        license=entry.license,
        sha256=entry.sha256,
        description=entry.description,
    )


@router.get("/presets", response_model=PresetsView)
def presets(settings: SettingsDep) -> PresetsView:
    """The presets a request may name in `preset` (the built-in ones and IMAGES_PRESETS_FILE's): goal,
    inputs, template, default size and quality, the quality levels, engine preference, safety notes,
    failure modes and pipeline steps."""
    return PresetsView(presets=[preset.info() for preset in preset_book(settings.presets_file).values()])


@router.get("/files/{key:path}", response_class=Response, include_in_schema=False)
def download(
    key: str,
    store: StoreDep,
    expires: int = 0,
    sig: str = "",
    format: Annotated[DeliveryFormat | None, Query()] = None,  # noqa: A002 - the wire name
    quality: Annotated[int, Query(ge=1, le=100)] = DEFAULT_QUALITY,
) -> Response:
    """The filesystem store's signed download URL (S3 serves its own presigned URLs). `format`
    converts a PNG on the fly (select's `format` caches a copy instead, as S3 needs)."""
    if not isinstance(store, FilesystemStore):
        raise KeyNotFound("downloads are served by the object store; use the imageRef's downloadUrl")
    if not store.verify(key, expires, sig):
        raise Unauthorized(
            "this download link is invalid or has expired",
            remediation=["Ask for a fresh link: POST /api/images/select or `kitty-cli images.select`."],
        )
    suffix = next((s for s in MEDIA_TYPES if key.endswith(s)), None)
    if suffix is None:
        raise ValidationFailed(f"'{key}' is not an image, clip, sidecar, thumbnail or poster")
    data, media_type = store.get(key), MEDIA_TYPES[suffix]
    if format is not None and suffix == ".png":
        data, media_type = convert(data, format, quality), FORMATS[format][1]
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
