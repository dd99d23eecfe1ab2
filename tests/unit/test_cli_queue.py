"""`images.pause`, `images.resume` and `images.front` against a scripted gateway: the routes they
call, what they print, and an error answer as one line with its remediation."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.unit.test_cli import error_body, run


class QueueApi:
    """Answers the queue routes as the images-service does; keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, scope = request.url.path, request.url.params.get("scope")
        if path == "/api/images/queue/pause":
            everyone = scope == "all"
            return httpx.Response(200, json={"paused": not everyone, "everyone_paused": everyone, "held": 2})
        if path == "/api/images/queue/resume":
            return httpx.Response(
                200, json={"paused": False, "everyone_paused": False, "held": 0, "resumed": 3}
            )
        if path == "/api/images/jobs/job-1/front":
            return httpx.Response(200, json=queued_view())
        if path == "/api/images/jobs/job-2/front":
            body = error_body(
                "VALIDATION_ERROR",
                "job job-2 is done: only a job waiting in a queue can be moved",
                ["Move a job whose status is queued."],
            )
            return httpx.Response(409, json=body)
        return httpx.Response(404, json=error_body("NOT_FOUND", f"no route {path}", []))

    def calls(self) -> list[tuple[str, str, str | None]]:
        return [(r.method, r.url.path, r.url.params.get("scope")) for r in self.requests]


def queued_view() -> dict[str, Any]:
    return {
        "job_id": "job-1",
        "status": "queued",
        "engine": "diffusers",
        "position": 1,
        "paused": False,
        "waiting_for": "a worker: every one serving this engine is busy",
        "waiting": {"reason": "busy", "message": "every worker serving this engine is busy", "ahead": 0},
    }


def test_pause_and_resume_say_what_they_did() -> None:
    api = QueueApi()
    paused = run(["images.pause"], api)
    assert paused.exit_code == 0, paused.output
    assert "Your queue is paused" in paused.stdout and "2 set aside" in paused.stdout
    resumed = run(["images.resume"], api)
    assert "Your queue runs again. 3 jobs back in line." in resumed.stdout
    everyone = run(["images", "pause", "--everyone", "--json"], api)
    assert json.loads(everyone.stdout)["everyone_paused"] is True
    assert api.calls() == [
        ("POST", "/api/images/queue/pause", "mine"),
        ("POST", "/api/images/queue/resume", "mine"),
        ("POST", "/api/images/queue/pause", "all"),
    ]


def test_front_prints_the_jobs_new_place() -> None:
    api = QueueApi()
    moved = run(["images.front", "job-1"], api)
    assert moved.exit_code == 0, moved.output
    assert "position     1 (1 = next)" in moved.stdout


def test_front_of_a_finished_job_is_one_error_line_with_its_remediation() -> None:
    refused = run(["images.front", "job-2"], QueueApi())
    assert refused.exit_code == 1
    assert "VALIDATION_ERROR" in refused.stderr and "only a job waiting in a queue" in refused.stderr
    assert "Move a job whose status is queued." in refused.stderr
    assert "Traceback" not in refused.output
