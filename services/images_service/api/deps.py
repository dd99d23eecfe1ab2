"""Dependency aliases: the collaborators `create_app` put on `app.state`, typed for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..models import ModelRegistry
from ..queue import JobQueue
from ..settings import Settings
from ..storage import Store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


def public_base_url(request: Request) -> str:
    """Where clients reach us: IMAGES_PUBLIC_URL, else the host the gateway says the client used,
    else the URL of this request. Download URLs built from it work through the gateway too."""
    settings = get_settings(request)
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
