"""(9) Video: frames per second rendered by the tiny AnimateDiff and SVD pipelines on this machine,
through `video.pipelines.render_video` (the worker's code: CPU noise, decode in chunks), and what
encoding the clip as H.264 MP4 (`video.encode.encode_mp4`) costs per frame. Informative, no goal:
the tiny models' frames are noise and their steps take milliseconds, so the rows show the fixed cost
around the denoiser (scheduler, VAE decode, PIL conversion, encoder), not a real model's speed; the
issue's goals are for SVD and AnimateDiff at their native sizes on a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .report import Measurement, median, summary, timed

FRAMES, FPS, WIDTH, HEIGHT, STEPS = 16, 8, 64, 64, 4
"""The clip rendered: AnimateDiff's usual 16 frames, at the tiny models' 64² and a few steps."""

WARMUP_ROUNDS = 1
ROUNDS = 3
ENCODE_ROUNDS = 10


def start_image() -> Image.Image:
    """SVD's start picture: a horizontal gradient."""
    return Image.linear_gradient("L").resize((WIDTH, HEIGHT)).convert("RGB")


def specs() -> dict[str, Any]:
    """The clip each family renders, by family name."""
    from services.images_service.video.pipelines import VideoSpec

    shared: dict[str, Any] = dict(frames=FRAMES, fps=FPS, width=WIDTH, height=HEIGHT, steps=STEPS, seed=7)
    return {
        "animatediff": VideoSpec(**shared, cfg=7.0, prompt="a paper boat on a pond"),
        "svd": VideoSpec(**shared, cfg=2.5, image=start_image()),
    }


def frames_per_second(frames: int, seconds: list[float]) -> float:
    """Frames rendered per second of a clip's median render time."""
    return frames / median(seconds)


def render_row(family: str, device: str, seconds: list[float]) -> Measurement:
    fps = frames_per_second(FRAMES, seconds)
    label = {"animatediff": "AnimateDiff", "svd": "SVD"}[family]
    return Measurement(
        key=f"video.{family}.frames_per_s",
        label=f"video: tiny {label} {FRAMES} frames {WIDTH}×{HEIGHT}, {STEPS} steps ({device})",
        value=round(fps, 1),
        unit="frames/s",
        note=f"{median(seconds):.2f} s a clip",
        detail={"clip_s": summary(seconds), "frames": FRAMES, "steps": STEPS},
    )


def encode_row(seconds: list[float]) -> Measurement:
    per_frame_ms = median(seconds) * 1000 / FRAMES
    return Measurement(
        key="video.mp4_encode_ms_per_frame",
        label=f"video: H.264 MP4 encode, {FRAMES} frames {WIDTH}×{HEIGHT}",
        value=round(per_frame_ms, 2),
        unit="ms",
        note=f"per frame; {median(seconds) * 1000:.1f} ms a clip",
        detail={"clip_ms": summary(seconds, scale=1000)},
    )


def measure(workdir: Path) -> list[Measurement]:
    import torch

    from services.images_service.video.encode import encode_mp4
    from services.images_service.video.pipelines import load_video_pipeline, render_video
    from services.images_service.video.tiny import build_tiny_video_models

    models = build_tiny_video_models(workdir)
    cpu = torch.device("cpu")
    pipelines = {
        "animatediff": load_video_pipeline(
            "animatediff", models.sd15, motion_adapter=models.motion_adapter, device=cpu
        ),
        "svd": load_video_pipeline("svd", models.svd, device=cpu),
    }
    clips = specs()
    rows: list[Measurement] = []
    frames: list[Image.Image] = []
    for family, pipe in pipelines.items():
        for _ in range(WARMUP_ROUNDS):
            frames = render_video(pipe, clips[family])
        seconds = [timed(lambda: render_video(pipe, clips[family])) for _ in range(ROUNDS)]  # noqa: B023
        rows.append(render_row(family, str(cpu), seconds))
    encode_mp4(frames, FPS)  # warm the codec
    rows.append(encode_row([timed(lambda: encode_mp4(frames, FPS)) for _ in range(ENCODE_ROUNDS)]))
    return rows
