"""The images-service's security as a client meets it, against a real Redis and the filesystem store:
API keys (both header forms, the event stream's query key, exempt routes, never stored), duplicate
submits under an Idempotency-Key, per-key tiers and daily quotas, and hostile bodies."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from services.common.api_keys import key_id_of
from services.common.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES
from services.common.logs import JsonFormatter
from services.images_service.errors import QueueUnavailable
from services.images_service.idempotency import IDEMPOTENCY_TTL_S
from services.images_service.models import register_model
from tests.support.harness import MODEL, Harness, make_settings
from tests.support.workers import idle_worker

FREE_KEY = "free-7c1d0b9e4a2f48d6"
PRO_KEY = "pro-0f3e6a8b2c4d4e11"
ENTERPRISE_KEY = "ent-5a9c3e7f1b2d4c88"
PLAIN_KEY = "plain-2b4d6f8a0c1e4f33"
"""A key listed without a tier: it gets IMAGES_DEFAULT_TIER (pro)."""

ALL_KEYS = (FREE_KEY, PRO_KEY, ENTERPRISE_KEY, PLAIN_KEY)
API_KEYS = f"{FREE_KEY}:free, {PRO_KEY}:pro, {ENTERPRISE_KEY}:enterprise, {PLAIN_KEY}"
CHALLENGE = 'Bearer realm="kitty-images"'


def key_header(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(api_keys=API_KEYS)


def submit(harness: Harness, key: str | None = PRO_KEY, **body: Any) -> httpx.Response:
    headers = key_header(key) if key else {}
    headers.update(body.pop("headers", {}))
    return harness.client.post("/api/images/generate", json={"prompt": "a red fox", **body}, headers=headers)


def queued(harness: Harness, engine: str = "diffusers", *, priority: bool | None = None) -> int:
    """Jobs waiting for `engine`: in both its queues, or only the priority (True) or normal one."""
    redis = Redis.from_url(harness.settings.redis_url)
    which = (True, False) if priority is None else (priority,)
    names = [harness.settings.queue_name(engine, priority=p) for p in which]
    try:
        return sum(Queue(name, connection=redis, serializer=JSONSerializer).count for name in names)
    finally:
        redis.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


# --- API keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong-key"},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {PRO_KEY}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": PRO_KEY + "x"},
        {"X-API-Key": PRO_KEY[:-1]},
    ],
    ids=["none", "wrong-header", "wrong-bearer", "basic-scheme", "empty-bearer", "longer", "prefix"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/images/latest"),
        ("POST", "/api/images/generate"),
        ("GET", "/api/images/jobs/abc"),
        ("GET", "/api/images/jobs/abc/events"),
        ("GET", "/api/images/no-such-route"),
    ],
)
def test_missing_or_wrong_key_is_401_with_a_challenge(
    secured: Harness, headers: dict[str, str], method: str, path: str
) -> None:
    response = secured.client.request(method, path, headers=headers, json={"prompt": "x"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(CHALLENGE)
    error = error_of(response)
    assert error["code"] == "UNAUTHORIZED"
    assert any("X-API-Key" in step for step in error["remediation"])
    assert response.headers["x-request-id"]
    assert PRO_KEY not in response.text
    assert queued(secured) == 0


def test_a_refused_key_is_named_invalid_a_missing_one_required(secured: Harness) -> None:
    missing = secured.client.get("/api/images/latest")
    wrong = secured.client.get("/api/images/latest", headers=key_header("nope"))

    assert missing.headers["www-authenticate"] == CHALLENGE
    assert error_of(missing)["message"] == "an API key is required"
    assert wrong.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_token"'
    assert error_of(wrong)["message"] == "the API key is not valid"


@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize(
    "form",
    [key_header, bearer, lambda k: {"authorization": f"bearer {k}"}],
    ids=["x-api-key", "bearer", "lowercase-bearer"],
)
def test_every_configured_key_works_in_either_header(
    secured: Harness, key: str, form: Callable[[str], dict[str, str]]
) -> None:
    assert secured.client.get("/api/images/latest", headers=form(key)).status_code == 200
    response = secured.client.post("/api/images/generate", json={"prompt": "x"}, headers=form(key))
    assert response.status_code == 202, response.text


def test_probes_metrics_and_signed_downloads_need_no_key(secured: Harness) -> None:
    assert secured.client.get("/healthz").status_code == 200
    assert secured.client.get("/readyz").status_code == 200
    assert secured.client.get("/metrics").status_code == 200

    job_id = submit(secured).json()["job_id"]
    secured.work()
    png_key = secured.client.get(f"/api/images/jobs/{job_id}", headers=key_header(PRO_KEY)).json()["result"][
        "png_key"
    ]
    ref = secured.client.post("/api/images/select", json={"key": png_key}, headers=key_header(PRO_KEY))
    url = ref.json()["imageRef"]["downloadUrl"]

    download = secured.client.get(url)  # no key: the link's signature is its authority
    assert download.status_code == 200 and download.content == secured.store.get(png_key)
    forged = secured.client.get(url.replace("sig=", "sig=0"))
    assert forged.status_code == 401 and error_of(forged)["code"] == "UNAUTHORIZED"
    assert forged.headers["www-authenticate"] == CHALLENGE


class LogLines(logging.Handler):
    """Every record any logger writes, formatted as the services write them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    handler = LogLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_the_event_stream_alone_takes_the_key_as_a_query_parameter(
    secured: Harness, log_lines: LogLines
) -> None:
    job_id = submit(secured).json()["job_id"]
    assert (
        secured.client.post(f"/api/images/jobs/{job_id}/cancel", headers=bearer(PRO_KEY)).status_code == 200
    )

    stream = secured.client.get(f"/api/images/jobs/{job_id}/events", params={"api_key": PRO_KEY})
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert '"status":"canceled"' in stream.text

    for path in (f"/api/images/jobs/{job_id}", "/api/images/latest", f"/api/images/jobs/{job_id}/cancel"):
        method = "POST" if path.endswith("cancel") else "GET"
        response = secured.client.request(method, path, params={"api_key": PRO_KEY})
        assert response.status_code == 401, path
    for wrong_key in ("nope", "\u20ac", ""):
        wrong = secured.client.get(f"/api/images/jobs/{job_id}/events", params={"api_key": wrong_key})
        assert wrong.status_code == 401, wrong_key

    # What the requests logged (the refusals included) never holds the key.
    assert log_lines.lines and not any(PRO_KEY in line for line in log_lines.lines)


def test_keys_are_stored_nowhere_only_their_id(secured: Harness) -> None:
    first = submit(secured, PRO_KEY).json()["job_id"]
    second = secured.client.post(
        "/api/images/generate",
        json={"prompt": "a blue fox"},
        headers={**bearer(ENTERPRISE_KEY), "Idempotency-Key": "k-1"},
    ).json()["job_id"]
    secured.work()

    stored = b""
    for job_id, owner in ((first, PRO_KEY), (second, ENTERPRISE_KEY)):  # each key sees its own job
        result = secured.client.get(f"/api/images/jobs/{job_id}", headers=key_header(owner)).json()[
            "result"
        ]
        stored += secured.store.get(result["png_key"]) + secured.store.get(result["meta_key"])

    redis = Redis.from_url(secured.settings.redis_url)
    try:
        for name in redis.scan_iter("*"):
            stored += name + dump_redis_value(redis, name)
    finally:
        redis.close()
    for key in ALL_KEYS:
        assert key.encode() not in stored
    assert b"rq:job:" + first.encode() in stored  # the scan did see the job hashes


def dump_redis_value(redis: Redis, name: bytes) -> bytes:
    kind = redis.type(name)
    if kind == b"string":
        return bytes(redis.get(name) or b"")
    if kind == b"hash":
        return b"".join(k + v for k, v in redis.hgetall(name).items())
    if kind == b"list":
        return b"".join(redis.lrange(name, 0, -1))
    if kind == b"set":
        return b"".join(redis.smembers(name))
    if kind == b"zset":
        return b"".join(redis.zrange(name, 0, -1))
    return b""


def test_keys_are_off_by_default(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    assert harness.client.get("/api/images/latest").status_code == 200
    assert submit(harness, None).status_code == 202


# --- duplicate submits --------------------------------------------------------------------------
def idem(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def test_an_idempotency_key_replays_the_same_job_for_a_day(secured: Harness) -> None:
    first = submit(secured, headers=idem("order-42"), seed=7)
    again = submit(secured, headers=idem("order-42"), seed=7)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() == {"job_id": first.json()["job_id"], "status": "queued"}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert queued(secured) == 1

    redis = Redis.from_url(secured.settings.redis_url)
    try:
        [record] = list(redis.scan_iter("*idempotency*"))
        assert IDEMPOTENCY_TTL_S - 60 < redis.ttl(record) <= IDEMPOTENCY_TTL_S
    finally:
        redis.close()

    secured.work()
    replay = submit(secured, headers=idem("order-42"), seed=7)
    assert replay.json() == {"job_id": first.json()["job_id"], "status": "done"}  # the current status
    assert len(secured.engine.calls) == 1


def test_the_same_idempotency_key_of_another_caller_is_another_job(secured: Harness) -> None:
    mine = submit(secured, PRO_KEY, headers=idem("shared"))
    theirs = submit(secured, ENTERPRISE_KEY, headers=idem("shared"))
    assert mine.json()["job_id"] != theirs.json()["job_id"]
    assert "idempotent-replayed" not in theirs.headers


def test_an_idempotency_key_reused_for_another_request_is_409(secured: Harness) -> None:
    assert submit(secured, headers=idem("k"), prompt="a fox").status_code == 202
    response = submit(secured, headers=idem("k"), prompt="a wolf")

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert "different request" in error["message"]
    assert queued(secured) == 1


def test_field_order_and_explicit_defaults_are_the_same_request(secured: Harness) -> None:
    headers = {**key_header(PRO_KEY), **idem("same"), "content-type": "application/json"}
    first = secured.client.post(
        "/api/images/generate", content=b'{"prompt": "a fox", "num_images": 1}', headers=headers
    )
    second = secured.client.post(
        "/api/images/generate", content=b'{"num_images":1,"prompt":"a fox"}', headers=headers
    )
    assert second.json()["job_id"] == first.json()["job_id"]
    third = secured.client.post("/api/images/generate", content=b'{"prompt":"a fox"}', headers=headers)
    assert third.json()["job_id"] == first.json()["job_id"]


@pytest.mark.parametrize(
    "value",
    ["", "x" * 201, "caf\xe9", "tab\there", "bell\x07"],
    ids=["empty", "long", "latin1", "tab", "ctl"],
)
def test_malformed_idempotency_keys_are_400(secured: Harness, value: str) -> None:
    response = submit(secured, headers={"Idempotency-Key": value.encode("latin-1")})  # type: ignore[dict-item]
    assert response.status_code == 400
    assert error_of(response)["code"] == "VALIDATION_ERROR"
    assert "Idempotency-Key" in error_of(response)["message"]
    assert queued(secured) == 0


def test_idempotency_keys_at_the_limits_are_accepted(secured: Harness) -> None:
    assert submit(secured, headers=idem("x" * 200)).status_code == 202
    assert submit(secured, headers=idem("~ !")).status_code == 202


def slow_enqueue(harness: Harness, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    queue = harness.client.app.state.queue
    original = queue.enqueue

    def enqueue(spec: Any, **options: Any) -> str:
        time.sleep(delay_s)
        return str(original(spec, **options))

    monkeypatch.setattr(queue, "enqueue", enqueue)


def test_two_concurrent_identical_submits_make_one_job(
    secured: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_enqueue(secured, monkeypatch, 0.3)
    start = threading.Barrier(2)

    def send(_: int) -> httpx.Response:
        start.wait()
        return submit(secured, headers=idem("double-click"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(send, range(2)))

    assert [r.status_code for r in responses] == [202, 202]
    assert responses[0].json()["job_id"] == responses[1].json()["job_id"]
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == ["", "true"]
    assert queued(secured) == 1


def test_a_duplicate_that_cannot_wait_for_the_first_is_409_in_progress(
    secured: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_enqueue(secured, monkeypatch, 1.0)
    monkeypatch.setattr(secured.client.app.state.idempotency, "wait_s", 0.1)

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(submit, secured, headers=idem("slow"))
        time.sleep(0.3)
        second = submit(secured, headers=idem("slow"))
        assert first.result().status_code == 202

    assert second.status_code == 409
    assert "in progress" in error_of(second)["message"]
    assert second.headers["retry-after"] == "1"
    assert submit(secured, headers=idem("slow")).json()["job_id"] == first.result().json()["job_id"]


def test_a_failed_enqueue_frees_the_idempotency_key(
    secured: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = secured.client.app.state.queue

    def down(spec: Any, **options: Any) -> str:
        raise QueueUnavailable("the job queue (Redis) is not reachable: test")

    with monkeypatch.context() as patch:
        patch.setattr(queue, "enqueue", down)
        assert submit(secured, headers=idem("retry-me")).status_code == 503
    response = submit(secured, headers=idem("retry-me"))
    assert response.status_code == 202 and "idempotent-replayed" not in response.headers


def test_a_refused_request_does_not_claim_its_idempotency_key(secured: Harness) -> None:
    assert submit(secured, headers=idem("fix-me"), model="no-such-model").status_code == 400
    assert submit(secured, headers=idem("fix-me"), model="no-such-model").status_code == 400
    assert queued(secured) == 0


def test_idempotency_works_without_keys_too(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    first = submit(harness, None, headers=idem("open"))
    again = submit(harness, None, headers=idem("open"))
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"


# --- tiers and daily quotas ---------------------------------------------------------------------
def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_a_free_keys_51st_image_of_the_day_is_429(secured: Harness) -> None:
    for n in range(50):
        assert submit(secured, FREE_KEY, prompt=f"fox {n}").status_code == 202
    expected = seconds_to_utc_midnight()
    response = submit(secured, FREE_KEY, prompt="one too many")

    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "RATE_LIMITED"
    assert "'free'" in error["message"] and "50 of 50" in error["message"]
    assert error["detail"] == {"tier": "free", "limit": 50, "used": 50, "requested": 1}
    assert any("00:00 UTC" in step for step in error["remediation"])
    assert abs(int(response.headers["retry-after"]) - expected) <= 5
    assert queued(secured) == 50
    # Another key's day is its own.
    assert submit(secured, PRO_KEY).status_code == 202


def test_quota_counts_images_not_jobs(secured: Harness) -> None:
    quotas = secured.client.app.state.quotas
    assert submit(secured, PRO_KEY, num_images=3).status_code == 202
    assert submit(secured, PRO_KEY, num_images=4).status_code == 202
    assert quotas.used(key_id_of(PRO_KEY)) == 7


def test_a_request_that_does_not_fit_counts_nothing(secured: Harness) -> None:
    quotas = secured.client.app.state.quotas
    key_id = key_id_of(PRO_KEY)
    now = datetime.now(UTC)
    redis = Redis.from_url(secured.settings.redis_url)
    try:
        redis.set(quotas.counter_key(key_id, now), 998)
    finally:
        redis.close()

    response = submit(secured, PRO_KEY, num_images=4)
    assert response.status_code == 429
    assert any("at most 2 image(s)" in step for step in error_of(response)["remediation"])
    assert quotas.used(key_id) == 998
    assert submit(secured, PRO_KEY, num_images=2).status_code == 202
    assert quotas.used(key_id) == 1000


def test_the_daily_counter_expires_after_its_day(secured: Harness) -> None:
    submit(secured, FREE_KEY)
    quotas = secured.client.app.state.quotas
    redis = Redis.from_url(secured.settings.redis_url)
    try:
        ttl = redis.ttl(quotas.counter_key(key_id_of(FREE_KEY), datetime.now(UTC)))
    finally:
        redis.close()
    assert seconds_to_utc_midnight() < ttl <= seconds_to_utc_midnight() + 3600 + 5


def test_a_failed_enqueue_refunds_the_quota(secured: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    quotas = secured.client.app.state.quotas
    queue = secured.client.app.state.queue

    def down(spec: Any, **options: Any) -> str:
        raise QueueUnavailable("the job queue (Redis) is not reachable: test")

    with monkeypatch.context() as patch:
        patch.setattr(queue, "enqueue", down)
        response = submit(secured, PRO_KEY, num_images=4)
    assert response.status_code == 503 and error_of(response)["code"] == "QUEUE_UNAVAILABLE"
    assert quotas.used(key_id_of(PRO_KEY)) == 0
    assert submit(secured, PRO_KEY, num_images=4).status_code == 202
    assert quotas.used(key_id_of(PRO_KEY)) == 4


def test_a_replay_costs_no_quota(secured: Harness) -> None:
    for _ in range(3):
        assert submit(secured, FREE_KEY, headers=idem("once")).status_code == 202
    assert secured.client.app.state.quotas.used(key_id_of(FREE_KEY)) == 1


@pytest.mark.parametrize(
    ("key", "body", "tier", "limit"),
    [
        (FREE_KEY, {"width": 1088, "height": 512}, "free", "size"),
        (FREE_KEY, {"steps": 31}, "free", "steps"),
        (FREE_KEY, {"num_images": 2}, "free", "num_images"),
        (PRO_KEY, {"steps": 51}, "pro", "steps"),
        (PLAIN_KEY, {"steps": 51}, "pro", "steps"),
        (ENTERPRISE_KEY, {"steps": 101}, "enterprise", "steps"),
        (PRO_KEY, {"width": 2056, "height": 512}, "pro", "size"),
        (PRO_KEY, {"num_images": 5}, "pro", "num_images"),
        (ENTERPRISE_KEY, {"width": 512, "height": 512, "hires": {"scale": 4.0}, "steps": 20}, None, None),
    ],
)
def test_requests_beyond_the_tier_are_400_naming_tier_and_limit(
    secured: Harness, key: str, body: dict[str, Any], tier: str, limit: str
) -> None:
    response = submit(secured, key, **body)

    if tier is None:  # 512 × hires 4 = 2048: within enterprise, so accepted
        assert response.status_code == 202
        return
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert f"tier '{tier}'" in error["message"]
    assert error["detail"]["tier"] == tier and error["detail"]["limit"] == limit
    assert queued(secured) == 0
    assert secured.client.app.state.quotas.used(key_id_of(key)) == 0


@pytest.mark.parametrize(
    ("key", "body"),
    [
        (FREE_KEY, {"width": 1024, "height": 1024, "steps": 30, "num_images": 1}),
        (PRO_KEY, {"width": 2048, "height": 2048, "steps": 50, "num_images": 4}),
        (ENTERPRISE_KEY, {"width": 4096, "height": 4096, "steps": 100, "num_images": 8}),
    ],
)
def test_requests_at_the_tier_limits_are_accepted(secured: Harness, key: str, body: dict[str, Any]) -> None:
    assert submit(secured, key, **body).status_code == 202


def test_a_model_default_beyond_the_tier_counts_as_asked(secured: Harness) -> None:
    model_dir = secured.settings.models_yaml.parent / MODEL
    register_model(
        secured.settings.models_yaml, "many-steps", {"path": str(model_dir), "defaults": {"steps": 40}}
    )

    response = submit(secured, FREE_KEY, model="many-steps")

    assert response.status_code == 400
    error = error_of(response)
    assert error["detail"] == {"tier": "free", "limit": "steps", "allowed": 30, "requested": 40}
    assert any("default" in step for step in error["remediation"])
    assert submit(secured, FREE_KEY, model="many-steps", steps=30).status_code == 202


def test_a_raw_workflow_is_held_to_the_tier_too(secured: Harness) -> None:
    # A whole graph: a link to a node it lacks is refused before its cost is looked at.
    workflow: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "steps": 40,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["6", 0],
                "latent_image": ["5", 0],
            },
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "fox"}},
    }
    response = submit(secured, FREE_KEY, engine="comfyui", workflow=workflow)
    assert response.status_code == 400
    assert error_of(response)["detail"]["limit"] == "steps"
    assert "'3'" in error_of(response)["message"]
    workflow["3"]["inputs"]["steps"] = 30
    with idle_worker(secured.settings, "comfyui"):  # else: 503 ENGINE_OFFLINE (no worker, no server)
        assert submit(secured, FREE_KEY, engine="comfyui", workflow=workflow).status_code == 202


def test_without_keys_there_are_no_tiers(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    assert submit(harness, None, steps=150, num_images=8, width=4096, height=4096).status_code == 202
    assert (queued(harness, priority=False), queued(harness, priority=True)) == (1, 0)


def test_the_deployments_ceiling_binds_every_caller(harness_with: Callable[..., Harness]) -> None:
    """IMAGES_MAX_SIDE / IMAGES_MAX_IMAGES: what an operator measured its GPUs to render binds
    enterprise keys and keyless callers alike, counting a hires fix at its scaled size."""
    secured = harness_with(api_keys=API_KEYS, max_side=1536, max_images=2)
    for key, body in [
        (ENTERPRISE_KEY, {"width": 2048, "height": 2048}),
        (ENTERPRISE_KEY, {"width": 1024, "height": 1024, "hires": {"scale": 2.0}}),
        (ENTERPRISE_KEY, {"num_images": 3}),
    ]:
        response = submit(secured, key, **body)
        assert response.status_code == 400, body
        error = error_of(response)
        assert error["detail"]["tier"] == "enterprise"
        assert error["detail"]["allowed"] in ("1536×1536", 2)
    assert submit(secured, ENTERPRISE_KEY, width=1536, height=1536, num_images=2).status_code == 202

    open_harness = harness_with(max_side=1024)
    response = submit(open_harness, None, width=1536, height=1024)
    assert response.status_code == 400
    error = error_of(response)
    assert "this deployment allows images of at most 1024×1024" in error["message"]
    assert any("IMAGES_MAX_SIDE" in step for step in error["remediation"])
    assert "tier" not in error["detail"]


def test_a_model_open_to_some_tiers_only(secured: Harness) -> None:
    """models.yaml `tiers:` is HIP-35's per-tier model access: other tiers neither see the model in
    GET /models nor may render with it; an admin key sees every model."""
    model_dir = secured.settings.models_yaml.parent / MODEL
    register_model(
        secured.settings.models_yaml, "studio", {"path": str(model_dir), "tiers": ["pro", "enterprise"]}
    )

    response = submit(secured, FREE_KEY, model="studio")
    assert response.status_code == 400
    error = error_of(response)
    assert error["detail"]["limit"] == "model" and error["detail"]["tier"] == "free"
    assert MODEL in error["detail"]["allowed"] and "studio" not in error["detail"]["allowed"]
    assert queued(secured) == 0
    assert submit(secured, PRO_KEY, model="studio").status_code == 202

    def listed(key: str) -> dict[str, Any]:
        models = secured.client.get("/api/images/models", headers=key_header(key)).json()["models"]
        return {model["name"]: model for model in models}

    assert "studio" not in listed(FREE_KEY)
    assert listed(PRO_KEY)["studio"]["tiers"] == ["pro", "enterprise"]
    assert listed(ENTERPRISE_KEY)[MODEL]["tiers"] is None


def test_pro_and_enterprise_jobs_take_the_priority_queue_and_run_first(secured: Harness) -> None:
    order = [(FREE_KEY, "free"), (PRO_KEY, "pro"), (FREE_KEY, "free again"), (ENTERPRISE_KEY, "enterprise")]
    order += [(PLAIN_KEY, "plain (default tier: pro)")]
    jobs = {submit(secured, key, prompt=prompt).json()["job_id"]: key for key, prompt in order}
    assert (queued(secured, priority=False), queued(secured, priority=True)) == (2, 3)
    metrics = secured.client.get("/metrics", headers=key_header(PRO_KEY)).text
    assert 'images_queue_depth{engine="diffusers"} 5.0' in metrics  # both queues

    secured.work()

    ran = [spec.prompt for spec in secured.engine.calls]
    assert ran == ["pro", "enterprise", "plain (default tier: pro)", "free", "free again"]
    for job_id, key in jobs.items():
        view = secured.client.get(f"/api/images/jobs/{job_id}", headers=key_header(key)).json()
        assert view["status"] == "done"


# --- hostile input ------------------------------------------------------------------------------
def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"] == "request body larger than 1 MB"
    assert response.headers["x-request-id"]


def test_a_body_over_1_mb_is_413_by_its_content_length(secured: Harness) -> None:
    body = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {**key_header(PRO_KEY), "content-type": "application/json"}
    assert_too_large(secured.client.post("/api/images/generate", content=body, headers=headers))
    assert queued(secured) == 0


def test_a_chunked_body_over_1_mb_is_413_while_streaming(secured: Harness) -> None:
    chunks_read = 0

    def chunks() -> Iterator[bytes]:
        nonlocal chunks_read
        yield b'{"prompt": "'
        for _ in range(40):  # 40 × 64 KiB: past the limit after 16
            chunks_read += 1
            yield b"x" * 65536
        yield b'"}'

    headers = {**key_header(PRO_KEY), "content-type": "application/json"}
    response = secured.client.post("/api/images/generate", content=chunks(), headers=headers)
    assert_too_large(response)
    assert "content-length" not in response.request.headers
    assert queued(secured) == 0


def test_a_body_just_under_the_limit_reaches_validation(secured: Harness) -> None:
    body = b'{"prompt": "' + b"x" * (MAX_BODY_BYTES - 100) + b'"}'
    headers = {**key_header(PRO_KEY), "content-type": "application/json"}
    response = secured.client.post("/api/images/generate", content=body, headers=headers)
    assert response.status_code == 400
    assert any(f["field"] == "prompt" for f in error_of(response)["detail"])


def test_headers_past_32_kb_are_431(secured: Harness) -> None:
    headers = {**key_header(PRO_KEY), "X-Filler": "a" * (MAX_HEADER_BYTES + 1)}
    response = secured.client.get("/api/images/latest", headers=headers)
    assert response.status_code == 431 and error_of(response)["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/api/images/generate", "application/x-www-form-urlencoded", b"prompt=a+fox"),
        ("/api/images/generate", "text/plain", b'{"prompt": "a fox"}'),
        ("/api/images/generate", None, b'{"prompt": "a fox"}'),
        ("/api/images/select", "multipart/form-data; boundary=x", b"--x--"),
    ],
)
def test_json_routes_refuse_other_content_types_with_415(
    secured: Harness, path: str, content_type: str | None, body: bytes
) -> None:
    headers = key_header(PRO_KEY)
    if content_type:
        headers["content-type"] = content_type
    response = secured.client.post(path, content=body, headers=headers)

    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "VALIDATION_ERROR"
    assert any("application/json" in step for step in error["remediation"])
    assert queued(secured) == 0


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
def test_json_with_parameters_or_a_json_suffix_is_accepted(secured: Harness, content_type: str) -> None:
    headers = {**key_header(PRO_KEY), "content-type": content_type}
    response = secured.client.post("/api/images/generate", content=b'{"prompt": "a fox"}', headers=headers)
    assert response.status_code == 202, response.text


def test_settings_refuse_a_misspelt_tier_without_naming_the_key(tmp_path: Path, redis_url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(tmp_path, redis_url, api_keys="top-secret-value:enterprize")
    [problem] = caught.value.errors()
    # The message (what `kitty-images doctor` shows) names the entry by position, not by its text.
    assert "#1" in problem["msg"] and "enterprize" in problem["msg"]
    assert "top-secret-value" not in problem["msg"]
    with pytest.raises(ValidationError):
        make_settings(tmp_path, redis_url, default_tier="gold")
