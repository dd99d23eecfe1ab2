"""Jobs that outlast many heartbeats run exactly once.

Under rq 3 the worker's heartbeat thread failed on every beat, so the janitor took every job longer
than three heartbeats for a dead worker's and requeued it while it was still rendering: one job,
many renders, many stored copies. Short test jobs never showed it. Here the heartbeat and janitor
intervals are shortened so that a real render of a few seconds spans ten and more heartbeats, and a
second idle worker stands ready to take the job should it ever be requeued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.deployment import Deployment, is_terminal

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.25
"""Beats every 0.25 s; a job is declared lost after three missed ones (1 s, RQ's whole seconds)."""

MIN_BEATS = 10
"""The issue's bar: the job lasts this many heartbeat intervals or more."""

LONG_RENDER = {"prompt": "a very long night", "model": "tiny-sd15", "steps": 150, "width": 64, "height": 64}
"""A real render of several seconds with the tiny pipeline, one torch thread."""


def stored_sidecars(data_dir: Path, job_id: str) -> list[Path]:
    """Sidecars of images this job stored (the filesystem store keeps objects under the data dir)."""
    found = []
    for path in data_dir.rglob("*.json"):
        try:
            sidecar = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(sidecar, dict) and sidecar.get("job_id") == job_id:
            found.append(path)
    return found


def watch(stack: Deployment, job_id: str, timeout: float = 240.0) -> list[dict]:
    """Every view of the job until it ends, polled often enough to see a requeue."""
    views: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views.append(stack.view(job_id))
        if is_terminal(views[-1]):
            return views
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end; last view {views[-1]}")


def test_a_job_spanning_many_heartbeats_runs_once(deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    stack = deploy(
        IMAGES_WORKER_HEARTBEAT=str(HEARTBEAT_S),
        IMAGES_JANITOR_INTERVAL=str(HEARTBEAT_S),
        IMAGES_LOST_JOB_RETRIES="3",
    )
    stack.start_api()
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")  # idle: would take the job at once if it were ever requeued

    job_id = stack.generate(LONG_RENDER)
    views = watch(stack, job_id)
    final = views[-1]

    assert final["status"] == "done", final
    assert final["progress"] == {"step": 150, "total": 150}
    ran_s = (
        datetime.fromisoformat(final["ended_at"]) - datetime.fromisoformat(final["started_at"])
    ).total_seconds()
    assert ran_s >= MIN_BEATS * HEARTBEAT_S, f"the job ran {ran_s:.1f}s: too short to prove anything"

    # Never requeued: once started, never `queued` again, and progress never went back.
    statuses = [view["status"] for view in views]
    first_started = statuses.index("started")
    assert "queued" not in statuses[first_started:], statuses
    steps = [view["progress"]["step"] for view in views[first_started:]]
    assert steps == sorted(steps), "progress went back: the job was rendered again"

    # Rendered once, one image set stored, by one worker, without a failed heartbeat.
    assert len(final["result"]["images"]) == 1
    assert len(stored_sidecars(tmp_path / "var", job_id)) == 1
    logs = "".join(path.read_text() for path in stack.logs.glob("worker-*.log"))
    assert logs.count(job_id) >= 1
    assert "heartbeat failed" not in logs
    assert "Traceback" not in logs
