"""`/api/images/*`: generate, job views, cancel, latest, select, and the filesystem store's downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from services.contracts import (
    LATEST_DEFAULT,
    LATEST_MAX,
    ErrorBody,
    GenerateRequest,
    GenerateView,
    ImageRef,
    JobView,
    LatestItem,
    LatestView,
    SelectRequest,
    SelectView,
)

from ..errors import KeyNotFound, Unauthorized
from ..metrics import JOBS_ENQUEUED
from ..spec import resolve_spec
from ..storage import FilesystemStore
from ..storage.keys import meta_key_for, validate_image_key
from .deps import BaseUrlDep, QueueDep, RegistryDep, SettingsDep, StoreDep

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 429, 503)}

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERRORS)  # type: ignore[arg-type]


@router.post("/generate", status_code=202, response_model=GenerateView)
def generate(
    body: GenerateRequest, queue: QueueDep, registry: RegistryDep, settings: SettingsDep
) -> GenerateView:
    spec = resolve_spec(body, registry, settings)
    job_id = queue.enqueue(spec)
    JOBS_ENQUEUED.labels(engine=spec.engine).inc()
    return GenerateView(job_id=job_id)


@router.get("/jobs/{job_id}", response_model=JobView)
def job(job_id: str, queue: QueueDep) -> JobView:
    return queue.view(job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel(job_id: str, queue: QueueDep) -> JobView:
    return queue.cancel(job_id)


@router.get("/latest", response_model=LatestView)
def latest(
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=LATEST_MAX)] = LATEST_DEFAULT,
) -> LatestView:
    objects = store.list_latest(settings.s3_prefix, limit)
    return LatestView(
        items=[
            LatestItem(
                key=o.key,
                size=o.size,
                last_modified=o.last_modified.isoformat(),
                meta_key=meta_key_for(o.key),
            )
            for o in objects
        ]
    )


@router.post("/select", response_model=SelectView)
def select(body: SelectRequest, store: StoreDep, settings: SettingsDep, base_url: BaseUrlDep) -> SelectView:
    key = validate_image_key(body.key, settings.s3_prefix)
    if store.head(key) is None:
        raise KeyNotFound(f"no image with key '{key}'")
    return SelectView(
        imageRef=ImageRef(
            downloadUrl=store.presign(key, settings.url_ttl_s, base_url=base_url),
            storageUri=store.storage_uri(key),
        )
    )


@router.get("/files/{key:path}", response_class=Response, include_in_schema=False)
def download(key: str, store: StoreDep, settings: SettingsDep, expires: int = 0, sig: str = "") -> Response:
    """The filesystem store's signed download URL (S3 serves its own presigned URLs)."""
    if not isinstance(store, FilesystemStore):
        raise KeyNotFound("downloads are served by the object store; use the imageRef's downloadUrl")
    if not store.verify(key, expires, sig):
        raise Unauthorized(
            "this download link is invalid or has expired",
            remediation=["Ask for a fresh link: POST /api/images/select or `kitty-cli images.select`."],
        )
    media_type = "application/json" if key.endswith(".json") else "image/png"
    return Response(store.get(key), media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
