"""The request path stays cheap: FastAPI runs a plain ``def`` dependency in its thread pool, one hop
per dependency per request, so every dependency of both apps is ``async def`` (a route's own body may
be sync: that is its one hop)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.api import engines, health, images, uploads


def dependencies_of(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from dependencies_of(sub)


def sync_dependencies(routes: Sequence[BaseRoute]) -> list[str]:
    return sorted(
        {
            f"{route.path}: {sub.call.__qualname__}"
            for route in routes
            if isinstance(route, APIRoute)
            for sub in dependencies_of(route.dependant)
            if sub.call is not None and not inspect.iscoroutinefunction(sub.call)
        }
    )


def routes_of(which: str) -> list[BaseRoute]:
    if which == "gateway":
        settings = GatewaySettings(IMAGES_BASE="http://127.0.0.1:9", _env_file=None)  # type: ignore[call-arg]
        return create_gateway(settings).routes
    return [route for module in (images, uploads, engines, health) for route in module.router.routes]


@pytest.mark.parametrize("which", ["images-service", "gateway"])
def test_no_route_has_a_dependency_that_hops_threads(which: str) -> None:
    routes = routes_of(which)
    assert any(isinstance(r, APIRoute) and list(dependencies_of(r.dependant)) for r in routes)
    assert sync_dependencies(routes) == []
