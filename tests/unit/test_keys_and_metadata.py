"""Image keys (naming, validation) and image metadata (infotext, sidecar, PNG text chunks)."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from PIL import Image

from services.contracts import RenderSpec
from services.images_service.errors import ValidationFailed
from services.images_service.metadata import build_sidecar, encode_png, infotext, read_png_text
from services.images_service.redaction import REDACTED, redact
from services.images_service.storage.keys import meta_key_for, new_image_key, validate_image_key

PREFIX = "images/"

# AUTOMATIC1111's own parser of the settings line (modules/infotext_utils.py), to prove it reads
# back what we write.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111_settings(line: str) -> dict[str, str]:
    fields = {}
    for name, value in A1111_PARAM.findall(line):
        fields[name.strip()] = json.loads(value) if value.startswith('"') else value
    return fields


def make_spec(**overrides: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": "a cat in a hat",
        "negative_prompt": "blurry, lowres",
        "model": "sd15_base",
        "width": 512,
        "height": 768,
        "steps": 20,
        "cfg": 7.0,
        "seed": 123,
        "scheduler": "dpmpp_2m_karras",
    }
    values.update(overrides)
    return RenderSpec.model_validate(values)


# --- keys -------------------------------------------------------------------------------------------
def test_new_image_key_has_the_seed_layout_in_utc() -> None:
    moment = datetime(2025, 3, 4, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    key = new_image_key(PREFIX, now=moment)
    assert re.fullmatch(r"images/20250304_050809_[0-9a-f]{8}", key)
    assert validate_image_key(key + ".png", PREFIX) == key + ".png"


def test_new_image_keys_differ_within_one_second() -> None:
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    assert len({new_image_key(PREFIX, now=moment) for _ in range(100)}) == 100


def test_meta_key_sits_beside_the_png() -> None:
    assert meta_key_for("images/20250101_000000_abcdef01.png") == "images/20250101_000000_abcdef01.json"


@pytest.mark.parametrize(
    "key",
    ["images/20250101_000000_abcdef01.png", "images/sub/dir/x-1_2.png", "images/.png.png"],
)
def test_valid_image_keys_pass_through(key: str) -> None:
    assert validate_image_key(key, PREFIX) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("../x.png", "'..'"),
        ("other/x.png", "images/"),
        ("images/x.jpg", ".png"),
        ("images/../etc/passwd.png", "'..'"),
        ("/images/x.png", "starts with '/'"),
        ("images//x.png", "'//'"),
        ("images\\x.png", "backslash"),
        ("images/x\x00.png", "control"),
        ("images/x\n.png", "control"),
        ("images/x y.png", "only letters"),
        ("images/ü.png", "only letters"),
        ("images/./x.png", "'.'"),
        ("images/", ".png"),
    ],
)
def test_invalid_image_keys_are_refused_with_a_reason_and_remediation(key: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_image_key(key, PREFIX)
    assert reason in caught.value.message
    assert caught.value.status == 400
    assert caught.value.remediation


# --- infotext ---------------------------------------------------------------------------------------
def test_infotext_matches_a1111_with_negative_prompt_and_schedule_type() -> None:
    text = infotext(make_spec(), seed=123, model_hash="abcd1234ef", version="v1.10.1")
    assert text == (
        "a cat in a hat\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
        "Model hash: abcd1234ef, Model: sd15_base, Version: v1.10.1"
    )


def test_infotext_leaves_out_empty_fields_and_quotes_values_with_separators() -> None:
    spec = make_spec(negative_prompt="", scheduler="euler_a", cfg=7.5, model="my,model", width=64, height=64)
    text = infotext(spec, seed=42, version="kitty-images 0.1.0: dev")
    assert text == (
        "a cat in a hat\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: "my,model", '
        'Version: "kitty-images 0.1.0: dev"'
    )
    assert parse_a1111_settings(text.splitlines()[-1]) == {
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7.5",
        "Seed": "42",
        "Size": "64x64",
        "Model": "my,model",
        "Version": "kitty-images 0.1.0: dev",
    }


def test_infotext_without_scheduler_has_no_sampler() -> None:
    text = infotext(make_spec(scheduler=None, negative_prompt=""), seed=1)
    assert text == "a cat in a hat\nSteps: 20, CFG scale: 7, Seed: 1, Size: 512x768, Model: sd15_base"


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ("euler", "Sampler: Euler, "),
        ("heun", "Sampler: Heun, "),
        ("lms", "Sampler: LMS, "),
        ("ddim", "Sampler: DDIM, "),
        ("pndm", "Sampler: PLMS, "),
        ("dpmpp_2m", "Sampler: DPM++ 2M, CFG"),
        ("dpmpp_sde", "Sampler: DPM++ SDE, "),
        ("unipc", "Sampler: UniPC, "),
    ],
)
def test_schedulers_map_to_a1111_sampler_names(scheduler: str, expected: str) -> None:
    assert expected in infotext(make_spec(scheduler=scheduler), seed=1)


# --- sidecar ----------------------------------------------------------------------------------------
def make_sidecar(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "job_id": "job-1",
        "engine": "comfyui",
        "spec": make_spec(),
        "seed": 123,
        "width": 512,
        "height": 768,
        "device": "cuda:0",
        "png_key": "images/20250101_000000_abcdef01.png",
        "meta_key": "images/20250101_000000_abcdef01.json",
        "engine_info": {
            "versions": {"comfyui": "0.3.64"},
            "prompt_id": "p-1",
            "api_key": "sk-live-123",
            "auth": {"Authorization": "Bearer abc", "user": "kitty"},
            "headers": [{"X-Token": "t"}],
        },
        "timings": {"render_s": 1.5},
        "created_at": datetime(2025, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
        "index": 0,
    }
    arguments.update(overrides)
    return build_sidecar(**arguments)  # type: ignore[arg-type]


def test_sidecar_records_the_job_and_blanks_secrets() -> None:
    sidecar = make_sidecar()
    assert sidecar["job_id"] == "job-1"
    assert sidecar["model"] == "sd15_base"
    assert sidecar["request"] == make_spec().model_dump(mode="json")
    assert sidecar["seed"] == 123 and (sidecar["width"], sidecar["height"]) == (512, 768)
    assert sidecar["created_at"] == "2025-01-01T12:00:00+00:00"
    versions = sidecar["versions"]
    assert isinstance(versions, dict)
    assert {"python", "kitty-images", "pillow"} <= versions.keys() and versions["comfyui"] == "0.3.64"
    serialized = json.dumps(sidecar)
    for secret in ("sk-live-123", "Bearer abc", '"t"'):
        assert secret not in serialized
    assert sidecar["engine_info"] == {
        "prompt_id": "p-1",
        "api_key": REDACTED,
        "auth": {"Authorization": REDACTED, "user": "kitty"},
        "headers": [{"X-Token": REDACTED}],
    }


def test_redact_blanks_secret_names_at_any_depth() -> None:
    assert redact({"password": "p", "nested": [{"client_secret": "s", "keep": 1}], "apiKey": "k"}) == {
        "password": REDACTED,
        "nested": [{"client_secret": REDACTED, "keep": 1}],
        "apiKey": REDACTED,
    }


# --- PNG chunks -------------------------------------------------------------------------------------
def test_png_carries_parameters_kitty_and_comfyui_chunks() -> None:
    image = Image.new("RGB", (16, 8), (200, 30, 40))
    sidecar = make_sidecar()
    parameters = infotext(make_spec(prompt="un chat — ünïcode"), seed=123)
    workflow = json.dumps({"nodes": [{"id": 1}]})
    data = encode_png(
        image,
        parameters=parameters,
        sidecar=sidecar,
        extra_chunks={"prompt": '{"1": {}}', "workflow": workflow, "parameters": "must not win"},
    )
    chunks = read_png_text(data)
    assert chunks["parameters"] == parameters
    assert json.loads(chunks["kitty"]) == sidecar
    assert chunks["prompt"] == '{"1": {}}' and chunks["workflow"] == workflow
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG" and decoded.size == (16, 8)
        assert decoded.getpixel((3, 3)) == (200, 30, 40)
        assert decoded.info["parameters"] == parameters  # what any PIL-based reader sees
