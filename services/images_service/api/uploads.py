"""`POST /api/images/uploads`: an input image for image-to-image or inpainting, sent as the raw body.

The body is the file itself with its own Content-Type (no multipart: FastAPI would need
python-multipart, and a single file gains nothing from it). The request limits middleware lets this
one route carry 20 MB instead of 1 MB.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from services.common.limits import UPLOAD_ROUTE
from services.contracts import ErrorBody, UploadView

from ..ownership import UploadOwners, owner_of
from ..uploads import UPLOAD_FORMATS, store_upload, upload_format
from .deps import CallerDep, SettingsDep, StoreDep

router = APIRouter(prefix="/api/images", tags=["uploads"])

BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image file itself (PNG, JPEG or WebP, at most 20 MB and 4096 pixels a side).",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in UPLOAD_FORMATS},
    }
}
"""The OpenAPI description of the raw body FastAPI cannot infer from the signature."""


@router.post(
    UPLOAD_ROUTE.removeprefix("/api/images"),
    status_code=201,
    response_model=UploadView,
    responses={code: {"model": ErrorBody} for code in (400, 401, 413, 415, 503)},
    openapi_extra=BINARY_BODY,
)
async def upload(request: Request, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> UploadView:
    """Store an input image; pass the answered `key` as `image` (or `mask`) in a generate request.
    With API keys only the key that uploaded it may use it."""
    content_type = request.headers.get("content-type", "")
    upload_format(content_type)  # a wrong type is refused before 20 MB are read
    data = await request.body()
    # Decoding up to 4096² pixels takes a while: off the event loop.
    view = await run_in_threadpool(store_upload, store, settings, data, content_type)
    owners: UploadOwners = request.app.state.upload_owners
    await run_in_threadpool(owners.record, view.key, owner_of(caller))
    return view
