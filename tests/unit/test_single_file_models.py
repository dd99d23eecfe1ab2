"""Single-file checkpoints (the original Stable Diffusion layout, as civitai and A1111 ship them)
registered in models.yaml and rendered by the diffusers engine with the configs of a diffusers
folder of their family, with no network: the tiny SD1.5 written as one file, and the full-size
random SD1.5 as ComfyUI's CheckpointSave wrote it (slow)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from services.contracts import RenderSpec
from services.images_service.admin import cli
from services.images_service.errors import ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_model
from services.images_service.settings import get_settings
from tests.support.single_file import save_single_file, to_original_layout
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from diffusers import AutoPipelineForImage2Image

from bench.peers.comfyui import MODELS_CACHE
from services.images_service.engines.diffusers.cache import ModelCache
from services.images_service.engines.diffusers.engine import DiffusersEngine

COMFYUI_CHECKPOINT = MODELS_CACHE / "random-sd15.safetensors"
"""The full-size random SD1.5 converted by ComfyUI's CheckpointSave, cached by the real-ComfyUI slow
tests (tests/integration/test_comfyui_real_sd15.py) where they keep it (KITTY_MODELS_CACHE, else
var/models)."""
RANDOM_SD15_FOLDER = MODELS_CACHE / "random-sd15"
"""The diffusers folder that checkpoint was converted from (`kitty-images models random-sd15`)."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs offline: HF_HUB_OFFLINE is set, and a socket that connects fails."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tiny_file(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """tiny-sd15 written as one original-layout .safetensors checkpoint."""
    folder = ModelRegistry(tiny_models).get("tiny-sd15").source
    return save_single_file(Path(folder), tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def models_yaml_with(tiny_models: Path, tmp_path: Path, **entries: dict[str, Any]) -> Path:  # noqa: F811
    """A copy of the tiny models.yaml with `entries` registered beside them."""
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(tiny_models.read_text())
    for name, entry in entries.items():
        register_model(models_yaml, name, entry)
    return models_yaml


def render(models_yaml: Path, model: str) -> np.ndarray:
    engine = DiffusersEngine(ModelRegistry(models_yaml), device="cpu")
    try:
        spec = RenderSpec(prompt="a red cat", model=model, width=64, height=64, steps=2, cfg=5.0, seed=7)
        result = engine.render(spec, lambda step, total: None)
    finally:
        engine.close()
    return np.asarray(result.images[0].image.convert("RGB"), dtype=np.int16)


def test_the_file_holds_the_original_layout(tiny_file: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_file), "pt") as checkpoint:
        prefixes = {key.split(".")[0] for key in checkpoint.keys()}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}


def test_a_single_file_renders_the_same_pixels_as_the_folder_it_came_from(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    models_yaml = models_yaml_with(tiny_models, tmp_path, dreamy={"path": str(tiny_file), "family": "sd15"})
    registry = ModelRegistry(models_yaml)
    # no `config:`: the first registered diffusers folder of its family lends its configs
    assert registry.get("dreamy").config == registry.get("tiny-sd15").source

    single = render(models_yaml, "dreamy")
    assert single.std() > 0
    assert np.array_equal(single, render(models_yaml, "tiny-sd15"))


def test_config_names_a_registered_model_or_a_folder(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    folder = ModelRegistry(tiny_models).get("tiny-sd15").source
    models_yaml = models_yaml_with(
        tiny_models,
        tmp_path,
        by_name={"path": str(tiny_file), "config": "tiny-sd15"},
        by_path={"path": str(tiny_file), "config": folder},
    )
    registry = ModelRegistry(models_yaml)
    assert registry.get("by_name").config == folder
    assert registry.get("by_path").config == folder
    assert np.array_equal(render(models_yaml, "by_name"), render(models_yaml, "by_path"))


def test_the_refiner_path_loads_a_single_file_as_image_to_image(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    models_yaml = models_yaml_with(tiny_models, tmp_path, dreamy={"path": str(tiny_file), "family": "sd15"})
    cache = ModelCache(torch.device("cpu"), torch.float32, size=1, compile_mode=None)
    resident = cache._load(ModelRegistry(models_yaml).get("dreamy"), AutoPipelineForImage2Image)
    assert resident.pipeline_class == "StableDiffusionImg2ImgPipeline"


def test_without_a_folder_of_its_family_the_job_says_what_to_register(
    tiny_file: Path, tmp_path: Path
) -> None:
    models_yaml = tmp_path / "models.yaml"
    register_model(models_yaml, "dreamy", {"path": str(tiny_file), "family": "sd15"})
    with pytest.raises(ModelNotFound, match="single-file checkpoint") as caught:
        render(models_yaml, "dreamy")
    hints = " ".join(caught.value.remediation)
    assert "kitty-images models pull sd15_base" in hints
    assert "config:" in hints


def test_a_config_that_is_not_a_diffusers_folder_is_reported(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    models_yaml = models_yaml_with(
        tiny_models, tmp_path, dreamy={"path": str(tiny_file), "config": str(tmp_path / "nowhere")}
    )
    with pytest.raises(ModelNotFound, match="not a diffusers folder"):
        render(models_yaml, "dreamy")


def test_a_folder_of_another_size_is_refused_before_loading(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    full_size = tmp_path / "sd15-full"
    (full_size / "unet").mkdir(parents=True)
    (full_size / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (full_size / "unet" / "config.json").write_text('{"block_out_channels": [320], "in_channels": 4}')
    models_yaml = models_yaml_with(
        tiny_models, tmp_path, dreamy={"path": str(tiny_file), "config": str(full_size)}
    )
    with pytest.raises(ValidationFailed, match="does not fit"):
        render(models_yaml, "dreamy")


def test_a_pickle_checkpoint_loads_only_when_its_entry_allows_pickle(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
) -> None:
    folder = ModelRegistry(tiny_models).get("tiny-sd15").source
    ckpt = tmp_path / "dreamy.ckpt"
    torch.save({"state_dict": to_original_layout(Path(folder))}, ckpt)
    models_yaml = models_yaml_with(
        tiny_models,
        tmp_path,
        refused={"path": str(ckpt), "family": "sd15"},
        allowed={"path": str(ckpt), "family": "sd15", "allow_pickle": True},
    )
    with pytest.raises(ValidationFailed, match="pickle"):
        render(models_yaml, "refused")
    assert np.array_equal(render(models_yaml, "allowed"), render(models_yaml, "tiny-sd15"))


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """Runs `kitty-images models ARGS` against a models.yaml and data dir in `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    env = {"MODELS_YAML": str(tmp_path / "models.yaml"), "IMAGES_DATA_DIR": str(tmp_path / "var")}
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, ["models", *args], env=env, catch_exceptions=False)
    get_settings.cache_clear()


def test_models_add_records_config(
    tiny_models: Path,  # noqa: F811
    tiny_file: Path,
    tmp_path: Path,
    operator: Callable[..., Result],
) -> None:
    (tmp_path / "models.yaml").write_text(tiny_models.read_text())
    folder = ModelRegistry(tiny_models).get("tiny-sd15").source
    common = ["--license", "mit", "--family", "sd15"]

    assert operator("add", "by-name", str(tiny_file), *common, "--config", "tiny-sd15").exit_code == 0
    assert operator("add", "by-path", str(tiny_file), *common, "--config", folder).exit_code == 0
    refused = operator("add", "nowhere", str(tiny_file), *common, "--config", "no-such-model")
    assert refused.exit_code == 1
    assert "neither a registered model nor a diffusers folder" in refused.output

    written = yaml.safe_load((tmp_path / "models.yaml").read_text())["models"]
    assert written["by-name"]["config"] == "tiny-sd15"
    assert written["by-path"]["config"] == folder
    assert "nowhere" not in written
    assert ModelRegistry(tmp_path / "models.yaml").get("by-name").config == folder


@pytest.mark.slow
def test_comfyuis_full_size_checkpoint_renders_like_its_folder(tmp_path: Path) -> None:
    if not COMFYUI_CHECKPOINT.is_file() or not (RANDOM_SD15_FOLDER / "model_index.json").is_file():
        pytest.skip(
            f"{COMFYUI_CHECKPOINT} (ComfyUI's CheckpointSave of {RANDOM_SD15_FOLDER}) is made by the "
            "real-ComfyUI slow tests: pytest -m 'peer and slow' tests/integration/test_comfyui_real_sd15.py"
        )
    models_yaml = tmp_path / "models.yaml"
    register_model(models_yaml, "random-sd15", {"path": str(RANDOM_SD15_FOLDER), "family": "sd15"})
    register_model(models_yaml, "comfy-file", {"path": str(COMFYUI_CHECKPOINT), "family": "sd15"})
    assert ModelRegistry(models_yaml).get("comfy-file").config == str(RANDOM_SD15_FOLDER)

    single = render(models_yaml, "comfy-file")
    assert single.std() > 0
    # converted from this very folder (the cache is refreshed when the folder is rebuilt): the same weights
    if COMFYUI_CHECKPOINT.stat().st_mtime > (RANDOM_SD15_FOLDER / "model_index.json").stat().st_mtime:
        assert np.array_equal(single, render(models_yaml, "random-sd15"))
