"""`kitty-images doctor` as an operator meets it, against a real Redis (the session's redis-server)
and real closed ports: ok lines when things work, FAIL lines with what to do when they do not,
exit 1 on a FAIL, bounded time when a peer hangs, and never a secret in the output."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from services.images_service.admin import cli
from tests.support.servers import free_port

SECRETS = {
    "S3_ACCESS_KEY": "AKIADOCTORTEST",
    "S3_SECRET_KEY": "supersecret",
    "A1111_API_AUTH": "kitty:a1111-pass-word",
    "IMAGES_SIGNING_KEY": "signing-key-never-shown",
}
REDIS_PASSWORD = "hunter2-redis-pass"

HANG_BOUND_S = 12.0
"""A Redis that accepts but never answers must be reported within this (the client waits 2 s)."""

CLEARED = (
    "REDIS_URL",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_PUBLIC_ENDPOINT_URL",
    "A1111_API_AUTH",
    "IMAGES_SIGNING_KEY",
    "IMAGES_DEVICE",
    "HF_HOME",
    "IMAGE_ENGINE",
)
"""Variables a developer's shell may carry that would change what the doctor sees."""


@pytest.fixture
def base_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    # Settings also read ./.env: run where there is none.
    monkeypatch.chdir(tmp_path)
    env: dict[str, str | None] = dict.fromkeys(CLEARED)
    env.update(
        IMAGE_ENGINE="diffusers",
        IMAGES_DATA_DIR=str(tmp_path / "data"),
        MODELS_YAML=str(tmp_path / "models.yaml"),
        HF_HOME=str(tmp_path / "hf"),
        # Server engines on ports nothing listens on: informational lines, quickly.
        COMFYUI_URL=f"http://127.0.0.1:{free_port()}",
        A1111_BASE_URL=f"http://127.0.0.1:{free_port()}",
        INVOKE_PORT=str(free_port()),
    )
    return env


def doctor(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, ["doctor", *args], env=env, catch_exceptions=False)


def line(output: str, label: str, name: str) -> str:
    """The check line `label name ...`, or fail the test showing the whole output."""
    pattern = re.compile(rf"^{re.escape(label)}\s+{re.escape(name)}\s")
    for text in output.splitlines():
        if pattern.match(text):
            return text
    raise AssertionError(f"no '{label} {name}' line in:\n{output}")


def remedies_after(output: str, label: str, name: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index(line(output, label, name)) + 1
    found = []
    for text in lines[start:]:
        if not text.strip().startswith("→"):
            break
        found.append(text.strip())
    return found


@pytest.fixture
def durable_redis(redis_url: str) -> Iterator[str]:
    """The test Redis with AOF on for this test (the session server runs without it)."""
    client = redis.Redis.from_url(redis_url)
    client.config_set("appendonly", "yes")
    try:
        yield redis_url
    finally:
        client.config_set("appendonly", "no")
        client.close()


def test_a_healthy_setup_gets_ok_lines_and_exit_0(
    durable_redis: str, base_env: dict[str, str | None]
) -> None:
    result = doctor({**base_env, "REDIS_URL": durable_redis})
    assert result.exit_code == 0, result.output
    assert "AOF yes" in line(result.output, "ok", "redis")
    assert "folder" in line(result.output, "ok", "storage")
    # Free space depends on the machine: ok, or a warning, never a failure.
    assert re.search(r"^(ok|warn)\s+disk\s", result.output, re.MULTILINE), result.output
    # Server engines IMAGE_ENGINE does not name are informational, not problems.
    assert "informational" in line(result.output, "info", "comfyui")
    assert "no problems found" in result.output
    assert "settings (secrets redacted):" in result.output
    # The doctor checks the folder but must not create the service's signing key.
    assert not (Path(str(base_env["IMAGES_DATA_DIR"])) / "signing.key").exists()


def test_redis_without_aof_is_a_warning_with_the_fix(redis_url: str, base_env: dict[str, str | None]) -> None:
    result = doctor({**base_env, "REDIS_URL": redis_url}, "--skip", "device")
    assert result.exit_code == 0, result.output
    assert "AOF" in line(result.output, "warn", "redis")
    assert any("appendonly yes" in remedy for remedy in remedies_after(result.output, "warn", "redis"))


def failing_env(base_env: dict[str, str | None]) -> dict[str, str | None]:
    closed = free_port()
    return {
        **base_env,
        **SECRETS,
        "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "S3_BUCKET": "kitty-doctor",
    }


def assert_no_secret(text: str) -> None:
    for secret in [*SECRETS.values(), REDIS_PASSWORD, "a1111-pass-word"]:
        assert secret not in text, f"{secret!r} leaked into:\n{text}"


def test_unreachable_redis_and_storage_fail_with_remedies(base_env: dict[str, str | None]) -> None:
    result = doctor(failing_env(base_env), "--skip", "device")
    assert result.exit_code == 1, result.output
    assert "not reachable" in line(result.output, "FAIL", "redis")
    assert any("redis-server" in remedy for remedy in remedies_after(result.output, "FAIL", "redis"))
    storage = line(result.output, "FAIL", "storage")
    assert "kitty-doctor" in storage
    assert any("MinIO" in remedy for remedy in remedies_after(result.output, "FAIL", "storage"))
    assert "problem(s) to fix" in result.output
    assert "redis://:[redacted]@127.0.0.1" in result.output
    assert "S3_SECRET_KEY=[redacted]" in result.output
    assert_no_secret(result.output)


def test_the_json_bundle_is_redacted_too(base_env: dict[str, str | None]) -> None:
    result = doctor(failing_env(base_env), "--json", "--skip", "device")
    assert result.exit_code == 1
    assert_no_secret(result.output)
    bundle = json.loads(result.output)
    assert bundle["ok"] is False
    statuses = {check["name"]: check["status"] for check in bundle["checks"]}
    assert statuses["redis"] == statuses["storage"] == "fail"
    assert all(check["remedies"] for check in bundle["checks"] if check["status"] == "fail")
    assert bundle["settings"]["S3_SECRET_KEY"] == "[redacted]"
    assert bundle["settings"]["IMAGES_SIGNING_KEY"] == "[redacted]"
    assert bundle["settings"]["S3_BUCKET"] == "kitty-doctor"  # not a secret: shown
    assert bundle["versions"]["kitty-images"]


def test_the_engine_named_by_image_engine_is_a_problem_when_offline(
    redis_url: str, base_env: dict[str, str | None]
) -> None:
    result = doctor({**base_env, "REDIS_URL": redis_url, "IMAGE_ENGINE": "comfyui"}, "--skip", "device")
    assert result.exit_code == 1, result.output
    assert "offline" in line(result.output, "FAIL", "comfyui")
    assert any("COMFYUI_URL" in remedy for remedy in remedies_after(result.output, "FAIL", "comfyui"))
    line(result.output, "info", "a1111")


def test_models_on_disk_and_missing(redis_url: str, base_env: dict[str, str | None], tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.mkdir()
    (present / "model_index.json").write_text("{}")
    single = tmp_path / "one.safetensors"
    single.write_bytes(b"weights")
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        f"  here: {{path: {present}}}\n"
        f"  single: {{path: {single}, family: sd15}}\n"
        f"  gone: {{path: {tmp_path / 'gone'}}}\n"
        "  hub: {repo: someorg/not-cached}\n"
    )
    result = doctor({**base_env, "REDIS_URL": redis_url}, "--skip", "device")
    assert result.exit_code == 1, result.output
    line(result.output, "ok", "model here")
    assert "single-file checkpoint" in line(result.output, "ok", "model single")
    assert "does not exist" in line(result.output, "FAIL", "model gone")
    assert "Hugging Face cache" in line(result.output, "FAIL", "model hub")
    assert any("models pull hub" in remedy for remedy in remedies_after(result.output, "FAIL", "model hub"))


def test_invalid_settings_are_reported_not_raised(base_env: dict[str, str | None]) -> None:
    result = doctor({**base_env, "IMAGES_PORT": "eighty", "S3_SECRET_KEY": "supersecret"})
    assert result.exit_code == 1, result.output
    assert "IMAGES_PORT" in line(result.output, "FAIL", "images-service")
    assert "supersecret" not in result.output


def test_a_machine_without_torch_says_so_plainly(
    redis_url: str, base_env: dict[str, str | None], tmp_path: Path
) -> None:
    # A `torch` that cannot be imported, first on the probe's path: what an API-only host looks like.
    shadow = tmp_path / "no-torch"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    env = {**base_env, "REDIS_URL": redis_url, "PYTHONPATH": str(shadow)}
    result = doctor(env, "--skip", "engines")
    assert result.exit_code == 0, result.output
    assert "torch not installed" in line(result.output, "warn", "device")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung peer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_a_hung_redis_is_reported_in_bounded_time(
    silent_server: int, base_env: dict[str, str | None]
) -> None:
    started = time.monotonic()
    result = doctor({**base_env, "REDIS_URL": f"redis://127.0.0.1:{silent_server}/0"}, "--skip", "device")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    line(result.output, "FAIL", "redis")
    assert elapsed < HANG_BOUND_S, f"the doctor took {elapsed:.1f} s"
