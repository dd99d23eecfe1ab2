"""Frames to delivery files and back: MP4 (H.264), WebM (VP9) and GIF through PyAV, whose wheel
carries FFmpeg with libx264 and libvpx; a WebP poster through Pillow; `probe` and `decode_frames`
read a file back. WebM and GIF of the same frames are the same bytes under the same PyAV build; MP4
usually is, but this x264 build's assembly now and then codes a frame differently (measured: 4 of 60
encodes of one clip; none with ``no-asm``, 3x slower), so re-runs are compared by the frames' digest."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO
from numbers import Integral
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.frame import VideoFrame
from PIL import Image

from ..errors import EngineError, ValidationFailed

Frames = Sequence[Image.Image] | np.ndarray
"""A clip: PIL images of one size, or a uint8 array of shape (frames, height, width, 3), RGB."""

MIN_FPS, MAX_FPS = 1, 60
"""Frame rates a clip may be encoded at: HIP-35 delivers 8–30 fps; 60 leaves room for interpolation."""

GIF_MAX_FRAMES = 64
"""HIP-35's ceiling for GIF delivery: past it a GIF of video frames is megabytes of 256-colour pictures."""

GIF_COLORS = 256
"""Colours of the one palette a GIF's frames share (the format's maximum)."""

PALETTE_SAMPLE_PIXELS = 1_000_000
"""Pixels the GIF palette is chosen from: all 64 frames of 512x512 are 16 million, and median cut over
them takes ten seconds; a regular sample of a million finds the same colours in under one."""

ENCODER_THREADS = 4
"""Threads of the H.264 and VP9 encoders, fixed rather than one per core: x264's output depends on its
thread count (1, 2 and 4 give three different files), so a fixed count makes two encodes of the same
frames identical byte for byte on any machine. VP9's output does not depend on it."""

MP4_CODEC_OPTIONS = {"crf": "18", "preset": "medium"}
"""libx264: constant quality 18 (visually lossless on generated frames) at the default speed."""

WEBM_CODEC_OPTIONS = {"crf": "31", "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
"""libvpx-vp9: constant quality (crf with a zero bitrate cap, FFmpeg's VP9 guide's value for HD),
row multithreading, and the faster of the "good" speeds (cpu-used 0–5)."""

BITEXACT = {"fflags": "+bitexact"}
"""Muxer flag that leaves out what differs from run to run: WebM's random segment UID, the muxer's
version string."""

MP4_MUXER_OPTIONS = {**BITEXACT, "movflags": "+faststart"}
"""`+faststart` moves the index (moov) before the media (mdat) so a browser plays while downloading.
FFmpeg rewrites the file to do it, hence encoding to a temporary file rather than to memory."""

POSTER_QUALITY = 90
"""WebP quality of the poster frame (0–100)."""

PIXEL_FORMAT = "yuv420p"
"""4:2:0 chroma: what every browser's H.264 and VP9 decoders play. It halves the chroma planes, so
H.264 refuses odd widths and heights (VP9 rounds them up and takes any size)."""

BT709 = 1
"""FFmpeg's code of ITU-R BT.709 for colour matrix, primaries and transfer: how the RGB frames are
converted to YUV and what the file says, so players convert back with the same matrix (untagged,
browsers guess, and reds and greens shift)."""


class VideoFormat(StrEnum):
    """A clip's delivery format; the value is the file extension."""

    MP4 = "mp4"
    WEBM = "webm"
    GIF = "gif"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self]


MEDIA_TYPES = {VideoFormat.MP4: "video/mp4", VideoFormat.WEBM: "video/webm", VideoFormat.GIF: "image/gif"}
POSTER_MEDIA_TYPE = "image/webp"


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as read back from it."""

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    """FFmpeg's codec name: ``h264``, ``vp9``, ``gif``."""
    duration_s: float


def frames_array(frames: Frames) -> np.ndarray:
    """`frames` as one contiguous uint8 array (frames, height, width, 3); `ValidationFailed` when
    there are none, they differ in size, or an array is not of that shape and type."""
    if isinstance(frames, np.ndarray):
        array = frames
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValidationFailed(
                f"frames must be a uint8 array of shape (frames, height, width, 3), "
                f"not {array.dtype} of shape {array.shape}"
            )
    else:
        pictures = list(frames)
        sizes = sorted({picture.size for picture in pictures})
        if len(sizes) > 1:
            raise ValidationFailed(f"the frames of a clip must be of one size, not {len(sizes)}: {sizes}")
        array = np.stack([np.asarray(p.convert("RGB")) for p in pictures]) if pictures else np.empty(0)
    if array.shape[0] == 0:
        raise ValidationFailed("a clip needs at least one frame; none were given")
    if 0 in array.shape[1:3]:
        raise ValidationFailed(f"frames of {array.shape[2]}x{array.shape[1]} pixels have nothing to show")
    return np.ascontiguousarray(array)


def check_fps(fps: int) -> int:
    """`fps` as an int (numpy's integers too); `ValidationFailed` unless a whole number in range."""
    if isinstance(fps, bool) or not isinstance(fps, Integral) or not MIN_FPS <= fps <= MAX_FPS:
        raise ValidationFailed(f"fps must be a whole number from {MIN_FPS} to {MAX_FPS}, not {fps!r}")
    return int(fps)


def encode_mp4(frames: Frames, fps: int) -> bytes:
    """H.264 in MP4, yuv420p, index first (`+faststart`). Odd sizes are refused, not padded: a padded
    file would be a pixel larger than the frames asked for, and the pipelines render multiples of 8."""
    array = frames_array(frames)
    height, width = array.shape[1:3]
    if width % 2 or height % 2:
        raise ValidationFailed(
            f"MP4 (H.264, 4:2:0) needs an even width and height; the frames are {width}x{height}",
            remediation=[
                "Render at an even size, crop or pad the frames by a pixel, or ask for WebM or GIF."
            ],
        )
    return _encode(array, fps, VideoFormat.MP4, "libx264", MP4_CODEC_OPTIONS, MP4_MUXER_OPTIONS, _yuv_frame)


def encode_webm(frames: Frames, fps: int) -> bytes:
    """VP9 in WebM, yuv420p; any size."""
    return _encode(
        frames_array(frames), fps, VideoFormat.WEBM, "libvpx-vp9", WEBM_CODEC_OPTIONS, BITEXACT, _yuv_frame
    )


def encode_gif(frames: Frames, fps: int) -> bytes:
    """An endlessly looping GIF of at most `GIF_MAX_FRAMES` frames sharing one palette (so colours do not
    flicker from frame to frame), undithered (dither noise would crawl). GIF counts time in hundredths
    of a second: 8 fps plays frames of 12 and 13 hundredths; every frame is kept, repeated ones too."""
    array = frames_array(frames)
    if len(array) > GIF_MAX_FRAMES:
        raise ValidationFailed(
            f"a GIF holds at most {GIF_MAX_FRAMES} frames; this clip has {len(array)}",
            remediation=["Ask for MP4 or WebM, or fewer frames."],
        )
    palette = clip_palette(array)
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255
    colors = np.asarray(palette.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
    argb[: len(colors), 1:] = colors

    def pal8_frame(picture: np.ndarray) -> VideoFrame:
        indices = Image.fromarray(picture).quantize(palette=palette, dither=Image.Dither.NONE)
        # PyAV takes pal8 as an (indices, ARGB palette) pair, as its docstring says; its stub omits it.
        return VideoFrame.from_ndarray((np.asarray(indices), argb), format="pal8")  # type: ignore[arg-type]

    return _encode(array, fps, VideoFormat.GIF, "gif", {}, BITEXACT, pal8_frame, pixel_format="pal8")


def clip_palette(array: np.ndarray) -> Image.Image:
    """One palette image for all of a clip's frames: median cut over the frames stacked as one picture,
    every n-th pixel of each row and column where they hold more than `PALETTE_SAMPLE_PIXELS`."""
    stride = math.ceil(math.sqrt(array[..., 0].size / PALETTE_SAMPLE_PIXELS))
    sample = np.ascontiguousarray(array[:, ::stride, ::stride])
    strip = Image.fromarray(sample.reshape(-1, sample.shape[2], 3))
    return strip.quantize(colors=GIF_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def encode_poster(frames: Frames, index: int = 0) -> bytes:
    """Frame `index` (the first by default) as a WebP picture of the frames' size."""
    array = frames_array(frames)
    if not -len(array) <= index < len(array):
        raise ValidationFailed(f"poster frame {index} is outside the clip's {len(array)} frames")
    out = BytesIO()
    Image.fromarray(array[index]).save(out, format="WEBP", quality=POSTER_QUALITY)
    return out.getvalue()


ENCODERS: dict[VideoFormat, Callable[[Frames, int], bytes]] = {
    VideoFormat.MP4: encode_mp4,
    VideoFormat.WEBM: encode_webm,
    VideoFormat.GIF: encode_gif,
}


def encode(frames: Frames, fps: int, video_format: VideoFormat | str) -> bytes:
    """`frames` at `fps` in `video_format` (``mp4``, ``webm`` or ``gif``)."""
    try:
        chosen = VideoFormat(video_format)
    except ValueError:
        formats = ", ".join(f.value for f in VideoFormat)
        raise ValidationFailed(f"'{video_format}' is not a video format; choose one of {formats}") from None
    return ENCODERS[chosen](frames, fps)


def _yuv_frame(picture: np.ndarray) -> VideoFrame:
    """An RGB picture as a BT.709, limited-range yuv420p frame, tagged so."""
    return VideoFrame.from_ndarray(picture, format="rgb24").reformat(
        format=PIXEL_FORMAT,
        dst_colorspace="ITU709",
        dst_color_range="MPEG",
        dst_color_trc=BT709,
        dst_color_primaries=BT709,
    )


def _encode(
    array: np.ndarray,
    fps: int,
    video_format: VideoFormat,
    codec: str,
    codec_options: dict[str, str],
    muxer_options: dict[str, str],
    to_frame: Callable[[np.ndarray], VideoFrame],
    *,
    pixel_format: str = PIXEL_FORMAT,
) -> bytes:
    fps = check_fps(fps)
    height, width = array.shape[1:3]
    try:
        with tempfile.TemporaryDirectory(prefix="kitty-video-") as folder:
            path = Path(folder) / f"clip.{video_format.value}"
            with av.open(str(path), "w", format=video_format.value, options=muxer_options) as output:
                stream: Any = output.add_stream(codec, rate=fps, options=codec_options)
                stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
                stream.codec_context.thread_count = ENCODER_THREADS
                if pixel_format == PIXEL_FORMAT:
                    context = stream.codec_context
                    context.colorspace = context.color_primaries = context.color_trc = BT709
                for index, picture in enumerate(array):
                    frame = to_frame(picture)
                    frame.pts = index
                    output.mux(stream.encode(frame))
                output.mux(stream.encode())  # flush the encoder's delayed frames
            return path.read_bytes()
    except av.FFmpegError as exc:
        raise EngineError(
            f"encoding {len(array)} frames of {width}x{height} as {video_format.value} failed: {exc}"
        ) from exc


def _open(data: bytes) -> Any:
    try:
        return av.open(BytesIO(data), "r")
    except av.FFmpegError as exc:
        raise ValidationFailed(f"not a video file PyAV can read ({len(data)} bytes): {exc}") from exc


def probe(data: bytes) -> VideoInfo:
    """Frame count (by decoding: WebM does not store it), frame rate, size, codec and duration of the
    first video stream of `data`."""
    with _open(data) as container:
        if not container.streams.video:
            raise ValidationFailed("the file holds no video stream")
        stream = container.streams.video[0]
        rate = stream.guessed_rate or stream.average_rate
        frames = sum(1 for _ in container.decode(stream))
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / float(rate) if rate else 0.0
        return VideoInfo(
            frames=frames,
            fps=float(rate) if rate else 0.0,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            duration_s=duration,
        )


def decode_frames(data: bytes) -> np.ndarray:
    """Every frame of the first video stream of `data` as RGB, shape (frames, height, width, 3)."""
    with _open(data) as container:
        if not container.streams.video:
            raise ValidationFailed("the file holds no video stream")
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not pictures:
        raise ValidationFailed("the video stream holds no frames")
    return np.stack(pictures)
