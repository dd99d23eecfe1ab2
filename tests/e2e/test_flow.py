"""End to end, as a user runs it: real processes (images-service, a diffusers worker on the tiny
pipeline, the gateway) on a real Redis; the CLI drives the gateway; the imageRef is downloaded."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from kitty_cli.main import cli
from PIL import Image

from services.images_service.storage import make_store
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.e2e

JOB_DEADLINE_S = 120
"""A bound on waiting for one tiny job, generous for a loaded 2-core CI machine."""

E2E_REDIS_DB = 3
"""This module's Redis database; the browser tests use another, so their galleries never mix."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    with run_stack(tmp_path_factory.mktemp("e2e-var"), redis_server, tiny_models, redis_db=E2E_REDIS_DB) as s:
        yield s


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
