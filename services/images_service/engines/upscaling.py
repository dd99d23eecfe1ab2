"""Upscaling a picture: Lanczos resampling, or a super-resolution network from models.yaml's
``upscalers:`` (a Real-ESRGAN RRDBNet in .safetensors), run tile by tile. Imported only in workers.

spandrel reads every common SR architecture, but imports torchvision, which this torch build has no
working wheel of; when it imports, it loads the file, else our own RRDBNet (ESRGAN's residual-in-
residual dense blocks, as Real-ESRGAN lays out its weights) does.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from ..catalog import SAFE_SUFFIX, is_pickle
from ..errors import EngineError, ModelNotFound
from ..models import AddonEntry

log = logging.getLogger("kitty.images.upscaling")

TILE_SIZE = 256
"""Input pixels a side per tile: a 4x network's activations for a 256² tile stay under ~1 GB, so a
large picture upscales in bounded memory on any device."""

TILE_OVERLAP = 16
"""Input pixels each tile reaches into its neighbours; the overlap is run and discarded so seams do
not show (Real-ESRGAN's own tiling pads by 10)."""

MAX_CACHED_NETWORKS = 2
"""Upscaler networks kept loaded per worker (least recently used dropped); a 4x RRDBNet is ~67 MB."""

LEAKY_SLOPE = 0.2
RESIDUAL_SCALE = 0.2
"""ESRGAN's negative slope and residual scaling (the paper's β), fixed by the trained weights."""

SUPPORTED_LAYOUTS = (
    "Real-ESRGAN RRDBNet .safetensors (keys conv_first, body.N.rdbK.convM, conv_body, conv_up1, "
    "conv_up2, conv_hr, conv_last), x4 or x2 (pixel-unshuffle input)"
)

_WRAPPER_PREFIXES = ("params_ema.", "params.", "module.")
"""Prefixes some converters keep from BasicSR's checkpoint dicts or DataParallel."""

_BODY_KEY = re.compile(r"^body\.(\d+)\.rdb[123]\.conv[1-5]\.(weight|bias)$")


# --- the network ------------------------------------------------------------------------------------
class DenseBlock(nn.Module):
    """ESRGAN's residual dense block: five 3×3 convolutions, each seeing every earlier output."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, 1))


class ResidualInResidual(nn.Module):
    """Three dense blocks in a row, scaled and added back (the paper's RRDB)."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(num_feat, num_grow_ch)
        self.rdb2 = DenseBlock(num_feat, num_grow_ch)
        self.rdb3 = DenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN's generator: features, a trunk of RRDBs with a long skip, two nearest-neighbour ×2
    upsamplings. An ×2 network folds each 2×2 block of the input into channels first (pixel
    unshuffle), so the same ×4 trunk comes out at twice the input's size."""

    def __init__(self, scale: int, num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32) -> None:
        super().__init__()
        if scale not in NETWORK_SCALES.values():
            raise ValueError(f"RRDBNet scale must be one of {sorted(NETWORK_SCALES.values())}")
        self.scale = scale
        self.unshuffle = 4 // scale
        in_ch = 3 * self.unshuffle**2
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualInResidual(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LEAKY_SLOPE))  # type: ignore[no-any-return]


NETWORK_SCALES = {3: 4, 12: 2}
"""conv_first's input channels → the network's factor: RGB (×4), or RGB pixel-unshuffled by 2 (×2)."""


def _unsupported(path: str, why: str) -> EngineError:
    return EngineError(
        f"upscaler {path} is not a supported network: {why}",
        remediation=[
            f"Supported: {SUPPORTED_LAYOUTS}.",
            "Convert a .pth with safetensors, or remove the upscaler from models.yaml to use Lanczos.",
        ],
    )


def rrdbnet_from_state(state: dict[str, torch.Tensor], path: str = "upscaler") -> RRDBNet:
    """An `RRDBNet` holding `state` (Real-ESRGAN's key layout), its sizes read from the tensors'
    shapes; `EngineError` naming the supported layout for anything else."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    first, grow = state.get("conv_first.weight"), state.get("body.0.rdb1.conv1.weight")
    if first is None or grow is None or "conv_up2.weight" not in state:
        found = ", ".join(sorted(state)[:4]) or "no tensors"
        raise _unsupported(path, f"its keys ({found}, ...) are not Real-ESRGAN RRDBNet's")
    in_ch = int(first.shape[1])
    if in_ch not in NETWORK_SCALES:
        raise _unsupported(path, f"conv_first takes {in_ch} channels (x4 takes 3, x2 takes 12)")
    blocks = {int(match.group(1)) for key in state if (match := _BODY_KEY.match(key))}
    net = RRDBNet(
        NETWORK_SCALES[in_ch],
        num_feat=int(first.shape[0]),
        num_block=len(blocks),
        num_grow_ch=int(grow.shape[0]),
    )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _unsupported(path, str(exc).splitlines()[0][:300]) from exc
    return net.eval()


# --- loading ---------------------------------------------------------------------------------------
def weights_file(entry: AddonEntry) -> Path:
    """The .safetensors file of `entry`: its path, or the one .safetensors in its folder."""
    path = Path(entry.path)
    if path.is_dir():
        found = sorted(path.glob(f"*{SAFE_SUFFIX}"))
        if len(found) != 1:
            raise _unsupported(
                str(path), f"a folder needs exactly one .safetensors file, it has {len(found)}"
            )
        path = found[0]
    if not path.exists():
        raise ModelNotFound(
            f"upscaler '{entry.name}' is registered but {path} does not exist",
            remediation=["Download its .safetensors to that path, or fix its `path` in models.yaml."],
            detail={"upscalers": entry.name},
        )
    if is_pickle(path):
        raise _unsupported(str(path), "pickle weights can run code when loaded; only .safetensors are read")
    return path


def _spandrel_network(path: Path) -> Any | None:
    """spandrel's model for `path` when spandrel imports (it needs a working torchvision)."""
    try:
        import spandrel
    except Exception:  # not installed, or torchvision broken: our own RRDBNet serves
        return None
    try:
        return spandrel.ModelLoader().load_from_file(str(path)).eval()
    except Exception as exc:
        raise _unsupported(str(path), f"spandrel cannot read it ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class Network:
    """A loaded upscaler: the module, its factor, and what its input sides must divide by."""

    module: nn.Module
    factor: int
    multiple: int = 1


def _load_network(path: Path) -> Network:
    described = _spandrel_network(path)
    if described is not None:
        multiple = getattr(getattr(described, "size_requirements", None), "multiple_of", 1)
        return Network(described.model, int(described.scale), int(multiple or 1))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unsupported(str(path), f"it is not a readable .safetensors file ({exc})") from exc
    net = rrdbnet_from_state(state, str(path))
    return Network(net, net.scale, net.unshuffle)


class NetworkCache:
    """Loaded upscalers by file and device, least recently used dropped beyond `MAX_CACHED_NETWORKS`;
    a file replaced on disk (another mtime or size) is loaded again."""

    def __init__(self, size: int = MAX_CACHED_NETWORKS) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._networks: OrderedDict[tuple[str, int, int, str], Network] = OrderedDict()

    def get(self, path: Path, device: str) -> Network:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, device)
        with self._lock:
            if key in self._networks:
                self._networks.move_to_end(key)
                return self._networks[key]
            network = _load_network(path)
            network.module.to(device)
            self._networks[key] = network
            while len(self._networks) > self.size:
                self._networks.popitem(last=False)
            log.info("upscaler loaded", extra={"path": str(path), "scale": network.factor, "device": device})
            return network

    def clear(self) -> None:
        with self._lock:
            self._networks.clear()


NETWORKS = NetworkCache()


# --- running ----------------------------------------------------------------------------------------
def _tile_starts(length: int) -> list[int]:
    return list(range(0, length, TILE_SIZE)) or [0]


TileProgress = Callable[[int, int], None]
"""Called with (tiles done, tiles in all) after each tile; may raise to stop (a canceled job)."""


@torch.inference_mode()
def run_tiled(
    net: nn.Module, image: torch.Tensor, factor: int, progress: TileProgress | None = None
) -> torch.Tensor:
    """`net` over `image` (1×3×H×W in [0, 1]) tile by tile: each tile is run with `TILE_OVERLAP`
    pixels of context on every side and only its own part of the output is kept."""
    _, channels, height, width = image.shape
    output = torch.empty((1, channels, height * factor, width * factor), dtype=torch.float32)
    tiles = [(top, left) for top in _tile_starts(height) for left in _tile_starts(width)]
    for done, (top, left) in enumerate(tiles, start=1):
        bottom, right = min(top + TILE_SIZE, height), min(left + TILE_SIZE, width)
        in_top, in_left = max(top - TILE_OVERLAP, 0), max(left - TILE_OVERLAP, 0)
        in_bottom, in_right = min(bottom + TILE_OVERLAP, height), min(right + TILE_OVERLAP, width)
        result = net(image[:, :, in_top:in_bottom, in_left:in_right])
        keep_top, keep_left = (top - in_top) * factor, (left - in_left) * factor
        kept = result[
            :,
            :,
            keep_top : keep_top + (bottom - top) * factor,
            keep_left : keep_left + (right - left) * factor,
        ]
        output[:, :, top * factor : bottom * factor, left * factor : right * factor] = kept.float().cpu()
        if progress is not None:
            progress(done, len(tiles))
    return output


def _network_upscale(
    rgb: Image.Image, network: Network, device: str, progress: TileProgress | None
) -> Image.Image:
    net, factor, multiple = network.module, network.factor, network.multiple
    width, height = rgb.size
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    # A pixel-unshuffling network needs even sides (the unshuffle's factor): pad by the edge pixels.
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    try:
        result = run_tiled(net, pixels.to(device=device, dtype=dtype), factor, progress)
    except RuntimeError as exc:
        raise EngineError(
            f"upscaling on {device} failed: {str(exc).splitlines()[0][:300]}",
            remediation=["Check the worker's log; a smaller source or another device may help."],
        ) from exc
    result = result[:, :, : height * factor, : width * factor]
    array = (result.squeeze(0).permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def target_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """`size` times `scale`, rounded to whole pixels (at least one)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def upscale_image(
    image: Image.Image,
    scale: float,
    entry: AddonEntry | None,
    *,
    device: str = "cpu",
    progress: TileProgress | None = None,
) -> Image.Image:
    """`image` made `scale` times larger: by `entry`'s network (models.yaml ``upscalers:``), resized
    with Lanczos to the exact size when the network's own factor differs, or by Lanczos alone when
    `entry` is None. Transparency is kept (its channel resampled with Lanczos). `progress` hears of
    each network tile (a real network on a CPU takes minutes) and may raise to stop it."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, not {scale}")
    size = target_size(image.size, scale)
    if image.mode in ("P", "1", "I", "I;16", "F"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "P" else "RGB")
    if entry is None:
        return image.resize(size, Image.Resampling.LANCZOS)
    network = NETWORKS.get(weights_file(entry), device)
    upscaled = _network_upscale(image.convert("RGB"), network, device, progress)
    if upscaled.size != size:
        upscaled = upscaled.resize(size, Image.Resampling.LANCZOS)
    if "A" in image.getbands():
        upscaled.putalpha(image.getchannel("A").resize(size, Image.Resampling.LANCZOS))
    elif image.mode == "L":
        upscaled = upscaled.convert("L")
    return upscaled


# --- a tiny network for tests and demos --------------------------------------------------------------
TINY_SEED = 1234


def build_tiny_upscaler(path: Path, scale: int, *, seed: int = TINY_SEED) -> Path:
    """A tiny random RRDBNet (8 features, 1 block, growth 4) saved at `path` in Real-ESRGAN's key
    layout: a real upscaler's file format and code path in ~60 KB. Its pictures are noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RRDBNet(scale, num_feat=8, num_block=1, num_grow_ch=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in net.state_dict().items()}, str(path))
    return path
