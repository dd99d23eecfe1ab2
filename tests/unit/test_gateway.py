"""The gateway as a client sees it: proxied bodies, statuses and headers, failures in the wire's error
shape, one pooled upstream client, health, metrics and the /vision placeholder."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from services.gateway.app import create_app
from services.gateway.metrics import route_template
from services.gateway.proxy import UpstreamStreamResponse
from services.gateway.settings import GatewaySettings

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_BASE = "http://images.test:8089"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4096  # ~1 MiB, every byte value
JOB_EVENTS = [b'event: progress\ndata: {"step": 1, "total": 2}\n\n', b"event: done\ndata: {}\n\n"]


def error_json(code: str, message: str, status: int) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "remediation": ["fix it"], "detail": None}}
    return JSONResponse(body, status_code=status)


def make_upstream() -> FastAPI:
    """A stand-in images-service that records what reached it."""
    app = FastAPI()
    app.state.seen = []
    app.state.ready = True

    async def record(request: Request) -> dict[str, Any]:
        seen = {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": request.headers,
            "body": await request.body(),
        }
        app.state.seen.append(seen)
        return seen

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if app.state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "unavailable", "checks": {"redis": {"status": "error"}}}, status_code=503
        )

    @app.post("/api/images/generate")
    async def generate(request: Request) -> JSONResponse:
        await record(request)
        body = await request.json()
        if not body.get("prompt"):
            return error_json("VALIDATION_ERROR", "prompt must not be empty", 400)
        return JSONResponse({"job_id": "job-1", "status": "queued", "echo": body}, status_code=202)

    @app.get("/api/images/latest")
    async def latest(request: Request) -> JSONResponse:
        await record(request)
        return JSONResponse({"items": []}, headers={"X-Upstream": "latest"})

    @app.get("/api/images/jobs/{job_id}")
    async def job(job_id: str, request: Request) -> JSONResponse:
        await record(request)
        return error_json("JOB_NOT_FOUND", f"no job {job_id}", 404)

    @app.get("/api/images/jobs/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        async def stream() -> Any:
            for event in JOB_EVENTS:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/api/images/files/{key:path}")
    async def download(key: str) -> Response:
        return Response(PNG_BYTES, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    return app


def settings_for(base: str = UPSTREAM_BASE, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(IMAGES_BASE=base, **overrides)


@pytest.fixture
def upstream() -> FastAPI:
    return make_upstream()


@pytest.fixture
def gateway(upstream: FastAPI) -> Iterator[TestClient]:
    app = create_app(settings_for(), transport=httpx.ASGITransport(app=upstream))
    with TestClient(app) as client:
        yield client


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_body_and_status_pass_through(gateway: TestClient, upstream: FastAPI) -> None:
    response = gateway.post("/api/images/generate", json={"prompt": "a red fox", "steps": 4})

    assert response.status_code == 202
    assert response.json() == {
        "job_id": "job-1",
        "status": "queued",
        "echo": {"prompt": "a red fox", "steps": 4},
    }
    [seen] = upstream.state.seen
    assert seen["method"] == "POST"
    assert seen["headers"]["content-type"] == "application/json"


def test_the_painter_api_is_proxied_like_the_images_api(gateway: TestClient, upstream: FastAPI) -> None:
    @upstream.post("/api/painter/generate")
    async def painter(request: Request) -> JSONResponse:
        seen = await request.json()
        return JSONResponse({"job_id": "job-2", "status": "done", "images": [], "echo": seen})

    response = gateway.post("/api/painter/generate?wait=5", json={"prompt": "a fox", "seed": -1})

    assert response.status_code == 200
    assert response.json()["echo"] == {"prompt": "a fox", "seed": -1}


def test_upstream_errors_pass_through_unchanged(gateway: TestClient) -> None:
    bad = gateway.post("/api/images/generate", json={"prompt": ""})
    missing = gateway.get("/api/images/jobs/nope")

    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "VALIDATION_ERROR"
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "JOB_NOT_FOUND",
        "message": "no job nope",
        "remediation": ["fix it"],
        "detail": None,
    }


def test_query_string_and_path_are_forwarded_verbatim(gateway: TestClient, upstream: FastAPI) -> None:
    gateway.get("/api/images/latest?limit=5&q=a%20b&q=c")
    gateway.get("/api/images/jobs/a%20b")

    first, second = upstream.state.seen
    assert first["raw_path"] == "/api/images/latest"
    assert first["query"] == "limit=5&q=a%20b&q=c"
    assert second["raw_path"] == "/api/images/jobs/a%20b"


def test_upstream_response_headers_pass_through(gateway: TestClient) -> None:
    response = gateway.get("/api/images/latest")

    assert response.headers["x-upstream"] == "latest"
    assert response.headers["content-type"] == "application/json"


def test_request_id_is_kept_forwarded_and_echoed(gateway: TestClient, upstream: FastAPI) -> None:
    response = gateway.get("/api/images/latest", headers={"X-Request-ID": "req-42"})

    assert response.headers["x-request-id"] == "req-42"
    assert upstream.state.seen[0]["headers"]["x-request-id"] == "req-42"


def test_request_id_is_made_when_absent_or_unsafe(gateway: TestClient, upstream: FastAPI) -> None:
    plain = gateway.get("/api/images/latest")
    unsafe = gateway.get("/api/images/latest", headers={"X-Request-ID": "x" * 500})

    made = plain.headers["x-request-id"]
    assert len(made) == 32 and made == upstream.state.seen[0]["headers"]["x-request-id"]
    assert unsafe.headers["x-request-id"] not in ("x" * 500, made)


def test_forwarding_headers_are_set_and_hop_headers_dropped(gateway: TestClient, upstream: FastAPI) -> None:
    gateway.get(
        "/api/images/latest",
        headers={
            "Host": "kitty.example:8080",
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "dropped",
            "Proxy-Authorization": "Basic c2VjcmV0",
        },
    )

    headers = upstream.state.seen[0]["headers"]
    assert headers["x-forwarded-host"] == "kitty.example:8080"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"]
    assert headers["host"] == "images.test:8089"
    assert headers["x-custom"] == "kept"
    assert "x-hop-secret" not in headers
    assert "proxy-authorization" not in headers


def test_binary_download_arrives_intact(gateway: TestClient) -> None:
    response = gateway.get("/api/images/files/images/20240501_120000_ab12cd34.png")

    assert response.status_code == 200
    assert response.content == PNG_BYTES
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(PNG_BYTES))
    assert response.headers["cache-control"] == "private, max-age=300"


def test_server_sent_events_pass_through(gateway: TestClient) -> None:
    with gateway.stream("GET", "/api/images/jobs/job-1/events", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = b"".join(r.iter_bytes())
    assert body == b"".join(JOB_EVENTS)


def test_one_pooled_client_serves_every_request(upstream: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    senders: list[int] = []
    original_send = httpx.AsyncClient.send

    async def spy(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> httpx.Response:
        senders.append(id(self))
        return await original_send(self, *args, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", spy)
    app = create_app(settings_for(), transport=httpx.ASGITransport(app=upstream))
    with TestClient(app) as client:
        pooled = app.state.http_client
        for _ in range(3):
            assert client.get("/api/images/latest").status_code == 200
        assert client.get("/readyz").status_code == 200

    assert senders == [id(pooled)] * 4
    assert pooled.is_closed  # closed with the app, not left to the garbage collector


def test_upstream_down_is_a_502_with_remediation() -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    with TestClient(create_app(settings_for(base))) as client:
        response = client.post("/api/images/generate", json={"prompt": "x"})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "UPSTREAM_UNAVAILABLE"
    assert f"images-service at {base} is not reachable" in error["message"]
    assert any("make run" in step for step in error["remediation"])
    assert any("IMAGES_BASE" in step for step in error["remediation"])
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]


def test_upstream_timeout_is_a_504() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with TestClient(create_app(settings_for(), transport=httpx.MockTransport(slow))) as client:
        response = client.get("/api/images/latest")

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "UPSTREAM_TIMEOUT"


def test_unexpected_failure_is_a_500_without_traceback() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("secret internals")

    app = create_app(settings_for(), transport=httpx.MockTransport(broken))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/images/latest", headers={"X-Request-ID": "req-500"})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == "req-500"


def test_unknown_gateway_route_is_a_404_in_the_error_shape(gateway: TestClient) -> None:
    response = gateway.get("/nowhere")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert response.json()["error"]["remediation"]


def test_dot_segments_never_reach_the_upstream(gateway: TestClient, upstream: FastAPI) -> None:
    response = gateway.get("/api/images/%2e%2e/readyz")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    assert upstream.state.seen == []


def test_healthz(gateway: TestClient) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}


def test_readyz_follows_the_upstream(gateway: TestClient, upstream: FastAPI) -> None:
    assert gateway.get("/readyz").status_code == 200

    upstream.state.ready = False
    response = gateway.get("/readyz")

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "UPSTREAM_UNAVAILABLE"
    assert error["detail"]["checks"]["redis"]["status"] == "error"


def test_readyz_is_503_when_upstream_is_down() -> None:
    with TestClient(create_app(settings_for(f"http://127.0.0.1:{closed_port()}"))) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_root_redirects_to_the_gallery(gateway: TestClient) -> None:
    response = gateway.get("/", follow_redirects=False)

    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/vision"


def test_vision_serves_the_gallery_page_and_its_script(gateway: TestClient) -> None:
    page = gateway.get("/vision")
    script = gateway.get("/vision/static/gallery.js")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/vision/static/gallery.js" in page.text
    assert script.status_code == 200
    assert "/api/images/latest" in script.text and "/api/images/select" in script.text


def test_metrics_count_proxied_requests_by_route_template(gateway: TestClient) -> None:
    gateway.get("/api/images/jobs/job-metrics")

    response = gateway.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    # The counters are the process's: other tests' requests may be counted in other lines.
    counted = [
        line
        for line in response.text.splitlines()
        if line.startswith("kitty_gateway_proxied_requests_total{")
        and 'route="/api/images/jobs/{job_id}"' in line
    ]
    assert any('method="GET"' in line and 'status="404"' in line for line in counted), counted
    assert "kitty_gateway_upstream_errors_total" in response.text


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("generate", "/api/images/generate"),
        ("rerun", "/api/images/rerun"),
        ("presets", "/api/images/presets"),
        ("jobs/abc", "/api/images/jobs/{job_id}"),
        ("jobs/abc/events", "/api/images/jobs/{job_id}/events"),
        ("files/images/x.png", "/api/images/files/{key}"),
        ("anything/else/entirely", "/api/images/{path}"),
    ],
)
def test_route_templates_keep_label_cardinality_bounded(path: str, template: str) -> None:
    assert route_template(path) == template


def test_settings_normalise_images_base() -> None:
    assert settings_for("http://127.0.0.1:8089/").images_base == "http://127.0.0.1:8089"
    with pytest.raises(ValueError):
        settings_for("127.0.0.1:8089")


def test_importing_the_gateway_loads_neither_torch_nor_the_images_service() -> None:
    code = (
        "import sys, services.gateway.app; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('services.images_service')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class RecordingStream(httpx.AsyncByteStream):
    """An upstream body that remembers whether it was closed (its pooled connection released)."""

    def __init__(self) -> None:
        self.is_closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first chunk"
        yield b"second chunk"

    async def aclose(self) -> None:
        self.is_closed = True


def test_client_disconnect_mid_stream_releases_the_upstream_body() -> None:
    body = RecordingStream()
    upstream = httpx.Response(200, stream=body, request=httpx.Request("GET", f"{UPSTREAM_BASE}/api/images/x"))
    response = UpstreamStreamResponse(upstream, UPSTREAM_BASE)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "method": "GET"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            raise OSError("client went away")

    with pytest.raises(ClientDisconnect):
        asyncio.run(response(scope, receive, send))
    assert body.is_closed


class BreakingStream(RecordingStream):
    """An upstream body that breaks off after its first chunk."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"items": ['
        raise httpx.ReadError("connection reset by peer")


def gateway_over(handler: Any) -> FastAPI:
    return create_app(settings_for(), transport=httpx.MockTransport(handler))


def test_small_answers_are_sent_whole_and_release_their_connection() -> None:
    bodies: list[RecordingStream] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(RecordingStream())
        return httpx.Response(200, headers={"content-length": "23", "x-upstream": "yes"}, stream=bodies[-1])

    sent: list[Response] = []
    original = Response.__call__

    async def spy(self: Response, scope: Any, receive: Any, send: Any) -> None:
        sent.append(self)
        await original(self, scope, receive, send)

    with pytest.MonkeyPatch.context() as patch, TestClient(gateway_over(handler)) as client:
        patch.setattr(Response, "__call__", spy)
        response = client.get("/api/images/latest")
    assert response.content == b"first chunksecond chunk"
    assert response.headers["content-length"] == "23" and response.headers["x-upstream"] == "yes"
    assert [type(r) for r in sent] == [Response]  # one body message, no stream
    assert bodies[0].is_closed


def test_a_small_answer_broken_off_upstream_is_a_502() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "100"}, stream=BreakingStream())

    with TestClient(gateway_over(handler)) as client:
        response = client.get("/api/images/latest")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"


def test_large_or_open_ended_answers_are_streamed(gateway: TestClient) -> None:
    sent: list[type] = []
    original = UpstreamStreamResponse.__call__

    async def spy(self: UpstreamStreamResponse, scope: Any, receive: Any, send: Any) -> None:
        sent.append(type(self))
        await original(self, scope, receive, send)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UpstreamStreamResponse, "__call__", spy)
        assert gateway.get("/api/images/files/images/20240501_120000_ab12cd34.png").content == PNG_BYTES
        with gateway.stream("GET", "/api/images/jobs/job-1/events") as events:
            assert b"".join(events.iter_bytes()) == b"".join(JOB_EVENTS)
    assert sent == [UpstreamStreamResponse, UpstreamStreamResponse]


def test_a_cookie_set_upstream_never_rides_along_with_the_next_callers_request() -> None:
    cookies_seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cookies_seen.append(request.headers.get("cookie"))
        body = b'{"items": []}'
        headers = {"set-cookie": "session=alice; Path=/", "content-length": str(len(body))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))

    with TestClient(gateway_over(handler)) as client:
        first = client.get("/api/images/latest")
        client.cookies.clear()  # the next caller is someone else
        client.get("/api/images/latest")
        client.get("/api/images/latest", headers={"cookie": "theirs=1"})
    assert first.headers["set-cookie"] == "session=alice; Path=/"  # relayed to its caller
    assert cookies_seen == [None, None, "theirs=1"]
