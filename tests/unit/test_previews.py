"""Live previews: the latent→RGB projection per family, the WebP it becomes, when a render makes one
(every N steps, by device when unset), and that a failing preview never fails the render."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from services.images_service.engines.diffusers.render import StepReporter
from services.images_service.previews import (
    LATENT_RGB,
    PREVIEW_MAX_SIDE,
    Previewer,
    PreviewingProgress,
    encode_preview,
    preview_interval,
    preview_sink,
    project,
)


class Sink:
    """A `PreviewSink` that keeps what it is given (and says when, among progress reports)."""

    def __init__(self, every: int | None = 2, fail: bool = False) -> None:
        self.preview_every = every
        self.fail = fail
        self.events: list[tuple[str, int]] = []
        self.webps: list[bytes] = []

    def publish_preview(self, webp: bytes, step: int) -> None:
        if self.fail:
            raise OSError("redis went away")
        self.events.append(("preview", step))
        self.webps.append(webp)

    def progress(self, step: int, total: int) -> None:
        self.events.append(("progress", step))


def one_channel(channel: int, value: float, channels: int = 4, size: int = 8) -> torch.Tensor:
    latents = torch.zeros(1, channels, size, size)
    latents[0, channel] = value
    return latents


def colour(image: Image.Image) -> tuple[int, int, int]:
    red, green, blue = image.getpixel((0, 0))  # type: ignore[misc]
    return red, green, blue


def test_a_projection_is_an_rgb_picture_of_the_latent_size() -> None:
    image = project(torch.randn(2, 4, 12, 20), LATENT_RGB["sd15"])

    assert image.mode == "RGB" and image.size == (20, 12)


def test_a_large_latent_is_shrunk_to_the_preview_size() -> None:
    image = project(torch.randn(1, 4, 300, 600, dtype=torch.float16), LATENT_RGB["sdxl"])

    assert max(image.size) == PREVIEW_MAX_SIDE and image.size == (256, 128)


def test_sd15_latents_map_to_the_colours_their_channels_carry() -> None:
    # Channel 4 negative is blue in SD1.x's latent space; channel 1 positive is warm (red first).
    red, green, blue = colour(project(one_channel(3, -2.0), LATENT_RGB["sd15"]))
    assert blue > green > red > 127
    red, green, blue = colour(project(one_channel(0, 2.0), LATENT_RGB["sd15"]))
    assert red > max(green, blue) > 127
    # A zero latent is mid grey.
    assert colour(project(torch.zeros(1, 4, 4, 4), LATENT_RGB["sd15"])) == (128, 128, 128)


def test_an_sdxl_zero_latent_is_its_vaes_warm_grey() -> None:
    assert colour(project(torch.zeros(1, 4, 4, 4), LATENT_RGB["sdxl"])) == (150, 140, 130)


def test_a_preview_is_a_small_webp() -> None:
    webp = encode_preview(project(torch.randn(1, 4, 64, 64), LATENT_RGB["sd15"]))

    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    assert len(webp) < 16_000
    assert Image.open(io.BytesIO(webp)).size == (64, 64)


@pytest.mark.parametrize(
    ("setting", "device", "every"),
    [(None, "cpu", 2), (None, "cuda", 2), (None, "mps", 2), (0, "cuda", 0), (0, "cpu", 0), (3, "cpu", 3)],
)
def test_the_interval_is_the_setting_or_the_devices_default(
    setting: int | None, device: str, every: int
) -> None:
    assert preview_interval(setting, device) == every


def test_only_a_worker_progress_carries_a_sink() -> None:
    sink = Sink()

    assert preview_sink(PreviewingProgress(sink.progress, sink)) is sink
    assert preview_sink(lambda step, total: None) is None


class Pipe:
    """What a step callback sees of a pipeline: its class name and iteration count."""

    _num_timesteps = 6


class StableDiffusionPipeline(Pipe):
    pass


class FluxPipeline(Pipe):
    pass


def run_steps(reporter: StepReporter, pipe: Any, latents: torch.Tensor, iterations: int = 6) -> None:
    callback = reporter.callback(0, reporter.total)
    for index in range(iterations):
        callback(pipe, index, None, {"latents": latents})


def test_a_render_publishes_every_n_steps_each_before_its_progress_report() -> None:
    sink = Sink()
    reporter = StepReporter(sink.progress, 6, Previewer(sink, 2))

    run_steps(reporter, StableDiffusionPipeline(), torch.randn(1, 4, 8, 8))

    assert sink.events == [
        ("progress", 1),
        ("preview", 2),
        ("progress", 2),
        ("progress", 3),
        ("preview", 4),
        ("progress", 4),
        ("progress", 5),
        ("preview", 6),
        ("progress", 6),
    ]


def test_a_family_without_a_table_renders_without_previews() -> None:
    sink = Sink()
    reporter = StepReporter(sink.progress, 6, Previewer(sink, 1))

    run_steps(reporter, FluxPipeline(), torch.randn(1, 16, 8, 8))
    run_steps(
        StepReporter(sink.progress, 6, Previewer(sink, 1)),
        StableDiffusionPipeline(),
        torch.randn(1, 16, 8, 8),
    )

    assert sink.webps == []


def test_a_failing_preview_is_logged_and_the_render_goes_on_without_previews(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(fail=True)
    previewer = Previewer(sink, 1)
    reporter = StepReporter(sink.progress, 6, previewer)

    run_steps(reporter, StableDiffusionPipeline(), torch.randn(1, 4, 8, 8))

    assert [step for kind, step in sink.events if kind == "progress"] == [1, 2, 3, 4, 5, 6]
    assert not previewer.is_due(2)
    assert sum("preview failed" in record.message for record in caplog.records) == 1
