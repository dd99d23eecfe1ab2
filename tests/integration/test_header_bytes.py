"""Request headers holding bytes that are not ASCII (``caf\\xe9``), sent over one keep-alive connection
to the gateway and the images-service served as in production (uvicorn with h11): never a 500, the
bytes reach the images-service unchanged, and the connection carries the next request."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from services.common.server import server_config
from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.app import create_app as create_images_service
from tests.support.asgi_server import serve_asgi
from tests.support.harness import make_settings
from tests.support.servers import free_port

STARTUP_TIMEOUT_S = 10.0

LATIN_1 = b"caf\xe9"
UTF_8 = "café".encode()

UNICODE_DOWNLOAD = "attachment; filename*=UTF-8''caf%C3%A9.png; filename=\"café.png\"".encode()
"""A Content-Disposition an upstream may send: UTF-8 bytes in the legacy ``filename``."""


@contextmanager
def served(app: Any) -> Iterator[int]:
    """`app` under uvicorn with the options of its command (`server_config`: h11); yields the port."""
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)


class RecordingUpstream:
    """A stand-in images-service that keeps each request's raw headers and answers 200 with a
    UTF-8 Content-Disposition."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[bytes, bytes]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.seen.append(list(scope["headers"]))
        body = b'{"items":[]}'
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"content-disposition", UNICODE_DOWNLOAD),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


Headers = dict[str, str | bytes]


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, headers: Headers, body: bytes = b""
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on `conn` (bytes header values go out as they are), its response read whole."""
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    return response, response.read()


# --- the gateway, with a stand-in upstream ------------------------------------------------------
@pytest.fixture
def upstream() -> RecordingUpstream:
    return RecordingUpstream()


@pytest.fixture
def gateway_port(upstream: RecordingUpstream) -> Iterator[int]:
    with serve_asgi(upstream) as base:
        settings = GatewaySettings(IMAGES_BASE=base, _env_file=None)  # type: ignore[call-arg]
        with served(create_gateway(settings)) as port:
            yield port


@pytest.mark.parametrize("value", [LATIN_1, UTF_8], ids=["latin-1", "utf-8"])
@pytest.mark.parametrize("name", ["X-Anything", "Idempotency-Key"])
def test_the_gateway_forwards_non_ascii_header_bytes_unchanged_and_keeps_the_connection(
    gateway_port: int, upstream: RecordingUpstream, name: str, value: bytes
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=10)
    try:
        first, _ = exchange(conn, "GET", "/api/images/latest", {name: value})
        sock = conn.sock
        second, body = exchange(conn, "GET", "/api/images/latest", {})
        assert sock is not None and conn.sock is sock, "the connection was closed after the first answer"
    finally:
        conn.close()

    assert first.status == 200
    assert (name.lower().encode(), value) in upstream.seen[0]
    assert second.status == 200 and json.loads(body) == {"items": []}


def test_the_gateway_relays_response_header_bytes_unchanged(gateway_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=10)
    try:
        response, _ = exchange(conn, "GET", "/api/images/latest", {})
    finally:
        conn.close()
    # http.client decodes header values as latin-1, so encoding back yields the bytes on the wire.
    assert response.getheader("content-disposition", "").encode("latin-1") == UNICODE_DOWNLOAD


# --- the images-service, alone and behind the gateway -------------------------------------------
@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[dict[str, int]]:
    """The images-service (real Redis, filesystem store) and a gateway in front, both served."""
    with served(create_images_service(make_settings(tmp_path, redis_url))) as service_port:
        settings = GatewaySettings(IMAGES_BASE=f"http://127.0.0.1:{service_port}", _env_file=None)  # type: ignore[call-arg]
        with served(create_gateway(settings)) as gateway_port:
            yield {"images-service": service_port, "gateway": gateway_port}


@pytest.mark.parametrize("value", [LATIN_1, UTF_8], ids=["latin-1", "utf-8"])
@pytest.mark.parametrize("target", ["images-service", "gateway"])
def test_a_non_ascii_idempotency_key_is_a_400_and_the_connection_goes_on(
    deployment: dict[str, int], target: str, value: bytes
) -> None:
    generate = json.dumps({"prompt": "a red fox"}).encode()
    json_type = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", deployment[target], timeout=10)
    try:
        refused, refusal = exchange(
            conn, "POST", "/api/images/generate", {**json_type, "Idempotency-Key": value}, generate
        )
        sock = conn.sock
        accepted, job = exchange(
            conn, "POST", "/api/images/generate", {**json_type, "Idempotency-Key": "k-1"}, generate
        )
        assert sock is not None and conn.sock is sock, "the connection was closed after the refusal"
    finally:
        conn.close()

    assert refused.status == 400
    error = json.loads(refusal)["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "Idempotency-Key" in error["message"] and "ASCII" in error["message"]
    assert error["remediation"]
    assert accepted.status == 202 and json.loads(job)["status"] == "queued"
