"""The gateway in front of a slow or stopped images-service, over real sockets: the client gets a
504 or 502 with the error JSON within a bounded time, never a hang or a traceback."""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.support.asgi_server import serve_asgi
from tests.support.servers import free_port

UPSTREAM_TIMEOUT_S = 1.0
BOUND_S = 5.0
"""What "within a bounded time" means here: the timeout plus generous slack for a busy machine."""


def slow_upstream() -> FastAPI:
    app = FastAPI()

    @app.get("/api/images/latest")
    async def latest() -> dict[str, list[str]]:
        await asyncio.sleep(30)
        return {"items": []}

    return app


def test_slow_upstream_is_a_504_within_the_timeout() -> None:
    with serve_asgi(slow_upstream()) as base:
        settings = GatewaySettings(IMAGES_BASE=base, GATEWAY_UPSTREAM_TIMEOUT=UPSTREAM_TIMEOUT_S)
        with TestClient(create_app(settings)) as gateway:
            started = time.monotonic()
            response = gateway.get("/api/images/latest")
            elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert UPSTREAM_TIMEOUT_S <= elapsed < BOUND_S


def test_stopped_upstream_is_a_502_at_once() -> None:
    settings = GatewaySettings(IMAGES_BASE=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as gateway:
        started = time.monotonic()
        response = gateway.post("/api/images/generate", json={"prompt": "x"})
        elapsed = time.monotonic() - started
    assert response.status_code == 502
    body = response.json()["error"]
    assert body["code"] == "UPSTREAM_UNAVAILABLE" and body["remediation"]
    assert "Traceback" not in response.text
    assert elapsed < BOUND_S


def test_a_real_client_sees_the_same_through_a_served_gateway() -> None:
    with serve_asgi(slow_upstream()) as base:
        settings = GatewaySettings(IMAGES_BASE=base, GATEWAY_UPSTREAM_TIMEOUT=UPSTREAM_TIMEOUT_S)
        with serve_asgi(create_app(settings), lifespan="on") as gateway_url:
            response = httpx.get(f"{gateway_url}/api/images/latest", timeout=BOUND_S)
    assert response.status_code == 504 and response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
