"""kitty-cli against the real stack (images-service, a tiny-diffusers worker, the gateway as processes):
progress from the job event stream, ``--out`` downloads, the latest table, cancel, models, delete,
presets and re-runs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from kitty_cli.main import cli
from PIL import Image

from services.contracts import ImagesClient, JobStatus
from services.images_service.storage import make_store
from tests.support.stack import Stack, run_stack
from tests.support.workers import idle_worker

pytestmark = pytest.mark.e2e

CLI_E2E_REDIS_DB = 5
"""This module's Redis database, apart from the other stacks' so its gallery holds only its images."""

EVENTS_ROUTE = 'route="/api/images/jobs/{job_id}/events"'
"""The gateway's metric label for the job event stream."""

LONG_JOB_STEPS = 150
"""The most steps a request may ask for: a job that runs long enough to be canceled mid-way."""

IDLE_ENGINE = "comfyui"
"""An engine whose only worker never takes a job (see `idle_worker`): a job sent to it stays queued."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("cli-e2e-var")
    with run_stack(data_dir, redis_server, tiny_models, redis_db=CLI_E2E_REDIS_DB) as running:
        yield running


def kitty(stack: Stack, *args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, ["--url", stack.gateway_url, *args], input=input)
    assert "Traceback" not in result.output
    return result


def events_streamed(stack: Stack) -> float:
    """How many event streams the gateway has relayed so far."""
    metrics = httpx.get(f"{stack.gateway_url}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("kitty_gateway_proxied_requests_total") and EVENTS_ROUTE in line
    )


def test_generate_out_writes_the_stored_image_and_latest_lists_it(stack: Stack, tmp_path: Path) -> None:
    streams_before = events_streamed(stack)
    out = tmp_path / "harbor.png"
    prompt = "a quiet harbor at dawn with fishing boats and gulls over the water"

    generated = kitty(
        stack, "images.generate", prompt, "--model", "tiny-sd15", "--steps", "5", "--out", str(out)
    )

    assert generated.exit_code == 0, generated.output
    (key,) = generated.stdout.split()
    assert out.read_bytes() == make_store(stack.settings).get(key)
    assert f"Saved {out}" in generated.stderr
    # The stream may skip steps (the service looks every 0.2 s); its last view is always the end.
    assert generated.stderr.splitlines()[-2].startswith("done "), generated.stderr
    assert events_streamed(stack) == streams_before + 1  # progress came from the event stream

    listed = kitty(stack, "images", "latest", "--limit", "5")
    assert listed.exit_code == 0, listed.output
    header, first, *_ = listed.stdout.splitlines()
    assert header.split()[:4] == ["#", "CREATED", "(UTC)", "MODEL"]
    assert first.split()[0] == "1" and first.split()[-1] == key
    assert " tiny-sd15 " in first and " 64x64 " in first
    assert "a quiet harbor at dawn with fishing" in first and "…" in first


def test_cancel_of_a_queued_job_cancels_it(stack: Stack) -> None:
    with idle_worker(stack.settings, IDLE_ENGINE):
        queued = kitty(stack, "images.generate", "never rendered", "--engine", IDLE_ENGINE, "--no-wait")
        assert queued.exit_code == 0, queued.output
        job_id = queued.stdout.strip()
        shown = kitty(stack, "images.jobs", job_id)
        assert "waiting for  a worker: every one serving this engine is busy" in shown.stdout, shown.output

        canceled = kitty(stack, "images.cancel", job_id)

    assert canceled.exit_code == 0, canceled.output
    assert canceled.stdout == "canceled\n"
    assert f"Canceled job {job_id}." in canceled.stderr
    assert kitty(stack, "images.jobs", job_id, "--json").stdout.count('"status": "canceled"') == 1


def test_cancel_of_a_running_job_stops_it_at_its_next_step(stack: Stack) -> None:
    # Large and long enough that the cancel lands while it runs; being canceled, it never takes long.
    args = ["--width", "128", "--height", "128", "--steps", str(LONG_JOB_STEPS), "--no-wait"]
    job_id = kitty(stack, "images.generate", "a long exposure of stars", *args).stdout.strip()
    with ImagesClient(stack.gateway_url) as client:
        running = next(v for v in client.events(job_id) if v.status is JobStatus.STARTED and v.progress.step)

    result = kitty(stack, "images.cancel", job_id, "--wait")

    assert result.exit_code == 0, result.output
    assert result.stdout == "canceled\n"
    final = ImagesClient(stack.gateway_url).job(job_id)
    assert running.progress.step <= final.progress.step < LONG_JOB_STEPS


def test_cancel_of_a_finished_job_leaves_it_done(stack: Stack) -> None:
    job_id = kitty(stack, "images.generate", "a pebble", "--steps", "2", "--no-wait").stdout.strip()
    assert kitty(stack, "images.jobs", job_id, "--wait").exit_code == 0

    result = kitty(stack, "images.cancel", job_id)

    assert result.exit_code == 0, result.output
    assert result.stdout == "done\n"
    assert "already ended (done)" in result.stderr


def test_models_lists_tiny_sd15_as_the_default(stack: Stack) -> None:
    result = kitty(stack, "images.models")

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["tiny-sd15"][1:5] == ["yes", "local", "-", "64x64"]
    assert rows["tiny-sdxl"][1:4] == ["-", "local", "tiny-sdxl-refiner"]


def test_delete_removes_the_image_from_storage_and_the_listing(stack: Stack) -> None:
    (key,) = kitty(stack, "images.generate", "a paper boat", "--steps", "2").stdout.split()

    declined = kitty(stack, "images.delete", key, input="n\n")
    assert declined.exit_code == 1 and make_store(stack.settings).head(key) is not None

    deleted = kitty(stack, "images.delete", "1", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert make_store(stack.settings).head(key) is None
    assert key not in kitty(stack, "images.latest").stdout


def test_preset_generate_then_rerun_gives_the_same_pixels(stack: Stack, tmp_path: Path) -> None:
    presets = kitty(stack, "images.presets")
    assert presets.exit_code == 0, presets.output
    assert {line.split()[0] for line in presets.stdout.splitlines()[1:]} >= {"photoreal", "cinematic"}
    small = ["--width", "64", "--height", "64", "--steps", "4"]  # a preset's own size is SDXL's scale
    args = ["--preset", "cinematic", "--quality", "low", "--seed", "2024", "--scheduler", "DPM++ 2M Karras"]
    (key,) = kitty(stack, "images.generate", "a night train", *args, *small).stdout.split()
    listed = kitty(stack, "images.latest", "--limit", "1").stdout.splitlines()[1]
    assert " cinematic/low " in listed and listed.split()[-1] == key

    again = kitty(stack, "images.rerun", "1", "--out", str(tmp_path / "again.png"))
    varied = kitty(stack, "images", "rerun", key, "--new-seed", "--json")

    assert again.exit_code == 0 and varied.exit_code == 0, again.output + varied.output
    (same_key,) = again.stdout.split()
    assert f"Re-running #1: {key}" in again.stderr
    store = make_store(stack.settings)
    assert (
        pixels(store.get(same_key)) == pixels(store.get(key)) == pixels((tmp_path / "again.png").read_bytes())
    )
    new_key = json.loads(varied.stdout)["result"]["png_key"]
    assert pixels(store.get(new_key)) != pixels(store.get(key))
    first, second = (json.loads(store.get(k.removesuffix(".png") + ".json")) for k in (key, new_key))
    assert first["request"]["scheduler"] == "dpmpp_2m_karras" and first["request"]["preset"] == "cinematic"
    assert first["request"]["prompt"].startswith("cinematic film still, a night train,")
    # cinematic's last step is its post-processing: the newest image is graded and grained, and a
    # new seed gives it new grain; everything else about the request stays.
    assert [op["op"] for op in first["request"]["postprocess"]["ops"]] == ["tone_map", "lut", "film_grain"]
    assert unseeded(second["request"]) == unseeded(first["request"]) and second["seed"] != 2024


def test_a_storyboard_of_four_beats_gives_four_shots_and_a_contact_sheet(
    stack: Stack, tmp_path: Path
) -> None:
    """The issue's "done when": 4 beats through the storyboard preset on the tiny SD1.5, from the CLI."""
    beats = ["she waits", "the bus arrives", "a stranger steps off", "she steps back"]
    small = ["--width", "64", "--height", "64", "--steps", "2"]
    out = tmp_path / "board.png"
    made = kitty(
        stack, "images.generate", "two strangers at a bus stop", "--preset", "storyboard", "--seed", "9",
        *small, *(arg for beat in beats for arg in ("--beat", beat)), "--out", str(out),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    keys = made.stdout.split()
    assert len(keys) == 5  # the four shots in beat order, then the sheet
    store = make_store(stack.settings)
    shots = [json.loads(store.get(key.removesuffix(".png") + ".json")) for key in keys[:4]]
    sheet = json.loads(store.get(keys[4].removesuffix(".png") + ".json"))
    assert [shot["request"]["prompt"].split(", ")[1] for shot in shots] == beats
    assert {shot["seed"] for shot in shots} == {9}
    assert len({pixels(store.get(key)) for key in keys[:4]}) == 4  # one seed, four different pictures
    assert sheet["sources"] == keys[:4] and sheet["request"]["contact_sheet"]["captions"] == beats
    saved = [out, *(tmp_path / f"board-{n}.png" for n in range(2, 6))]
    assert [pixels(path.read_bytes()) for path in saved] == [pixels(store.get(key)) for key in keys]


def unseeded(request: dict[str, Any]) -> dict[str, Any]:
    """`request` without its seed, nor the seeds its post-processing ops recorded."""
    post = request.get("postprocess")
    if post:
        post = {**post, "ops": [{k: v for k, v in op.items() if k != "seed"} for op in post["ops"]]}
    return {**request, "seed": 0, "postprocess": post}


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def test_generate_from_a_local_picture_with_a_mask_and_a_lora(stack: Stack, tmp_path: Path) -> None:
    picture, mask = tmp_path / "beach.jpg", tmp_path / "sky.png"
    Image.new("RGB", (96, 64), (240, 200, 120)).save(picture, format="JPEG")
    sky = Image.new("L", (96, 64), 0)
    sky.paste(255, (0, 0, 96, 24))
    sky.save(mask)
    out = tmp_path / "storm.png"

    generated = kitty(
        stack, "images.generate", "a storm over the beach", "--model", "tiny-sd15", "--steps", "4",
        "--image", str(picture), "--mask", str(mask), "--strength", "0.5", "--lora", "tiny-lora:0.5",
        "--out", str(out),
    )  # fmt: skip

    assert generated.exit_code == 0, generated.output
    (key,) = generated.stdout.split()
    sidecar = json.loads(make_store(stack.settings).get(key.removesuffix(".png") + ".json"))
    request = sidecar["request"]
    assert request["image"].startswith("uploads/") and request["image"].endswith(".jpg")
    assert request["mask"].startswith("uploads/") and request["strength"] == 0.5
    assert request["loras"] == [{"name": "tiny-lora", "weight": 0.5}]
    with Image.open(out) as result:
        assert result.size == (96, 64)


def test_guided_generation_and_upscaling_from_the_command_line(stack: Stack, tmp_path: Path) -> None:
    """What issue 17 promises a CLI user: a canny map from a plain local picture, a reference picture
    (identity lock, with consent), the hires fix, then the result upscaled ×2 and ×4 as new images."""
    picture, face = tmp_path / "square.png", tmp_path / "face.jpg"
    drawing = Image.new("RGB", (64, 64), "black")
    drawing.paste((255, 255, 255), (16, 16, 48, 48))
    drawing.save(picture)
    Image.new("RGB", (80, 80), (200, 150, 120)).save(face, format="JPEG")
    out = tmp_path / "guided.png"

    refused = kitty(
        stack, "images.generate", "a portrait", "--model", "tiny-sd15", "--steps", "3",
        "--preset", "identity_lock", "--reference-image", str(face),
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "CONSENT_MISSING" in refused.output and "consent" in refused.output

    generated = kitty(
        stack, "images.generate", "a portrait", "--model", "tiny-sd15", "--steps", "3",
        "--width", "64", "--height", "64", "--control-image", str(picture), "--control-type", "canny",
        "--control-weight", "0.8", "--preset", "identity_lock", "--reference-image", str(face),
        "--consent", "--hires", "--hires-scale", "2", "--out", str(out),
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    (key,) = generated.stdout.split()
    store = make_store(stack.settings)
    sidecar = json.loads(store.get(key.removesuffix(".png") + ".json"))
    request = sidecar["request"]
    [control] = request["controls"]
    assert (control["type"], control["weight"], control["model"]) == ("canny", 0.8, "tiny-canny")
    assert control["image"].startswith("uploads/")
    assert request["reference_image"].startswith("uploads/") and request["reference_model"] == "tiny-ip"
    assert request["consent"] is True and request["hires"]["scale"] == 2
    with Image.open(out) as result:
        assert result.size == (128, 128)

    for scale, side in (("2", 256), ("4", 512)):
        upscaled_out = tmp_path / f"x{scale}.png"
        upscaled = kitty(stack, "images.upscale", key, "--scale", scale, "--out", str(upscaled_out))
        assert upscaled.exit_code == 0, upscaled.output
        (new_key,) = upscaled.stdout.split()
        assert new_key != key
        assert json.loads(store.get(new_key.removesuffix(".png") + ".json"))["source"] == key
        with Image.open(upscaled_out) as result:
            assert result.size == (side, side)
