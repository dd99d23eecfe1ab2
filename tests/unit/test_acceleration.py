"""The CUDA speed-ups of the diffusers engine: what IMAGES_TORCH_COMPILE accepts, that nothing changes
off CUDA, that the CUDA path (fused QKV, channels-last, SDPA) keeps the image, when the VAE decodes
in tiles, and that `preload` makes the first job warm. The CUDA path is exercised on the CPU by
telling it the device is CUDA: every step it takes also runs there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from services.contracts import RenderSpec
from services.images_service.errors import EngineError
from services.images_service.models import ModelRegistry
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines import acceleration
from services.images_service.engines.diffusers_engine import DiffusersEngine

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def spec(**overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a red cat",
        "model": "tiny-sd15",
        "width": 64,
        "height": 64,
        "steps": 6,
        "cfg": 7.0,
        "seed": 3,
    }
    return RenderSpec(**{**fields, **overrides})


def ignore(step: int, total: int) -> None:
    pass


@pytest.fixture
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    yield engine
    engine.close()


@pytest.fixture
def tiny_pipe(tiny_models: Path) -> Any:  # noqa: F811
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ModelRegistry(tiny_models).get("tiny-sd15").source)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: Any) -> np.ndarray:
    image = pipe(
        "a red cat",
        width=64,
        height=64,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images[0]
    return np.asarray(image)


@pytest.mark.parametrize(
    ("setting", "mode"),
    [
        (None, None),
        ("", None),
        ("0", None),
        ("off", None),
        ("1", acceleration.COMPILE_DEFAULT_MODE),
        ("true", acceleration.COMPILE_DEFAULT_MODE),
        ("reduce-overhead", "reduce-overhead"),
        (" Max-Autotune ", "max-autotune"),
    ],
)
def test_images_torch_compile_values(setting: str | None, mode: str | None) -> None:
    assert acceleration.compile_mode(setting) == mode


def test_an_unknown_compile_setting_is_refused_with_the_choices(tiny_models: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="reduce-overhead"):
        acceleration.compile_mode("fast")
    with pytest.raises(EngineError, match="IMAGES_TORCH_COMPILE") as caught:
        DiffusersEngine(ModelRegistry(tiny_models), device="cpu", torch_compile="fast")
    assert any("IMAGES_TORCH_COMPILE" in hint for hint in caught.value.remediation)


def test_compile_is_ignored_off_cuda(tiny_models: Path) -> None:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu", torch_compile="1")
    assert engine.compile_mode is None


def test_nothing_changes_off_cuda(tiny_pipe: Any) -> None:
    before = acceleration.attention_processors(tiny_pipe.unet)

    assert acceleration.accelerate(tiny_pipe, CPU, "max-autotune") == []
    assert acceleration.set_vae_tiling(tiny_pipe, CPU, 2048, 2048) is False

    assert acceleration.attention_processors(tiny_pipe.unet) == before == ["AttnProcessor2_0"]
    assert not tiny_pipe.vae.use_tiling
    assert tiny_pipe.unet.conv_in.weight.is_contiguous()


def test_the_cuda_path_fuses_qkv_goes_channels_last_and_keeps_the_image(
    tiny_pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # accelerate turns it on
    plain = render(tiny_pipe)

    applied = acceleration.accelerate(tiny_pipe, CUDA)

    assert applied == ["fused_qkv:denoiser", "fused_qkv:vae", "channels_last", "sdpa"]
    assert acceleration.attention_processors(tiny_pipe.unet) == ["FusedAttnProcessor2_0"]
    assert acceleration.uses_sdpa(tiny_pipe.unet) and acceleration.uses_sdpa(tiny_pipe.vae)
    assert tiny_pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(render(tiny_pipe) - plain).max() < 1e-3


def test_the_classic_attention_processor_is_put_back_on_sdpa(tiny_pipe: Any) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    tiny_pipe.unet.set_attn_processor(AttnProcessor())
    assert not acceleration.uses_sdpa(tiny_pipe.unet)

    assert acceleration.ensure_sdpa(tiny_pipe.unet) == ["AttnProcessor2_0"]


def test_vae_tiling_only_above_the_threshold_on_cuda(tiny_pipe: Any) -> None:
    side = int(acceleration.VAE_TILING_MIN_PIXELS**0.5)
    assert acceleration.set_vae_tiling(tiny_pipe, CUDA, side, side) is False
    assert acceleration.set_vae_tiling(tiny_pipe, CUDA, side + 8, side) is True
    assert tiny_pipe.vae.use_tiling
    assert acceleration.set_vae_tiling(tiny_pipe, CUDA, 1024, 1024) is False  # a resident pipeline
    assert not tiny_pipe.vae.use_tiling


def test_each_image_records_its_attention_and_speed_ups(engine: DiffusersEngine) -> None:
    info = engine.render(spec(), ignore).engine_info

    assert info["attention"] == ["AttnProcessor2_0"]
    assert info["optimizations"] == []  # CPU
    assert "vae_tiling" not in info


def test_preload_loads_once_so_the_first_job_is_warm(engine: DiffusersEngine) -> None:
    def loads() -> float:
        return REGISTRY.get_sample_value("images_model_loads_total", {"model": "tiny-sd15"}) or 0.0

    before = loads()
    engine.preload("tiny-sd15")
    first = engine.render(spec(), ignore)

    assert loads() - before == 1
    assert first.timings["load_s"] == 0
