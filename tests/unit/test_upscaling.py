"""`upscale_image`: Lanczos to the exact size, our RRDBNet reading Real-ESRGAN's key layout (tiny,
seeded networks in real .safetensors files) at ×2 and ×4, tiled without seams, and the refusals of
what it cannot or must not load."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from services.images_service.engines import JobCanceled, upscaling
from services.images_service.engines.upscaling import (
    NETWORKS,
    RRDBNet,
    build_tiny_upscaler,
    rrdbnet_from_state,
    run_tiled,
    upscale_image,
)
from services.images_service.errors import EngineError, ModelNotFound
from services.images_service.models import AddonEntry


def entry_for(path: Path, scale: int | None = None) -> AddonEntry:
    return AddonEntry(name=path.stem, kind="upscalers", path=str(path), scale=scale)


def picture(width: int = 37, height: int = 29, seed: int = 0) -> Image.Image:
    """Odd sides on purpose: an ×2 network unshuffles 2×2 blocks."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def growth_of(net: RRDBNet) -> int:
    """The channels each dense-block convolution adds (num_grow_ch)."""
    return int(net.state_dict()["body.0.rdb1.conv1.weight"].shape[0])


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    NETWORKS.clear()


@pytest.fixture(params=[2, 4])
def tiny(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[AddonEntry, int]:
    scale = int(request.param)
    return entry_for(build_tiny_upscaler(tmp_path / f"tiny_x{scale}.safetensors", scale), scale), scale


@pytest.mark.parametrize(("scale", "size"), [(2, (74, 58)), (4, (148, 116)), (1.5, (56, 44))])
def test_lanczos_makes_the_exact_size(scale: float, size: tuple[int, int]) -> None:
    image = picture()
    out = upscale_image(image, scale, None)
    assert out.size == size and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(image.resize(size, Image.Resampling.LANCZOS)))


def test_a_tiny_network_upscales_to_its_size_deterministically_and_unlike_lanczos(
    tiny: tuple[AddonEntry, int],
) -> None:
    entry, scale = tiny
    image = picture()
    out = upscale_image(image, scale, entry)
    assert out.size == (37 * scale, 29 * scale) and out.mode == "RGB"
    NETWORKS.clear()  # loaded again from the file: the same pixels
    assert np.array_equal(np.asarray(upscale_image(image, scale, entry)), np.asarray(out))
    assert not np.array_equal(np.asarray(out), np.asarray(upscale_image(image, scale, None)))


def test_the_tiny_network_is_seeded_and_in_real_esrgans_layout(tmp_path: Path) -> None:
    first = load_file(build_tiny_upscaler(tmp_path / "a.safetensors", 2))
    second = load_file(build_tiny_upscaler(tmp_path / "b.safetensors", 2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    layout = {"conv_first.weight", "body.0.rdb3.conv5.bias", "conv_up2.weight", "conv_last.weight"}
    assert layout <= set(first)
    assert first["conv_first.weight"].shape == (8, 12, 3, 3)  # ×2: RGB unshuffled by 2
    net = rrdbnet_from_state(load_file(tmp_path / "a.safetensors"))
    assert (net.scale, len(net.body), net.conv_first.out_channels, growth_of(net)) == (2, 1, 8, 4)


def test_sizes_are_read_from_the_tensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RRDBNet(4, num_feat=6, num_block=3, num_grow_ch=5)
    read = rrdbnet_from_state({f"params_ema.{k}": v for k, v in net.state_dict().items()})
    assert (read.scale, len(read.body), read.conv_first.out_channels) == (4, 3, 6)
    assert growth_of(read) == 5


def test_a_network_factor_other_than_the_scale_is_resampled_to_the_exact_size(
    tiny: tuple[AddonEntry, int],
) -> None:
    entry, scale = tiny
    other = 4 if scale == 2 else 2
    assert upscale_image(picture(), other, entry).size == (37 * other, 29 * other)
    assert upscale_image(picture(), 3, entry).size == (111, 87)


def test_transparency_and_grey_survive(tiny: tuple[AddonEntry, int]) -> None:
    entry, scale = tiny
    rgba = picture().convert("RGBA")
    rgba.putalpha(128)
    out = upscale_image(rgba, scale, entry)
    assert out.mode == "RGBA" and out.getchannel("A").getextrema() == (128, 128)
    assert upscale_image(picture().convert("L"), scale, entry).mode == "L"


def test_tiles_join_without_seams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = RRDBNet(2, num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = torch.rand(1, 3, 40, 52)
    with torch.inference_mode():
        whole = net(image)
    monkeypatch.setattr(upscaling, "TILE_SIZE", 16)
    monkeypatch.setattr(upscaling, "TILE_OVERLAP", 8)
    tiled = run_tiled(net, image, 2)
    assert tiled.shape == whole.shape == (1, 3, 80, 104)
    assert torch.allclose(tiled, whole, atol=1e-4)


def test_an_unknown_layout_is_refused_naming_what_is_supported(tmp_path: Path) -> None:
    compact = tmp_path / "compact.safetensors"  # SRVGGNetCompact's keys, not RRDBNet's
    save_file({"body.0.weight": torch.zeros(64, 3, 3, 3), "body.0.bias": torch.zeros(64)}, str(compact))
    with pytest.raises(EngineError) as raised:
        upscale_image(picture(), 2, entry_for(compact))
    assert "not a supported network" in raised.value.message
    assert any("Real-ESRGAN RRDBNet" in step and "x4 or x2" in step for step in raised.value.remediation)


def test_an_x1_or_broken_network_is_refused(tmp_path: Path) -> None:
    state = RRDBNet(4, num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    x1 = {**state, "conv_first.weight": torch.zeros(8, 48, 3, 3)}
    with pytest.raises(EngineError, match="48 channels"):
        rrdbnet_from_state(x1)
    truncated = {k: v for k, v in state.items() if k != "conv_hr.weight"}
    with pytest.raises(EngineError, match="not a supported network"):
        rrdbnet_from_state(truncated)


def test_pickle_weights_are_never_loaded(tmp_path: Path) -> None:
    pickled = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save(RRDBNet(4, num_feat=8, num_block=1, num_grow_ch=4).state_dict(), pickled)
    with pytest.raises(EngineError, match="pickle"):
        upscale_image(picture(), 4, entry_for(pickled))
    # A pickle renamed .safetensors is not read as one either.
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    with pytest.raises(EngineError, match="not a readable .safetensors"):
        upscale_image(picture(), 4, entry_for(disguised))


def test_a_missing_file_says_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        upscale_image(picture(), 2, entry_for(tmp_path / "gone.safetensors"))


def test_a_folder_holding_one_safetensors_file_is_read(tmp_path: Path) -> None:
    build_tiny_upscaler(tmp_path / "realesrgan" / "weights.safetensors", 4)
    entry = AddonEntry(name="folder", kind="upscalers", path=str(tmp_path / "realesrgan"))
    assert upscale_image(picture(), 4, entry).size == (148, 116)


def test_networks_are_cached_per_file(tiny: tuple[AddonEntry, int]) -> None:
    entry, scale = tiny
    path = Path(entry.path)
    assert NETWORKS.get(path, "cpu") is NETWORKS.get(path, "cpu")
    other = build_tiny_upscaler(path.with_name("other.safetensors"), scale, seed=7)
    assert NETWORKS.get(other, "cpu") is not NETWORKS.get(path, "cpu")


def test_spandrel_loads_the_file_when_it_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """spandrel (absent here: it needs torchvision) takes over when importable; a stand-in module
    shows the file goes to `ModelLoader().load_from_file` and its descriptor's model and scale run."""
    path = build_tiny_upscaler(tmp_path / "x4.safetensors", 4)
    loaded: list[str] = []

    class Descriptor:
        def __init__(self, model: RRDBNet) -> None:
            self.model, self.scale = model, 4
            self.size_requirements = types.SimpleNamespace(multiple_of=1)

        def eval(self) -> Descriptor:
            return self

    class ModelLoader:
        def load_from_file(self, name: str) -> Descriptor:
            loaded.append(name)
            return Descriptor(rrdbnet_from_state(load_file(name)))

    monkeypatch.setitem(sys.modules, "spandrel", types.SimpleNamespace(ModelLoader=ModelLoader))
    out = upscale_image(picture(), 4, entry_for(path))
    assert loaded == [str(path)] and out.size == (148, 116)
    monkeypatch.delitem(sys.modules, "spandrel")
    NETWORKS.clear()
    ours = upscale_image(picture(), 4, entry_for(path))
    assert np.array_equal(np.asarray(out), np.asarray(ours))


def test_each_tile_is_reported_and_a_raise_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch, tiny: tuple[AddonEntry, int]
) -> None:
    entry, scale = tiny
    monkeypatch.setattr(upscaling, "TILE_SIZE", 16)  # 37×29: 3 × 2 tiles
    calls: list[tuple[int, int]] = []
    upscale_image(picture(), scale, entry, progress=lambda step, total: calls.append((step, total)))
    assert calls == [(step, 6) for step in range(1, 7)]

    seen: list[int] = []

    def cancel_at_two(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            raise JobCanceled("job-1")

    with pytest.raises(JobCanceled):
        upscale_image(picture(), scale, entry, progress=cancel_at_two)
    assert seen == [1, 2]
