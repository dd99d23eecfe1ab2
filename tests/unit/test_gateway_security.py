"""The gateway's edge security with a fake images-service behind it: client keys (GATEWAY_API_KEYS),
the credential it sends upstream (IMAGES_API_KEY, else the client's own), exempt routes, 1 MB bodies,
oversized headers on a real server, and logs that never hold a key."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.common.api_keys import ON_BEHALF_HEADER, ApiKey, key_id_of, on_behalf_value
from services.common.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES
from services.common.logs import JsonFormatter
from services.common.server import server_config
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.support.servers import free_port

UPSTREAM = "http://images.test:8089"
CLIENT_KEY = "gw-client-4f1a9c2e7b"
OTHER_CLIENT_KEY = "gw-other-8d3b5e0a1c"
SERVICE_KEY = "svc-gateway-6e2d9a4f0b"
CHALLENGE = 'Bearer realm="kitty-images"'


class Body(httpx.AsyncByteStream):
    """A response body the gateway can stream (a plain ``content=`` body counts as already read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def reply(
    status: int, data: bytes | dict[str, Any], content_type: str = "application/json"
) -> httpx.Response:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return httpx.Response(status, headers={"content-type": content_type}, stream=Body(raw))


class FakeImagesService:
    """An httpx transport standing in for the images-service; records every request it receives
    (MockTransport reads a request's whole body before handing it over)."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path.endswith("/events"):
            return reply(200, b'event: job\ndata: {"status":"done"}\n\n', "text/event-stream")
        if path == "/readyz":
            return reply(200, {"status": "ready"})
        if path.startswith("/api/images/files/"):
            return reply(200, b"\x89PNG", "image/png")
        if path == "/api/images/generate":
            return reply(202, {"job_id": "job-1", "status": "queued"})
        return reply(200, {"items": []})


@pytest.fixture
def upstream() -> FakeImagesService:
    return FakeImagesService()


def gateway_for(upstream: FakeImagesService, **settings: Any) -> TestClient:
    app = create_app(
        GatewaySettings(IMAGES_BASE=UPSTREAM, _env_file=None, **settings),  # type: ignore[call-arg]
        transport=httpx.MockTransport(upstream),
    )
    return TestClient(app)


@pytest.fixture
def secured(upstream: FakeImagesService) -> Iterator[TestClient]:
    with gateway_for(upstream, GATEWAY_API_KEYS=f"{CLIENT_KEY},{OTHER_CLIENT_KEY}:free") as client:
        yield client


@pytest.fixture
def secured_with_service_key(upstream: FakeImagesService) -> Iterator[TestClient]:
    with gateway_for(upstream, GATEWAY_API_KEYS=CLIENT_KEY, IMAGES_API_KEY=SERVICE_KEY) as client:
        yield client


@pytest.fixture
def open_gateway(upstream: FakeImagesService) -> Iterator[TestClient]:
    with gateway_for(upstream) as client:
        yield client


# --- client keys --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {CLIENT_KEY}"}],
    ids=["none", "wrong-header", "wrong-bearer", "basic"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/images/latest"), ("POST", "/api/images/generate"), ("GET", "/api/images/jobs/j/events")],
)
def test_gateway_keys_are_enforced_before_the_upstream_is_called(
    secured: TestClient, upstream: FakeImagesService, headers: dict[str, str], method: str, path: str
) -> None:
    response = secured.request(method, path, headers=headers, json={"prompt": "x"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(CHALLENGE)
    error = response.json()["error"]
    assert error["code"] == "UNAUTHORIZED" and error["remediation"]
    assert response.headers["x-request-id"]
    assert upstream.seen == []


@pytest.mark.parametrize("key", [CLIENT_KEY, OTHER_CLIENT_KEY])
@pytest.mark.parametrize("form", ["X-API-Key", "Authorization"])
def test_each_gateway_key_passes_in_either_header(secured: TestClient, key: str, form: str) -> None:
    headers = {form: key if form == "X-API-Key" else f"Bearer {key}"}
    assert secured.get("/api/images/latest", headers=headers).status_code == 200
    assert secured.post("/api/images/generate", json={"prompt": "x"}, headers=headers).status_code == 202


def test_the_event_stream_alone_takes_the_key_in_the_query(
    secured: TestClient, upstream: FakeImagesService
) -> None:
    stream = secured.get("/api/images/jobs/j/events", params={"api_key": CLIENT_KEY})
    assert stream.status_code == 200 and stream.text.startswith("event: job")

    assert secured.get("/api/images/jobs/j", params={"api_key": CLIENT_KEY}).status_code == 401
    assert secured.get("/api/images/latest", params={"api_key": CLIENT_KEY}).status_code == 401
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/vision",
        "/vision/static/api.js",
        "/api/images/files/images/20240501_120000_ab12cd34.png?expires=1&sig=x",
    ],
)
def test_probes_gallery_and_signed_downloads_need_no_key(secured: TestClient, path: str) -> None:
    response = secured.get(path, follow_redirects=False)
    assert response.status_code in (200, 307), (path, response.text[:200])


def test_dot_segments_do_not_make_a_route_exempt(secured: TestClient, upstream: FakeImagesService) -> None:
    response = secured.get("/api/images/files/%2e%2e/latest")
    assert response.status_code == 401
    assert upstream.seen == []


def test_an_open_gateway_asks_for_nothing(open_gateway: TestClient) -> None:
    assert open_gateway.get("/api/images/latest").status_code == 200


# --- the credential sent upstream ---------------------------------------------------------------
def test_upstream_gets_the_gateways_own_key_instead_of_the_clients(
    secured_with_service_key: TestClient, upstream: FakeImagesService
) -> None:
    secured_with_service_key.get("/api/images/latest", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    secured_with_service_key.post(
        "/api/images/generate", json={"prompt": "x"}, headers={"X-API-Key": CLIENT_KEY}
    )

    for request in upstream.seen:
        assert request.headers.get_list("x-api-key") == [SERVICE_KEY]
        assert "authorization" not in request.headers
        assert CLIENT_KEY not in str(request.url) and CLIENT_KEY.encode() not in request.content


def test_upstream_is_told_whose_request_it_is_and_a_client_cannot_say_so_itself(
    secured_with_service_key: TestClient, upstream: FakeImagesService
) -> None:
    """With its own key upstream the gateway names the caller (X-Kitty-Caller: key id, tier, role)
    so ownership and quotas stay per client; a value the client sent is dropped, not passed on."""
    forged = on_behalf_value(ApiKey.of(OTHER_CLIENT_KEY, "enterprise", is_admin=True))
    secured_with_service_key.get(
        "/api/images/latest", headers={"X-API-Key": CLIENT_KEY, ON_BEHALF_HEADER: forged}
    )
    [request] = upstream.seen
    [named] = request.headers.get_list(ON_BEHALF_HEADER)
    assert named.startswith(key_id_of(CLIENT_KEY) + ";") and named.endswith(";user")
    assert CLIENT_KEY not in named


def test_a_query_key_is_swapped_for_the_gateways_own_upstream(
    secured_with_service_key: TestClient, upstream: FakeImagesService
) -> None:
    response = secured_with_service_key.get(
        "/api/images/jobs/j/events", params={"api_key": CLIENT_KEY, "other": "kept"}
    )

    assert response.status_code == 200
    [request] = upstream.seen
    assert request.url.query == b"other=kept"
    assert request.headers["x-api-key"] == SERVICE_KEY


@pytest.mark.parametrize("gateway_keys", [None, f"{CLIENT_KEY},{OTHER_CLIENT_KEY}"])
def test_without_a_service_key_the_clients_own_credential_passes_through(
    upstream: FakeImagesService, gateway_keys: str | None
) -> None:
    settings = {"GATEWAY_API_KEYS": gateway_keys} if gateway_keys else {}
    with gateway_for(upstream, **settings) as client:
        client.get("/api/images/latest", headers={"X-API-Key": CLIENT_KEY})
        client.get("/api/images/latest", headers={"Authorization": f"Bearer {OTHER_CLIENT_KEY}"})
        client.get("/api/images/jobs/j/events", params={"api_key": CLIENT_KEY})

    by_header, by_bearer, by_query = upstream.seen
    assert by_header.headers["x-api-key"] == CLIENT_KEY
    assert by_bearer.headers["authorization"] == f"Bearer {OTHER_CLIENT_KEY}"
    assert by_query.url.params["api_key"] == CLIENT_KEY  # so per-client quotas work behind the gateway


def test_the_service_key_is_sent_even_when_the_gateway_is_open(upstream: FakeImagesService) -> None:
    with gateway_for(upstream, IMAGES_API_KEY=SERVICE_KEY) as client:
        assert client.get("/api/images/latest").status_code == 200
    assert upstream.seen[0].headers["x-api-key"] == SERVICE_KEY


def test_gateway_settings_refuse_bad_keys_without_printing_them() -> None:
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(GATEWAY_API_KEYS="very-secret-1:platinum", _env_file=None)  # type: ignore[call-arg]
    assert "platinum" in str(caught.value) and "very-secret-1" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(IMAGES_API_KEY="two,keys", _env_file=None)  # type: ignore[call-arg]
    assert "two,keys" not in str(caught.value)


# --- bodies, headers, logs ----------------------------------------------------------------------
def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "VALIDATION_ERROR",
        "message": "request body larger than 1 MB",
        "remediation": response.json()["error"]["remediation"],
        "detail": None,
    }


def test_a_body_over_1_mb_is_413_without_reaching_the_upstream(
    open_gateway: TestClient, upstream: FakeImagesService
) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    assert_too_large(
        open_gateway.post("/api/images/generate", content=body, headers={"content-type": "application/json"})
    )
    assert upstream.seen == []


def test_a_chunked_body_over_1_mb_is_413_while_streaming(
    open_gateway: TestClient, upstream: FakeImagesService
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    response = open_gateway.post(
        "/api/images/generate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_too_large(response)
    assert upstream.seen == []  # the fake reads the whole body before answering; it never got one


def test_a_body_at_the_limit_is_proxied(open_gateway: TestClient, upstream: FakeImagesService) -> None:
    body = b"x" * MAX_BODY_BYTES
    response = open_gateway.post(
        "/api/images/generate", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202
    assert len(upstream.seen[0].content) == MAX_BODY_BYTES


def raw_request(port: int, request: bytes) -> bytes:
    """Send raw bytes, return whatever answer arrived: a server that refuses a request midway may
    reset the connection after its answer, so errors end the reading rather than the test."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


@pytest.fixture
def served_gateway() -> Iterator[int]:
    """The gateway under uvicorn with the options its `gateway` command uses; yields the port."""
    settings = GatewaySettings(IMAGES_BASE="http://127.0.0.1:9", _env_file=None)  # type: ignore[call-arg]
    port = free_port()
    server = uvicorn.Server(server_config(create_app(settings), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=5)


@pytest.mark.parametrize(
    ("header_bytes", "statuses"),
    [(8 * 1024, {200}), (100 * 1024, {400, 431}), (1024 * 1024, {400, 431}), (10 * 1024 * 1024, {400, 431})],
)
def test_absurd_headers_are_refused_gracefully_by_the_server(
    served_gateway: int, header_bytes: int, statuses: set[int]
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Filler: %s\r\n\r\n" % (
        b"a" * header_bytes
    )
    answer = raw_request(served_gateway, request)
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert int(answer.split(b" ", 2)[1]) in statuses, answer[:200]


def test_headers_past_32_kb_are_431_in_the_error_shape(
    open_gateway: TestClient, upstream: FakeImagesService
) -> None:
    # In-process there is no h11 limit in front: the middleware's own check answers.
    response = open_gateway.get("/api/images/latest", headers={"X-Filler": "a" * (MAX_HEADER_BYTES + 1)})
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert upstream.seen == []


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_logs_never_hold_a_key_even_when_things_fail(upstream: FakeImagesService) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    handler = LogLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        app = create_app(
            GatewaySettings(IMAGES_BASE=UPSTREAM, GATEWAY_API_KEYS=CLIENT_KEY, _env_file=None),  # type: ignore[call-arg]
            transport=httpx.MockTransport(broken),
        )
        with TestClient(app) as client:
            client.get("/api/images/jobs/j/events", params={"api_key": "wrong-" + CLIENT_KEY})
            down = client.get("/api/images/jobs/j/events", params={"api_key": CLIENT_KEY})
            client.get("/api/images/latest", headers={"X-API-Key": CLIENT_KEY})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    assert down.status_code == 502
    assert handler.lines
    assert not any(CLIENT_KEY in line for line in handler.lines), handler.lines


def test_the_log_formatter_scrubs_query_keys_whoever_logs_them() -> None:
    record = logging.LogRecord(
        "any", logging.WARNING, __file__, 1, "GET %s failed", ("/x/events?a=1&api_key=s3cret-k&b=2",), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "GET /x/events?a=1&api_key=[redacted]&b=2 failed"
