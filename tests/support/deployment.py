"""The images-service and its workers as real processes against one Redis, for end-to-end tests
that cause faults or run long jobs and watch them as a user does (through the HTTP API)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.servers import ProcessHandle, free_port, start_process

BIN = Path(sys.executable).parent


class Deployment:
    """The images-service and workers as processes, against one Redis database."""

    def __init__(self, tmp_path: Path, redis_url: str, models_yaml: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp_path / "logs"
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "IMAGES_DATA_DIR": str(tmp_path / "var"),
            "MODELS_YAML": str(models_yaml),
            "IMAGES_PORT": str(self.port),
            "IMAGES_WORKER_HEARTBEAT": "0.5",
            "IMAGES_JANITOR_INTERVAL": "0.5",
            "HF_HUB_OFFLINE": "1",
            # One torch thread per worker: two workers on two cores must not fight over them.
            "OMP_NUM_THREADS": "1",
            **env,
        }
        self.env.pop("S3_BUCKET", None)
        self.processes: list[ProcessHandle] = []
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start_api(self) -> ProcessHandle:
        handle = start_process(
            [str(BIN / "images-service")], self.env, f"{self.url}/healthz", self.logs / "images.log"
        )
        self.processes.append(handle)
        return handle

    def start_worker(self, name: str, *, engine: str = "diffusers", **env: str) -> ProcessHandle:
        """A worker of `engine` (diffusers: with the tiny model loaded); `env` overrides its settings."""
        metrics = free_port()
        args = [str(BIN / "images-worker"), "--engine", engine, "--metrics-port", str(metrics)]
        if engine == "diffusers":
            args += ["--preload", "tiny-sd15"]
        handle = start_process(
            args,
            {**self.env, **env},
            f"http://127.0.0.1:{metrics}/metrics",
            self.logs / f"{name}.log",
            timeout=120,
        )
        self.processes.append(handle)
        return handle

    def generate(self, body: dict) -> str:
        response = self.http.post("/api/images/generate", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def view(self, job_id: str) -> dict:
        return dict(self.http.get(f"/api/images/jobs/{job_id}").json())

    def wait_for(self, job_id: str, done: Callable[[dict], bool], timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.view(job_id)
            if done(view):
                return view
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never got there; last view {view}")

    def running_mid_way(self, job_id: str) -> dict:
        return self.wait_for(job_id, lambda v: v["status"] == "started" and v["progress"]["step"] >= 3)

    def close(self) -> None:
        self.http.close()
        for handle in reversed(self.processes):
            handle.stop()


def is_terminal(view: dict) -> bool:
    return view["status"] in ("done", "error", "canceled")
