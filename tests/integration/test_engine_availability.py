"""A job nobody can serve says so: 503 ENGINE_OFFLINE at submit when its engine has no live worker
and its server does not answer; otherwise the queued job's view says what it waits for."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from services.images_service.queue import connect_redis
from services.images_service.worker.rq_worker import WORKER_TTL_S
from tests.support.asgi_server import serve_asgi
from tests.support.harness import Harness
from tests.support.peers.comfyui import FakeComfyUI
from tests.support.workers import idle_worker


@pytest.fixture
def comfyui_url() -> Iterator[str]:
    with serve_asgi(FakeComfyUI().app) as url:
        yield url


def comfyui_job(harness: Harness, **headers: str) -> object:
    return harness.client.post(
        "/api/images/generate", json={"prompt": "a fox", "engine": "comfyui", "steps": 3}, headers=headers
    )


def test_server_engine_with_no_worker_and_no_server_is_engine_offline(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with()  # ComfyUI points at a closed port
    response = comfyui_job(harness, **{"Idempotency-Key": "offline-1"})

    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "ENGINE_OFFLINE"
    assert "comfyui" in error["message"] and "no worker" in error["message"]
    assert any("images-worker --engine comfyui" in hint for hint in error["remediation"])
    assert harness.client.get("/api/images/latest").json()["items"] == []
    queue = harness.settings.queue_name("comfyui")
    assert connect_redis(harness.settings.redis_url).llen(f"rq:queue:{queue}") == 0, "nothing was queued"
    # Nothing held back: the same Idempotency-Key is free for the retry.
    with idle_worker(harness.settings, "comfyui"):
        harness.client.app.state.queue._live.clear()  # the cached count (2 s) would hide the new worker
        assert comfyui_job(harness, **{"Idempotency-Key": "offline-1"}).status_code == 202


def test_server_engine_with_a_live_worker_is_accepted_even_with_its_server_down(
    harness_with: Callable[..., Harness],
) -> None:
    """The worker is the judge of its server then: it fails the job with the server's words."""
    harness = harness_with()
    with idle_worker(harness.settings, "comfyui"):
        assert comfyui_job(harness).status_code == 202


def test_a_killed_workers_lingering_key_does_not_count_as_live(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    with idle_worker(harness.settings, "comfyui", beat_age_s=WORKER_TTL_S + 5):
        assert comfyui_job(harness).status_code == 503


def test_server_up_but_no_worker_is_accepted_and_the_view_says_what_it_waits_for(
    harness_with: Callable[..., Harness], comfyui_url: str
) -> None:
    harness = harness_with(comfyui_url=comfyui_url)
    response = comfyui_job(harness)
    assert response.status_code == 202, response.text

    view = harness.job(response.json()["job_id"])
    assert view["status"] == "queued"
    assert "none serves engine 'comfyui'" in view["waiting_for"]
    assert "images-worker --engine comfyui" in view["waiting_for"]


def test_local_engine_jobs_always_queue_and_say_they_wait_for_a_worker(harness: Harness) -> None:
    job_id = harness.generate()
    view = harness.job(job_id)
    assert view["status"] == "queued"
    assert view["waiting_for"] == (
        "a worker: none serves engine 'diffusers' now; start one with `images-worker`"
    )

    harness.work()  # a worker comes and takes it: no longer waiting for anything
    done = harness.job(job_id)
    assert done["status"] == "done" and done["waiting_for"] is None


def test_with_a_live_busy_worker_the_view_counts_the_jobs_ahead(harness: Harness) -> None:
    with idle_worker(harness.settings, "diffusers"):
        first, second, third = harness.generate(), harness.generate(), harness.generate()
        assert harness.job(first)["waiting_for"] == "a worker: every one serving this engine is busy"
        assert harness.job(second)["waiting_for"] == "its turn: 1 job ahead"
        assert harness.job(third)["waiting_for"] == "its turn: 2 jobs ahead"


@pytest.fixture
def harness(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with()
