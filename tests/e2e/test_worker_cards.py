"""The engines matrix reports what the workers use: a ComfyUI worker pointed at a server the
images-service's own settings do not name shows that server, ready, instead of "offline"."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.support.asgi_server import serve_asgi
from tests.support.deployment import Deployment
from tests.support.peers.comfyui import VERSION, FakeComfyUI

pytestmark = pytest.mark.e2e


def engine_rows(stack: Deployment) -> dict[str, dict]:
    return {row["engine_id"]: row for row in stack.http.get("/api/images/engines").json()["engines"]}


def test_a_worker_reports_the_server_it_uses(deploy: Callable[..., Deployment]) -> None:
    stack = deploy(COMFYUI_URL="http://127.0.0.1:9")  # the API's own look: nothing listens there
    stack.start_api()
    before = engine_rows(stack)["comfyui"]
    assert before["status"] == "offline" and before["workers"] == 0

    with serve_asgi(FakeComfyUI().app) as comfyui_url:
        stack.start_worker("comfyui-worker", engine="comfyui", COMFYUI_URL=comfyui_url)
        deadline = time.monotonic() + 30
        row = before
        while time.monotonic() < deadline:
            row = engine_rows(stack)["comfyui"]  # the matrix is cached for 5 s
            if row["workers"] == 1 and row["status"] == "ready":
                break
            time.sleep(0.5)

        assert row["status"] == "ready", row
        assert row["workers"] == 1
        assert comfyui_url in row["detail"] and "127.0.0.1:9" not in row["detail"]
        assert row["version"] == VERSION
        # And the job path agrees: a live worker means a comfyui job is accepted.
        response = stack.http.post("/api/images/generate", json={"prompt": "x", "engine": "comfyui"})
        assert response.status_code == 202, response.text
