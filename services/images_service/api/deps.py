"""Dependency aliases: the collaborators `create_app` put on `app.state`, typed for route signatures.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, and a
generate with nine of them spent more time hopping threads than admitting the job. Nothing here
blocks; the one thread hop a route needs is its own (sync) body."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.common.api_keys import ApiKey, caller_of

from ..errors import UnsupportedMediaType
from ..idempotency import IdempotencyStore
from ..models import ModelRegistry
from ..queue import JobQueue
from ..quotas import QuotaLedger
from ..settings import Settings
from ..storage import Store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


async def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_caller(request: Request) -> ApiKey | None:
    """The key this request authenticated with; None when keys are off."""
    return caller_of(request.scope)


async def get_quotas(request: Request) -> QuotaLedger:
    return request.app.state.quotas  # type: ignore[no-any-return]


async def get_idempotency(request: Request) -> IdempotencyStore:
    return request.app.state.idempotency  # type: ignore[no-any-return]


def is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def require_json_body(request: Request) -> None:
    """JSON routes refuse other bodies with 415 up front, rather than a puzzling field error (a form
    post from `curl -d` is the usual case)."""
    content_type = request.headers.get("content-type", "")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"this route takes a JSON body; Content-Type was '{content_type[:100] or 'absent'}'"
        )


async def public_base_url(request: Request) -> str:
    """Where clients reach us: IMAGES_PUBLIC_URL, else the host the gateway says the client used,
    else the URL of this request. Download URLs built from it work through the gateway too."""
    settings: Settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = request.headers.get("x-forwarded-host")
    if host:
        proto = request.headers.get("x-forwarded-proto", request.url.scheme)
        return f"{proto}://{host.split(',')[0].strip()}"
    return str(request.base_url).rstrip("/")


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
StoreDep = Annotated[Store, Depends(get_store)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
BaseUrlDep = Annotated[str, Depends(public_base_url)]
CallerDep = Annotated[ApiKey | None, Depends(get_caller)]
QuotasDep = Annotated[QuotaLedger, Depends(get_quotas)]
IdempotencyDep = Annotated[IdempotencyStore, Depends(get_idempotency)]
JsonBody = Depends(require_json_body)
"""For ``dependencies=[JsonBody]`` on routes that take a JSON body."""
