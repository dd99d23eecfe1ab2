"""Pausing the queue with real processes (issue 20 part 1): the images-service and an `images-worker`
rendering the tiny model. The running job finishes; the queued ones wait, listed as paused, while
the worker idles; after the resume they run in their order. An admin's pause of the whole queue
keeps the worker from taking a job submitted while it waits on its queues."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import pytest

from tests.support.deployment import Deployment, is_terminal

pytestmark = pytest.mark.e2e

RUNNING = {"prompt": "the running one", "model": "tiny-sd15", "steps": 150, "width": 64, "height": 64}
"""A render of a few seconds: long enough to pause the queue while it runs."""

QUICK = {"model": "tiny-sd15", "steps": 4, "width": 64, "height": 64}

SETTLE_S = 3.0
"""How long a worker that would wrongly take a paused job is given to do so."""


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_running_job_finishes_and_the_paused_ones_run_after_the_resume_in_order(
    deploy: Callable[..., Deployment],
) -> None:
    stack = deploy()
    stack.start_api()
    stack.start_worker("worker-1")
    running = stack.generate(RUNNING)
    stack.running_mid_way(running)
    waiting = [stack.generate({**QUICK, "prompt": f"waiting {n}"}) for n in range(3)]

    assert stack.http.post("/api/images/queue/pause").json()["paused"] is True
    assert stack.wait_for(running, is_terminal)["status"] == "done"
    # The worker reaches the paused jobs and sets them aside instead of running them.
    wait_until(lambda: stack.http.get("/api/images/queue").json()["held"] == 3)
    time.sleep(SETTLE_S)
    for job_id in waiting:
        view = stack.view(job_id)
        assert view["status"] == "queued" and view["paused"] is True, view
        assert view["started_at"] is None

    resumed = stack.http.post("/api/images/queue/resume").json()
    assert resumed["resumed"] == 3 and resumed["paused"] is False
    finals = [stack.wait_for(job_id, is_terminal) for job_id in waiting]
    assert [view["status"] for view in finals] == ["done"] * 3
    started = [datetime.fromisoformat(view["started_at"]) for view in finals]
    assert started == sorted(started), "the held jobs ran out of their order"

    # The whole queue (no keys here: the one caller may): a job submitted while the idle worker
    # waits on its queues is not taken until the resume.
    assert stack.http.post("/api/images/queue/pause", params={"scope": "all"}).json()["everyone_paused"]
    late = stack.generate({**QUICK, "prompt": "while everything is paused"})
    time.sleep(SETTLE_S)
    view = stack.view(late)
    assert view["status"] == "queued" and view["waiting"]["reason"] == "queue_paused", view
    assert view["position"] == 1  # nothing moved
    stack.http.post("/api/images/queue/resume", params={"scope": "all"})
    assert stack.wait_for(late, is_terminal)["status"] == "done"
    logs = "".join(path.read_text() for path in stack.logs.glob("worker-*.log"))
    assert "Traceback" not in logs
