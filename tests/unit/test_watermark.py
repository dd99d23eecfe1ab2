"""The invisible watermark: a round trip on a real-looking 512×512 picture, what it costs the picture,
where it gives up (too small), the worker embedding it on store, and `kitty-images verify-watermark`."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError

from services.images_service.admin import cli
from services.images_service.settings import Settings, get_settings
from services.images_service.watermark import MIN_PIXELS, embed, mark, payload_bytes, read
from tests.support.harness import Harness
from tests.support.scenes import SceneEngine, scene

PAYLOAD = b"kitty"


def png_round_trip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean(diff**2)))


def test_a_watermark_survives_a_png_round_trip() -> None:
    picture = scene(512, 512, seed=11)
    marked = embed(picture, PAYLOAD)
    assert marked is not None and marked.size == picture.size and marked.mode == "RGB"

    reading = read(png_round_trip(marked), PAYLOAD)
    assert reading.found and reading.decoded == PAYLOAD
    assert reading.matching_bits == reading.total_bits == 40
    # Invisible: under 40 dB is where people start to see differences.
    assert psnr(picture, marked) > 38


@pytest.mark.parametrize("size", [(256, 256), (320, 240), (768, 512), (1024, 1024)])
def test_a_watermark_reads_back_at_every_size_from_the_minimum(size: tuple[int, int]) -> None:
    marked, record = mark(scene(*size, seed=5), "kitty")
    assert record == {"method": "dwtDct", "bits": 40, "verified": True}
    assert read(marked, PAYLOAD).found


def test_an_unmarked_or_differently_marked_picture_reads_as_not_found() -> None:
    picture = scene(512, 512, seed=12)
    unmarked = read(picture, PAYLOAD)
    assert not unmarked.found and unmarked.matching_bits < 32
    other = embed(picture, b"other")
    assert other is not None and not read(other, PAYLOAD).found


def test_a_picture_too_small_is_left_unmarked_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    small = scene(255, 256)
    assert small.width * small.height < MIN_PIXELS
    assert embed(small, PAYLOAD) is None
    with caplog.at_level(logging.INFO, logger="kitty.images.watermark"):
        kept, record = mark(small, "kitty")
    assert kept is small and record is None
    assert "not watermarked" in caplog.text


def test_the_payload_is_1_to_16_bytes() -> None:
    assert payload_bytes("kitty") == PAYLOAD
    for bad in ("", "x" * 17):
        with pytest.raises(ValueError):
            payload_bytes(bad)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, watermark="far too long a watermark")  # type: ignore[call-arg]


def test_the_worker_watermarks_what_it_stores(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(SceneEngine(), watermark="kitty")
    job_id = harness.generate(width=512, height=512)
    small_id = harness.generate(width=128, height=128)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    stored = Image.open(io.BytesIO(harness.store.get(view["result"]["png_key"])))
    assert read(stored, PAYLOAD).found
    sidecar = json.loads(harness.store.get(view["result"]["meta_key"]))
    assert sidecar["watermark"] == {"method": "dwtDct", "bits": 40, "verified": True}
    assert "safety" not in sidecar  # keys off, no policy: the gate is off
    # Too small to carry one: stored as rendered, and the sidecar does not claim a watermark.
    small = harness.job(small_id)
    assert small["status"] == "done"
    assert "watermark" not in json.loads(harness.store.get(small["result"]["meta_key"]))


# --- kitty-images verify-watermark ---------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    picture = scene(512, 512, seed=21)
    marked = embed(picture, PAYLOAD)
    assert marked is not None
    paths = {name: tmp_path / f"{name}.png" for name in ("marked", "plain", "tiny")}
    marked.save(paths["marked"])
    picture.save(paths["plain"])
    scene(64, 64).save(paths["tiny"])
    return paths


def test_verify_watermark_exits_0_when_found_and_1_when_not(files: dict[str, Path]) -> None:
    runner = CliRunner()
    found = runner.invoke(cli, ["verify-watermark", str(files["marked"]), "--payload", "kitty"])
    assert found.exit_code == 0, found.output
    assert "watermark found" in found.output

    missing = runner.invoke(cli, ["verify-watermark", str(files["plain"]), "--payload", "kitty"])
    assert missing.exit_code == 1, missing.output
    assert "no watermark" in missing.output


def test_verify_watermark_reads_the_payload_from_the_settings(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGES_WATERMARK", "kitty")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["verify-watermark", str(files["marked"])])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tiny", "--payload", "kitty"], "too small"),
        (["plain", "--payload", ""], "no usable payload"),
        (["missing", "--payload", "kitty"], "cannot read"),
    ],
)
def test_verify_watermark_exits_2_when_it_cannot_tell(
    files: dict[str, Path], tmp_path: Path, args: list[str], says: str
) -> None:
    path = files.get(args[0], tmp_path / "missing.png")
    result = CliRunner().invoke(cli, ["verify-watermark", str(path), *args[1:]])
    assert result.exit_code == 2, result.output
    assert says in result.output
