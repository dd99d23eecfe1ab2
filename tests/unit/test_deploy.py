"""The deployment files as an operator meets them: the compose stack exposes only what it should,
passes only settings the code reads, keeps torch out of the API image and Redis durable; the launchd
templates, filled by install.sh (DRY_RUN=1, so this runs on any OS), are valid plists that start our
console scripts, restart them, log where the README says and bind loopback."""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.gateway.settings import GatewaySettings
from services.images_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
LAUNCHD_DIR = REPO_ROOT / "deploy" / "launchd"

EXPECTED_SERVICES = {"redis", "minio", "createbucket", "images-service", "worker", "worker-gpu", "gateway"}
OUR_SERVICES = {"images-service", "worker", "worker-gpu", "gateway"}
"""Services running our code: their environment must consist of our settings' names."""

ONE_SHOT_JOBS = {"createbucket"}
"""Jobs that exit when done: judged by their exit code (service_completed_successfully), not health."""

OUR_AGENTS = {"com.kitty.images-service", "com.kitty.images-worker", "com.kitty.images-gateway"}
OPTIONAL_AGENTS = {"com.kitty.redis": "redis-server", "com.kitty.minio": "minio"}
"""Installed only with WITH_REDIS=1 / WITH_MINIO=1; label → the program they run."""


# --- compose --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def known_setting_names() -> set[str]:
    """Every environment name the code reads: the settings' aliases plus the CLI's KITTY_ variables."""
    names = {info.alias or attr.upper() for attr, info in Settings.model_fields.items()}
    names |= {info.alias or attr.upper() for attr, info in GatewaySettings.model_fields.items()}
    for path in [*(REPO_ROOT / "cli").rglob("*.py"), *(REPO_ROOT / "services" / "contracts").rglob("*.py")]:
        names |= set(re.findall(r"\bKITTY_[A-Z][A-Z_]*\b", path.read_text()))
    return names


def published_ports(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def container_port(mapping: str) -> str:
    return mapping.rsplit(":", 1)[-1].split("/")[0]


def test_compose_runs_exactly_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_only_the_gateway_and_minio_are_published_and_only_on_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway_ports = published_ports(services["gateway"])
    assert gateway_ports == ["${GATEWAY_BIND:-127.0.0.1}:${GATEWAY_PORT:-8080}:8080"]
    for name in ("redis", "images-service", "worker", "worker-gpu", "createbucket"):
        assert published_ports(services[name]) == [], f"{name} must not be published to the host"
    # MinIO: its API serves the presigned downloadUrls clients fetch, and its console; loopback too.
    for mapping in published_ports(services["minio"]):
        assert mapping.startswith("${MINIO_BIND:-127.0.0.1}:"), mapping
    every_published = [container_port(m) for s in services.values() for m in published_ports(s)]
    assert "8089" not in every_published and "9109" not in every_published


def test_compose_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    known = known_setting_names()
    for name in OUR_SERVICES:
        environment = compose["services"][name]["environment"]
        assert isinstance(environment, dict), f"{name}: use the mapping form"
        unknown = set(environment) - known
        assert not unknown, f"{name} sets variables no setting reads (a typo?): {sorted(unknown)}"


def test_compose_points_services_at_each_other(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["images-service"]["environment"]
    worker = services["worker"]["environment"]
    assert api["REDIS_URL"] == worker["REDIS_URL"] == "redis://redis:6379/0"
    assert api["S3_ENDPOINT_URL"] == worker["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert api["S3_PUBLIC_ENDPOINT_URL"]  # presigned URLs must name a host clients can reach
    assert api["IMAGES_HOST"] == "0.0.0.0" and worker["IMAGES_HOST"] == "0.0.0.0"
    gateway = services["gateway"]["environment"]
    assert gateway["IMAGES_BASE"] == "http://images-service:8089"
    assert gateway["GATEWAY_HOST"] == "0.0.0.0"
    # The API validates model names against the models.yaml the workers write.
    assert api["MODELS_YAML"] == worker["MODELS_YAML"]
    assert api["MODELS_YAML"].startswith("/data/models/")
    for name in ("images-service", "worker"):
        assert any(
            str(v).endswith(":/data/models") or ":/data/models:" in str(v) for v in services[name]["volumes"]
        ), name


def test_the_secret_has_no_default(compose: dict[str, Any]) -> None:
    for name in ("images-service", "worker", "minio", "createbucket"):
        environment = compose["services"][name]["environment"]
        secret = environment.get("S3_SECRET_KEY") or environment.get("MINIO_ROOT_PASSWORD")
        assert secret.startswith("${S3_SECRET_KEY:?"), f"{name} must refuse to start without S3_SECRET_KEY"


def test_redis_keeps_the_queue_across_restarts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT_JOBS:
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("images-service", "worker", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"
    assert services["createbucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["images-service"]["condition"] == "service_healthy"


def test_the_gpu_worker_is_opt_in_and_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert "profiles" not in services["worker"], "the CPU worker runs by default"
    assert gpu["command"] == services["worker"]["command"] == ["images-worker"]


def dockerfile_instructions(name: str) -> str:
    """The Dockerfile without comments: what it does, not what it says about itself."""
    lines = (COMPOSE_DIR / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def test_the_api_image_has_no_torch() -> None:
    instructions = dockerfile_instructions("Dockerfile.api").lower()
    assert "torch" not in instructions
    assert "[worker" not in instructions and "worker]" not in instructions
    assert re.search(r"pip install -c requirements.lock \.\s*$", instructions, re.MULTILINE)


def test_both_api_processes_use_the_api_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, command in (("images-service", ["images-service"]), ("gateway", ["gateway"])):
        assert services[name]["build"]["dockerfile"] == "deploy/compose/Dockerfile.api"
        assert services[name]["command"] == command
    assert services["images-service"]["image"] == services["gateway"]["image"]


def test_the_worker_image_installs_the_pinned_torch() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pin = next(
        dep for dep in pyproject["project"]["optional-dependencies"]["worker"] if dep.startswith("torch")
    )
    instructions = dockerfile_instructions("Dockerfile.worker")
    version = re.search(r"ARG TORCH_VERSION=(\S+)", instructions)
    assert version and pin == f"torch=={version.group(1)}"
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in instructions
    assert 'pip install -c requirements.lock ".[worker]"' in instructions
    # Only torch from PyTorch's index; its dependencies at the locked versions with ours.
    assert re.search(r"pip install --no-deps \"torch==\$\{TORCH_VERSION\}\"", instructions)


@pytest.mark.parametrize("image", ["Dockerfile.api", "Dockerfile.worker"])
def test_every_image_installs_the_locked_versions(image: str) -> None:
    instructions = dockerfile_instructions(image)
    copied = re.search(r"^COPY (.*) \./$", instructions, re.MULTILINE)
    assert copied and "requirements.lock" in copied.group(1).split()
    installs = [line for line in instructions.splitlines() if "pip install" in line and "torch==" not in line]
    assert installs and all("-c requirements.lock" in line for line in installs)
    ignore = (COMPOSE_DIR / f"{image}.dockerignore").read_text().splitlines()
    assert "!requirements.lock" in ignore, "the build context must carry the lock"


def test_prometheus_scrapes_every_metrics_endpoint() -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = " ".join(str(job) for job in config["scrape_configs"])
    for endpoint in ("images-service:8089", "gateway:8080", "9109"):
        assert endpoint in targets


# --- launchd --------------------------------------------------------------------------------------
def console_scripts() -> set[str]:
    return set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def run_script(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LAUNCHD_DIR / script), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def dry_env(home: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DRY_RUN": "1",
        "HOME": str(home),
        "VENV": str(Path(sys.executable).parent.parent),
        "DATA_DIR": str(tmp_path / "data"),
        "WITH_REDIS": "1",
        "WITH_MINIO": "1",
        "REDIS_SERVER": "/opt/homebrew/bin/redis-server",
        "MINIO": "/opt/homebrew/bin/minio",
    }


@pytest.fixture
def filled(tmp_path: Path, dry_env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every agent, filled by install.sh with DRY_RUN=1 into a scratch folder, loaded by plistlib."""
    out = tmp_path / "LaunchAgents"
    result = run_script("install.sh", str(out), env=dry_env)
    assert result.returncode == 0, result.stderr
    plists = {}
    for path in sorted(out.glob("*.plist")):
        with path.open("rb") as handle:
            plists[path.stem] = plistlib.load(handle)
    return plists


def test_install_fills_every_template(filled: dict[str, dict[str, Any]]) -> None:
    templates = {path.stem for path in LAUNCHD_DIR.glob("*.plist")}
    assert set(filled) == templates == OUR_AGENTS | set(OPTIONAL_AGENTS)
    for label, plist in filled.items():
        assert plist["Label"] == label


def test_agents_run_our_console_scripts_and_restart(filled: dict[str, dict[str, Any]], home: Path) -> None:
    scripts = console_scripts()
    venv_bin = Path(sys.executable).parent
    for label, plist in filled.items():
        program = Path(plist["ProgramArguments"][0])
        if label in OPTIONAL_AGENTS:
            assert program.name == OPTIONAL_AGENTS[label]
        else:
            assert program.parent == venv_bin and program.name in scripts
            assert program.exists(), program
            assert plist["WorkingDirectory"] == str(REPO_ROOT)
        assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
        for key in ("StandardOutPath", "StandardErrorPath"):
            assert Path(plist[key]).parent == home / "Library" / "Logs" / "kitty-images", plist[key]


def test_our_agents_bind_loopback_and_let_mps_use_all_memory(
    filled: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    for label in OUR_AGENTS:
        env = filled[label]["EnvironmentVariables"]
        assert env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.0"
        assert env["IMAGES_HOST"] == "127.0.0.1" and env["GATEWAY_HOST"] == "127.0.0.1"
        assert env["IMAGES_DATA_DIR"] == str(tmp_path / "data")
        assert env["MODELS_YAML"] == str(tmp_path / "data" / "models.yaml")
        assert not any(re.search("secret|password|token", name, re.I) for name in env), label
    redis_args = filled["com.kitty.redis"]["ProgramArguments"]
    assert redis_args[redis_args.index("--bind") + 1] == "127.0.0.1"
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"
    minio_args = filled["com.kitty.minio"]["ProgramArguments"]
    assert minio_args[minio_args.index("--address") + 1].startswith("127.0.0.1:")
    assert minio_args[minio_args.index("--console-address") + 1].startswith("127.0.0.1:")


def test_optional_agents_are_installed_only_when_asked(tmp_path: Path, dry_env: dict[str, str]) -> None:
    out = tmp_path / "plain"
    env = {key: value for key, value in dry_env.items() if key not in {"WITH_REDIS", "WITH_MINIO"}}
    result = run_script("install.sh", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert {path.stem for path in out.glob("*.plist")} == OUR_AGENTS
    assert "launchctl bootstrap" in result.stdout  # said, not done


def test_paths_with_odd_characters_stay_valid_xml(tmp_path: Path, dry_env: dict[str, str]) -> None:
    out = tmp_path / "odd"
    data_dir = tmp_path / "R&D <images> | a\\b"
    result = run_script("install.sh", str(out), env={**dry_env, "DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    with (out / "com.kitty.images-worker.plist").open("rb") as handle:
        assert plistlib.load(handle)["EnvironmentVariables"]["IMAGES_DATA_DIR"] == str(data_dir)


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal is for systems without launchd")
def test_install_refuses_clearly_off_macos(tmp_path: Path, home: Path) -> None:
    result = run_script("install.sh", str(tmp_path / "out"), env={**os.environ, "HOME": str(home)})
    assert result.returncode != 0
    assert "macOS only" in result.stderr and "DRY_RUN=1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_uninstall_removes_what_install_wrote(tmp_path: Path, dry_env: dict[str, str]) -> None:
    out = tmp_path / "agents"
    assert run_script("install.sh", str(out), env=dry_env).returncode == 0
    result = run_script("uninstall.sh", str(out), env=dry_env)
    assert result.returncode == 0, result.stderr
    assert list(out.glob("*.plist")) == []
    assert "launchctl bootout" in result.stdout
