"""Job history and repair: `GET /api/images/jobs` lists the caller's jobs newest first (from any
client), with what each asked for (redacted), its result or error and its times, filtered by status
and paged; `POST /api/images/jobs/{id}/retry` submits a failed or canceled one again, changed or not,
through the same checks as a new job. Two keys never see each other's history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from services.images_service.errors import EngineError
from tests.support.fakes import FakeEngine
from tests.support.harness import MODEL, Harness

ALICE, BOB, ADMIN = "alice-1d2c3b4a5e6f7081", "bob-9a8b7c6d5e4f3021", "root-5f4e3d2c1b0a9988"
API_KEYS = f"{ALICE}:pro, {BOB}:free, {ADMIN}:admin"


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def submit(harness: Harness, key: str, prompt: str, **body: Any) -> str:
    response = harness.client.post(
        "/api/images/generate", json={"prompt": prompt, "model": MODEL, **body}, headers=as_key(key)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def history(harness: Harness, key: str, **params: Any) -> dict[str, Any]:
    response = harness.client.get("/api/images/jobs", params=params, headers=as_key(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def tenants(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(api_keys=API_KEYS)


def test_each_key_lists_its_own_jobs_newest_first_with_their_inputs_and_outcome(tenants: Harness) -> None:
    first = submit(tenants, ALICE, "a red fox")
    bobs = submit(tenants, BOB, "a blue whale")
    second = submit(tenants, ALICE, "a green owl", steps=3)
    tenants.work()

    listing = history(tenants, ALICE)
    assert [job["job_id"] for job in listing["jobs"]] == [second, first]
    newest = listing["jobs"][0]
    assert newest["status"] == "done" and newest["result"]["png_key"]
    assert newest["request"]["prompt"] == "a green owl" and newest["request"]["steps"] == 3
    assert newest["engine"] == "diffusers" and newest["enqueued_at"] and newest["ended_at"]
    assert [job["job_id"] for job in history(tenants, BOB)["jobs"]] == [bobs]
    everyone = history(tenants, ADMIN, scope="all")
    assert {job["job_id"] for job in everyone["jobs"]} == {first, second, bobs}
    assert history(tenants, BOB, scope="all")["jobs"][0]["job_id"] == bobs  # scope=all is for admins


def test_history_pages_and_filters_by_status(tenants: Harness) -> None:
    ids = [submit(tenants, ALICE, f"fox {n}") for n in range(5)]
    canceled = tenants.client.post(f"/api/images/jobs/{ids[1]}/cancel", headers=as_key(ALICE))
    assert canceled.json()["status"] == "canceled"
    tenants.work()

    page = history(tenants, ALICE, limit=2)
    assert [job["job_id"] for job in page["jobs"]] == [ids[4], ids[3]]
    rest = history(tenants, ALICE, limit=10, cursor=page["next_cursor"])
    assert [job["job_id"] for job in rest["jobs"]] == [ids[2], ids[1], ids[0]]
    assert rest.get("next_cursor") is None
    only_canceled = history(tenants, ALICE, status="canceled")
    assert [job["job_id"] for job in only_canceled["jobs"]] == [ids[1]]
    bad = tenants.client.get("/api/images/jobs", params={"status": "exploded"}, headers=as_key(ALICE))
    assert bad.status_code == 400


def test_a_failed_job_is_retried_with_changes_and_a_done_one_is_refused(
    harness_with: Callable[..., Harness],
) -> None:
    engine = FakeEngine(fail_with=EngineError("the GPU fell over", remediation=["try again"]))
    harness = harness_with(engine, api_keys=API_KEYS)
    failed = submit(harness, ALICE, "a red fox")
    harness.work()
    assert history(harness, ALICE, status="error")["jobs"][0]["error"]["code"] == "ENGINE_ERROR"

    engine.fail_with = None
    retried = harness.client.post(
        f"/api/images/jobs/{failed}/retry", json={"steps": 2, "width": 128}, headers=as_key(ALICE)
    )
    assert retried.status_code == 202, retried.text
    new_job = retried.json()["job_id"]
    assert new_job != failed
    harness.work()
    view = harness.client.get(f"/api/images/jobs/{new_job}", headers=as_key(ALICE)).json()
    assert view["status"] == "done"
    ran = engine.calls[-1]
    assert (ran.prompt, ran.steps, ran.width) == ("a red fox", 2, 128)

    done_again = harness.client.post(f"/api/images/jobs/{new_job}/retry", json={}, headers=as_key(ALICE))
    assert done_again.status_code == 400 and "only a failed or canceled job" in done_again.text
    # Another key cannot retry it, and a retry is held to the caller's tier like a new job.
    assert (
        harness.client.post(f"/api/images/jobs/{failed}/retry", json={}, headers=as_key(BOB)).status_code
        == 404
    )
    too_many = harness.client.post(
        f"/api/images/jobs/{failed}/retry", json={"steps": 149}, headers=as_key(ALICE)
    )
    assert too_many.status_code == 400 and too_many.json()["error"]["detail"]["limit"] == "steps"
    unknown_field = harness.client.post(
        f"/api/images/jobs/{failed}/retry", json={"seed": 1}, headers=as_key(ALICE)
    )
    assert unknown_field.status_code == 400
