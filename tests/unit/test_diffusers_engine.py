"""The diffusers engine on the tiny pipelines: sizes, determinism, residency, progress, cancel,
schedulers, batches, the SDXL refiner pass and missing models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.contracts import SCHEDULER_NAMES, RenderSpec
from services.images_service.engines.base import JobCanceled, RenderResult
from services.images_service.errors import EngineError, ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_model
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers.engine import DiffusersEngine

FAST_STEPS = 6
"""Enough steps for schedulers to differ; keeps each tiny render around 0.1 s."""


def make_spec(**overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a red cat on a sofa",
        "negative_prompt": "blurry",
        "model": "tiny-sd15",
        "width": 64,
        "height": 64,
        "steps": FAST_STEPS,
        "cfg": 7.0,
        "seed": 1234,
    }
    return RenderSpec(**{**fields, **overrides})


def ignore_progress(step: int, total: int) -> None:
    pass


class ProgressLog:
    """A progress callback that records what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, step: int, total: int) -> None:
        self.calls.append((step, total))

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.calls]


def pixels(result: RenderResult, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image.convert("RGB"), dtype=np.int16)


def loads_of(model: str) -> float:
    return REGISTRY.get_sample_value("images_model_loads_total", {"model": model}) or 0.0


@pytest.fixture
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    yield engine
    engine.close()


def test_renders_the_requested_size_with_engine_details(engine: DiffusersEngine) -> None:
    result = engine.render(make_spec(steps=20), ignore_progress)

    assert len(result.images) == 1
    assert result.images[0].image.size == (64, 64)
    assert result.images[0].seed == 1234
    assert result.device == "cpu"
    assert result.engine_info["dtype"] == "float32"
    assert result.engine_info["pipeline_class"] == "StableDiffusionPipeline"
    assert set(result.engine_info["versions"]) == {"torch", "diffusers", "transformers"}
    assert result.timings["render_s"] > 0

    wide = engine.render(make_spec(width=128, height=96), ignore_progress)
    assert wide.images[0].image.size == (128, 96)


def test_same_spec_gives_identical_pixels_and_another_seed_does_not(engine: DiffusersEngine) -> None:
    first = engine.render(make_spec(), ignore_progress)
    again = engine.render(make_spec(), ignore_progress)
    other_seed = engine.render(make_spec(seed=1235), ignore_progress)

    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other_seed))


def test_a_resident_model_is_not_loaded_again(engine: DiffusersEngine) -> None:
    before = loads_of("tiny-sd15")

    first = engine.render(make_spec(), ignore_progress)
    second = engine.render(make_spec(seed=7), ignore_progress)

    assert loads_of("tiny-sd15") - before == 1
    assert first.timings["load_s"] > 0
    assert second.timings["load_s"] == 0


def test_progress_is_monotonic_and_ends_at_the_total(engine: DiffusersEngine) -> None:
    for scheduler in (None, "heun"):  # Heun runs 2n-1 model calls for n steps
        log = ProgressLog()
        engine.render(make_spec(steps=10, scheduler=scheduler), log)

        assert log.calls[0] == (0, 10)
        assert log.calls[-1] == (10, 10)
        assert {total for _, total in log.calls} == {10}
        assert log.steps == sorted(log.steps)
        assert len(log.steps) > 2


def test_cancel_from_progress_propagates_and_the_next_job_renders_the_same(engine: DiffusersEngine) -> None:
    before_cancel = engine.render(make_spec(), ignore_progress)

    def cancel_midway(step: int, total: int) -> None:
        if step == 3:
            raise JobCanceled()

    with pytest.raises(JobCanceled):
        engine.render(make_spec(scheduler="euler_a"), cancel_midway)

    after_cancel = engine.render(make_spec(), ignore_progress)
    assert np.array_equal(pixels(before_cancel), pixels(after_cancel))


def test_a_scheduler_choice_does_not_leak_into_the_next_job(tiny_models: Path) -> None:  # noqa: F811
    fresh = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    used = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    try:
        default = fresh.render(make_spec(), ignore_progress)
        ancestral = used.render(make_spec(scheduler="euler_a"), ignore_progress)
        after = used.render(make_spec(), ignore_progress)
    finally:
        fresh.close()
        used.close()

    assert ancestral.engine_info["scheduler_class"] == "EulerAncestralDiscreteScheduler"
    assert not np.array_equal(pixels(ancestral), pixels(default))
    assert after.engine_info["scheduler_class"] == default.engine_info["scheduler_class"]
    assert np.array_equal(pixels(after), pixels(default))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_wire_scheduler_renders(engine: DiffusersEngine, scheduler: str) -> None:
    if scheduler == "lms" and not _has_scipy():
        with pytest.raises(EngineError, match="scipy"):
            engine.render(make_spec(scheduler=scheduler), ignore_progress)
        return
    result = engine.render(make_spec(scheduler=scheduler), ignore_progress)
    assert result.images[0].image.size == (64, 64)


def _has_scipy() -> bool:
    from diffusers.utils import is_scipy_available

    return bool(is_scipy_available())


def test_num_images_renders_a_batch_with_consecutive_seeds(engine: DiffusersEngine) -> None:
    batch = engine.render(make_spec(num_images=2), ignore_progress)
    second_alone = engine.render(make_spec(seed=1235), ignore_progress)

    assert [image.seed for image in batch.images] == [1234, 1235]
    assert not np.array_equal(pixels(batch, 0), pixels(batch, 1))
    # The recorded seed re-renders the image alone; batched float rounding may move a level or two.
    assert np.abs(pixels(batch, 1) - pixels(second_alone)).max() <= 3


def test_sdxl_with_its_refiner_renders(engine: DiffusersEngine) -> None:
    refiner_loads = loads_of("tiny-sdxl-refiner")
    log = ProgressLog()

    result = engine.render(make_spec(model="tiny-sdxl", refiner=True, steps=10, num_images=2), log)

    assert [image.image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.engine_info["pipeline_class"] == "StableDiffusionXLPipeline"
    assert result.engine_info["refiner_pipeline_class"] == "StableDiffusionXLImg2ImgPipeline"
    assert log.calls[-1] == (10, 10)
    assert log.steps == sorted(log.steps)
    assert loads_of("tiny-sdxl-refiner") - refiner_loads == 1


def test_refiner_on_a_model_without_one_is_refused(engine: DiffusersEngine) -> None:
    with pytest.raises(ValidationFailed, match="no refiner"):
        engine.render(make_spec(model="tiny-sd15", refiner=True), ignore_progress)


def test_missing_models_say_how_to_fetch_them(tiny_models: Path, tmp_path: Path) -> None:  # noqa: F811
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(tiny_models.read_text())
    register_model(models_yaml, "gone", {"path": str(tmp_path / "no-such-folder")})
    register_model(models_yaml, "not-pulled", {"repo": "kitty-tests/never-downloaded"})
    engine = DiffusersEngine(ModelRegistry(models_yaml), device="cpu")

    for name in ("unregistered", "gone", "not-pulled"):
        with pytest.raises(ModelNotFound) as caught:
            engine.render(make_spec(model=name), ignore_progress)
        assert any("kitty-images models pull" in hint for hint in caught.value.remediation), name
