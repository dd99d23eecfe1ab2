"""Tenants: two keys on one images-service (real Redis, filesystem and S3 stores, a real worker) must
not see each other's work on any route, an admin key sees all, and without keys nothing changes.
What belongs to another key answers exactly as what does not exist: 404 with the same code and
message shape, never 403."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.common.api_keys import ON_BEHALF_HEADER, key_id_of, on_behalf_value, parse_api_keys
from services.images_service.app import create_app
from tests.support.harness import MODEL, Harness

ALICE, BOB, ADMIN = "alice-6f1e0c3b9d2a4e77", "bob-3c8a1f5e7b0d4a22", "admin-9e2b4d6f8a1c3e55"
API_KEYS = f"{ALICE}:pro, {BOB}:free, {ADMIN}:admin"


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
def tenants(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory(api_keys=API_KEYS)


def generate(harness: Harness, key: str, **body: Any) -> str:
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a red fox", "model": MODEL, **body}, headers=as_key(key)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def rendered(harness: Harness, key: str) -> tuple[str, str]:
    """A job of `key`, rendered and stored: its id and its image's key."""
    job_id = generate(harness, key)
    harness.work()
    view = harness.client.get(f"/api/images/jobs/{job_id}", headers=as_key(key)).json()
    assert view["status"] == "done", view
    return job_id, str(view["result"]["png_key"])


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_unknown(response: httpx.Response, code: str) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == code


def test_a_key_sees_only_its_own_jobs_and_images_on_every_route(tenants: Harness) -> None:
    client = tenants.client
    job_id, image = rendered(tenants, ALICE)
    # Bob: every route that names Alice's job or image answers as if it did not exist.
    assert_unknown(client.get(f"/api/images/jobs/{job_id}", headers=as_key(BOB)), "JOB_NOT_FOUND")
    assert_unknown(client.get(f"/api/images/jobs/{job_id}/events", headers=as_key(BOB)), "JOB_NOT_FOUND")
    assert_unknown(client.post(f"/api/images/jobs/{job_id}/cancel", headers=as_key(BOB)), "JOB_NOT_FOUND")
    assert_unknown(
        client.post("/api/images/select", json={"key": image}, headers=as_key(BOB)), "KEY_NOT_FOUND"
    )
    assert_unknown(client.delete(f"/api/images/items/{image}", headers=as_key(BOB)), "KEY_NOT_FOUND")
    assert_unknown(
        client.post("/api/images/rerun", json={"key": image}, headers=as_key(BOB)), "KEY_NOT_FOUND"
    )
    refused = client.post(
        "/api/images/generate",
        json={"prompt": "steal", "model": MODEL, "image": image, "strength": 0.5},
        headers=as_key(BOB),
    )
    assert_unknown(refused, "KEY_NOT_FOUND")
    # The same answer as for a job and an image that never existed.
    never = client.get("/api/images/jobs/" + "0" * 32, headers=as_key(BOB))
    assert (
        never.json()["error"]["message"].replace("0" * 32, job_id)
        == client.get(f"/api/images/jobs/{job_id}", headers=as_key(BOB)).json()["error"]["message"]
    )
    assert client.get("/api/images/latest", headers=as_key(BOB)).json()["items"] == []

    # Alice: all of it works, and her listing carries her key id (never the key).
    assert client.get(f"/api/images/jobs/{job_id}", headers=as_key(ALICE)).status_code == 200
    items = client.get("/api/images/latest", headers=as_key(ALICE)).json()["items"]
    assert [item["key"] for item in items] == [image]
    assert items[0]["owner"] == key_id_of(ALICE)
    assert client.post("/api/images/select", json={"key": image}, headers=as_key(ALICE)).status_code == 200
    assert client.post("/api/images/rerun", json={"key": image}, headers=as_key(ALICE)).status_code == 202
    assert client.delete(f"/api/images/items/{image}", headers=as_key(ALICE)).status_code == 204


def test_the_sidecar_records_the_owner(tenants: Harness) -> None:
    import json

    from services.images_service.storage.keys import meta_key_for

    _, image = rendered(tenants, BOB)
    sidecar = json.loads(tenants.store.get(meta_key_for(image)))
    assert sidecar["owner"] == key_id_of(BOB)
    assert BOB not in json.dumps(sidecar)


def test_uploads_are_their_uploaders_only(tenants: Harness) -> None:
    client = tenants.client
    upload = client.post(
        "/api/images/uploads", content=png_bytes(), headers={**as_key(ALICE), "Content-Type": "image/png"}
    )
    assert upload.status_code == 201, upload.text
    key = upload.json()["key"]
    body = {"prompt": "a red fox", "model": MODEL, "image": key, "strength": 0.5}
    assert_unknown(client.post("/api/images/generate", json=body, headers=as_key(BOB)), "KEY_NOT_FOUND")
    assert client.post("/api/images/generate", json=body, headers=as_key(ALICE)).status_code == 202


def test_a_running_job_of_another_key_cannot_be_canceled(tenants: Harness) -> None:
    job_id = generate(tenants, ALICE)  # still queued: nothing drains the queue here
    assert_unknown(
        tenants.client.post(f"/api/images/jobs/{job_id}/cancel", headers=as_key(BOB)), "JOB_NOT_FOUND"
    )
    view = tenants.client.get(f"/api/images/jobs/{job_id}", headers=as_key(ALICE)).json()
    assert view["status"] == "queued"


def test_an_admin_sees_and_manages_everyones_work(tenants: Harness) -> None:
    client = tenants.client
    alice_job, alice_image = rendered(tenants, ALICE)
    _, bob_image = rendered(tenants, BOB)
    assert client.get(f"/api/images/jobs/{alice_job}", headers=as_key(ADMIN)).status_code == 200
    # The admin's own listing is its own (empty); scope=all lists everyone's.
    assert client.get("/api/images/latest", headers=as_key(ADMIN)).json()["items"] == []
    everyone = client.get("/api/images/latest", params={"scope": "all"}, headers=as_key(ADMIN)).json()
    assert {item["key"] for item in everyone["items"]} == {alice_image, bob_image}
    # scope=all asked by a plain key still lists only its own.
    mine = client.get("/api/images/latest", params={"scope": "all"}, headers=as_key(BOB)).json()
    assert [item["key"] for item in mine["items"]] == [bob_image]
    assert (
        client.post("/api/images/select", json={"key": bob_image}, headers=as_key(ADMIN)).status_code == 200
    )
    assert client.delete(f"/api/images/items/{alice_image}", headers=as_key(ADMIN)).status_code == 204


def test_without_keys_everything_is_shared_as_before(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    job_id = harness.generate(model=MODEL)
    harness.work()
    image = harness.job(job_id)["result"]["png_key"]
    items = harness.client.get("/api/images/latest").json()["items"]
    assert [item["key"] for item in items] == [image]
    assert "owner" not in items[0]
    assert harness.client.post("/api/images/select", json={"key": image}).status_code == 200


def test_a_gateway_key_speaks_for_its_caller_only_when_it_is_an_admin(tenants: Harness) -> None:
    """IMAGES_API_KEY on the gateway: upstream sees the gateway's key plus X-Kitty-Caller naming the
    caller. The header counts only from an admin key: a tenant cannot claim to be another."""
    client = tenants.client
    [alice] = [k for k in parse_api_keys(ALICE + ":pro", "pro")]
    job_id, _ = rendered(tenants, ALICE)
    as_alice_via_gateway = {**as_key(ADMIN), ON_BEHALF_HEADER: on_behalf_value(alice)}
    assert client.get(f"/api/images/jobs/{job_id}", headers=as_alice_via_gateway).status_code == 200
    bob_claiming_alice = {**as_key(BOB), ON_BEHALF_HEADER: on_behalf_value(alice)}
    assert_unknown(client.get(f"/api/images/jobs/{job_id}", headers=bob_claiming_alice), "JOB_NOT_FOUND")
    # Through the admin key on Bob's behalf, Alice's job is still not Bob's.
    [bob] = parse_api_keys(BOB + ":free", "pro")
    as_bob_via_gateway = {**as_key(ADMIN), ON_BEHALF_HEADER: on_behalf_value(bob)}
    assert_unknown(client.get(f"/api/images/jobs/{job_id}", headers=as_bob_via_gateway), "JOB_NOT_FOUND")


def test_images_made_before_keys_were_configured_are_the_admins(
    harness_with: Callable[..., Harness],
) -> None:
    open_harness = harness_with()
    job_id = open_harness.generate(model=MODEL)
    open_harness.work()
    image = open_harness.job(job_id)["result"]["png_key"]
    secured = TestClient(create_app(open_harness.settings.model_copy(update={"api_keys": API_KEYS})))
    with secured:
        assert_unknown(
            secured.post("/api/images/select", json={"key": image}, headers=as_key(ALICE)), "KEY_NOT_FOUND"
        )
        assert (
            secured.post("/api/images/select", json={"key": image}, headers=as_key(ADMIN)).status_code == 200
        )
