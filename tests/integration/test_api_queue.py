"""The images-service against a real Redis and both real stores, with a fake engine in a real
(non-forking, burst) worker: what a client sees from submit to imageRef, and every refusal."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import REGISTRY
from rq import Queue, get_current_job
from rq.serializers import JSONSerializer

from services.common.logs import JsonFormatter
from services.contracts import RenderSpec
from services.images_service.app import create_app
from services.images_service.engines import ProgressFn, RenderResult
from services.images_service.errors import ModelNotFound
from services.images_service.metadata import read_png_text
from services.images_service.queue import cancel_key, connect_redis
from services.images_service.worker.rq_worker import KittyWorker
from tests.support.fakes import FakeEngine
from tests.support.harness import MODEL, Harness, make_settings


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


def test_prompt_to_image_ref(harness: Harness) -> None:
    job_id = harness.generate(seed=1234, negative_prompt="blurry")
    assert harness.job(job_id)["status"] == "queued"

    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    assert view["progress"] == {"step": 4, "total": 4}
    result = view["result"]
    png_key, meta_key = result["png_key"], result["meta_key"]
    assert png_key.startswith("images/") and png_key.endswith(".png")
    assert meta_key == png_key[:-4] + ".json"
    assert [img["key"] for img in result["images"]] == [png_key]

    latest = harness.client.get("/api/images/latest", params={"limit": 5}).json()["items"]
    assert latest[0]["key"] == png_key and latest[0]["size"] > 0

    ref = harness.client.post("/api/images/select", json={"key": png_key}).json()["imageRef"]
    stored = harness.store.get(png_key)
    if ref["storageUri"].startswith("s3://"):
        assert ref["storageUri"] == f"s3://{harness.settings.s3_bucket}/{png_key}"
        downloaded = httpx.get(ref["downloadUrl"]).content
    else:
        assert ref["storageUri"].startswith("file://") and ref["storageUri"].endswith(png_key)
        downloaded = harness.client.get(ref["downloadUrl"]).content
    assert downloaded == stored

    sidecar = json.loads(harness.store.get(meta_key))
    assert sidecar["job_id"] == job_id
    assert sidecar["seed"] == 1234 and sidecar["model"] == MODEL and sidecar["engine"] == "diffusers"
    assert (sidecar["width"], sidecar["height"]) == (64, 48)
    chunks = read_png_text(stored)
    assert "Negative prompt: blurry" in chunks["parameters"] and "Seed: 1234" in chunks["parameters"]
    assert json.loads(chunks["kitty"])["job_id"] == job_id
    assert Image.open(io.BytesIO(stored)).size == (64, 48)


def test_absent_seed_is_chosen_and_recorded(harness: Harness) -> None:
    job_id = harness.generate()
    harness.work()
    image = harness.job(job_id)["result"]["images"][0]
    assert 0 <= image["seed"] < 2**32
    assert harness.engine.calls[0].seed == image["seed"]
    assert json.loads(harness.store.get(image["meta_key"]))["seed"] == image["seed"]


def test_several_images_each_stored_with_own_seed(harness: Harness) -> None:
    job_id = harness.generate(seed=7, num_images=3)
    harness.work()
    images = harness.job(job_id)["result"]["images"]
    assert [i["seed"] for i in images] == [7, 8, 9]
    assert len({i["key"] for i in images}) == 3
    keys = {item["key"] for item in harness.client.get("/api/images/latest").json()["items"]}
    assert keys >= {i["key"] for i in images}


def test_latest_is_newest_first_and_limited(harness: Harness) -> None:
    for seed in range(3):
        harness.generate(seed=seed)
        harness.work()
    items = harness.client.get("/api/images/latest", params={"limit": 2}).json()["items"]
    assert len(items) == 2
    assert items[0]["last_modified"] >= items[1]["last_modified"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompt": "x", "width": 100}, "width"),
        ({"prompt": "x", "width": 56}, "width"),
        ({"prompt": "x", "height": 4104}, "height"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 151}, "steps"),
        ({"prompt": "x", "cfg": 31}, "cfg"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**32}, "seed"),
        ({"prompt": "x", "num_images": 9}, "num_images"),
        ({"prompt": "x", "scheduler": "warp-drive"}, "scheduler"),
        ({"prompt": "x", "engine": "midjourney"}, "engine"),
        ({"prompt": "x", "model": "../../etc"}, "model"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_generate_input_is_refused_with_its_field(harness: Harness, body: dict, field: str) -> None:
    response = harness.client.post("/api/images/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert any(f["field"] == field for f in error["detail"]), error
    assert error["remediation"]


def test_not_json_is_refused(harness: Harness) -> None:
    response = harness.client.post(
        "/api/images/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_unknown_model_names_the_fetch_command(harness: Harness) -> None:
    response = harness.client.post("/api/images/generate", json={"prompt": "x", "model": "sdxl_base"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "MODEL_NOT_FOUND"
    assert any("kitty-images models pull sdxl_base" in r for r in error["remediation"])


def test_refiner_needs_a_configured_refiner(harness: Harness) -> None:
    response = harness.client.post("/api/images/generate", json={"prompt": "x", "refiner": True})
    assert response.status_code == 400
    assert "refiner" in response.json()["error"]["message"]
    ok = harness.client.post(
        "/api/images/generate", json={"prompt": "x", "model": "fake-xl", "refiner": True}
    )
    assert ok.status_code == 202


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "VALIDATION_ERROR"),
        ({"key": ""}, 400, "VALIDATION_ERROR"),
        ({"key": "images/19990101_000000_deadbeef.png"}, 404, "KEY_NOT_FOUND"),
        ({"key": "other/19990101_000000_deadbeef.png"}, 400, "VALIDATION_ERROR"),
        ({"key": "images/../signing.key"}, 400, "VALIDATION_ERROR"),
        ({"key": "images/../../etc/passwd.png"}, 400, "VALIDATION_ERROR"),
        ({"key": "/images/x.png"}, 400, "VALIDATION_ERROR"),
        ({"key": "images/x.json"}, 400, "VALIDATION_ERROR"),
    ],
)
def test_select_refuses_bad_keys(harness: Harness, body: dict, status: int, code: str) -> None:
    response = harness.client.post("/api/images/select", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_unknown_job_and_route(harness: Harness) -> None:
    response = harness.client.get("/api/images/jobs/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "JOB_NOT_FOUND"
    response = harness.client.get("/api/images/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("limit", [0, 501, "many"])
def test_latest_limit_bounds(harness: Harness, limit: object) -> None:
    response = harness.client.get("/api/images/latest", params={"limit": limit})
    assert response.status_code == 400 and response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_engine_failure_ends_as_error_with_code(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(FakeEngine(fail_with=ModelNotFound("model gone", remediation=["pull it"])))
    job_id = harness.generate()
    harness.work()
    view = harness.job(job_id)
    assert view["status"] == "error"
    assert view["error"] == {
        "code": "MODEL_NOT_FOUND",
        "message": "model gone",
        "remediation": ["pull it"],
        "detail": None,
    }
    assert harness.client.get("/api/images/latest").json()["items"] == []


def test_unexpected_engine_exception_is_engine_error(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(FakeEngine(fail_with=RuntimeError("CUDA out of memory")))
    job_id = harness.generate()
    harness.work()
    error = harness.job(job_id)["error"]
    assert error["code"] == "ENGINE_ERROR" and "CUDA out of memory" in error["message"]
    assert "Traceback" not in json.dumps(error)


def test_job_timeout_is_engine_timeout_and_worker_goes_on(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(FakeEngine(step_delay_s=0.6), job_timeout_s=1)
    slow = harness.generate(steps=4)
    fast = harness.generate(steps=1)
    harness.work()
    assert harness.job(slow)["error"]["code"] == "ENGINE_TIMEOUT"
    assert harness.job(fast)["status"] == "done"


def test_cancel_queued_job(harness: Harness) -> None:
    job_id = harness.generate()
    response = harness.client.post(f"/api/images/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    harness.work()
    assert harness.engine.calls == []
    assert harness.job(job_id)["status"] == "canceled"


def test_cancel_flag_stops_a_running_job_at_the_next_step(harness: Harness) -> None:
    job_id = harness.generate(steps=10)
    # What POST /cancel does for a started job: the worker sees it at its next step.
    connect_redis(harness.settings.redis_url).set(cancel_key(harness.settings.queue_prefix, job_id), 1)
    harness.work()
    view = harness.job(job_id)
    assert view["status"] == "canceled" and view["error"]["code"] == "CANCELED"
    assert view["progress"]["step"] == 0
    assert harness.client.get("/api/images/latest").json()["items"] == []


@dataclass
class CancelingEngine(FakeEngine):
    """A user cancels the running job through `api` once its first step is done."""

    api: TestClient | None = None
    answers: list[str] = field(default_factory=list)
    """The status each cancel request answered with."""

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        def cancel_after_first_step(step: int, total: int) -> None:
            job = get_current_job()
            if step == 1 and self.api is not None and job is not None:
                self.answers.append(self.api.post(f"/api/images/jobs/{job.id}/cancel").json()["status"])
            progress(step, total)

        return super().render(spec, cancel_after_first_step)


@pytest.mark.parametrize(("sent_to", "outcome"), [("deploy-b", "done"), ("deploy-a", "canceled")])
def test_a_cancel_reaches_only_the_deployment_it_was_sent_to(
    harness_with: Callable[..., Harness], sent_to: str, outcome: str
) -> None:
    # Two deployments on one Redis, apart only by IMAGES_QUEUE_PREFIX; the job runs in deploy-a.
    engine = CancelingEngine()
    deployments = {prefix: harness_with(engine, queue_prefix=prefix) for prefix in ("deploy-a", "deploy-b")}
    engine.api = deployments[sent_to].client
    job_id = deployments["deploy-a"].generate(steps=4)

    deployments["deploy-a"].work()

    assert engine.answers == ["started"]  # each API found the running job and flagged it
    assert deployments["deploy-a"].job(job_id)["status"] == outcome
    redis = connect_redis(deployments["deploy-a"].settings.redis_url)
    assert redis.keys("*:cancel:*") == [cancel_key(sent_to, job_id).encode()]


def test_redis_down_is_503_and_readyz_says_why(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/images/generate", json={"prompt": "x", "model": MODEL})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "QUEUE_UNAVAILABLE"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["code"] == "QUEUE_UNAVAILABLE"
        assert ready.json()["checks"]["storage"]["status"] == "ok"


def test_health_ready_and_metrics(harness: Harness) -> None:
    assert harness.client.get("/healthz").json() == {"status": "ok"}
    assert harness.client.get("/readyz").status_code == 200
    harness.generate()
    metrics = harness.client.get("/metrics").text
    assert 'images_jobs_enqueued_total{engine="diffusers"}' in metrics
    assert "images_http_request_seconds_bucket" in metrics
    assert 'images_queue_depth{engine="diffusers"} 1.0' in metrics


def test_http_latency_is_labelled_by_route_template_and_status(harness: Harness) -> None:
    def count(route: str, status: str, method: str = "GET") -> float:
        labels = {"method": method, "route": route, "status": status}
        return REGISTRY.get_sample_value("images_http_request_seconds_count", labels) or 0.0

    job_route, generate_route = "/api/images/jobs/{job_id}", "/api/images/generate"
    before = (count(job_route, "200"), count(job_route, "404"), count(generate_route, "202", "POST"))
    job_id = harness.generate()
    harness.client.get(f"/api/images/jobs/{job_id}")
    harness.client.get("/api/images/jobs/no-such-job")
    harness.client.get("/no/such/route")
    after = (count(job_route, "200"), count(job_route, "404"), count(generate_route, "202", "POST"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert count("unmatched", "404") >= 1


def test_worker_metrics_count_bytes_stored_and_queue_wait(harness: Harness) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    png, waits = (
        sample("images_bytes_stored_total", kind="png"),
        sample("images_job_queue_wait_seconds_count", engine="diffusers"),
    )
    job_id = harness.generate()
    harness.work()
    stored = harness.store.get(harness.job(job_id)["result"]["png_key"])
    assert sample("images_bytes_stored_total", kind="png") - png == len(stored)
    assert sample("images_job_queue_wait_seconds_count", engine="diffusers") - waits == 1
    assert sample("images_jobs_finished_total", engine="diffusers", status="done") >= 1


def test_fs_download_link_refuses_tampering(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    if harness.settings.uses_s3:
        pytest.skip("S3 serves its own presigned URLs")
    job_id = harness.generate()
    harness.work()
    key = harness.job(job_id)["result"]["png_key"]
    url = harness.client.post("/api/images/select", json={"key": key}).json()["imageRef"]["downloadUrl"]
    assert harness.client.get(url).status_code == 200
    tampered = url.replace("sig=", "sig=0")
    response = harness.client.get(tampered)
    assert response.status_code == 401 and response.json()["error"]["code"] == "UNAUTHORIZED"


def test_service_app_does_not_import_torch() -> None:
    code = "import sys, services.images_service.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_engines_matrix_reports_workers_and_models(harness: Harness) -> None:
    rows = {r["engine_id"]: r for r in harness.client.get("/api/images/engines").json()["engines"]}
    assert set(rows) == {"diffusers", "comfyui", "a1111", "invokeai"}
    diffusers = rows["diffusers"]
    assert diffusers["status"] == "offline" and diffusers["workers"] == 0
    assert "images-worker" in diffusers["detail"]

    conn = connect_redis(harness.settings.redis_url)
    queue = Queue(harness.settings.queue_name("diffusers"), connection=conn, serializer=JSONSerializer)
    worker = KittyWorker([queue], connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    try:
        harness.client.app.state.engine_probe._cached = None  # skip the cache for this check
        rows = {r["engine_id"]: r for r in harness.client.get("/api/images/engines").json()["engines"]}
        assert rows["diffusers"]["status"] == "ready" and rows["diffusers"]["workers"] == 1
        assert rows["comfyui"]["status"] == "offline"  # nothing listens on ComfyUI's port here
    finally:
        worker.register_death()


def test_engines_matrix_without_models_is_misconfigured(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, models_yaml=tmp_path / "none.yaml")
    with TestClient(create_app(settings)) as client:
        rows = {r["engine_id"]: r for r in client.get("/api/images/engines").json()["engines"]}
    assert rows["diffusers"]["status"] == "misconfigured"
    assert "kitty-images models tiny" in rows["diffusers"]["detail"]


class JsonLines(logging.Handler):
    """Collects records as the services write them: JSON lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_request_id_reaches_the_job_and_its_worker_log_lines(harness: Harness) -> None:
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a fox"}, headers={"X-Request-ID": "req-123"}
    )
    assert response.headers["x-request-id"] == "req-123"
    job_id = response.json()["job_id"]
    assert harness.client.get(f"/api/images/jobs/{job_id}").headers["x-request-id"] != "req-123"

    lines = JsonLines()
    logger = logging.getLogger("kitty.images.worker")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        harness.work()
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    finished = [line for line in lines.lines if line["msg"] == "job finished"]
    assert finished and finished[0]["request_id"] == "req-123" and finished[0]["job_id"] == job_id
