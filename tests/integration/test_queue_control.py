"""Pausing, resuming and reordering queued jobs (issue 20 part 1), on a real Redis with a real
KittyWorker drained in burst mode: a caller's paused jobs wait in their places and run after the
resume in their order; a move to the front takes only the caller's own places; two keys never touch
each other's queue; an admin pauses the whole queue; a worker popping while jobs move loses none."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rq.serializers import JSONSerializer

from services.common.api_keys import key_id_of
from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.app import create_app
from services.images_service.queue import connect_redis, engine_queues
from services.images_service.queue_control import JobNotMovable, QueueControl
from services.images_service.worker.rq_worker import KittyWorker
from services.images_service.worker.tasks import Runtime, set_runtime
from tests.support.asgi_server import serve_asgi
from tests.support.harness import MODEL, Harness
from tests.support.workers import idle_worker

ALICE, BOB, ADMIN = "alice-5d1e0c3b9d2a4e71", "bob-7c8a1f5e7b0d4a29", "admin-1e2b4d6f8a1c3e53"
API_KEYS = f"{ALICE}:free, {BOB}:free, {ADMIN}:admin"
"""Two callers of one tier, so their jobs share a queue, and an admin."""


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def tenants(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(api_keys=API_KEYS)


def submit(harness: Harness, key: str, prompt: str) -> str:
    response = harness.client.post(
        "/api/images/generate", json={"prompt": prompt, "model": MODEL}, headers=as_key(key)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def view(harness: Harness, key: str, job_id: str) -> dict[str, Any]:
    response = harness.client.get(f"/api/images/jobs/{job_id}", headers=as_key(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def post(harness: Harness, key: str, path: str, **params: str) -> Any:
    return harness.client.post(f"/api/images{path}", params=params, headers=as_key(key))


def drain(harness: Harness, **work: Any) -> None:
    """What a real images-worker does with the queue now (its pause checks included), in burst mode."""
    set_runtime(
        Runtime(harness.settings, harness.client.app.state.registry, harness.store, dict(harness.engines))
    )
    conn = connect_redis(harness.settings.redis_url)
    try:
        queues = engine_queues(conn, harness.settings, "diffusers")
        worker = KittyWorker(queues, connection=conn, serializer=JSONSerializer)
        worker.control = QueueControl(conn, harness.settings)
        worker.work(burst=True, **work)
    finally:
        set_runtime(None)
        conn.close()


def rendered(harness: Harness) -> list[str]:
    """The prompts the engine rendered, in order."""
    return [spec.prompt for spec in harness.engine.calls]


def test_a_paused_callers_jobs_wait_visibly_and_run_after_the_resume_in_their_order(tenants: Harness) -> None:
    first = submit(tenants, ALICE, "alice 1")
    drain(tenants, max_jobs=1)  # "the running one": it finishes
    alice = [submit(tenants, ALICE, f"alice {n}") for n in (2, 3, 4)]
    bob = submit(tenants, BOB, "bob 1")

    paused = post(tenants, ALICE, "/queue/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"paused": True, "everyone_paused": False, "held": 0}
    late = submit(tenants, ALICE, "alice 5")  # submitted while paused: it waits too
    shown = view(tenants, ALICE, alice[0])
    assert shown["status"] == "queued" and shown["paused"] is True
    assert shown["waiting"]["reason"] == "paused"
    assert "resume" in shown["waiting_for"] and shown["waiting"]["remediation"]

    drain(tenants)  # a worker reaches Alice's jobs first, sets them aside and runs Bob's
    assert rendered(tenants) == ["alice 1", "bob 1"]
    assert view(tenants, ALICE, first)["status"] == "done"
    assert view(tenants, BOB, bob)["status"] == "done"
    assert view(tenants, BOB, bob)["paused"] is False  # Alice's pause is not Bob's
    state = tenants.client.get("/api/images/queue", headers=as_key(ALICE)).json()
    assert state == {"paused": True, "everyone_paused": False, "held": 4}
    listing = tenants.client.get("/api/images/jobs", params={"status": "queued"}, headers=as_key(ALICE))
    held = {job["job_id"]: job for job in listing.json()["jobs"]}
    assert set(held) == {*alice, late} and all(job["paused"] for job in held.values())
    assert all(job.get("position") is None for job in held.values())  # set aside: no place in a queue

    canceled = post(tenants, ALICE, f"/jobs/{alice[1]}/cancel")  # a paused job can be canceled
    assert canceled.json()["status"] == "canceled"

    resumed = post(tenants, ALICE, "/queue/resume")
    assert resumed.json() == {"paused": False, "everyone_paused": False, "held": 0, "resumed": 3}
    assert view(tenants, ALICE, alice[0])["position"] == 1
    drain(tenants)
    assert rendered(tenants) == ["alice 1", "bob 1", "alice 2", "alice 4", "alice 5"]
    assert view(tenants, ALICE, alice[1])["status"] == "canceled"


def test_a_pause_survives_a_restart_of_the_service(
    tenants: Harness, harness_with: Callable[..., Harness]
) -> None:
    job_id = submit(tenants, ALICE, "alice 1")
    assert post(tenants, ALICE, "/queue/pause").status_code == 200
    drain(tenants)
    restarted = harness_with(api_keys=API_KEYS)  # a new app on the same Redis
    assert view(restarted, ALICE, job_id)["paused"] is True
    assert restarted.client.get("/api/images/queue", headers=as_key(ALICE)).json()["held"] == 1
    assert post(restarted, ALICE, "/queue/resume").json()["resumed"] == 1
    drain(restarted)
    assert view(restarted, ALICE, job_id)["status"] == "done"


def test_a_pipeline_step_enqueued_while_paused_waits_for_the_resume(tenants: Harness) -> None:
    body = {"prompt": "a red fox", "model": MODEL, "pipeline": [{"kind": "upscale", "scale": 2}]}
    response = tenants.client.post("/api/images/generate", json=body, headers=as_key(ALICE))
    pipeline_id = response.json()["job_id"]
    drain(tenants, max_jobs=1)  # the render; RQ then enqueues the upscale it defers until now
    assert post(tenants, ALICE, "/queue/pause").status_code == 200
    drain(tenants)
    steps = view(tenants, ALICE, pipeline_id)["steps"]
    assert [step["status"] for step in steps] == ["done", "queued"]
    assert view(tenants, ALICE, steps[1]["job_id"])["paused"] is True
    post(tenants, ALICE, "/queue/resume")
    drain(tenants)
    assert view(tenants, ALICE, pipeline_id)["status"] == "done"


def test_moving_to_the_front_takes_only_the_callers_own_places(tenants: Harness) -> None:
    a1, b1, a2, b2, a3 = (
        submit(tenants, key, prompt)
        for key, prompt in [(ALICE, "a1"), (BOB, "b1"), (ALICE, "a2"), (BOB, "b2"), (ALICE, "a3")]
    )
    moved = post(tenants, ALICE, f"/jobs/{a3}/front")
    assert moved.status_code == 200, moved.text
    assert moved.json()["position"] == 1
    # Alice's places (1, 3, 5) now hold a3, a1, a2; Bob's jobs keep theirs.
    assert view(tenants, BOB, b1)["position"] == 2
    assert view(tenants, BOB, b2)["position"] == 4
    assert [view(tenants, ALICE, j)["position"] for j in (a1, a2)] == [3, 5]
    assert view(tenants, ALICE, a1)["waiting"] == {
        "reason": "no_worker",
        "message": "no worker serves engine 'diffusers' now",
        "engine": "diffusers",
        "ahead": None,
        "remediation": view(tenants, ALICE, a1)["waiting"]["remediation"],
    }
    # Bob's first job is already his first place: nothing moves.
    assert post(tenants, BOB, f"/jobs/{b1}/front").json()["position"] == 2
    # An admin moves any job to the very front.
    assert post(tenants, ADMIN, f"/jobs/{b2}/front").json()["position"] == 1
    drain(tenants)
    assert rendered(tenants) == ["b2", "a3", "b1", "a1", "a2"]


def test_a_key_never_pauses_moves_or_sees_another_keys_queue(tenants: Harness) -> None:
    alice = submit(tenants, ALICE, "alice 1")
    refused = post(tenants, BOB, f"/jobs/{alice}/front")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert post(tenants, BOB, "/queue/pause").json()["paused"] is True
    assert view(tenants, ALICE, alice)["paused"] is False
    assert tenants.client.get("/api/images/queue", headers=as_key(ALICE)).json()["paused"] is False
    drain(tenants)
    assert view(tenants, ALICE, alice)["status"] == "done"
    # Bob's resume puts back only his own (none): Alice's held jobs would never be his to move.
    assert post(tenants, BOB, "/queue/resume").json()["resumed"] == 0

    everyone = post(tenants, BOB, "/queue/pause", scope="all")
    assert everyone.status_code == 403, everyone.text
    assert everyone.json()["error"]["remediation"]


def test_an_admin_pauses_the_whole_queue_and_workers_take_no_new_job(tenants: Harness) -> None:
    alice, bob = submit(tenants, ALICE, "alice 1"), submit(tenants, BOB, "bob 1")
    assert post(tenants, ADMIN, "/queue/pause", scope="all").json()["everyone_paused"] is True
    drain(tenants)
    assert rendered(tenants) == []
    shown = view(tenants, BOB, bob)
    assert shown["paused"] is True and shown["waiting"]["reason"] == "queue_paused"
    assert shown["position"] == 2  # nothing moved: both keep their places
    assert post(tenants, ADMIN, "/queue/resume", scope="all").json()["everyone_paused"] is False
    drain(tenants)
    assert rendered(tenants) == ["alice 1", "bob 1"]
    assert view(tenants, ALICE, alice)["status"] == "done"


def test_jobs_that_are_not_waiting_in_a_queue_cannot_move(tenants: Harness) -> None:
    job_id = submit(tenants, ALICE, "alice 1")
    drain(tenants)
    done = post(tenants, ALICE, f"/jobs/{job_id}/front")
    assert done.status_code == 409, done.text
    error = done.json()["error"]
    assert "done" in error["message"] and error["remediation"]
    bad = post(tenants, ALICE, "/jobs/not a job!/front")
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_the_no_worker_explanation_goes_once_a_worker_serves_the_engine(tenants: Harness) -> None:
    job_id = submit(tenants, ALICE, "alice 1")
    waiting = view(tenants, ALICE, job_id)["waiting"]
    assert waiting["reason"] == "no_worker" and "images-worker" in waiting["remediation"][0]
    tenants.client.app.state.queue._live.clear()  # the 2 s cache of live workers
    with idle_worker(tenants.settings, "diffusers"):
        shown = view(tenants, ALICE, job_id)
    assert shown["waiting"] == {
        "reason": "busy",
        "message": "every worker serving this engine is busy",
        "engine": "diffusers",
        "ahead": 0,
        "remediation": [],
    }


def test_moves_while_a_worker_pops_never_lose_or_double_a_job(tenants: Harness) -> None:
    ids = [submit(tenants, key, f"{key[:3]} {n}") for n in range(15) for key in (ALICE, BOB)]
    alice_ids, bob_ids = ids[0::2], ids[1::2]
    queue = tenants.client.app.state.queue
    control: QueueControl = queue.control
    conn = queue.redis
    key = engine_queues(conn, tenants.settings, "diffusers")[1].key
    popped: list[str] = []
    stop = threading.Event()

    def pop() -> None:
        while not stop.is_set():
            raw = conn.lpop(key)
            if raw is None:
                return
            popped.append(raw.decode())
            stop.wait(0.002)

    moves = 0
    rng = random.Random(7)
    popper = threading.Thread(target=pop)
    popper.start()
    while popper.is_alive() and moves < 2000:
        job = queue.fetch(rng.choice(alice_ids))
        try:
            control.to_front(job, key_id_of(ALICE))
        except JobNotMovable:
            pass  # popped already
        moves += 1
    stop.set()
    popper.join()
    left = [raw.decode() for raw in conn.lrange(key, 0, -1)]
    assert moves > 10
    assert sorted(popped + left) == sorted(ids)  # every job exactly once
    order = popped + left
    assert [job_id for job_id in order if job_id in bob_ids] == bob_ids  # Bob's order, untouched ...
    assert [i for i, job_id in enumerate(order) if job_id in bob_ids] == list(
        range(1, 30, 2)
    )  # ... and places


def test_the_gateway_carries_the_queue_routes_and_each_key_stays_in_its_own_queue(tenants: Harness) -> None:
    service = create_app(tenants.settings, store=tenants.store)
    with serve_asgi(service, lifespan="on") as service_url:
        with TestClient(create_gateway(GatewaySettings(IMAGES_BASE=service_url))) as gateway:
            first, second = (
                gateway.post(
                    "/api/images/generate", json={"prompt": prompt, "model": MODEL}, headers=as_key(ALICE)
                ).json()["job_id"]
                for prompt in ("alice 1", "alice 2")
            )
            moved = gateway.post(f"/api/images/jobs/{second}/front", headers=as_key(ALICE))
            assert moved.status_code == 200 and moved.json()["position"] == 1, moved.text
            stolen = gateway.post(f"/api/images/jobs/{first}/front", headers=as_key(BOB))
            assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "JOB_NOT_FOUND"
            assert gateway.post("/api/images/queue/pause", headers=as_key(ALICE)).json()["paused"] is True
            assert gateway.get("/api/images/queue", headers=as_key(BOB)).json()["paused"] is False
            assert (
                gateway.post(
                    "/api/images/queue/pause", params={"scope": "all"}, headers=as_key(BOB)
                ).status_code
                == 403
            )
            assert gateway.post("/api/images/queue/pause").status_code == 401  # no key at all
            assert gateway.get(f"/api/images/jobs/{first}", headers=as_key(ALICE)).json()["paused"] is True
