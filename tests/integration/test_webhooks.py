"""Completion webhooks: a job naming `webhook` gets one POST when it ends, signed with
IMAGES_WEBHOOK_SECRET over ``timestamp.body``; 5xx is retried with backoff, another 4xx is not; only
public http(s) URLs are taken unless private receivers are allowed; the URL's query never reaches a
sidecar."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.images_service import webhooks
from services.images_service.errors import EngineError
from tests.support.asgi_server import serve_asgi
from tests.support.fakes import FakeEngine
from tests.support.harness import MODEL, Harness

SECRET = "whsec-0f1e2d3c4b5a6978"
TOKEN = "tok-5a6b7c8d9e0f1122"


class Receiver:
    """A tiny ASGI app that records each POST and answers from a script of status codes."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.calls: list[tuple[dict[str, str], bytes, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.calls.append((headers, body, scope["query_string"].decode()))
        code = self.answers.pop(0) if self.answers else 200
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wait(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert webhooks.wait_for_deliveries(timeout)


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    stamp = headers["x-kitty-timestamp"]
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-kitty-signature"], f"sha256={expected}")
    assert abs(time.time() - int(stamp)) < 60
    return dict(json.loads(body))


@pytest.fixture
def hooked(harness_with: Callable[..., Harness]) -> Callable[..., Harness]:
    def build(engine: FakeEngine | None = None, **overrides: object) -> Harness:
        values: dict[str, object] = {
            "webhook_secret": SECRET,
            "webhook_allow_private": True,
            "webhook_backoff_s": 0.01,
        }
        return harness_with(engine, **{**values, **overrides})

    return build


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with serve_asgi(app) as base:
        yield app, base


def test_a_done_job_posts_its_result_signed(
    hooked: Callable[..., Harness], receiver: tuple[Receiver, str]
) -> None:
    app, base = receiver
    harness = hooked()
    job_id = harness.generate(model=MODEL, webhook=f"{base}/hook?token={TOKEN}")
    harness.work()
    app.wait(1)

    headers, body, query = app.calls[0]
    event = verified(headers, body)
    assert headers["x-kitty-event"] == "job.done" and query == f"token={TOKEN}"
    assert event["job_id"] == job_id and event["status"] == "done" and event["error"] is None
    view = harness.job(job_id)
    assert event["result"] == view["result"]
    # The webhook's token never reaches the stored sidecar (nor the job's request views).
    sidecar = harness.store.get(view["result"]["meta_key"])
    assert TOKEN not in sidecar.decode() and "webhook" in sidecar.decode()


def test_a_failed_job_posts_its_error(hooked: Callable[..., Harness], receiver: tuple[Receiver, str]) -> None:
    app, base = receiver
    harness = hooked(FakeEngine(fail_with=EngineError("the GPU fell over")))
    job_id = harness.generate(model=MODEL, webhook=f"{base}/hook")
    harness.work()
    app.wait(1)

    headers, body, _ = app.calls[0]
    event = verified(headers, body)
    assert headers["x-kitty-event"] == "job.error"
    assert event["job_id"] == job_id and event["status"] == "error" and event["result"] is None
    assert event["error"]["code"] == "ENGINE_ERROR"
    assert harness.job(job_id)["status"] == "error"


def test_5xx_is_retried_with_backoff_and_4xx_is_not(hooked: Callable[..., Harness]) -> None:
    settings = hooked().settings
    flaky = Receiver([500, 500, 200])
    with serve_asgi(flaky) as base:
        assert webhooks.deliver(f"{base}/hook", {"job_id": "j1", "status": "done"}, settings)
    assert len(flaky.calls) == 3
    assert len({headers["x-kitty-delivery"] for headers, _, _ in flaky.calls}) == 1

    refusing = Receiver([400, 200])
    with serve_asgi(refusing) as base:
        assert not webhooks.deliver(f"{base}/hook", {"job_id": "j2", "status": "done"}, settings)
    assert len(refusing.calls) == 1


def test_a_redirect_is_not_followed(hooked: Callable[..., Harness]) -> None:
    settings = hooked().settings
    receiver = Receiver([302])
    with serve_asgi(receiver) as base:
        assert webhooks.deliver(f"{base}/hook", {"job_id": "j3", "status": "done"}, settings)
    assert len(receiver.calls) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/hook", "only http and https"),
        ("http://127.0.0.1/hook", "loopback, private"),
        ("http://10.0.0.1/hook", "loopback, private"),
        ("http://[::1]:8080/hook", "loopback, private"),
    ],
)
def test_submit_refuses_other_schemes_and_private_hosts(
    hooked: Callable[..., Harness], url: str, reason: str
) -> None:
    harness = hooked(webhook_allow_private=False)
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a fox", "model": MODEL, "webhook": url}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and reason in error["message"] and error["remediation"]


def test_without_a_secret_webhooks_are_refused(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(webhook_allow_private=True)
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a fox", "model": MODEL, "webhook": "http://127.0.0.1:9/h"}
    )
    assert response.status_code == 400 and "IMAGES_WEBHOOK_SECRET" in response.text


def test_a_rerun_of_an_image_made_with_a_webhook_is_a_new_job_without_it(
    hooked: Callable[..., Harness], receiver: tuple[Receiver, str]
) -> None:
    """The sidecar keeps the webhook redacted; a re-run must neither be refused for that blank nor
    post to the redacted URL."""
    app, base = receiver
    harness = hooked()
    job_id = harness.generate(model=MODEL, webhook=f"{base}/hook?token={TOKEN}")
    harness.work()
    app.wait(1)
    key = harness.job(job_id)["result"]["png_key"]
    rerun = harness.client.post("/api/images/rerun", json={"key": key})
    assert rerun.status_code == 202, rerun.text
    harness.work()
    assert harness.job(rerun.json()["job_id"])["status"] == "done"
    assert harness.engine.calls[-1].webhook is None
    assert len(app.calls) == 1  # only the original job's completion was posted
