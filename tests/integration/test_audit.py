"""The audit log as an operator meets it, against a real Redis and a real (burst) worker: every
submission, refusal, completion, cancel, select and delete lands with its key id (never the key),
request id, job id, outcome and error code; only admin keys read it; it survives a restart of the
service, keeps to its retention bounds, treats prompts per IMAGES_AUDIT_PROMPTS, and never fails
the request it describes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from redis import Redis

from services.common.api_keys import key_id_of
from services.images_service.admin import cli
from services.images_service.audit import STREAM_KEY, AuditLog, prompt_hash
from services.images_service.settings import get_settings
from tests.support.fakes import BoomError, FakeEngine
from tests.support.harness import Harness
from tests.support.servers import free_port

ADMIN_KEY = "admin-9e1f3c5a7b2d4e60"
PRO_KEY = "pro-4a6c8e0b2d1f4a77"
FREE_KEY = "free-1b3d5f7a9c0e4b22"
API_KEYS = f"{ADMIN_KEY}:admin, {PRO_KEY}:pro, {FREE_KEY}:free"
ALL_KEYS = (ADMIN_KEY, PRO_KEY, FREE_KEY)

PROMPT = "a lighthouse at dusk, painted by a private person"


def headers(key: str | None, request_id: str | None = None) -> dict[str, str]:
    out = {"X-API-Key": key} if key else {}
    if request_id:
        out["X-Request-ID"] = request_id
    return out


@pytest.fixture
def secured(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(api_keys=API_KEYS)


def submit(harness: Harness, key: str | None, request_id: str | None = None, **body: Any) -> httpx.Response:
    return harness.client.post(
        "/api/images/generate", json={"prompt": PROMPT, **body}, headers=headers(key, request_id)
    )


def entries(harness: Harness, key: str | None = ADMIN_KEY, **params: Any) -> list[dict[str, Any]]:
    response = harness.client.get("/api/images/audit", params=params, headers=headers(key))
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


def only(found: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    hits = [e for e in found if all(e.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, f"expected one entry matching {match}, got {hits} in {found}"
    return hits[0]


def raw_stream(harness: Harness) -> bytes:
    """Everything the stream holds, as bytes: what an attacker with Redis access would read."""
    redis = Redis.from_url(harness.settings.redis_url)
    try:
        key = STREAM_KEY.format(prefix=harness.settings.queue_prefix)
        return repr(redis.xrange(key)).encode()
    finally:
        redis.close()


def write_failures(action: str) -> float:
    return REGISTRY.get_sample_value("images_audit_write_failures_total", {"action": action}) or 0.0


# --- every action lands -----------------------------------------------------------------------------
def test_submit_done_select_delete_and_cancel_land_with_ids(secured: Harness) -> None:
    pro = key_id_of(PRO_KEY)
    first = submit(secured, PRO_KEY, "req-audit-1", steps=3)
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    secured.work()
    view = secured.client.get(f"/api/images/jobs/{job_id}", headers=headers(PRO_KEY)).json()
    assert view["status"] == "done", view
    image_key = view["result"]["images"][0]["key"]

    selected = secured.client.post(
        "/api/images/select", json={"key": image_key}, headers=headers(PRO_KEY, "req-audit-2")
    )
    assert selected.status_code == 200, selected.text
    deleted = secured.client.delete(f"/api/images/items/{image_key}", headers=headers(PRO_KEY, "req-audit-3"))
    assert deleted.status_code == 204, deleted.text
    second = submit(secured, PRO_KEY, "req-audit-4")
    canceled = secured.client.post(
        f"/api/images/jobs/{second.json()['job_id']}/cancel", headers=headers(PRO_KEY, "req-audit-5")
    )
    assert canceled.status_code == 200, canceled.text

    found = entries(secured)
    assert [e["action"] for e in found] == ["cancel", "submit", "delete", "select", "done", "submit"]
    submitted = only(found, action="submit", job_id=job_id)
    assert submitted["key_id"] == pro and submitted["request_id"] == "req-audit-1"
    assert submitted["outcome"] == "accepted" and submitted["error_code"] == ""
    assert submitted["what"]["steps"] == 3 and submitted["what"]["prompt_sha256"] == prompt_hash(PROMPT)
    done = only(found, action="done")
    # The worker's entry: key id and request id carried in the job's meta from the submit.
    assert (done["job_id"], done["key_id"], done["request_id"]) == (job_id, pro, "req-audit-1")
    assert done["outcome"] == "stored" and done["what"]["model"] == "fake-model"
    assert done["what"]["size"] == "64x48"
    select = only(found, action="select")
    assert (select["key_id"], select["request_id"], select["job_id"]) == (pro, "req-audit-2", job_id)
    assert select["outcome"] == "selected" and select["what"] == {"key": image_key}
    delete = only(found, action="delete")
    assert (delete["key_id"], delete["request_id"], delete["outcome"]) == (pro, "req-audit-3", "deleted")
    cancel = only(found, action="cancel")
    assert cancel["job_id"] == second.json()["job_id"] and cancel["request_id"] == "req-audit-5"
    assert cancel["outcome"] == "canceled" and cancel["key_id"] == pro
    # Timestamps are UTC ISO, newest first.
    assert all(e["ts"].endswith("Z") for e in found)
    assert [e["ts"] for e in found] == sorted((e["ts"] for e in found), reverse=True)
    stream = raw_stream(secured)
    for key in ALL_KEYS:
        assert key.encode() not in stream
    assert PROMPT.encode() not in stream


def test_a_failed_job_is_an_error_entry_with_its_code(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(FakeEngine(fail_with=BoomError("the engine fell over")), api_keys=API_KEYS)
    job_id = submit(harness, PRO_KEY, "req-boom").json()["job_id"]
    harness.work()

    error = only(entries(harness), action="error")
    assert (error["job_id"], error["key_id"], error["request_id"]) == (job_id, key_id_of(PRO_KEY), "req-boom")
    assert error["outcome"] == "failed" and error["error_code"] == "INTERNAL_ERROR"


def test_rerun_is_a_submission_and_a_replay_is_marked(secured: Harness) -> None:
    job_id = submit(secured, PRO_KEY).json()["job_id"]
    secured.work()
    view = secured.client.get(f"/api/images/jobs/{job_id}", headers=headers(PRO_KEY)).json()
    key = view["result"]["png_key"]
    rerun = secured.client.post("/api/images/rerun", json={"key": key}, headers=headers(PRO_KEY))
    assert rerun.status_code == 202, rerun.text
    replay_headers = {**headers(PRO_KEY), "Idempotency-Key": "audit-replay"}
    for _ in range(2):
        response = secured.client.post("/api/images/generate", json={"prompt": "x"}, headers=replay_headers)
        assert response.status_code == 202

    found = entries(secured, action="submit")
    assert [e["outcome"] for e in found] == ["replayed", "accepted", "accepted", "accepted"]
    assert found[0]["job_id"] == found[1]["job_id"]
    assert only(found, job_id=rerun.json()["job_id"])["what"] == {"rerun_of": key}


# --- refusals ---------------------------------------------------------------------------------------
def test_refusals_are_recorded_with_their_codes(secured: Harness) -> None:
    free = key_id_of(FREE_KEY)
    over_ceiling = submit(secured, FREE_KEY, "req-steps", steps=40)
    malformed = submit(secured, FREE_KEY, "req-malformed", steps=0)
    form = {**headers(FREE_KEY, "req-form"), "Content-Type": "application/x-www-form-urlencoded"}
    not_json = secured.client.post("/api/images/generate", content=b"prompt=x", headers=form)
    offline = submit(secured, PRO_KEY, "req-offline", engine="comfyui", steps=3)
    assert [r.status_code for r in (over_ceiling, malformed, not_json, offline)] == [400, 400, 415, 503]

    found = entries(secured, action="refuse")
    assert len(found) == 4
    steps = only(found, request_id="req-steps")
    assert (steps["key_id"], steps["outcome"], steps["error_code"]) == (free, "refused", "VALIDATION_ERROR")
    assert steps["job_id"] == "" and steps["what"]["steps"] == 40
    assert steps["what"]["prompt_sha256"] == prompt_hash(PROMPT)
    bad = only(found, request_id="req-malformed")
    assert bad["error_code"] == "VALIDATION_ERROR" and bad["what"]["steps"] == 0
    assert only(found, request_id="req-form")["error_code"] == "VALIDATION_ERROR"
    engine = only(found, request_id="req-offline")
    assert engine["error_code"] == "ENGINE_OFFLINE" and engine["key_id"] == key_id_of(PRO_KEY)
    assert engine["what"]["engine"] == "comfyui"
    assert PROMPT.encode() not in raw_stream(secured)


def test_a_quota_refusal_is_rate_limited(secured: Harness) -> None:
    quotas = secured.client.app.state.quotas
    redis = Redis.from_url(secured.settings.redis_url)
    try:
        redis.set(quotas.counter_key(key_id_of(FREE_KEY), datetime.now(UTC)), 50)
    finally:
        redis.close()
    assert submit(secured, FREE_KEY, "req-quota").status_code == 429

    refused = only(entries(secured), request_id="req-quota")
    assert (refused["action"], refused["error_code"]) == ("refuse", "RATE_LIMITED")


def test_a_cancel_of_another_keys_job_is_a_refused_cancel(secured: Harness) -> None:
    job_id = submit(secured, PRO_KEY).json()["job_id"]
    response = secured.client.post(f"/api/images/jobs/{job_id}/cancel", headers=headers(FREE_KEY, "req-x"))
    assert response.status_code == 404

    cancel = only(entries(secured), action="cancel")
    assert (cancel["job_id"], cancel["key_id"], cancel["outcome"]) == (job_id, key_id_of(FREE_KEY), "refused")
    assert cancel["error_code"] == "JOB_NOT_FOUND" and cancel["request_id"] == "req-x"


def test_a_select_or_delete_of_another_keys_image_is_refused_and_recorded(secured: Harness) -> None:
    job_id = submit(secured, PRO_KEY).json()["job_id"]
    secured.work()
    result = secured.client.get(f"/api/images/jobs/{job_id}", headers=headers(PRO_KEY)).json()["result"]
    image_key = result["png_key"]
    select = secured.client.post("/api/images/select", json={"key": image_key}, headers=headers(FREE_KEY))
    delete = secured.client.delete(f"/api/images/items/{image_key}", headers=headers(FREE_KEY))
    assert (select.status_code, delete.status_code) == (404, 404)

    found = entries(secured, key_id=key_id_of(FREE_KEY))
    assert [(e["action"], e["outcome"], e["error_code"]) for e in found] == [
        ("delete", "refused", "KEY_NOT_FOUND"),
        ("select", "refused", "KEY_NOT_FOUND"),
    ]
    assert found[0]["what"] == {"key": image_key}


# --- who may read it -------------------------------------------------------------------------------
def test_only_an_admin_key_reads_the_log(secured: Harness) -> None:
    submit(secured, PRO_KEY)
    assert len(entries(secured, ADMIN_KEY)) == 1

    unknown = secured.client.get("/api/images/no-such-route", headers=headers(PRO_KEY))
    for key, params in ((PRO_KEY, {}), (FREE_KEY, {"limit": 0}), (PRO_KEY, {"action": "nope"})):
        response = secured.client.get("/api/images/audit", params=params, headers=headers(key))
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "NOT_FOUND" == unknown.json()["error"]["code"]
        assert "audit" in error["message"] and "submit" not in response.text
    assert secured.client.get("/api/images/audit").status_code == 401


def test_without_keys_the_log_is_open_and_entries_have_no_key_id(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with()
    submit(harness, None, "req-open")

    entry = only(entries(harness, None), request_id="req-open")
    assert entry["key_id"] == "" and entry["action"] == "submit"


def test_filters_and_pages(secured: Harness) -> None:
    jobs = [submit(secured, key).json()["job_id"] for key in (PRO_KEY, FREE_KEY, PRO_KEY, PRO_KEY)]
    submit(secured, FREE_KEY, steps=99)

    assert len(entries(secured, key_id=key_id_of(PRO_KEY))) == 3
    assert [e["job_id"] for e in entries(secured, job_id=jobs[1])] == [jobs[1]]
    assert len(entries(secured, action="refuse")) == 1

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = secured.client.get("/api/images/audit", params=params, headers=headers(ADMIN_KEY)).json()
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 == len(set(seen))
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
    pro_pages = secured.client.get(
        "/api/images/audit", params={"limit": 2, "key_id": key_id_of(PRO_KEY)}, headers=headers(ADMIN_KEY)
    ).json()
    older = entries(secured, key_id=key_id_of(PRO_KEY), cursor=pro_pages["next_cursor"])
    assert [e["job_id"] for e in pro_pages["entries"] + older] == [jobs[3], jobs[2], jobs[0]]


# --- durability, bounds, policy --------------------------------------------------------------------
def test_entries_survive_a_restart_of_the_service(harness_with: Callable[..., Harness]) -> None:
    before = harness_with(api_keys=API_KEYS)
    job_id = submit(before, PRO_KEY).json()["job_id"]
    before.client.__exit__(None, None, None)

    after = harness_with(api_keys=API_KEYS)
    assert only(entries(after), action="submit")["job_id"] == job_id


def test_the_count_bound_is_kept(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(audit_max_entries=50)
    audit = AuditLog(Redis.from_url(harness.settings.redis_url), harness.settings)
    ids = [audit.record("submit", outcome="accepted", job_id=f"job-{n}") for n in range(400)]

    # Approximate trimming removes whole stream nodes: at least 50 remain, never many more.
    assert 50 <= audit.length() <= 50 + 100
    newest = audit.read(limit=1).entries[0]
    assert newest.id == ids[-1] and newest.job_id == "job-399"


def test_the_age_bound_is_kept(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(audit_retention_days=30)
    redis = Redis.from_url(harness.settings.redis_url)
    key = STREAM_KEY.format(prefix=harness.settings.queue_prefix)
    old_ms = int((time.time() - 40 * 86400) * 1000)
    for n in range(300):  # entries written 40 days ago
        redis.xadd(key, {"ts": "old", "action": "submit", "job_id": f"old-{n}"}, id=f"{old_ms + n}-0")
    audit = AuditLog(redis, harness.settings)
    audit.record("submit", outcome="accepted", job_id="new")

    remaining = audit.read(limit=500).entries
    assert remaining[0].job_id == "new"
    # Whole nodes of old entries go; at most the one shared with the new entry may linger.
    assert len(remaining) <= 101
    redis.close()


@pytest.mark.parametrize("policy", ["full", "hash", "none"])
def test_prompts_follow_the_policy(harness_with: Callable[..., Harness], policy: str) -> None:
    harness = harness_with(audit_prompts=policy)
    submit(harness, None, negative_prompt="blurry")
    what = only(entries(harness, None), action="submit")["what"]

    if policy == "full":
        assert what["prompt"] == PROMPT and what["negative_prompt"] == "blurry"
    elif policy == "hash":
        assert what["prompt_sha256"] == prompt_hash(PROMPT) and "prompt" not in what
        assert PROMPT.encode() not in raw_stream(harness)
    else:
        assert not any("prompt" in name for name in what)
        assert PROMPT.encode() not in raw_stream(harness)


def test_a_failed_audit_write_never_fails_the_request(secured: Harness) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    secured.client.app.state.audit = AuditLog(dead, secured.settings)
    failures = write_failures("submit")

    assert submit(secured, PRO_KEY).status_code == 202
    assert write_failures("submit") == failures + 1


# --- the CLI and the diagnostics bundle -------------------------------------------------------------
@pytest.fixture
def operator_env(
    secured: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment `kitty-images` would run in next to `secured` (no `.env`, fresh settings)."""
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": secured.settings.redis_url,
        "IMAGES_QUEUE_PREFIX": secured.settings.queue_prefix,
        "IMAGES_DATA_DIR": str(secured.settings.data_dir),
        "MODELS_YAML": str(secured.settings.models_yaml),
        "IMAGES_API_KEYS": API_KEYS,
        "IMAGES_AUDIT_PROMPTS": "full",
    }
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def test_the_cli_prints_newest_first(secured: Harness, operator_env: dict[str, str]) -> None:
    first = submit(secured, PRO_KEY, "req-cli-1").json()["job_id"]
    submit(secured, FREE_KEY, "req-cli-2", steps=99)
    second = submit(secured, PRO_KEY, "req-cli-3").json()["job_id"]

    result = CliRunner().invoke(cli, ["audit"], env=operator_env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert f"job={second}" in lines[0] and "req=req-cli-3" in lines[0] and "submit" in lines[0]
    assert "refuse" in lines[1] and "VALIDATION_ERROR" in lines[1]
    assert f"key={key_id_of(FREE_KEY)}" in lines[1]
    assert f"job={first}" in lines[2]
    assert all(key not in result.output for key in ALL_KEYS)

    as_json = CliRunner().invoke(
        cli,
        ["audit", "--json", "--action", "submit", "--limit", "1"],
        env=operator_env,
        catch_exceptions=False,
    )
    page = json.loads(as_json.stdout)
    assert [e["job_id"] for e in page["entries"]] == [second] and page["next_cursor"]
    by_key = CliRunner().invoke(
        cli, ["audit", "--key-id", key_id_of(FREE_KEY)], env=operator_env, catch_exceptions=False
    )
    assert len(by_key.stdout.splitlines()) == 1


def test_the_diagnostics_bundle_carries_recent_entries_redacted(
    harness_with: Callable[..., Harness], operator_env: dict[str, str]
) -> None:
    harness = harness_with(api_keys=API_KEYS, audit_prompts="full")
    job_id = submit(harness, PRO_KEY, "req-bundle").json()["job_id"]
    assert only(entries(harness), job_id=job_id)["what"]["prompt"] == PROMPT  # stored in full
    skip = [arg for name in ("storage", "engines", "models", "device", "disk") for arg in ("--skip", name)]

    result = CliRunner().invoke(cli, ["doctor", "--json", *skip], env=operator_env, catch_exceptions=False)
    bundle = json.loads(result.stdout)
    entry = only(bundle["audit"]["entries"], job_id=job_id)
    assert entry["request_id"] == "req-bundle" and entry["key_id"] == key_id_of(PRO_KEY)
    # Stored in full under this policy, yet the bundle (which travels) holds only the hash.
    assert entry["what"]["prompt_sha256"] == prompt_hash(PROMPT) and "prompt" not in entry["what"]
    assert PROMPT not in result.stdout
    assert all(key not in result.stdout for key in ALL_KEYS)


@pytest.mark.parametrize(
    "cursor", ["0-0", "99999999999999999999-0", "18446744073709551615-18446744073709551615"]
)
def test_edge_cursors_never_fail(secured: Harness, cursor: str) -> None:
    submit(secured, PRO_KEY)
    response = secured.client.get("/api/images/audit", params={"cursor": cursor}, headers=headers(ADMIN_KEY))

    assert response.status_code in (200, 400), response.text
    if cursor == "0-0":
        assert response.json() == {"entries": [], "next_cursor": None}
    elif response.status_code == 200:
        assert len(response.json()["entries"]) == 1
    else:
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
