"""(2) Queue overhead: a job's time through the real stack (gateway → images-service → Redis → a
diffusers worker process → filesystem store → done) against the bare pipeline call in this process,
same model (tiny SD1.5), steps, size, seed and device; and a cold job (a fresh worker, model not
loaded) against a warm one.

The two are interleaved round by round. A job's time runs from the client's ``POST /generate``
through the gateway to the moment the worker commits it as done in Redis (its result and status
are written in one transaction); the client waits for that moment on the job's result stream
(``XREAD BLOCK``, what RQ's ``latest_result(timeout=…)`` does) rather than by polling, since on a
2-core machine polling every few milliseconds takes CPU from the render it is timing (measured:
+15 % on the job). The gateway's job view is then checked to say ``done``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from services.images_service.models import ModelRegistry
from services.images_service.tiny import TINY_SD15

from .processes import Processes, Stack, wait_for_workers
from .report import Goal, Measurement, interleaved, median, ratio, summary, timed

PROMPT = "a lighthouse at dusk, oil on canvas"
STEPS, SIZE, CFG, SEED = 20, 64, 7.0, 42
"""The issue's job: tiny SD1.5, 20 steps, 64×64."""

COLD_JOBS = 3
"""Fresh workers started, one cold job each (the last one then serves the warm jobs)."""

WARMUP_ROUNDS = 3
"""Untimed bare calls and jobs first: caches, allocator, connections."""

ROUNDS = 20
"""Timed rounds of (bare call, job through the stack)."""

JOB_TIMEOUT_S = 120
"""Seconds to wait for one job before the bench gives up."""

OVERHEAD_GOAL = Goal("<=", 1.15, "×")
"""End-to-end job at most 1.15 × the bare pipeline call."""

BODY: dict[str, Any] = {
    "prompt": PROMPT,
    "model": TINY_SD15,
    "width": SIZE,
    "height": SIZE,
    "steps": STEPS,
    "cfg": CFG,
    "seed": SEED,
}


def run_job(client: httpx.Client, redis: Redis, body: dict[str, Any] = BODY) -> float:
    """Submit one job through the gateway; seconds until the worker committed it as done."""
    started = time.perf_counter()
    response = client.post("/api/images/generate", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"generate answered {response.status_code}: {response.text[:300]}")
    job_id = response.json()["job_id"]
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    result = job.latest_result(timeout=JOB_TIMEOUT_S)
    done = time.perf_counter() - started
    view = client.get(f"/api/images/jobs/{job_id}").json()
    if result is None or result.type != Result.Type.SUCCESSFUL or view["status"] != "done":
        raise RuntimeError(f"bench job {job_id} ended {view['status']}: {view.get('error')}")
    return done


def result_waiter(redis_url: str) -> Redis:
    """A connection that may block on a job's result stream for as long as a job may take: redis-py
    8's default 5 s socket timeout would cut a longer wait short."""
    return Redis.from_url(redis_url, socket_timeout=JOB_TIMEOUT_S + 30)


def load_bare_pipeline(models_yaml: Path) -> Callable[[], object]:
    """The tiny SD1.5 pipeline loaded as the worker loads it (device, dtype, speed-ups), and the
    bare call a worker's job makes of it."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from services.images_service.engines.acceleration import accelerate
    from services.images_service.engines.diffusers_engine import _DTYPE_KWARG, pick_device, pick_dtype

    device = pick_device()
    entry = ModelRegistry(models_yaml).get(TINY_SD15)
    kwargs = {_DTYPE_KWARG: pick_dtype(device), "local_files_only": True}
    pipe: Any = AutoPipelineForText2Image.from_pretrained(entry.source, **kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)
    accelerate(pipe, device)

    def call() -> object:
        with torch.inference_mode():
            return pipe(
                prompt=PROMPT,
                width=SIZE,
                height=SIZE,
                num_inference_steps=STEPS,
                guidance_scale=CFG,
                generator=[torch.Generator(device="cpu").manual_seed(SEED)],
            ).images

    return call


def measure(procs: Processes, stack: Stack, models_yaml: Path) -> list[Measurement]:
    bare_call = load_bare_pipeline(models_yaml)
    client = httpx.Client(base_url=stack.gateway_url, timeout=30, trust_env=False)
    redis = result_waiter(stack.redis_url)
    try:
        cold: list[float] = []
        for i in range(COLD_JOBS):
            worker = procs.worker(f"worker-{i}", stack.env)
            wait_for_workers(stack.redis_url, stack.queue_name, 1)
            cold.append(run_job(client, redis))
            if i < COLD_JOBS - 1:
                worker.stop()
                wait_for_workers(stack.redis_url, stack.queue_name, 0)

        cases = {"bare": lambda: timed(bare_call), "job": lambda: run_job(client, redis)}
        interleaved(WARMUP_ROUNDS, cases)
        samples = interleaved(ROUNDS, cases)
        worker.stop()  # the next measurements want the CPU to themselves
        wait_for_workers(stack.redis_url, stack.queue_name, 0)
    finally:
        client.close()
        redis.close()

    bare_p50, job_p50 = median(samples["bare"]), median(samples["job"])
    return [
        Measurement(
            key="queue.e2e_ratio",
            label=f"job through the gateway ÷ bare pipeline call (tiny SD1.5, {STEPS} steps, {SIZE}×{SIZE})",
            value=round(ratio(job_p50, bare_p50), 3),
            unit="×",
            goal=OVERHEAD_GOAL,
            note=f"{job_p50:.3f} vs {bare_p50:.3f} s",
            detail={
                "job_s": summary(samples["job"]),
                "bare_call_s": summary(samples["bare"]),
                "overhead_ms_p50": round((job_p50 - bare_p50) * 1000, 1),
                "rounds": ROUNDS,
                "done": "worker committed the result in Redis (XREAD on the job's result stream)",
            },
        ),
        Measurement(
            key="queue.cold_vs_warm",
            label="cold job (fresh worker, model not loaded) ÷ warm job",
            value=round(ratio(median(cold), job_p50), 2),
            unit="×",
            note=f"{median(cold):.2f} vs {job_p50:.3f} s; `images-worker --preload` makes the first job warm",
            detail={"cold_s": [round(x, 3) for x in cold], "warm_s_p50": round(job_p50, 4)},
        ),
    ]
