"""Post-processing of a finished RGB picture: film grain, filmic tone mapping, 3D LUTs (``.cube``),
sharpening and denoising, and the registry (``OPERATIONS``, ``apply_steps``) that runs a request's steps.

Every operation is deterministic (grain is seeded) and works on 8-bit pixels with numpy and Pillow
alone, so the worker needs no torch or OpenCV for it. numpy is imported where pixels are touched:
the API can import ``PostStep`` and ``resolve_steps`` to validate a request without the worker extras.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, model_validator

from services.contracts import MAX_SEED

if TYPE_CHECKING:
    import numpy as np

LUT_DIR = Path(__file__).with_name("luts")
"""The shipped ``.cube`` files (made by ``luts/generate.py``); a step names one by its stem."""

GRAIN_STD_AT_FULL_STRENGTH = 0.08
"""Standard deviation of (out − in), in 0..1 sRGB units, of grain at strength 1 on a mid-grey
picture: strength s gives s × 0.08 (≈ 20 levels of 255 at s = 1), at any grain size. Near black and
white the clipping makes the measured spread smaller."""

MAX_GRAIN_SIZE = 8.0
"""Grain size 1 is one independent value per pixel; size s blurs that noise with a Gaussian of
σ = (s − 1) / 2 pixels (then rescales it to the same spread), so clumps are about s pixels across."""

ACES_PRE_EXPOSURE = 0.6
"""Scene scale applied before the Narkowicz ACES fit, our choice: with it exposure 1 lifts mid-grey
from 128 to about 141; without it, to about 170, too bright for a default on a finished picture."""

REINHARD_WHITE = 4.0
"""White point of Reinhard extended, in exposed linear units: above 1 it compresses highlights
(exposure 1: slope at the top of the range ≈ 0.6 × the midtones'); at 1 it would be the identity."""

TONE_OPERATORS = ("aces", "reinhard")

EXPOSURE_RANGE = (0.5, 8.0)
"""What a step may ask for. Over it both operators compress highlights (top-of-range slope at most
0.75 × the midtones'); below 0.5 the ACES curve is mostly toe and steepens the highlights instead, and
past 8 it leaves little but a washed-out picture."""

MAX_LUT_SIZE = 128
"""Largest LUT_3D_SIZE accepted: 128³ entries are 25 MB of float32; looks need 17 to 65."""

MAX_STEPS = 16
"""Most steps one request may list; on a 1024² picture each costs 5 ms (tone_map) to 0.25 s (denoise)
of one core."""

DENOISE_WINDOW = 3
"""Side of the median filter that denoise blends in; 3 keeps edges and one-pixel detail mostly."""


# -- colour helpers ---------------------------------------------------------------------------------


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    return (image if image.mode == "RGB" else image.convert("RGB")), alpha


def _with_alpha(image: Image.Image, alpha: Image.Image | None) -> Image.Image:
    if alpha is not None:
        image.putalpha(alpha)
    return image


def _to_image(values: np.ndarray, alpha: Image.Image | None) -> Image.Image:
    """0..1 float RGB → an 8-bit picture (rounded, clipped), with `alpha` put back."""
    import numpy as np

    pixels = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return _with_alpha(Image.fromarray(pixels, "RGB"), alpha)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of 0..1 sRGB values."""
    import numpy as np

    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding of 0..1 linear values."""
    import numpy as np

    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def _gaussian_taps(sigma: float) -> np.ndarray:
    """A normalised 1D Gaussian kernel reaching 3σ each side."""
    import numpy as np

    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.asarray(taps / taps.sum(), dtype=np.float32)


def _gaussian_blur(plane: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """`plane` (2D) convolved with `taps` along both axes, edges reflected."""
    import numpy as np

    radius = len(taps) // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(plane, pad, mode="reflect" if plane.shape[axis] > radius else "edge")
        length = plane.shape[axis]
        out = np.zeros_like(plane)
        for offset, weight in enumerate(taps):
            out += weight * (
                padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length]
            )
        plane = out
    return plane


# -- the operations ---------------------------------------------------------------------------------


def film_grain(image: Image.Image, strength: float, seed: int, size: float = 1.0) -> Image.Image:
    """Monochrome Gaussian grain, the same on R, G and B (film grain is in the silver, not the dyes).

    `strength` 0..1 maps linearly to the spread of the change: std ≈ strength × GRAIN_STD_AT_FULL_STRENGTH
    (0.08 of full scale) on mid-grey. `size` ≥ 1 coarsens the grain (see MAX_GRAIN_SIZE). The same seed,
    size and picture dimensions give the same noise; strength 0 returns the picture unchanged."""
    import numpy as np

    if strength <= 0:
        return image.copy()
    rgb, alpha = _split_alpha(image)
    noise: np.ndarray = np.random.default_rng(seed).standard_normal((rgb.height, rgb.width), dtype=np.float32)
    if size > 1.0:
        taps = _gaussian_taps((size - 1.0) / 2.0)
        # Blurring white noise scales its std by the 2D kernel's L2 norm, which for outer(taps, taps)
        # is sum(taps²); undoing it keeps strength meaning the same spread at every size.
        noise = _gaussian_blur(noise, taps) / float(np.sum(taps**2))
    values = np.asarray(rgb, dtype=np.float32) / 255.0
    values += (strength * GRAIN_STD_AT_FULL_STRENGTH) * noise[..., None]
    return _to_image(values, alpha)


def tone_curve(operator: str, exposure: float = 1.0) -> np.ndarray:
    """The 256-entry curve `tone_map` applies to each 8-bit channel (float 0..255, non-decreasing)."""
    import numpy as np

    if operator not in TONE_OPERATORS:
        raise ValueError(f"tone operator must be one of {', '.join(TONE_OPERATORS)}, not {operator!r}")
    if not exposure > 0:
        raise ValueError(f"exposure must be positive, not {exposure}")
    linear = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)

    def curve(x: np.ndarray) -> np.ndarray:
        if operator == "aces":  # Krzysztof Narkowicz's fit of the ACES RRT+ODT (2016)
            x = x * ACES_PRE_EXPOSURE
            return (x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)
        return x * (1.0 + x / REINHARD_WHITE**2) / (1.0 + x)

    # The picture is display-referred: its white (1.0 before exposure) must stay white, so the curve
    # is divided by its value there. Both curves rise everywhere, so the result is monotonic.
    mapped = curve(exposure * linear) / curve(np.array([exposure]))[0]
    return np.asarray(linear_to_srgb(mapped) * 255.0)


def tone_map(image: Image.Image, operator: str = "aces", exposure: float = 1.0) -> Image.Image:
    """Filmic tone mapping in linear light: sRGB decoded, scaled by `exposure`, through ACES filmic
    (Narkowicz) or Reinhard extended, re-encoded. Black stays black, white stays white and the result
    rises with the input; within EXPOSURE_RANGE the highlights get less contrast than the midtones,
    and higher exposure brightens the midtones. ACES also has a toe that deepens the shadows."""

    import numpy as np

    rgb, alpha = _split_alpha(image)
    table = np.clip(np.rint(tone_curve(operator, exposure)), 0, 255).astype(np.uint8)
    return _with_alpha(Image.fromarray(table[np.asarray(rgb)], "RGB"), alpha)


def sharpen(image: Image.Image, amount: float = 0.5, radius: float = 1.0) -> Image.Image:
    """Unsharp mask (Pillow's): adds `amount` × (picture − its Gaussian blur of `radius` pixels)."""
    rgb, alpha = _split_alpha(image)
    sharpened = rgb.filter(ImageFilter.UnsharpMask(radius=radius, percent=round(amount * 100), threshold=0))
    return _with_alpha(sharpened, alpha)


def denoise(image: Image.Image, strength: float = 0.5) -> Image.Image:
    """Blends the picture with its 3×3 median (per channel) by `strength` 0..1: speckle and grain go,
    edges stay. Strength 0 returns the picture unchanged."""
    if strength <= 0:
        return image.copy()
    rgb, alpha = _split_alpha(image)
    median = rgb.filter(ImageFilter.MedianFilter(DENOISE_WINDOW))
    return _with_alpha(Image.blend(rgb, median, min(strength, 1.0)), alpha)


# -- 3D LUTs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Lut3D:
    """A 3D colour lookup table: ``table[r, g, b]`` is the output RGB at lattice point (r, g, b) of
    a `size`³ grid spanning domain_min..domain_max on each axis."""

    table: np.ndarray
    title: str = ""
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def size(self) -> int:
        return int(self.table.shape[0])


def identity_lut(size: int = 17) -> Lut3D:
    """The LUT that changes nothing (every lattice point maps to itself)."""
    import numpy as np

    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    r, g, b = np.meshgrid(axis, axis, axis, indexing="ij")
    return Lut3D(table=np.stack([r, g, b], axis=-1), title="identity")


_KEYWORD = re.compile(r"^[A-Z][A-Z0-9_]*\b")


def _floats(text: str, count: int, where: str) -> list[float]:
    parts = text.split()
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: expected {count} numbers, got {text.strip()!r}")
    return values


def load_cube(source: str | Path) -> Lut3D:
    """Parses an Adobe/Resolve ``.cube`` 3D LUT: a Path, a path string, or the file's text (a string
    with a newline in it). Reads TITLE, LUT_3D_SIZE, DOMAIN_MIN/MAX, LUT_3D_INPUT_RANGE and ``#``
    comments; data rows run red fastest, then green, then blue. Raises ValueError naming the line for
    a 1D LUT, an unknown keyword, a bad number or the wrong row count."""
    import numpy as np

    if isinstance(source, Path) or "\n" not in source:
        text, name = Path(source).read_text(encoding="utf-8"), str(source)
    else:
        text, name = source, "cube text"
    title, size = "", 0
    domain_min, domain_max = [0.0] * 3, [1.0] * 3
    rows: list[list[float]] = []
    last_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("TITLE"):  # a title may hold a '#'; elsewhere it starts a comment
            line = line.split("#", 1)[0].strip()
        if not line:
            continue
        last_line = number
        where = f"{name} line {number}"
        keyword = _KEYWORD.match(line)
        if keyword is None:
            if not size:
                raise ValueError(f"{where}: a data row before LUT_3D_SIZE")
            if len(rows) == size**3:
                raise ValueError(f"{where}: more than LUT_3D_SIZE³ = {size**3} data rows")
            rows.append(_floats(line, 3, where))
            continue
        if rows:
            raise ValueError(f"{where}: keyword {keyword.group()} after the data rows")
        key, rest = keyword.group(), line[keyword.end() :].strip()
        if key == "TITLE":
            title = rest.strip('"')
        elif key in ("LUT_1D_SIZE", "LUT_1D_INPUT_RANGE"):
            raise ValueError(f"{where}: {key} — a 1D LUT is not supported, only 3D (LUT_3D_SIZE)")
        elif key == "LUT_3D_SIZE":
            if not re.fullmatch(r"\d+", rest) or not 2 <= int(rest) <= MAX_LUT_SIZE:
                raise ValueError(
                    f"{where}: LUT_3D_SIZE must be an integer from 2 to {MAX_LUT_SIZE}, not {rest!r}"
                )
            size = int(rest)
        elif key == "DOMAIN_MIN":
            domain_min = _floats(rest, 3, where)
        elif key == "DOMAIN_MAX":
            domain_max = _floats(rest, 3, where)
        elif key == "LUT_3D_INPUT_RANGE":
            low, high = _floats(rest, 2, where)
            domain_min, domain_max = [low] * 3, [high] * 3
        else:
            raise ValueError(f"{where}: unknown keyword {key}")
    if not size:
        raise ValueError(f"{name}: no LUT_3D_SIZE line, so not a 3D LUT")
    if len(rows) != size**3:
        raise ValueError(
            f"{name} line {last_line}: LUT_3D_SIZE {size} needs {size**3} data rows, the file has {len(rows)}"
        )
    if any(high <= low for low, high in zip(domain_min, domain_max, strict=True)):
        raise ValueError(f"{name}: DOMAIN_MAX must exceed DOMAIN_MIN on every channel")
    # File order is red fastest: reshaped, the axes are [b, g, r]; turn them to [r, g, b].
    table = np.asarray(rows, dtype=np.float32).reshape(size, size, size, 3).transpose(2, 1, 0, 3)
    return Lut3D(
        table=np.ascontiguousarray(table),
        title=title,
        domain_min=(domain_min[0], domain_min[1], domain_min[2]),
        domain_max=(domain_max[0], domain_max[1], domain_max[2]),
    )


def cube_text(lut: Lut3D, comments: Sequence[str] = ()) -> str:
    """`lut` in the ``.cube`` format (6 decimals), `comments` as ``#`` lines at the top."""
    lines = [f"# {comment}" for comment in comments]
    if lut.title:
        lines.append(f'TITLE "{lut.title}"')
    lines.append(f"LUT_3D_SIZE {lut.size}")
    lines.append("DOMAIN_MIN " + " ".join(f"{v:g}" for v in lut.domain_min))
    lines.append("DOMAIN_MAX " + " ".join(f"{v:g}" for v in lut.domain_max))
    rows = lut.table.transpose(2, 1, 0, 3).reshape(-1, 3)
    lines.extend(f"{r:.6f} {g:.6f} {b:.6f}" for r, g, b in rows.tolist())
    return "\n".join(lines) + "\n"


def apply_lut(image: Image.Image, lut: Lut3D, mix: float = 1.0) -> Image.Image:
    """Maps every pixel through `lut` with trilinear interpolation between its 8 nearest lattice
    points (inputs outside the domain are clamped to it); `mix` 0..1 blends the result over the picture."""
    import numpy as np

    rgb, alpha = _split_alpha(image)
    pixels = np.asarray(rgb)
    size = lut.size
    low, high = np.asarray(lut.domain_min), np.asarray(lut.domain_max)
    # Per channel, an 8-bit value's lattice cell and position in it are a 256-entry table each.
    levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
    position = np.clip((levels - low) / (high - low), 0.0, 1.0) * (size - 1)
    cell = np.minimum(np.floor(position), size - 2).astype(np.int32)
    fraction = (position - cell).astype(np.float32)
    # Trilinear interpolation is three lerps, one per axis, in any order. Doing r and g for all 256²
    # (r, g) byte pairs up front (a 256×256×size table, 13 MB at 17) leaves one lerp per pixel
    # instead of seven, and one gather instead of eight.
    table = lut.table
    fr = fraction[:, 0, None, None, None]
    along_r = table[cell[:, 0]] * (1 - fr) + table[cell[:, 0] + 1] * fr
    fg = fraction[None, :, 1, None, None]
    along_rg = along_r[:, cell[:, 1]] * (1 - fg) + along_r[:, cell[:, 1] + 1] * fg
    # A pixel needs two neighbouring rows of that table (its b cell's two ends, 24 adjacent bytes):
    # viewed as overlapping 24-byte items one row (12 bytes) apart, that is one gather per pixel,
    # half the time of two gathers of float rows.
    rows = np.ascontiguousarray(along_rg, dtype=np.float32).reshape(-1, 3)
    items = np.ndarray((len(rows) - 1,), dtype=np.dtype((np.void, 24)), buffer=rows, strides=(12,))
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    index = (r.astype(np.intp) * 256 + g) * size + cell[b, 2]
    pair = np.take(items, index).view(np.float32).reshape(*index.shape, 6)
    below, above = pair[..., :3], pair[..., 3:]
    mapped = below + fraction[b, 2][..., None] * (above - below)
    if mix < 1.0:
        original = pixels.astype(np.float32) / 255.0
        mapped = original + max(mix, 0.0) * (mapped - original)
    return _to_image(mapped, alpha)


def shipped_luts() -> dict[str, Path]:
    """The LUTs a step may name: stem → path of each ``luts/*.cube``."""
    return {path.stem: path for path in sorted(LUT_DIR.glob("*.cube"))}


_LUT_CACHE: dict[str, Lut3D] = {}


def load_shipped_lut(name: str) -> Lut3D:
    """A shipped LUT by name, parsed once per process."""
    if name not in _LUT_CACHE:
        paths = shipped_luts()
        if name not in paths:
            raise ValueError(f"no shipped LUT {name!r}; there are: {', '.join(paths)}")
        _LUT_CACHE[name] = load_cube(paths[name])
    return _LUT_CACHE[name]


# -- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of an operation: its type (float, int or str), allowed range or values, default."""

    name: str
    kind: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        noun, number = ("an integer", "{:d}") if self.kind is int else ("a number", "{:g}")
        if self.minimum is not None and self.maximum is not None:
            lo, hi = (
                (int(self.minimum), int(self.maximum)) if self.kind is int else (self.minimum, self.maximum)
            )
            return f"{noun} from {number.format(lo)} to {number.format(hi)}"
        return noun

    def check(self, value: Any, where: str) -> Any:
        """`value` as this parameter's type; raises ValueError saying what is allowed."""
        wrong = ValueError(f"{where}: {self.name} must be {self.allowed()}, not {value!r}")
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise wrong
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise wrong
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value):
            raise wrong
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise wrong
        return value


@dataclass(frozen=True)
class Operation:
    """A named post-processing step: its parameters and the function that runs it on resolved ones."""

    name: str
    params: tuple[Param, ...]
    run: Callable[[Image.Image, Mapping[str, Any]], Image.Image]
    doc: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


SEED_PARAM = "seed"
"""A parameter of this name defaults to the seed `apply_steps` is given (the job's)."""

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "tone_map",
            (
                Param(
                    "operator",
                    str,
                    "aces",
                    choices=TONE_OPERATORS,
                    doc="aces (filmic, with a toe) or reinhard",
                ),
                Param(
                    "exposure", float, 1.0, *EXPOSURE_RANGE, doc="scale before the curve: higher, brighter"
                ),
            ),
            lambda image, p: tone_map(image, p["operator"], p["exposure"]),
            "filmic tone mapping in linear light; highlights compressed, black and white kept",
        ),
        Operation(
            "film_grain",
            (
                Param("strength", float, 0.3, 0.0, 1.0, doc="1 = std 0.08 of full scale"),
                Param("size", float, 1.0, 1.0, MAX_GRAIN_SIZE, doc="grain clump size in pixels"),
                Param(SEED_PARAM, int, None, 0, MAX_SEED, doc="defaults to the job's seed"),
            ),
            lambda image, p: film_grain(image, p["strength"], p[SEED_PARAM], p["size"]),
            "seeded monochrome Gaussian grain",
        ),
        Operation(
            "lut",
            (
                Param("name", str, None, choices=tuple(shipped_luts()), doc="a shipped LUT"),
                Param("mix", float, 1.0, 0.0, 1.0, doc="0 = unchanged, 1 = the full look"),
            ),
            lambda image, p: apply_lut(image, load_shipped_lut(p["name"]), p["mix"]),
            "a shipped 3D LUT (luts/*.cube), trilinear",
        ),
        Operation(
            "sharpen",
            (
                Param("amount", float, 0.5, 0.0, 5.0, doc="1 = add the full high-pass once"),
                Param("radius", float, 1.0, 0.1, 10.0, doc="blur radius of the mask, pixels"),
            ),
            lambda image, p: sharpen(image, p["amount"], p["radius"]),
            "unsharp mask",
        ),
        Operation(
            "denoise",
            (Param("strength", float, 0.5, 0.0, 1.0, doc="blend with the 3×3 median"),),
            lambda image, p: denoise(image, p["strength"]),
            "median-based denoise that keeps edges",
        ),
    )
}
"""Every operation a request may name, by name."""


def resolve_step(step: Mapping[str, Any], seed: int, index: int = 0) -> dict[str, Any]:
    """`step` checked and completed: ``{"op": name, **every parameter}``, defaults filled in and a
    missing seed set to `seed`. Raises ValueError naming the step (1-based) and what is allowed."""
    if not isinstance(step, Mapping):
        raise ValueError(f"step {index + 1}: a step is an object like {{'op': 'tone_map'}}, not {step!r}")
    name = step.get("op")
    operation = OPERATIONS.get(name) if isinstance(name, str) else None
    if operation is None:
        raise ValueError(f"step {index + 1}: unknown op {name!r}; allowed: {', '.join(sorted(OPERATIONS))}")
    where = f"step {index + 1} ({operation.name})"
    unknown = sorted(set(step) - {"op"} - {p.name for p in operation.params})
    if unknown:
        allowed = ", ".join(p.name for p in operation.params)
        raise ValueError(f"{where}: unknown parameter {unknown[0]!r}; allowed: {allowed}")
    resolved: dict[str, Any] = {"op": operation.name}
    for param in operation.params:
        value = step.get(param.name)
        if value is None:
            value = seed if param.name == SEED_PARAM else param.default
        if value is None:
            raise ValueError(f"{where}: {param.name} is required ({param.allowed()})")
        resolved[param.name] = param.check(value, where)
    return resolved


def resolve_steps(steps: Sequence[Mapping[str, Any] | PostStep], seed: int) -> list[dict[str, Any]]:
    """Every step resolved (see `resolve_step`); at most MAX_STEPS of them."""
    if len(steps) > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} post-processing steps, not {len(steps)}")
    return [
        resolve_step(step.model_dump() if isinstance(step, PostStep) else step, seed, index)
        for index, step in enumerate(steps)
    ]


def apply_steps(
    image: Image.Image, steps: Sequence[Mapping[str, Any] | PostStep], seed: int
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Runs `steps` in order on `image`; returns the result and the resolved steps (defaults and seed
    filled in) for the sidecar. Every step is checked before any runs."""
    resolved = resolve_steps(steps, seed)
    for step in resolved:
        image = OPERATIONS[step["op"]].run(image, step)
    return image, resolved


class PostStep(BaseModel):
    """One post-processing step of a request: ``{"op": ..., **parameters}``, checked against
    OPERATIONS (a missing seed is filled in later, from the job's)."""

    model_config = ConfigDict(extra="allow")

    op: str

    @model_validator(mode="after")
    def _check(self) -> PostStep:
        resolve_step(self.model_dump(), seed=0)
        return self
