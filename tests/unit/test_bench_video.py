"""The bench's video section: its rows' arithmetic and wording, and `--only video` naming it."""

from __future__ import annotations

from bench import run, video
from bench.report import render_table


def test_frames_per_second_is_the_clip_over_its_median_render() -> None:
    assert video.frames_per_second(16, [2.0, 8.0, 4.0]) == 4.0


def test_render_and_encode_rows_are_informative_and_say_what_was_measured() -> None:
    render = video.render_row("svd", "cpu", [4.0, 4.0, 5.0])
    encode = video.encode_row([0.016, 0.032, 0.016])

    assert (render.key, render.value, render.unit) == ("video.svd.frames_per_s", 4.0, "frames/s")
    assert f"{video.FRAMES} frames" in render.label and "SVD" in render.label and "(cpu)" in render.label
    assert (encode.key, encode.value, encode.unit) == ("video.mp4_encode_ms_per_frame", 1.0, "ms")
    assert render.met is None and encode.met is None  # no goal: a tiny model's speed is not a target
    table = render_table([render, encode])
    assert "4 frames/s (4.00 s a clip)" in table and "16.0 ms a clip" in table


def test_the_video_section_can_be_run_alone() -> None:
    assert "video" in run.SECTIONS
