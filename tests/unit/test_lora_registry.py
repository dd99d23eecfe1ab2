"""LoRAs in models.yaml (the `loras:` section beside `models:`) and the output size of an
image-to-image job: pure functions, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.images_service.errors import ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_lora, register_model
from services.images_service.uploads import size_for_input


def test_a_lora_beside_models_is_listed_with_its_path_made_absolute(tmp_path: Path) -> None:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "models:\n  sd15: {path: ./sd15}\n"
        "loras:\n  grain: {path: loras/grain.safetensors, base: sd15, description: film grain}\n"
    )

    registry = ModelRegistry(models_yaml)

    assert registry.names() == ["sd15"]
    grain = registry.lora("grain")
    assert grain.path == str(tmp_path / "loras" / "grain.safetensors")
    assert (grain.base, grain.description, grain.is_present) == ("sd15", "film grain", False)


def test_registering_a_lora_in_a_flat_file_keeps_its_models(tmp_path: Path) -> None:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text("sd15_base: /models/sd15\n")  # the seed's flat shape
    register_model(models_yaml, "sdxl_base", {"path": "/models/sdxl"})
    assert "models" not in yaml.safe_load(models_yaml.read_text())  # still flat

    register_lora(models_yaml, "grain", {"path": "/loras/grain.safetensors", "base": "sdxl"})

    registry = ModelRegistry(models_yaml)
    assert registry.names() == ["sd15_base", "sdxl_base"]
    assert list(registry.loras()) == ["grain"]


def test_an_unknown_lora_says_how_to_register_one(tmp_path: Path) -> None:
    models_yaml = tmp_path / "models.yaml"
    register_lora(models_yaml, "grain", {"path": "/loras/grain.safetensors"})

    with pytest.raises(ModelNotFound) as caught:
        ModelRegistry(models_yaml).lora("sparkle")

    assert "not registered" in caught.value.message
    assert any("loras:" in hint for hint in caught.value.remediation)
    assert any("grain" in hint for hint in caught.value.remediation)


@pytest.mark.parametrize(
    ("entry", "words"),
    [({"base": "sdxl"}, "needs a 'path'"), ({"path": "/x.safetensors", "base": "sd2"}, "base 'sd2'")],
)
def test_a_malformed_lora_entry_is_refused(tmp_path: Path, entry: dict, words: str) -> None:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(yaml.safe_dump({"models": {}, "loras": {"bad": entry}}))

    with pytest.raises(ValidationFailed, match=words):
        ModelRegistry(models_yaml).loras()


@pytest.mark.parametrize(
    ("width", "height", "input_size", "expected"),
    [
        (None, None, (1000, 600), (1000, 600)),
        (None, None, (1023, 767), (1016, 760)),  # rounded down to multiples of 8
        (None, None, (5000, 30), (4096, 64)),  # kept within 64..4096
        (512, None, (1000, 600), (512, 304)),  # the missing side keeps the aspect ratio
        (None, 304, (1000, 600), (504, 304)),
        (640, 480, (1000, 600), (640, 480)),  # sent sides win
    ],
)
def test_img2img_output_size_follows_the_input_unless_sent(
    width: int | None, height: int | None, input_size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert size_for_input(width, height, input_size) == expected
