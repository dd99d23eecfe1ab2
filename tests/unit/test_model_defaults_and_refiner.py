"""What a request gets when it leaves fields out (a models.yaml entry's defaults over the seed's), and
the refiner rules the API and the diffusers engine share: pure functions, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.contracts import GenerateRequest, RenderSpec
from services.images_service.errors import ModelNotFound, ValidationFailed
from services.images_service.models import FALLBACK_DEFAULTS, ModelRegistry
from services.images_service.refiner import base_steps, check_refiner_follows, refiner_of
from services.images_service.settings import Settings
from services.images_service.spec import resolve_spec


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "models:\n"
        "  sd15: {path: ./sd15, defaults: {width: 512, steps: 20, scheduler: euler_a, note: kept}}\n"
        "  xl: {path: ./xl, refiner: xl_refiner}\n"
        "  xl_refiner: {path: ./xl_refiner}\n"
        "  orphan: {path: ./orphan, refiner: not_registered}\n"
    )
    return ModelRegistry(models_yaml)


def resolve(registry: ModelRegistry, **fields: Any) -> RenderSpec:
    env: dict[str, Any] = {"IMAGE_ENGINE": "diffusers", "MODELS_YAML": registry.path}
    settings = Settings(_env_file=None, **env)
    return resolve_spec(GenerateRequest(prompt="a lighthouse", **fields), registry, settings)


def test_a_request_gets_its_models_defaults_over_the_seeds(registry: ModelRegistry) -> None:
    spec = resolve(registry, model="sd15")
    assert (spec.width, spec.height, spec.steps, spec.cfg, spec.scheduler) == (
        512,
        FALLBACK_DEFAULTS.height,
        20,
        FALLBACK_DEFAULTS.cfg,
        "euler_a",
    )
    # The listing shows the defaults as written, other keys included.
    assert registry.get("sd15").defaults == {
        "width": 512,
        "steps": 20,
        "scheduler": "euler_a",
        "note": "kept",
    }


def test_what_the_request_says_wins_over_the_defaults(registry: ModelRegistry) -> None:
    spec = resolve(registry, model="sd15", width=768, steps=5, cfg=0.0, scheduler="ddim")
    assert (spec.width, spec.steps, spec.cfg, spec.scheduler) == (768, 5, 0.0, "ddim")


def test_a_server_engine_model_without_an_entry_gets_the_seeds_defaults(registry: ModelRegistry) -> None:
    spec = resolve(registry, engine="comfyui", model="juggernaut")
    assert (spec.width, spec.height, spec.steps, spec.cfg, spec.scheduler) == (
        1024,
        1024,
        30,
        7.0,
        None,
    )


def test_the_refiner_is_taken_only_by_a_model_whose_entry_names_a_registered_one(
    registry: ModelRegistry,
) -> None:
    assert resolve(registry, model="xl", refiner=True).refiner is True
    with pytest.raises(ValidationFailed, match="model 'sd15' has no refiner configured") as caught:
        resolve(registry, model="sd15", refiner=True)
    assert "the 'sd15' entry of models.yaml" in caught.value.remediation[0]
    with pytest.raises(ModelNotFound, match="not_registered"):
        resolve(registry, model="orphan", refiner=True)


@pytest.mark.parametrize(
    ("asked", "runs"), [(None, False), (False, False), (True, True), ("xl_refiner", True)]
)
def test_the_refiner_is_null_a_boolean_or_the_models_refiner_by_name(
    registry: ModelRegistry, asked: bool | str | None, runs: bool
) -> None:
    """The KITTY guide sends `"refiner": null` for "no refiner"; a name means the same as true."""
    assert resolve(registry, model="xl", refiner=asked).refiner is runs


def test_a_refiner_name_must_be_registered_and_be_the_models_own(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound, match="model 'nope' is not registered") as unknown:
        resolve(registry, model="xl", refiner="nope")
    assert any("xl_refiner" in hint for hint in unknown.value.remediation)
    with pytest.raises(ValidationFailed, match="'sd15' is not the refiner of model 'xl'") as other:
        resolve(registry, model="xl", refiner="sd15")
    assert other.value.remediation == ['Send "refiner": true or "refiner": "xl_refiner".']
    with pytest.raises(ValidationFailed, match="model 'sd15' has no refiner configured"):
        resolve(registry, model="sd15", refiner="xl_refiner")


def test_a_server_engine_model_without_an_entry_names_the_requested_model() -> None:
    with pytest.raises(ValidationFailed, match="model 'juggernaut' has no refiner configured"):
        refiner_of(None, "juggernaut")


def test_the_refiner_follows_text_to_image_only() -> None:
    check_refiner_follows(is_text_to_image=True)
    with pytest.raises(ValidationFailed, match="follows text-to-image only"):
        check_refiner_follows(is_text_to_image=False)


@pytest.mark.parametrize(("steps", "base"), [(1, 1), (2, 2), (3, 2), (4, 3), (10, 8), (30, 24), (50, 40)])
def test_the_base_runs_four_fifths_of_the_steps_and_at_least_one(steps: int, base: int) -> None:
    assert base_steps(steps) == base
