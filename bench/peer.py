"""(6) Our diffusers worker against the peer users would pick instead: the real ComfyUI 0.3.64, same
full-size SD1.5 (random weights, fp16 on disk), same job (256×256, 4 steps, CFG on, one seed per
round), same torch build and threads, side by side in one run.

- ComfyUI: our engine's own template graph (`engines.comfyui.graph.template_graph`) posted to its
  ``/prompt``; done when ``/history`` says completed (its PNG written). Its checkpoint is the same
  weights, converted by ComfyUI itself (`bench.peers.comfyui.install_checkpoint`).
- Ours: ``POST /api/images/generate`` through the gateway to a diffusers worker; done when the worker
  committed the job (PNG, thumbnail and sidecar stored).
- Cold: the first render of a freshly started server or worker (process started and idle, model not
  loaded; the files in the OS cache for both). Warm: the median of later renders. Load: cold − warm,
  each side's own; ours is also read from the worker's `images_model_load_seconds` (ComfyUI reports
  none). ComfyUI runs first, then ours, each alone on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from services.contracts import RenderSpec
from services.images_service.engines.comfyui.graph import template_graph
from services.images_service.tiny import RANDOM_SD15, build_random_sd15

from .peers import comfyui
from .processes import Processes, start_stack, wait_for_workers
from .queue_overhead import result_waiter, run_job
from .report import Goal, Measurement, median, ratio, summary

SIZE, STEPS, CFG = 256, 4, 7.0
PROMPT = "a lighthouse at dusk, oil on canvas"

THREADS = 2
"""torch's CPU threads on both sides (OMP_NUM_THREADS): all the machine's cores, since nothing else
runs while either renders; the rest of the bench keeps one thread for its small timings."""

WARM_ROUNDS = 3
"""Timed warm rounds (one render each side per round), after one untimed round."""

"""The random SD1.5 and its ComfyUI checkpoint, built once (shared with the slow test)."""

RATIO_GOAL = Goal("<=", 1.0, "×")
"""Ours at most as long as ComfyUI's, warm and cold."""

LOAD_GOAL = Goal("<", 5.0, "s")
"""HIP-35: a model's load under 5 s."""


class Seeds:
    """A fresh seed per render: ComfyUI would serve an identical prompt from its cache."""

    def __init__(self) -> None:
        self.next = 1000

    def __call__(self) -> int:
        self.next += 1
        return self.next


def comfyui_graph(ckpt_name: str, seed: int) -> dict[str, Any]:
    spec = RenderSpec(
        prompt=PROMPT, model=RANDOM_SD15, width=SIZE, height=SIZE, steps=STEPS, cfg=CFG, seed=seed
    )
    return template_graph(spec, ckpt_name)


def timed_prompt(server: comfyui.RealComfyUI, ckpt_name: str, seed: int) -> float:
    started = time.perf_counter()
    comfyui.run_prompt(server, comfyui_graph(ckpt_name, seed))
    return time.perf_counter() - started


def cold_and_warm(render: Callable[[], float]) -> tuple[float, list[float]]:
    """The first render's seconds, then WARM_ROUNDS more after one untimed."""
    cold = render()
    render()
    return cold, [render() for _ in range(WARM_ROUNDS)]


def model_load_seconds(metrics_url: str) -> float:
    """The worker's own `images_model_load_seconds` sum (its one load) from its metrics port."""
    text = httpx.get(metrics_url, timeout=10, trust_env=False).text
    for line in text.splitlines():
        if line.startswith("images_model_load_seconds_sum") and f'model="{RANDOM_SD15}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError(f"the worker reported no load of {RANDOM_SD15} at {metrics_url}")


def unmeasured(reason: str) -> list[Measurement]:
    return [
        Measurement(
            key="peer.comfyui.warm_ratio",
            label="ours ÷ ComfyUI, warm (SD1.5 full size, random weights)",
            value=None,
            goal=RATIO_GOAL,
            note=reason,
        )
    ]


def measure(procs: Processes, redis_base: str) -> list[Measurement]:
    source, _ = comfyui.find_source()
    if source is None:
        return unmeasured(f"no ComfyUI source: set {comfyui.SOURCE_ENV}")
    venv = comfyui.ensure_venv(source)
    models_yaml = procs.workdir / "peer-models.yaml"
    model_dir = build_random_sd15(comfyui.MODELS_CACHE, models_yaml)
    threads = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    seeds = Seeds()

    checkpoint = comfyui.checkpoint_path(model_dir, comfyui.MODELS_CACHE)
    if not comfyui.checkpoint_is_current(model_dir, comfyui.MODELS_CACHE):
        # The conversion loads the model into ComfyUI: a server of its own, stopped before timing.
        converter = comfyui.start_comfyui(source, venv, procs.workdir / "comfyui-convert", env=threads)
        try:
            comfyui.convert_checkpoint(converter, model_dir, comfyui.MODELS_CACHE)
        finally:
            converter.handle.stop()

    # Each side alone on the machine: a resident 4 GB peer beside a loading worker (or the reverse)
    # slowed loads by seconds, and only the side started second would pay it.
    with ExitStack() as stack:
        server = comfyui.start_comfyui(source, venv, procs.workdir / "comfyui", env=threads)
        stack.callback(server.handle.stop)
        ckpt_name = comfyui.link_checkpoint(server, checkpoint)
        comfyui_cold, comfyui_warm_s = cold_and_warm(lambda: timed_prompt(server, ckpt_name, seeds()))

    with ExitStack() as stack:
        peer_procs = Processes(stack, procs.workdir)
        bench_stack = start_stack(peer_procs, redis_base, models_yaml, db=5)
        worker = peer_procs.worker("peer-worker", {**bench_stack.env, **threads})
        wait_for_workers(bench_stack.redis_url, bench_stack.queue_name, 1)
        client = httpx.Client(base_url=bench_stack.gateway_url, timeout=30, trust_env=False)
        redis = result_waiter(bench_stack.redis_url)
        stack.callback(client.close)
        stack.callback(redis.close)

        def ours() -> float:
            body = {"prompt": PROMPT, "model": RANDOM_SD15, "width": SIZE, "height": SIZE}
            return run_job(client, redis, {**body, "steps": STEPS, "cfg": CFG, "seed": seeds()})

        ours_cold, ours_warm_s = cold_and_warm(ours)
        ours_load = model_load_seconds(str(worker.url))
    warm = {"comfyui": comfyui_warm_s, "ours": ours_warm_s}

    comfyui_warm, ours_warm = median(warm["comfyui"]), median(warm["ours"])
    comfyui_load = comfyui_cold - comfyui_warm
    job = f"{SIZE}×{SIZE}, {STEPS} steps, CFG {CFG:g}, {THREADS} threads"
    detail = {
        "comfyui_warm_s": summary(warm["comfyui"]),
        "ours_warm_s": summary(warm["ours"]),
        "comfyui_cold_s": round(comfyui_cold, 3),
        "ours_cold_s": round(ours_cold, 3),
        "comfyui_load_s": round(comfyui_load, 3),
        "ours_load_s": round(ours_load, 3),
        "ours_cold_minus_warm_s": round(ours_cold - ours_warm, 3),
        "checkpoint": ckpt_name,
        "model": str(model_dir),
    }
    return [
        Measurement(
            key="peer.comfyui.warm_ratio",
            label=f"ours ÷ ComfyUI 0.3.64, warm (SD1.5 full size, random weights, {job})",
            value=round(ratio(ours_warm, comfyui_warm), 3),
            unit="×",
            goal=RATIO_GOAL,
            note=f"{ours_warm:.2f} vs {comfyui_warm:.2f} s (medians of {WARM_ROUNDS})",
            detail=detail,
        ),
        Measurement(
            key="peer.comfyui.cold_ratio",
            label="ours ÷ ComfyUI 0.3.64, cold (first render of a fresh worker / server)",
            value=round(ratio(ours_cold, comfyui_cold), 3),
            unit="×",
            goal=RATIO_GOAL,
            note=f"{ours_cold:.2f} vs {comfyui_cold:.2f} s",
            detail=detail,
        ),
        Measurement(
            key="peer.ours.load_s",
            label="our model load, as the worker measures it (SD1.5 full size, fp16 on disk → fp32)",
            value=round(ours_load, 2),
            unit="s",
            goal=LOAD_GOAL,
            note=f"cold − warm: ours {ours_cold - ours_warm:.2f} s, ComfyUI's {comfyui_load:.2f} s",
            detail=detail,
        ),
    ]
