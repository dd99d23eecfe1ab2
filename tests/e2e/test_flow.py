"""End to end, as a user runs it: real processes (images-service, a diffusers worker on the tiny
pipeline, the gateway) on a real Redis; the CLI drives the gateway; the imageRef is downloaded."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from kitty_cli.main import cli
from PIL import Image

from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.servers import free_port, start_process

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent

JOB_DEADLINE_S = 120
"""A bound on waiting for one tiny job, generous for a loaded 2-core CI machine."""


@dataclass
class Stack:
    gateway_url: str
    images_url: str
    metrics_url: str
    settings: Settings
    processes: dict


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("e2e-var")
    images_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.rsplit("/", 1)[0] + "/3",
        "IMAGES_DATA_DIR": str(data_dir),
        "MODELS_YAML": str(tiny_models),
        "IMAGES_PORT": str(images_port),
        "IMAGES_WORKER_METRICS_PORT": str(metrics_port),
        "IMAGES_BASE": f"http://127.0.0.1:{images_port}",
        "GATEWAY_PORT": str(gateway_port),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("S3_BUCKET", None)
    logs = data_dir / "logs"
    logs.mkdir()
    processes = {
        "images": start_process(
            [str(BIN / "images-service")], env, f"http://127.0.0.1:{images_port}/readyz", logs / "images.log"
        ),
        "worker": start_process(
            [str(BIN / "images-worker"), "--preload", "tiny-sd15"],
            env,
            f"http://127.0.0.1:{metrics_port}/metrics",
            logs / "worker.log",
        ),
        "gateway": start_process(
            [str(BIN / "gateway")], env, f"http://127.0.0.1:{gateway_port}/readyz", logs / "gateway.log"
        ),
    }
    settings = Settings(_env_file=None, data_dir=data_dir, redis_url=env["REDIS_URL"])  # type: ignore[call-arg]
    try:
        yield Stack(
            gateway_url=f"http://127.0.0.1:{gateway_port}",
            images_url=f"http://127.0.0.1:{images_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            settings=settings,
            processes=processes,
        )
    finally:
        for proc in processes.values():
            proc.stop()


def kitty(stack: Stack, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--url", stack.gateway_url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def model_loads(stack: Stack) -> float:
    for line in httpx.get(stack.metrics_url).text.splitlines():
        if line.startswith('images_model_loads_total{model="tiny-sd15"}'):
            return float(line.split()[-1])
    return 0.0


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def test_prompt_to_downloaded_image_ref(stack: Stack) -> None:
    keys = kitty(
        stack, "images.generate", "a lighthouse at dusk", "--model", "tiny-sd15", "--seed", "42"
    ).split()
    assert len(keys) == 1 and keys[0].endswith(".png")

    listing = kitty(stack, "images.latest", "--limit", "5", "--json")
    assert json.loads(listing)["items"][0]["key"] == keys[0]

    ref = json.loads(kitty(stack, "images.select", "1"))["imageRef"]
    assert ref["storageUri"].endswith(keys[0])
    assert ref["downloadUrl"].startswith(stack.gateway_url)  # fs links are served through the gateway

    downloaded = httpx.get(ref["downloadUrl"]).content
    assert downloaded == make_store(stack.settings).get(keys[0])
    assert Image.open(io.BytesIO(downloaded)).size == (64, 64)


def test_same_request_and_seed_give_the_same_pixels_without_reloading(stack: Stack) -> None:
    loads_before = model_loads(stack)
    args = ["images.generate", "a red bicycle", "--model", "tiny-sd15", "--seed", "7", "--steps", "8"]
    first, second = kitty(stack, *args).split(), kitty(stack, *args).split()
    other = kitty(
        stack, "images.generate", "a red bicycle", "--model", "tiny-sd15", "--seed", "8", "--steps", "8"
    )
    store = make_store(stack.settings)
    assert first != second
    assert pixels(store.get(first[0])) == pixels(store.get(second[0]))
    assert pixels(store.get(other.split()[0])) != pixels(store.get(first[0]))
    assert model_loads(stack) == loads_before == 1.0


def test_progress_reaches_the_job_view(stack: Stack) -> None:
    job_id = kitty(
        stack, "images.generate", "a kite", "--model", "tiny-sd15", "--steps", "12", "--no-wait"
    ).strip()
    seen = []
    with httpx.Client(base_url=stack.gateway_url) as client:
        deadline = time.monotonic() + JOB_DEADLINE_S
        while time.monotonic() < deadline:
            view = client.get(f"/api/images/jobs/{job_id}").json()
            seen.append(view["progress"]["step"])
            if view["status"] == "done":
                break
            time.sleep(0.02)
    assert view["status"] == "done" and view["progress"] == {"step": 12, "total": 12}
    assert seen == sorted(seen)


def test_missing_model_folder_fails_the_job_with_fetch_command(stack: Stack, tiny_models: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--url", stack.gateway_url, "images.generate", "x", "--model", "no-such-model"]
    )
    assert result.exit_code == 1
    assert "MODEL_NOT_FOUND" in result.stderr and "kitty-images models pull no-such-model" in result.stderr
    assert "Traceback" not in result.output


def test_gateway_answers_502_when_images_service_is_down(stack: Stack) -> None:
    stack.processes["images"].stop()
    response = httpx.get(f"{stack.gateway_url}/api/images/latest")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    result = CliRunner().invoke(cli, ["--url", stack.gateway_url, "images.latest"])
    assert result.exit_code == 1 and "UPSTREAM_UNAVAILABLE" in result.stderr
