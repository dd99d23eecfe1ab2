"""The gateway app factory and its `gateway` entry point: routes, the pooled upstream client's lifetime,
health, metrics and the `/vision` gallery."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.api_keys import ApiKeyMiddleware, KeyRing, warn_if_exposed_without_keys
from services.common.limits import RequestLimitsMiddleware
from services.common.logs import configure_logging
from services.common.request_id import RequestIdMiddleware
from services.common.server import PortUnavailable, serve_http

from . import __version__
from .errors import install_error_handlers
from .proxy import PROXY_METHODS, check_upstream_ready, forward
from .settings import GatewaySettings

log = logging.getLogger("kitty.gateway")

GALLERY_DIR = Path(__file__).parent / "gallery"
"""Static assets of `/vision`: plain HTML and JS, no build step."""

UPSTREAM_MAX_CONNECTIONS = 100
"""Concurrent connections to the images-service; beyond it requests wait for a free one (pool timeout)."""

UPSTREAM_MAX_KEEPALIVE = 20
"""Idle connections kept open to the images-service, so steady traffic skips the TCP handshake."""


GALLERY_PATHS = frozenset({"/", "/vision"})
GALLERY_ASSETS_PREFIX = "/vision/static/"


def is_gallery_path(path: str) -> bool:
    """The gallery's page and static assets load without a key: a browser cannot send one with a
    page load, and the page asks for the key when the API answers 401."""
    return path in GALLERY_PATHS or path.startswith(GALLERY_ASSETS_PREFIX)


def make_upstream_client(
    settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The app's one pooled client towards the images-service."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=UPSTREAM_MAX_CONNECTIONS, max_keepalive_connections=UPSTREAM_MAX_KEEPALIVE
        ),
        # Redirects belong to the caller; an HTTP(S)_PROXY meant for the internet must not catch a local hop.
        follow_redirects=False,
        trust_env=False,
        # One client serves every caller: a cookie one answer set must never ride along with the
        # next caller's request (the caller's own Cookie header is forwarded as sent).
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_http_client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http_client
    return client


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]


def create_app(
    settings: GatewaySettings | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the gateway; ``transport`` replaces the network towards the images-service (tests)."""
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.http_client = make_upstream_client(settings, transport)
        try:
            yield
        finally:
            await app.state.http_client.aclose()

    # The API's schema is the images-service's; the gateway's own would only show a catch-all route.
    app = FastAPI(
        title="KITTY gateway",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keyring = KeyRing.parse(settings.api_keys)
    # Innermost first: the request id wraps the key check (refusals carry it), which wraps the
    # size limits. The caller's ?api_key= stays in the query: the proxy decides what goes upstream.
    app.add_middleware(RequestLimitsMiddleware)
    app.add_middleware(
        ApiKeyMiddleware, keyring=app.state.keyring, extra_exempt=is_gallery_path, strip_query_key=False
    )
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(client: HttpClientDep, settings: SettingsDep) -> JSONResponse:
        return await check_upstream_ready(client, settings)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/vision")

    @app.get("/vision")
    async def vision() -> FileResponse:
        return FileResponse(GALLERY_DIR / "index.html", media_type="text/html")

    app.mount("/vision/static", StaticFiles(directory=GALLERY_DIR), name="vision-static")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, client: HttpClientDep, settings: SettingsDep) -> Response:
        """The images-service's spec: the gateway serves the same API, one hop further."""
        return await forward(request, client, settings)

    @app.api_route("/api/images/{path:path}", methods=PROXY_METHODS, include_in_schema=False)
    async def proxy(request: Request, client: HttpClientDep, settings: SettingsDep) -> Response:
        return await forward(request, client, settings)

    @app.api_route("/api/painter/{path:path}", methods=PROXY_METHODS, include_in_schema=False)
    async def painter_proxy(request: Request, client: HttpClientDep, settings: SettingsDep) -> Response:
        """HIP-35's Painter API; its generate waits up to 25 s, under GATEWAY_UPSTREAM_TIMEOUT's 30."""
        return await forward(request, client, settings)

    return app


def main(argv: list[str] | None = None) -> None:
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(
        prog="gateway", description="Run the KITTY gateway (API proxy + /vision)."
    )
    parser.add_argument("--host", default=settings.host, help="bind address (GATEWAY_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="bind port (GATEWAY_PORT)")
    args = parser.parse_args(argv)
    configure_logging(settings.log_level)
    app = create_app(settings)
    warn_if_exposed_without_keys(log, args.host, app.state.keyring, "GATEWAY_API_KEYS")
    try:
        serve_http(app, args.host, args.port)
    except PortUnavailable as exc:  # one line, not a traceback: the operator only has to move the port
        sys.exit(f"gateway: {exc.explain('GATEWAY_PORT (or --port)')}")


if __name__ == "__main__":
    main()
