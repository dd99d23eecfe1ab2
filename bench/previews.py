"""(6) Live previews: what publishing the latents every 2 steps costs a render. Measured through
`DiffusersEngine.render` in this process (tiny SD1.5, 20 steps, 64×64, as the batch section), each
preview projected, encoded as WebP and SET in a real Redis, against the same render with previews
off, interleaved. The tiny model's steps take milliseconds, so this ratio is a worst case; beside it,
one preview's own cost at a 1024² SDXL render's size (a 128×128 latent), the part that does not
shrink on a faster device, to set against a real step (a second or more on CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.contracts import RenderSpec
from services.images_service.models import ModelRegistry
from services.images_service.previews import (
    LATENT_RGB,
    PREVIEW_TTL_S,
    PreviewingProgress,
    encode_preview,
    preview_key,
    project,
)
from services.images_service.queue import connect_redis
from services.images_service.tiny import TINY_SD15

from .report import Goal, Measurement, interleaved, median, ratio, summary, timed

EVERY = 2
"""Steps between previews: the CUDA/MPS default."""

STEPS = 20
WARMUP_ROUNDS = 2
ROUNDS = 8
PREVIEW_SAMPLES = 50

OVERHEAD_GOAL = Goal("<=", 1.05, "×")
"""The issue's bound: previews on cost at most a few percent of a render."""


class RedisSink:
    """What the worker's `JobReporter` does with a preview, minus the meta write that every step
    makes anyway: the WebP SET under the job's key with its TTL."""

    def __init__(self, redis: Any, every: int) -> None:
        self.redis = redis
        self.preview_every = every
        self.published = 0

    def publish_preview(self, webp: bytes, step: int) -> None:
        self.redis.set(preview_key("kitty-bench", "previews"), webp, ex=PREVIEW_TTL_S)
        self.published += 1


def _spec() -> RenderSpec:
    return RenderSpec(
        prompt="a lantern in the fog", model=TINY_SD15, width=64, height=64, steps=STEPS, cfg=7.0, seed=3
    )


def measure(models_yaml: Path, redis_base: str) -> list[Measurement]:
    import torch

    from services.images_service.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(ModelRegistry(models_yaml))
    engine.preload(TINY_SD15)
    redis = connect_redis(f"{redis_base}/15")
    on, off = RedisSink(redis, EVERY), RedisSink(redis, 0)

    def ignore(step: int, total: int) -> None:
        pass

    def render(sink: RedisSink) -> float:
        return timed(lambda: engine.render(_spec(), PreviewingProgress(ignore, sink)))

    rounds = {"previews": lambda: render(on), "off": lambda: render(off)}
    interleaved(WARMUP_ROUNDS, rounds)
    on.published = 0
    samples = interleaved(ROUNDS, rounds)
    per_render = on.published / ROUNDS
    engine.close()

    latents = torch.randn(1, 4, 128, 128)
    costs = [
        timed(lambda: on.publish_preview(encode_preview(project(latents, LATENT_RGB["sdxl"])), 0))
        for _ in range(PREVIEW_SAMPLES)
    ]
    redis.delete(preview_key("kitty-bench", "previews"))
    redis.close()

    on_s, off_s = median(samples["previews"]), median(samples["off"])
    device = str(engine.device)
    return [
        Measurement(
            key="previews.overhead",
            label=f"previews every {EVERY} steps ÷ off (tiny SD1.5 64², {STEPS} steps, {device})",
            value=round(ratio(on_s, off_s), 3),
            unit="×",
            goal=OVERHEAD_GOAL,
            note=f"{on_s:.3f} vs {off_s:.3f} s; {per_render:.0f} previews a render",
            detail={"previews_s": summary(samples["previews"]), "off_s": summary(samples["off"])},
        ),
        Measurement(
            key="previews.cost_ms",
            label="one 128×128 preview: project, WebP, Redis SET",
            value=round(median(costs) * 1000, 2),
            unit="ms",
            detail={"samples": len(costs), "device": "cpu"},
        ),
    ]
