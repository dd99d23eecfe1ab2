"""Video's core before it is wired in: tiny random-weight SVD and AnimateDiff pipelines, loaded from
saved folders by the loader real models use, render clips of the asked length and size, repeatably,
with per-step progress and the VAE decoded in chunks; the clips encode to MP4, WebM, GIF and a WebP
poster that read back with the right frame count, rate, size and codec."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from services.images_service.engines.base import JobCanceled
from services.images_service.errors import ModelNotFound, ValidationFailed
from services.images_service.video.encode import (
    GIF_MAX_FRAMES,
    VideoFormat,
    decode_frames,
    encode,
    encode_gif,
    encode_mp4,
    encode_poster,
    encode_webm,
    probe,
)
from services.images_service.video.pipelines import (
    VideoSpec,
    decode_in_chunks,
    load_video_pipeline,
    render_video,
)
from tests.support.tiny_video import TinyVideoModels

FRAMES, FPS, WIDTH, HEIGHT, STEPS = 8, 8, 48, 32, 3
"""The clips rendered: not square, so a swapped width and height shows."""

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny models' tensors gain nothing from a second thread, and on a shared two-core machine
    torch's spinning threads make a render ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def svd(tiny_video_models: TinyVideoModels) -> Any:
    return load_video_pipeline("svd", tiny_video_models.svd, device=CPU)


@pytest.fixture(scope="module")
def animatediff(tiny_video_models: TinyVideoModels) -> Any:
    return load_video_pipeline(
        "animatediff", tiny_video_models.sd15, motion_adapter=tiny_video_models.motion_adapter, device=CPU
    )


def start_image() -> Image.Image:
    """A gradient of another size than the clip's: SVD resizes it."""
    ramp = np.linspace(0, 255, 40, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (30, 1))] * 3, axis=-1))


def svd_spec(**changes: Any) -> VideoSpec:
    values: dict[str, Any] = dict(
        frames=FRAMES, fps=FPS, width=WIDTH, height=HEIGHT, steps=STEPS, cfg=2.5, seed=7, image=start_image()
    )
    return VideoSpec(**(values | changes))


def animatediff_spec(**changes: Any) -> VideoSpec:
    values: dict[str, Any] = dict(
        frames=FRAMES,
        fps=FPS,
        width=WIDTH,
        height=HEIGHT,
        steps=STEPS,
        cfg=7.0,
        seed=7,
        prompt="a cat on a boat",
    )
    return VideoSpec(**(values | changes))


def pixels(frames: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(frame) for frame in frames])


@pytest.fixture(scope="module")
def svd_clip(svd: Any) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    steps: list[tuple[int, int]] = []
    return render_video(svd, svd_spec(), lambda step, total: steps.append((step, total))), steps


@pytest.fixture(scope="module")
def animatediff_clip(animatediff: Any) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    steps: list[tuple[int, int]] = []
    return render_video(
        animatediff, animatediff_spec(), lambda step, total: steps.append((step, total))
    ), steps


@pytest.mark.parametrize("clip", ["svd_clip", "animatediff_clip"])
def test_a_clip_has_the_frames_and_size_asked_for_and_reports_every_step(
    clip: str, request: pytest.FixtureRequest
) -> None:
    frames, steps = request.getfixturevalue(clip)
    assert len(frames) == FRAMES
    assert {frame.size for frame in frames} == {(WIDTH, HEIGHT)}
    assert {frame.mode for frame in frames} == {"RGB"}
    assert steps == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert pixels(frames).std() > 0  # not a blank clip


def test_animatediff_loads_with_the_motion_adapter_and_its_ddim_schedule(animatediff: Any) -> None:
    assert type(animatediff).__name__ == "AnimateDiffPipeline"
    assert type(animatediff.unet).__name__ == "UNetMotionModel"
    assert type(animatediff.scheduler).__name__ == "DDIMScheduler"
    assert animatediff.scheduler.config.beta_schedule == "linear"


@pytest.mark.parametrize(
    ("pipe", "clip", "spec"),
    [("svd", "svd_clip", svd_spec), ("animatediff", "animatediff_clip", animatediff_spec)],
)
def test_the_same_seed_gives_the_same_frames_and_another_seed_others(
    pipe: str, clip: str, spec: Any, request: pytest.FixtureRequest
) -> None:
    pipeline = request.getfixturevalue(pipe)
    first = pixels(request.getfixturevalue(clip)[0])
    assert np.array_equal(pixels(render_video(pipeline, spec())), first)
    assert not np.array_equal(pixels(render_video(pipeline, spec(seed=8))), first)


@pytest.fixture
def decoded_batches(request: pytest.FixtureRequest) -> Iterator[tuple[Any, list[int]]]:
    """The pipeline named by the test's parameter, its VAE's decode recording each batch's frames."""
    pipe = request.getfixturevalue(request.param)
    batches: list[int] = []
    decode = pipe.vae.decode

    def recording(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batches.append(latents.shape[0])
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = recording
    yield pipe, batches
    del pipe.vae.decode


@pytest.mark.parametrize(
    ("decoded_batches", "spec"),
    [("svd", svd_spec), ("animatediff", animatediff_spec)],
    indirect=["decoded_batches"],
)
def test_the_vae_decodes_no_more_frames_at_once_than_the_chunk(
    decoded_batches: tuple[Any, list[int]], spec: Any
) -> None:
    pipe, batches = decoded_batches
    frames = render_video(pipe, spec(decode_chunk_size=3))
    assert len(frames) == FRAMES
    assert batches == [3, 3, 2]


def test_animatediff_frames_do_not_depend_on_the_chunk_size(
    animatediff: Any, animatediff_clip: tuple[list[Image.Image], Any]
) -> None:
    """Its VAE decodes each frame alone: chunks change memory, not pixels, but for float rounding
    (a batch of one convolves in another order than a batch of eight): at most one level of 255."""
    chunked = pixels(render_video(animatediff, animatediff_spec(decode_chunk_size=1))).astype(int)
    difference = np.abs(chunked - pixels(animatediff_clip[0]))
    assert difference.max() <= 1, difference.max()


def test_svd_frames_depend_on_the_chunk_size(svd: Any, svd_clip: tuple[list[Image.Image], Any]) -> None:
    """SVD's temporal decoder sees a chunk's frames together: a re-run must keep the chunk size too."""
    assert not np.array_equal(pixels(render_video(svd, svd_spec(decode_chunk_size=3))), pixels(svd_clip[0]))


def test_an_older_diffusers_without_decode_chunks_slices_the_vae(animatediff: Any) -> None:
    class SlicingVae:
        is_sliced = False

        def enable_slicing(self) -> None:
            self.is_sliced = True

    class OlderPipeline:
        vae = SlicingVae()

        def __call__(self, prompt: str, num_frames: int) -> None: ...

    older = OlderPipeline()
    assert decode_in_chunks(older, 4) == {}
    assert older.vae.is_sliced
    assert decode_in_chunks(animatediff, 4) == {"decode_chunk_size": 4}


def test_a_cancel_from_the_progress_callback_stops_the_render(svd: Any) -> None:
    steps: list[int] = []

    def cancel_at_two(step: int, total: int) -> None:
        steps.append(step)
        if step == 2:
            raise JobCanceled

    with pytest.raises(JobCanceled):
        render_video(svd, svd_spec(), cancel_at_two)
    assert steps == [1, 2]


def test_mp4_is_h264_with_the_clips_frames_rate_and_size_and_its_index_first(
    svd_clip: tuple[list[Image.Image], Any],
) -> None:
    data = encode_mp4(svd_clip[0], FPS)
    info = probe(data)
    assert (info.codec, info.frames, info.fps, info.width, info.height) == (
        "h264",
        FRAMES,
        FPS,
        WIDTH,
        HEIGHT,
    )
    assert info.duration_s == pytest.approx(FRAMES / FPS)
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart: playable while downloading
    assert decode_frames(data).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_webm_is_vp9_with_the_clips_frames_rate_and_size(
    animatediff_clip: tuple[list[Image.Image], Any],
) -> None:
    info = probe(encode_webm(animatediff_clip[0], 12))
    assert (info.codec, info.frames, info.fps, info.width, info.height) == ("vp9", FRAMES, 12, WIDTH, HEIGHT)
    assert info.duration_s == pytest.approx(FRAMES / 12, abs=0.01)


def test_gif_keeps_every_frame_repeated_ones_too(svd_clip: tuple[list[Image.Image], Any]) -> None:
    frames = [svd_clip[0][0], *svd_clip[0]]
    data = encode_gif(frames, FPS)
    assert data[:6] == b"GIF89a"
    info = probe(data)
    assert (info.codec, info.frames, info.width, info.height) == ("gif", FRAMES + 1, WIDTH, HEIGHT)
    assert Image.open(BytesIO(data)).n_frames == FRAMES + 1


@pytest.mark.parametrize("index", [0, -1])
def test_the_poster_is_a_webp_of_the_chosen_frame(
    svd_clip: tuple[list[Image.Image], Any], index: int
) -> None:
    frames = svd_clip[0]
    poster = Image.open(BytesIO(encode_poster(frames, index)))
    assert (poster.format, poster.size) == ("WEBP", (WIDTH, HEIGHT))
    error = np.abs(np.asarray(poster.convert("RGB"), dtype=int) - np.asarray(frames[index], dtype=int)).mean()
    others = np.abs(np.asarray(poster.convert("RGB"), dtype=int) - np.asarray(frames[1], dtype=int)).mean()
    assert error < others


@pytest.mark.parametrize("video_format", [VideoFormat.WEBM, VideoFormat.GIF])
def test_the_same_frames_encode_to_the_same_bytes(
    animatediff_clip: tuple[list[Image.Image], Any], video_format: VideoFormat
) -> None:
    assert encode(animatediff_clip[0], FPS, video_format) == encode(animatediff_clip[0], FPS, video_format)


def test_the_same_frames_encode_to_an_mp4_of_the_same_pictures(
    animatediff_clip: tuple[list[Image.Image], Any],
) -> None:
    """Not byte for byte: this x264 build's assembly now and then codes a frame differently (4 of 60
    encodes of one clip), so re-runs are compared by the frames' digest before encoding."""
    first, second = (decode_frames(encode(animatediff_clip[0], FPS, VideoFormat.MP4)) for _ in range(2))
    assert first.shape == second.shape == (len(animatediff_clip[0]), *first.shape[1:])
    assert np.abs(first.astype(int) - second.astype(int)).mean() < 0.5


@pytest.mark.parametrize("video_format", [VideoFormat.MP4, VideoFormat.WEBM])
def test_colours_survive_the_yuv_round_trip(video_format: VideoFormat) -> None:
    """Converted to YUV and tagged with one matrix (BT.709): a reader converts back with it. With the
    matrices mixed up, saturated red and green come back 10-20 levels off."""
    colours = [(220, 30, 30), (30, 200, 40), (40, 50, 210), (128, 128, 128)]
    frames = np.stack([np.full((32, 32, 3), colour, dtype=np.uint8) for colour in colours])
    back = decode_frames(encode(frames, FPS, video_format))
    assert np.abs(back.astype(int) - frames.astype(int)).mean(axis=(1, 2)).max() < 4


def test_a_gif_of_more_than_64_frames_is_refused() -> None:
    frames = np.zeros((GIF_MAX_FRAMES + 1, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValidationFailed, match="at most 64 frames; this clip has 65"):
        encode_gif(frames, FPS)
    assert probe(encode_gif(frames[:GIF_MAX_FRAMES], FPS)).frames == GIF_MAX_FRAMES


@pytest.mark.parametrize("video_format", list(VideoFormat))
def test_no_frames_are_refused(video_format: VideoFormat) -> None:
    with pytest.raises(ValidationFailed, match="at least one frame"):
        encode([], FPS, video_format)
    with pytest.raises(ValidationFailed, match="at least one frame"):
        encode(np.zeros((0, 16, 16, 3), dtype=np.uint8), FPS, video_format)


def test_odd_sizes_are_refused_for_mp4_and_taken_by_the_others() -> None:
    frames = np.full((3, 33, 47, 3), 90, dtype=np.uint8)
    with pytest.raises(ValidationFailed, match="even width and height; the frames are 47x33"):
        encode_mp4(frames, FPS)
    assert (probe(encode_webm(frames, FPS)).width, probe(encode_webm(frames, FPS)).height) == (47, 33)
    assert Image.open(BytesIO(encode_gif(frames, FPS))).size == (47, 33)


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        ([Image.new("RGB", (16, 16)), Image.new("RGB", (16, 18))], FPS, "of one size"),
        (np.zeros((2, 16, 16, 3), dtype=np.float32), FPS, "uint8 array of shape"),
        (np.zeros((2, 16, 16), dtype=np.uint8), FPS, "uint8 array of shape"),
        (np.zeros((2, 16, 16, 3), dtype=np.uint8), 0, "fps must be a whole number from 1 to 60"),
        (np.zeros((2, 16, 16, 3), dtype=np.uint8), 7.5, "fps must be a whole number"),
    ],
)
def test_bad_frames_and_rates_are_refused(frames: Any, fps: Any, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        encode_webm(frames, fps)


def test_what_is_not_a_video_is_refused_by_name() -> None:
    with pytest.raises(ValidationFailed, match="not a video file"):
        probe(b"not a video at all")
    with pytest.raises(ValidationFailed, match="not a video format"):
        encode(np.zeros((1, 16, 16, 3), dtype=np.uint8), FPS, "avi")


@pytest.mark.parametrize(
    ("pipe", "spec", "message"),
    [
        ("svd", svd_spec(image=None), "animates a start image; none was given"),
        ("svd", svd_spec(prompt="a cat"), "takes no prompt"),
        ("svd", svd_spec(width=50), "multiples of 8, not 50x32"),
        ("svd", svd_spec(frames=0), "frames must be at least 1"),
        ("svd", svd_spec(motion_bucket_id=300), "motion_bucket_id must be from 0 to 255"),
        ("animatediff", animatediff_spec(image=start_image()), "a start image is not supported"),
        ("animatediff", animatediff_spec(frames=33), "at most 32 frames, not 33"),
        ("animatediff", animatediff_spec(decode_chunk_size=0), "decode_chunk_size must be at least 1"),
    ],
)
def test_a_spec_the_pipeline_cannot_render_is_refused_before_rendering(
    pipe: str, spec: VideoSpec, message: str, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(ValidationFailed, match=message):
        render_video(request.getfixturevalue(pipe), spec)


def test_loading_needs_the_model_folders(tiny_video_models: TinyVideoModels, tmp_path: Any) -> None:
    with pytest.raises(ModelNotFound, match="model_index.json is missing"):
        load_video_pipeline("svd", tmp_path, device=CPU)
    with pytest.raises(ValidationFailed, match="needs a motion adapter"):
        load_video_pipeline("animatediff", tiny_video_models.sd15, device=CPU)
    with pytest.raises(ModelNotFound, match="no motion adapter at"):
        load_video_pipeline("animatediff", tiny_video_models.sd15, motion_adapter=tmp_path, device=CPU)
