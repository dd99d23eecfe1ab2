"""(5) Batches: ``num_images=4`` is one batched pipeline call in the diffusers engine, not a loop.
Measured through `DiffusersEngine.render` in this process (tiny SD1.5, 20 steps, 64×64): one
render of 4 images against 4 renders of 1, interleaved; the pipeline calls are counted to show the
batch is one call."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from services.contracts import RenderSpec
from services.images_service.models import ModelRegistry
from services.images_service.tiny import TINY_SD15

from .report import Goal, Measurement, interleaved, median, ratio, summary, timed

IMAGES = 4
"""The wire's largest batch."""

WARMUP_ROUNDS = 2
ROUNDS = 8

ONE_CALL_GOAL = Goal("<=", 1, "calls")
"""The issue's requirement: `num_images` renders as one batched pipeline call, not a loop. What the
batch gains is reported beside it without a goal: it depends on the device (a GPU fills its cores
with the batch; one CPU thread does the same arithmetic either way)."""


def _spec(**overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a paper boat on a pond",
        "model": TINY_SD15,
        "width": 64,
        "height": 64,
        "steps": 20,
        "cfg": 7.0,
        "seed": 7,
    }
    return RenderSpec(**{**fields, **overrides})


def measure(models_yaml: Path) -> list[Measurement]:
    from services.images_service.engines.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(ModelRegistry(models_yaml))
    engine.preload(TINY_SD15)

    def ignore(step: int, total: int) -> None:
        pass

    def batched() -> float:
        return timed(lambda: engine.render(_spec(num_images=IMAGES), ignore))

    def one_by_one() -> float:
        return timed(lambda: [engine.render(_spec(seed=7 + i), ignore) for i in range(IMAGES)])

    calls = _count_pipeline_calls(engine, _spec(num_images=IMAGES))
    interleaved(WARMUP_ROUNDS, {"batched": batched, "loop": one_by_one})
    samples = interleaved(ROUNDS, {"batched": batched, "loop": one_by_one})
    engine.close()
    batched_s, loop_s = median(samples["batched"]), median(samples["loop"])
    gain = ratio(loop_s, batched_s)
    device = str(engine.device)
    return [
        Measurement(
            key="batch.pipeline_calls",
            label=f"num_images={IMAGES}: pipeline calls per render",
            value=calls,
            unit="calls",
            goal=ONE_CALL_GOAL,
            detail={"device": device},
        ),
        Measurement(
            key="batch.gain",
            label=f"num_images={IMAGES}: {IMAGES} single renders ÷ one batch (tiny SD1.5, {device})",
            value=round(gain, 2),
            unit="×",
            note=f"{batched_s:.3f} vs {loop_s:.3f} s",
            detail={"batched_s": summary(samples["batched"]), "loop_s": summary(samples["loop"])},
        ),
    ]


def _count_pipeline_calls(engine: Any, spec: RenderSpec) -> int:
    """How many times the model's pipeline class is called while `engine` renders `spec`."""
    import diffusers

    def ignore(step: int, total: int) -> None:
        pass

    cls = getattr(diffusers, engine.render(spec, ignore).engine_info["pipeline_class"])
    original = cls.__call__
    counted: list[int] = []

    @functools.wraps(original)
    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return original(self, *args, **kwargs)

    cls.__call__ = counting
    try:
        engine.render(spec, ignore)
    finally:
        cls.__call__ = original
    return len(counted)
