"""Post-processing changes pixels the way each operation says: tone mapping compresses highlights and
keeps black, grain is seeded, monochrome and as strong as documented, LUTs interpolate like Pillow's
own 3D LUT filter, bad .cube files are refused by line, and `apply_steps` records what it ran."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter
from pydantic import ValidationError

from services.images_service.luts.generate import LOOKS, make_lut
from services.images_service.postprocess import (
    EXPOSURE_RANGE,
    GRAIN_STD_AT_FULL_STRENGTH,
    MAX_STEPS,
    OPERATIONS,
    Lut3D,
    Operation,
    PostStep,
    apply_lut,
    apply_steps,
    cube_text,
    denoise,
    film_grain,
    identity_lut,
    load_cube,
    load_shipped_lut,
    sharpen,
    shipped_luts,
    tone_map,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def flat(color: tuple[int, int, int], size: int = 256) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def noisy_picture(seed: int = 3, size: int = 128) -> Image.Image:
    """Every colour channel uniformly random: the worst case for interpolation and for gathers."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def gradient() -> Image.Image:
    """One row per level 0..255 on all three channels (grey ramp), 256 × 4."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return Image.fromarray(np.repeat(ramp, 4, axis=0), "RGB")


# -- tone mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["aces", "reinhard"])
@pytest.mark.parametrize("exposure", [*EXPOSURE_RANGE, 1.0, 3.0])
def test_tone_mapping_compresses_highlights_keeps_black_and_white_and_is_monotonic(
    operator: str, exposure: float
) -> None:
    curve = pixels(tone_map(gradient(), operator, exposure))[0, :, 0]
    assert curve[0] == 0 and curve[255] == 255
    assert np.all(np.diff(curve) >= 0)
    mid_slope = (curve[148] - curve[108]) / 40
    top_slope = (curve[255] - curve[215]) / 40
    assert top_slope < 0.8 * mid_slope, (operator, exposure, mid_slope, top_slope)


def test_more_exposure_brightens_midtones_and_flattens_highlights_more() -> None:
    soft, hard = (pixels(tone_map(gradient(), "aces", e))[0, :, 0] for e in (1.0, 4.0))
    assert hard[128] > soft[128]
    assert hard[255] - hard[215] < soft[255] - soft[215]


def test_tone_mapping_is_per_channel_and_keeps_neutral_greys_neutral() -> None:
    out = pixels(tone_map(flat((90, 90, 90), 8), "reinhard"))
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])


def test_an_unknown_operator_or_exposure_is_refused() -> None:
    with pytest.raises(ValueError, match="aces, reinhard"):
        tone_map(gradient(), "hable")
    with pytest.raises(ValueError, match="exposure"):
        tone_map(gradient(), "aces", 0.0)


# -- film grain --------------------------------------------------------------------------------------


def test_grain_is_seeded() -> None:
    picture = noisy_picture()
    first = film_grain(picture, 0.5, seed=7)
    assert film_grain(picture, 0.5, seed=7).tobytes() == first.tobytes()
    assert film_grain(picture, 0.5, seed=8).tobytes() != first.tobytes()
    assert first.tobytes() != picture.tobytes()


def test_grain_at_strength_zero_leaves_the_picture_alone() -> None:
    picture = noisy_picture()
    assert film_grain(picture, 0.0, seed=7).tobytes() == picture.tobytes()


@pytest.mark.parametrize("size", [1.0, 3.0])
def test_grain_spread_follows_the_documented_mapping(size: float) -> None:
    grey = flat((128, 128, 128), 512)
    measured = []
    for strength in (0.1, 0.25, 0.5, 1.0):
        change = (pixels(film_grain(grey, strength, seed=1, size=size)) - 128) / 255.0
        measured.append(float(change.std()))
        assert measured[-1] == pytest.approx(strength * GRAIN_STD_AT_FULL_STRENGTH, rel=0.06)
    assert measured == sorted(measured)


def test_coarser_grain_is_correlated_across_neighbours() -> None:
    grey = flat((128, 128, 128), 256)

    def neighbour_correlation(size: float) -> float:
        change = pixels(film_grain(grey, 0.5, seed=2, size=size))[..., 0] - 128.0
        return float(np.corrcoef(change[:, :-1].ravel(), change[:, 1:].ravel())[0, 1])

    assert abs(neighbour_correlation(1.0)) < 0.05
    assert neighbour_correlation(4.0) > 0.5


def test_grain_is_monochrome() -> None:
    picture = flat((70, 128, 190), 128)  # no channel near a clip
    change = pixels(film_grain(picture, 0.5, seed=4)) - pixels(picture)
    assert change[..., 0].std() > 5
    # The same noise on every channel: only rounding (±1 level) tells them apart.
    assert np.abs(change[..., 0] - change[..., 1]).max() <= 1
    assert np.abs(change[..., 1] - change[..., 2]).max() <= 1


def test_alpha_survives_the_operations() -> None:
    picture = noisy_picture().convert("RGBA")
    picture.putalpha(Image.new("L", picture.size, 77))
    for out in (
        film_grain(picture, 0.4, seed=1),
        tone_map(picture, "aces"),
        apply_lut(picture, identity_lut()),
        sharpen(picture),
        denoise(picture),
    ):
        assert out.mode == "RGBA" and set(out.getchannel("A").getdata()) == {77}


# -- LUTs --------------------------------------------------------------------------------------------


def swap_red_blue(size: int = 9) -> Lut3D:
    table = identity_lut(size).table[..., ::-1].copy()
    return Lut3D(table=table, title="swap")


def test_an_identity_lut_leaves_the_picture_unchanged() -> None:
    picture = noisy_picture()
    for size in (2, 17, 33):
        assert np.abs(pixels(apply_lut(picture, identity_lut(size))) - pixels(picture)).max() <= 1


def test_a_lut_that_swaps_red_and_blue_swaps_them() -> None:
    picture = noisy_picture()
    out, before = pixels(apply_lut(picture, swap_red_blue())), pixels(picture)
    assert np.abs(out[..., 0] - before[..., 2]).max() <= 1
    assert np.abs(out[..., 2] - before[..., 0]).max() <= 1
    assert np.abs(out[..., 1] - before[..., 1]).max() <= 1


def test_trilinear_interpolation_matches_pillows_3d_lut_filter() -> None:
    rng = np.random.default_rng(5)
    lut = Lut3D(table=rng.random((9, 9, 9, 3), dtype=np.float32))  # nothing smooth to hide behind
    picture = noisy_picture(size=256)
    # Pillow's table runs red fastest, the .cube order: [b, g, r] when reshaped.
    flat_table = lut.table.transpose(2, 1, 0, 3).reshape(-1).tolist()
    reference = picture.filter(ImageFilter.Color3DLUT(9, flat_table))
    assert np.abs(pixels(apply_lut(picture, lut)) - pixels(reference)).max() <= 1


def test_lut_mix_blends_over_the_picture() -> None:
    picture = noisy_picture()
    assert np.abs(pixels(apply_lut(picture, swap_red_blue(), mix=0.0)) - pixels(picture)).max() <= 1
    half = pixels(apply_lut(picture, swap_red_blue(), mix=0.5))
    before = pixels(picture)
    assert np.abs(half[..., 0] - (before[..., 0] + before[..., 2]) / 2).max() <= 1


def test_a_cube_file_round_trips_with_title_domain_and_comments(tmp_path: Path) -> None:
    lut = Lut3D(table=swap_red_blue(5).table, title="swap", domain_min=(0, 0, 0), domain_max=(1, 1, 1))
    path = tmp_path / "swap.cube"
    path.write_text(cube_text(lut, comments=["made in a test"]))
    loaded = load_cube(path)
    assert loaded.title == "swap" and loaded.size == 5
    np.testing.assert_allclose(loaded.table, lut.table, atol=1e-6)
    assert load_cube(str(path)).size == 5
    assert load_cube(path.read_text()).title == "swap"


def test_the_domain_scales_the_input() -> None:
    # Domain 0..2: a full-scale input sits at the middle of the lattice, so identity halves it.
    text = cube_text(Lut3D(table=identity_lut(3).table, domain_max=(2.0, 2.0, 2.0)))
    halved = pixels(apply_lut(flat((255, 128, 0), 4), load_cube(text)))[0, 0]
    assert list(halved) == [128, 64, 0]


def test_resolve_input_range_and_inline_comments_are_read() -> None:
    rows = "\n".join(f"{r} {g} {b}" for b in (0, 1) for g in (0, 1) for r in (0, 1))
    text = f'# header\nTITLE "look #2"\nLUT_3D_INPUT_RANGE 0 1\nLUT_3D_SIZE 2  # two\n\n{rows}\n'
    lut = load_cube(text)
    assert lut.title == "look #2"
    np.testing.assert_allclose(lut.table, identity_lut(2).table)


VALID_ROWS = "\n".join(["0 0 0"] * 8)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("LUT_1D_SIZE 4\n0 0 0\n", 1, "1D LUT"),
        (
            'TITLE "t"\n\nLUT_3D_SIZE 2\n' + "\n".join(["0 0 0"] * 7) + "\n0 0 zero\n",
            11,
            "expected 3 numbers",
        ),
        ("LUT_3D_SIZE 2\n" + "\n".join(["0 0 0"] * 7) + "\n", 8, "needs 8 data rows, the file has 7"),
        ("LUT_3D_SIZE 2\n" + VALID_ROWS + "\n1 1 1\n", 10, "more than LUT_3D_SIZE"),
        ("0 0 0\nLUT_3D_SIZE 2\n", 1, "before LUT_3D_SIZE"),
        ("LUT_3D_SIZE 2\nGAMMA 2.2\n" + VALID_ROWS + "\n", 2, "unknown keyword GAMMA"),
        ("LUT_3D_SIZE two\n" + VALID_ROWS + "\n", 1, "LUT_3D_SIZE must be an integer"),
        ("LUT_3D_SIZE 1\n0 0 0\n", 1, "LUT_3D_SIZE must be an integer"),
        ("LUT_3D_SIZE 2\nDOMAIN_MIN 0 0\n" + VALID_ROWS + "\n", 2, "expected 3 numbers"),
        ("LUT_3D_SIZE 2\n" + VALID_ROWS[:-5] + "nan 0 0\n", 9, "expected 3 numbers"),
        ("LUT_3D_SIZE 2\n" + VALID_ROWS + '\nTITLE "late"\n', 10, "after the data rows"),
    ],
)
def test_a_malformed_cube_file_is_refused_naming_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ValueError, match=f"line {line}: .*{words}"):
        load_cube(text)


def test_a_cube_without_a_size_or_with_an_empty_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="no LUT_3D_SIZE"):
        load_cube('TITLE "empty"\n# nothing\n')
    with pytest.raises(ValueError, match="DOMAIN_MAX must exceed"):
        load_cube("LUT_3D_SIZE 2\nDOMAIN_MAX 1 0 1\n" + VALID_ROWS + "\n")


def test_the_shipped_luts_parse_and_are_what_the_generator_makes() -> None:
    assert set(shipped_luts()) == set(LOOKS) == {"teal_orange", "bleach_bypass"}
    for name, path in shipped_luts().items():
        shipped = load_cube(path)
        assert shipped.size == 17 and shipped.title == name
        np.testing.assert_allclose(shipped.table, make_lut(name).table, atol=1e-6)
        assert "Generated by services/images_service/luts/generate.py" in path.read_text()


def test_the_shipped_looks_do_what_their_names_say() -> None:
    shadow, highlight = flat((60, 60, 60), 4), flat((200, 200, 200), 4)
    teal_orange = load_shipped_lut("teal_orange")
    dark = pixels(apply_lut(shadow, teal_orange))[0, 0]
    light = pixels(apply_lut(highlight, teal_orange))[0, 0]
    assert dark[2] > dark[0] and light[0] > light[2]
    black, white = flat((0, 0, 0), 4), flat((255, 255, 255), 4)
    for lut in (teal_orange, load_shipped_lut("bleach_bypass")):
        assert pixels(apply_lut(black, lut)).max() <= 1 and pixels(apply_lut(white, lut)).min() >= 254
    saturated = flat((200, 60, 40), 4)
    bleached = pixels(apply_lut(saturated, load_shipped_lut("bleach_bypass")))[0, 0]
    assert np.ptp(bleached) < 0.6 * np.ptp(pixels(saturated)[0, 0])


# -- sharpen and denoise ------------------------------------------------------------------------------


def soft_edge() -> Image.Image:
    half = np.full((64, 64), 60, dtype=np.uint8)
    half[:, 32:] = 190
    edge = Image.fromarray(half, "L").filter(ImageFilter.GaussianBlur(2))
    return Image.merge("RGB", [edge] * 3)


def test_sharpen_raises_edge_contrast() -> None:
    before = pixels(soft_edge())[32, :, 0]
    after = pixels(sharpen(soft_edge(), amount=1.0, radius=2.0))[32, :, 0]
    assert np.abs(np.diff(after)).max() > 1.3 * np.abs(np.diff(before)).max()
    assert after.min() < before.min() and after.max() > before.max()  # the unsharp-mask overshoot
    assert sharpen(soft_edge(), amount=0.0).tobytes() == soft_edge().tobytes()


def test_denoise_lowers_the_spread_of_added_noise() -> None:
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 12, (128, 128, 1))
    noisy = Image.fromarray(np.clip(np.rint(128 + noise), 0, 255).astype(np.uint8).repeat(3, axis=2), "RGB")
    before = (pixels(noisy) - 128).std()
    half = (pixels(denoise(noisy, 0.5)) - 128).std()
    full = (pixels(denoise(noisy, 1.0)) - 128).std()
    assert full < half < before and full < 0.6 * before
    assert denoise(noisy, 0.0).tobytes() == noisy.tobytes()
    assert denoise(noisy, 0.7).tobytes() == denoise(noisy, 0.7).tobytes()


def test_denoise_keeps_a_hard_edge() -> None:
    edge = np.full((32, 32, 3), 30, dtype=np.uint8)
    edge[:, 16:] = 220
    picture = Image.fromarray(edge, "RGB")
    assert denoise(picture, 1.0).tobytes() == picture.tobytes()


# -- the registry -------------------------------------------------------------------------------------


def test_apply_steps_runs_the_steps_and_records_them_resolved() -> None:
    picture = noisy_picture()
    steps: list[dict[str, Any]] = [
        {"op": "tone_map", "operator": "aces"},
        {"op": "film_grain", "strength": 0.3},
    ]
    out, resolved = apply_steps(picture, steps, seed=42)
    assert resolved == [
        {"op": "tone_map", "operator": "aces", "exposure": 1.0},
        {"op": "film_grain", "strength": 0.3, "size": 1.0, "seed": 42},
    ]
    expected = film_grain(tone_map(picture, "aces", 1.0), 0.3, seed=42, size=1.0)
    assert out.tobytes() == expected.tobytes()
    # The record is enough to redo it: the same pixels from the resolved steps with another job seed.
    again, _ = apply_steps(picture, resolved, seed=7)
    assert again.tobytes() == out.tobytes()
    assert steps[1] == {"op": "film_grain", "strength": 0.3}  # the request itself is not changed


def test_every_operation_runs_with_its_defaults() -> None:
    picture = noisy_picture(size=64)
    for name, operation in OPERATIONS.items():
        step = {"op": name, **({"name": "teal_orange"} if name == "lut" else {})}
        out, (resolved,) = apply_steps(picture, [step], seed=1)
        assert out.size == picture.size and out.mode == "RGB"
        assert set(resolved) == {"op"} | {p.name for p in operation.params}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"op": "blur"}], "step 1: unknown op 'blur'; allowed: denoise, film_grain, lut, sharpen, tone_map"),
        ([{"operator": "aces"}], "step 1: unknown op None"),
        (["tone_map"], "step 1: a step is an object"),
        (
            [{"op": "tone_map"}, {"op": "film_grain", "strenght": 0.3}],
            "step 2 (film_grain): unknown parameter 'strenght'; allowed: strength, size, seed",
        ),
        (
            [{"op": "film_grain", "strength": 1.5}],
            "step 1 (film_grain): strength must be a number from 0 to 1",
        ),
        ([{"op": "film_grain", "strength": "high"}], "strength must be a number from 0 to 1, not 'high'"),
        ([{"op": "film_grain", "strength": True}], "strength must be a number"),
        ([{"op": "film_grain", "seed": 1.5}], "seed must be an integer from 0 to 4294967295"),
        ([{"op": "film_grain", "seed": -1}], "seed must be an integer"),
        ([{"op": "tone_map", "operator": "filmic"}], "operator must be one of aces, reinhard, not 'filmic'"),
        ([{"op": "tone_map", "exposure": float("nan")}], "exposure must be a number"),
        ([{"op": "lut"}], "step 1 (lut): name is required (one of bleach_bypass, teal_orange)"),
        ([{"op": "lut", "name": "../../etc/passwd"}], "name must be one of bleach_bypass, teal_orange"),
        ([{"op": "denoise"}] * (MAX_STEPS + 1), f"at most {MAX_STEPS} post-processing steps"),
    ],
)
def test_apply_steps_refuses_a_bad_step_saying_what_is_allowed(steps: list, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        apply_steps(noisy_picture(size=8), steps, seed=1)
    assert message in str(refused.value)


def test_a_bad_step_is_refused_before_any_step_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def record(image: Image.Image, params: Mapping[str, Any]) -> Image.Image:
        ran.append(params["op"])
        return image

    monkeypatch.setitem(OPERATIONS, "tone_map", Operation("tone_map", (), record))
    with pytest.raises(ValueError):
        apply_steps(noisy_picture(size=8), [{"op": "tone_map"}, {"op": "nope"}], seed=1)
    assert ran == []


def test_post_step_validates_a_request_step() -> None:
    step = PostStep.model_validate({"op": "film_grain", "strength": 0.2, "size": 2})
    assert step.model_dump() == {"op": "film_grain", "strength": 0.2, "size": 2}
    with pytest.raises(ValidationError, match="strength must be a number from 0 to 1"):
        PostStep.model_validate({"op": "film_grain", "strength": 2})
    with pytest.raises(ValidationError, match="unknown op 'vignette'"):
        PostStep.model_validate({"op": "vignette"})
    out, resolved = apply_steps(noisy_picture(size=8), [step], seed=9)
    assert resolved == [{"op": "film_grain", "strength": 0.2, "size": 2.0, "seed": 9}]


def test_grain_tone_map_and_lut_on_a_1024_picture_take_well_under_a_second() -> None:
    picture = noisy_picture(size=1024)
    steps: list[dict[str, Any]] = [
        {"op": "film_grain", "strength": 0.3},
        {"op": "tone_map"},
        {"op": "lut", "name": "teal_orange"},
    ]
    apply_steps(picture, steps, seed=1)  # the LUT file parsed once
    # CPU time of this process: the claim is about one core, not about how busy the machine is.
    started = time.process_time()
    apply_steps(picture, steps, seed=1)
    assert time.process_time() - started < 0.6
