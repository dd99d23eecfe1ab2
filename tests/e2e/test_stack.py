"""`kitty-images up` as an operator runs it (a real process with its real children): two stacks
side by side, a busy port, a killed worker, SIGTERM; and each process started by hand refusing a
busy port or an unreachable Redis in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.images_service.stack import STOP_GRACE_S, ChildFailed, RestartPolicy, Stack
from tests.support.servers import free_port, log_tail, wait_for_http

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent

UP_READY_S = 120.0
"""How long `up` may take to answer on its gateway (tiny models, a cold torch import, two cores)."""

STOPPED_WITHIN_S = STOP_GRACE_S + 5.0
"""SIGTERM to `up` → every child gone: its grace for a child, plus the interpreter's own exit."""

ENGINE_URL_SETTINGS = ("COMFYUI_URL", "A1111_BASE_URL", "INVOKE_HOST", "INVOKE_PORT", "IMAGE_ENGINE")
"""Kept out of `up`'s environment unless a test sets them: each adds a worker."""

CHILD_KINDS = (
    "redis-server",
    "images-service",
    "images-worker --engine diffusers",
    "images-worker --engine comfyui",
    "bin/gateway",
)
"""What `up` runs with COMFYUI_URL set, as its children's command lines say it."""

LONG_JOB = {"prompt": "a long night", "model": "tiny-sd15", "steps": 150, "width": 64, "height": 64}
"""Seconds of work for the tiny pipeline: long enough to kill its worker mid-way."""


def child_processes(pid: int) -> dict[int, str]:
    """pid → command line of each process whose parent is `pid` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid:
            found[int(entry.name)] = cmdline
    return found


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for every purpose here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Up:
    """One `kitty-images up` in its own data dir and ports, its output in a log file."""

    def __init__(self, root: Path, models_yaml: Path, **env: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.images_port, self.gateway_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {
            **{name: value for name, value in os.environ.items() if name not in ENGINE_URL_SETTINGS},
            "IMAGES_DATA_DIR": str(root / "var"),
            "MODELS_YAML": str(models_yaml),
            "IMAGES_PORT": str(self.images_port),
            "GATEWAY_PORT": str(self.gateway_port),
            "IMAGES_WORKER_METRICS_PORT": str(self.metrics_port),
            "IMAGES_WORKER_HEARTBEAT": "0.5",
            "IMAGES_JANITOR_INTERVAL": "0.5",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # two cores for two stacks and the test
            **env,
        }
        for name in ("REDIS_URL", "S3_BUCKET"):
            self.env.pop(name, None)
        self.log_path = root / "up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, str] = {}
        """Every child seen, so none outlives the test even if `up` itself is killed."""

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def run(self) -> subprocess.CompletedProcess[str]:
        """`up` to its end (for refusals); cwd is its root, so no .env of the checkout is read."""
        return subprocess.run(
            [str(BIN / "kitty-images"), "up"], env=self.env, cwd=self.root, capture_output=True, text=True
        )

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "kitty-images"), "up"],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_http(f"{self.gateway_url}/readyz", UP_READY_S, process=self.process, log_path=self.log_path)
        self.children()

    def children(self) -> dict[int, str]:
        assert self.process is not None
        found = child_processes(self.process.pid)
        self.seen.update(found)
        return found

    def worker_pid(self, engine: str = "diffusers") -> int:
        pids = [pid for pid, cmd in self.children().items() if f"images-worker --engine {engine}" in cmd]
        assert len(pids) == 1, self.children()
        return pids[0]

    def log(self) -> str:
        return log_tail(self.log_path, 8000)

    def wait_for_line(self, *parts: str, timeout: float = UP_READY_S) -> None:
        """Until a line of `up`'s output holds every one of `parts`."""
        deadline = time.monotonic() + timeout
        while not any(all(part in line for part in parts) for line in self.log_path.read_text().splitlines()):
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOPPED_WITHIN_S + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.seen:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ups(tmp_path: Path, tiny_models: Path) -> Iterator[list[Up]]:
    made: list[Up] = []
    yield made
    for up in made:
        up.close()


def make_up(ups: list[Up], root: Path, models_yaml: Path, **env: str) -> Up:
    up = Up(root, models_yaml, **env)
    ups.append(up)
    return up


def metrics_answer(port: int) -> None:
    wait_for_http(f"http://127.0.0.1:{port}/metrics", UP_READY_S)


# --- a busy port: one line, non-zero -------------------------------------------------------------
@pytest.fixture
def busy_port() -> Iterator[int]:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("setting", ["IMAGES_PORT", "GATEWAY_PORT", "IMAGES_WORKER_METRICS_PORT"])
def test_up_refuses_a_busy_port_in_one_line_naming_the_setting(
    ups: list[Up], tmp_path: Path, tiny_models: Path, busy_port: int, setting: str
) -> None:
    up = make_up(ups, tmp_path, tiny_models, **{setting: str(busy_port)})
    result = up.run()
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Error: port {busy_port} on 127.0.0.1 is already in use; set {setting} to a free port"
    ]
    assert not (tmp_path / "var" / "redis").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        ("images-service", "IMAGES_PORT"),
        ("gateway", "GATEWAY_PORT"),
        ("images-worker", "IMAGES_WORKER_METRICS_PORT"),
    ],
)
def test_a_process_started_by_hand_refuses_a_busy_port_in_one_line(
    tmp_path: Path, redis_url: str, busy_port: int, command: str, setting: str
) -> None:
    env = {**os.environ, "IMAGES_DATA_DIR": str(tmp_path), "REDIS_URL": redis_url, setting: str(busy_port)}
    result = subprocess.run(
        [str(BIN / command)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: port {busy_port} on 127.0.0.1 is already in use; set {setting}")
    assert "Traceback" not in result.stderr


def test_worker_without_redis_retries_then_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    env = {
        **os.environ,
        "IMAGES_DATA_DIR": str(tmp_path),
        "REDIS_URL": url,
        "IMAGES_WORKER_METRICS_PORT": "0",
    }
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "images-worker"), "--redis-wait", "1.5"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert time.monotonic() - started >= 1.5  # it waited before giving up
    lines = result.stderr.strip().splitlines()
    assert sum("Redis not reachable yet; retrying" in line for line in lines) >= 2
    assert lines[-1].startswith(
        f"images-worker: cannot reach Redis at redis://:[redacted]@127.0.0.1:{port}/0"
    )
    assert lines[-1].endswith("start Redis, or set REDIS_URL to one that runs")
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


# --- whole stacks ----------------------------------------------------------------------------------
def test_two_stacks_on_one_host_both_come_up(ups: list[Up], tmp_path: Path, tiny_models: Path) -> None:
    first = make_up(ups, tmp_path / "a", tiny_models)
    second = make_up(ups, tmp_path / "b", tiny_models)
    first.start()
    second.start()

    for up in (first, second):
        metrics_answer(up.metrics_port)
        assert httpx.get(f"{up.gateway_url}/readyz", trust_env=False).status_code == 200
        assert up.process is not None and up.process.poll() is None, up.log()
        assert (up.root / "var" / "redis").is_dir()  # each its own private Redis
    assert first.worker_pid() != second.worker_pid()


def test_killed_worker_is_restarted_while_the_api_stays_up_and_its_job_finishes(
    ups: list[Up], tmp_path: Path, tiny_models: Path
) -> None:
    up = make_up(ups, tmp_path, tiny_models, IMAGES_LOST_JOB_RETRIES="1")
    up.start()
    http = httpx.Client(base_url=up.gateway_url, timeout=10, trust_env=False)
    submitted = http.post("/api/images/generate", json=LONG_JOB)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]

    def view() -> dict:
        return dict(http.get(f"/api/images/jobs/{job_id}").json())

    deadline = time.monotonic() + 180
    while not (view()["status"] == "started" and view()["progress"]["step"] >= 3):
        assert time.monotonic() < deadline, view()
        time.sleep(0.1)
    killed = up.worker_pid()
    os.kill(killed, signal.SIGKILL)

    deadline = time.monotonic() + 60
    while True:  # the API answers all along, while the worker comes back
        assert http.get("/readyz").status_code == 200
        pids = [pid for pid, cmd in up.children().items() if "images-worker --engine diffusers" in cmd]
        if pids and pids != [killed]:
            break
        assert time.monotonic() < deadline, up.log()
        time.sleep(0.2)
    assert "worker-diffusers exited with signal SIGKILL; starting it again in 1 s" in up.log()

    deadline = time.monotonic() + 180
    while view()["status"] not in ("done", "error", "canceled"):
        assert time.monotonic() < deadline, view()
        time.sleep(0.2)
    assert view()["status"] == "done", view()
    assert up.process is not None and up.process.poll() is None


def test_sigterm_stops_every_child_of_up_including_engine_workers(
    ups: list[Up], tmp_path: Path, tiny_models: Path
) -> None:
    # Configured is enough for its worker to start: the server itself need not run.
    up = make_up(ups, tmp_path, tiny_models, COMFYUI_URL=f"http://127.0.0.1:{free_port()}")
    up.start()
    metrics_answer(up.metrics_port)
    children = up.children()
    kinds = sorted(kind for cmd in children.values() for kind in CHILD_KINDS if kind in cmd)
    assert kinds == sorted(CHILD_KINDS), children
    comfyui = next(cmd for cmd in children.values() if "--engine comfyui" in cmd)
    comfyui_port = int(comfyui.rpartition("--metrics-port ")[2])
    assert comfyui_port not in (0, up.metrics_port)
    metrics_answer(comfyui_port)  # its own /metrics, on a port of its own
    for engine in ("diffusers", "comfyui"):  # idle in RQ's loop, the case that stopped slowly
        up.wait_for_line(f"worker-{engine}", "Listening on")

    assert up.process is not None
    up.process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    up.process.wait(timeout=STOPPED_WITHIN_S + 10)
    took = time.monotonic() - stopped_at
    left = [cmd for pid, cmd in children.items() if is_alive(pid)]
    assert left == [] and took < STOPPED_WITHIN_S, f"{left} after {took:.1f} s:\n{up.log()}"
    assert up.process.returncode == 0


# --- supervision ---------------------------------------------------------------------------------
def test_a_crash_loop_stops_the_stack_and_shows_the_failed_process_last_lines(tmp_path: Path) -> None:
    policy = RestartPolicy(first_delay_s=0.1, max_delay_s=1.0, max_restarts=3, window_s=30.0)
    stack = Stack(data_dir=tmp_path, log_dir=tmp_path / "logs", restart=policy)
    try:
        steady = stack.add("steady", ["sleep", "60"])
        stack.add("flaky", ["sh", "-c", 'echo "flaky starting"; echo "boom: no such model" >&2; exit 3'])
        started = time.monotonic()
        with pytest.raises(ChildFailed) as failed:
            stack.supervise()
        took = time.monotonic() - started
        assert steady.is_running  # the others kept running meanwhile
    finally:
        stack.stop()
    assert not steady.is_running
    assert (
        str(failed.value) == "flaky exited with exit code 3 after 3 restarts within 30 s; stopping the stack"
    )
    assert failed.value.tail[-2:] == ["flaky starting", "boom: no such model"]
    assert failed.value.log_path == tmp_path / "logs" / "flaky.log"
    assert (tmp_path / "logs" / "flaky.log").read_text().count("boom") == 4  # first run + 3 restarts
    assert took >= 0.1 + 0.2 + 0.4  # backoff doubled between restarts


# --- the demo --------------------------------------------------------------------------------------
def test_demo_checks_that_its_one_job_stored_exactly_one_image(tmp_path: Path, tiny_models: Path) -> None:
    env = {
        **{name: value for name, value in os.environ.items() if name not in ENGINE_URL_SETTINGS},
        "IMAGES_DATA_DIR": str(tmp_path / "var"),
        "MODELS_YAML": str(tiny_models),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("REDIS_URL", "S3_BUCKET"):
        env.pop(name, None)
    result = subprocess.run(
        [str(BIN / "kitty-images"), "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    checked = re.search(r"^job (\w+): (.*); stored (images/\S+\.png)$", result.stderr, re.MULTILINE)
    assert checked is not None, result.stderr[-4000:]
    assert checked.group(2).endswith("started → done")
    stored = sorted(
        p.name for p in (tmp_path / "var" / "store" / "images").iterdir() if p.suffix in (".png", ".json")
    )
    assert stored == [Path(checked.group(3)).with_suffix(".json").name, Path(checked.group(3)).name]
