"""Presets as data (presets.yaml and IMAGES_PRESETS_FILE): the AInfluencer schema validated with
clear errors, user presets beside the built-in ones, required inputs and consent at submit time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.contracts import GenerateRequest
from services.images_service.app import create_app
from services.images_service.errors import ConsentMissing, ValidationFailed
from services.images_service.presets import (
    PRESETS,
    PresetsFileError,
    apply_preset,
    failure_remediation,
    parse_presets,
    preset_book,
    with_preset_defaults,
)
from services.images_service.settings import Settings

MINIMAL: dict[str, Any] = {
    "title": "Watercolour",
    "goal": "A loose watercolour painting.",
    "prompt_template": "watercolor painting of {prompt}, wet on wet",
    "size": [768, 512],
}


def write(path: Path, presets: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(presets, sort_keys=False))
    return path


def test_the_built_in_presets_carry_the_whole_schema() -> None:
    for preset in PRESETS.values():
        assert preset.title and preset.description and preset.engines
        assert preset.inputs["prompt"].required
        assert set(preset.qualities) == {"low", "standard", "pro"}
    assert PRESETS["identity_lock"].requires_consent
    assert PRESETS["upscale_denoise"].inputs["image"].required
    assert [step.kind for step in PRESETS["upscale_denoise"].steps] == ["upscale", "postprocess"]
    assert "{common}" not in PRESETS["photoreal"].negative_prompt  # expanded to the quality negatives


def test_a_users_file_adds_presets_and_replaces_one_by_name(tmp_path: Path) -> None:
    path = write(
        tmp_path / "presets.yaml",
        {
            "watercolour": {**MINIMAL, "qualities": {"pro": {"steps": 40}}, "engines": ["comfyui"]},
            "product": {**MINIMAL, "title": "Our product look"},
        },
    )
    book = preset_book(path)
    assert list(book)[: len(PRESETS)] == list(PRESETS)  # built-ins first, in their order
    assert (
        book["watercolour"].qualities["pro"].steps == 40 and book["watercolour"].qualities["pro"].cfg == 8.0
    )
    assert book["product"].title == "Our product look"
    assert preset_book(tmp_path / "absent.yaml") is PRESETS

    styled = apply_preset(GenerateRequest(prompt="a harbour", preset="watercolour", quality="pro"), book)
    assert styled.prompt == "watercolor painting of a harbour, wet on wet"
    assert (styled.width, styled.height, styled.steps, styled.cfg) == (768, 512, 40, 8.0)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"prompt_template": "no slot"},
            "prompt_template: Value error, prompt_template must contain {prompt}",
        ),
        ({"size": [1004, 512]}, "size: Value error, size sides must be multiples of 8"),
        ({"quality": "ultra"}, "quality: Input should be 'low', 'standard' or 'pro'"),
        ({"engines": ["midjourney"]}, "engines.0: Input should be"),
        ({"inputs": {"colour": {"type": "text"}}}, "inputs ['colour'] are not request fields"),
        ({"failure_modes": [{"code": "OOPS", "when": "x", "remediation": ["y"]}]}, "failure_modes.0.code"),
        ({"steps": [{"kind": "teleport"}]}, "steps.0.kind"),
        (
            {"steps": [{"kind": "postprocess", "ops": [{"op": "film_grain", "strenght": 1}]}]},
            "steps.0: step 1 (film_grain): unknown parameter 'strenght'",
        ),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_preset_that_does_not_validate_names_file_preset_and_field(
    tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    path = write(tmp_path / "mine.yaml", {"broken": {**MINIMAL, **change}})
    with pytest.raises(PresetsFileError) as caught:
        preset_book(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: preset 'broken': ")
    assert words in message


def test_a_file_that_is_not_presets_is_refused() -> None:
    with pytest.raises(PresetsFileError, match="not YAML"):
        parse_presets("a: [", "x.yaml")
    with pytest.raises(PresetsFileError, match="must map preset names"):
        parse_presets("- a\n- b\n", "x.yaml")
    with pytest.raises(PresetsFileError, match="preset name 'bad name'"):
        parse_presets(yaml.safe_dump({"bad name": MINIMAL}), "x.yaml")


def test_the_service_does_not_start_with_a_broken_presets_file(tmp_path: Path) -> None:
    path = write(tmp_path / "presets.yaml", {"broken": {**MINIMAL, "size": [7, 7]}})
    settings = Settings(_env_file=None, presets_file=path, data_dir=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(PresetsFileError, match="preset 'broken': size"):
        create_app(settings)


def test_required_inputs_and_consent_are_checked_before_anything_is_queued() -> None:
    with pytest.raises(ValidationFailed) as caught:
        apply_preset(GenerateRequest(prompt="x", preset="upscale_denoise"))
    assert "needs `image` (`image`: the picture to enlarge)" in caught.value.message
    assert caught.value.detail == {"preset": "upscale_denoise", "missing": ["image"]}
    assert any("uploads" in step for step in caught.value.remediation)

    key = "uploads/2026/12/07/0123456789abcdef0123456789abcdef.png"
    with pytest.raises(ConsentMissing):
        apply_preset(GenerateRequest(prompt="x", preset="identity_lock", reference_image=key))
    apply_preset(GenerateRequest(prompt="x", preset="identity_lock", reference_image=key, consent=True))


def test_a_preset_picks_the_first_engine_that_can_run_and_brings_its_steps() -> None:
    def request(**fields: Any) -> GenerateRequest:
        return GenerateRequest(prompt="a harbour", preset="cinematic", **fields)

    running = {"comfyui", "a1111"}
    picked = with_preset_defaults(request(), PRESETS, running.__contains__)
    assert picked.engine == "comfyui"  # diffusers, first, has no worker now
    assert [step.kind for step in picked.pipeline] == ["postprocess"]
    assert with_preset_defaults(request(), PRESETS, lambda _: False).engine is None  # IMAGE_ENGINE then
    assert with_preset_defaults(request(engine="a1111"), PRESETS, running.__contains__).engine == "a1111"
    own = request(pipeline=[{"kind": "upscale", "scale": 4}])
    assert [step.kind for step in with_preset_defaults(own, PRESETS, running.__contains__).pipeline] == [
        "upscale"
    ]
    plain = GenerateRequest(prompt="a harbour")
    assert with_preset_defaults(plain, PRESETS, running.__contains__) is plain


def test_a_presets_failure_modes_say_what_to_do_about_a_code() -> None:
    assert failure_remediation(PRESETS, "identity_lock", "CONSENT_MISSING") == [
        'Add "consent": true once the person pictured has agreed.'
    ]
    assert failure_remediation(PRESETS, "identity_lock", "ENGINE_TIMEOUT") == []
    assert failure_remediation(PRESETS, None, "CONSENT_MISSING") == []
