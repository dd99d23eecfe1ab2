"""(3) Submission latency: ``POST /api/images/generate`` through the gateway process to the
images-service process (validation, model defaults, enqueue in Redis) with 32 concurrent clients,
each its own connection (an `httpx.AsyncClient`), all in this process's event loop.

Two loads: *steady*, 32 clients each submitting, waiting for the answer, then pausing a random
(exponential) think time, which is how people and tools submit; and *burst*, all 32 submitting at
the same instant, round after round, the worst moment a queue front sees. No worker runs meanwhile,
so the queue only grows; it is emptied afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
from redis import Redis

from services.images_service.tiny import TINY_SD15

from .processes import Stack
from .report import Goal, Measurement, median, percentile, summary

CLIENTS = 32

RUNS = 3
"""Each load is run this many times, alternating steady and burst; a percentile is the median of
the runs' percentiles, so a moment when something else on the machine takes the CPU (another
process's start, say) spoils one run rather than the result."""

STEADY_REQUESTS = 10
"""Requests per client in one steady run."""

THINK_MEAN_S = 0.5
"""Mean pause between a client's requests in the steady load (≈ 50 submissions/s from 32 clients)."""

BURST_ROUNDS = 5
"""Rounds of 32 simultaneous submissions in one burst run."""

WARMUP_PER_CLIENT = 3

P99_GOAL = Goal("<", 25.0, "ms")
"""The issue's goal on loopback."""

HIP35_GOAL = Goal("<", 100.0, "ms")
"""HIP-35's target for submission."""

BODY: dict[str, Any] = {"prompt": "a paper boat on a pond", "model": TINY_SD15, "steps": 20}


async def _post(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await client.post("/api/images/generate", json=BODY)
    elapsed = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"generate answered {response.status_code}: {response.text[:300]}")
    return elapsed


@dataclass
class Run:
    samples: list[float]
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.samples) / self.seconds


async def _steady(clients: list[httpx.AsyncClient], rng: random.Random) -> Run:
    async def one_client(client: httpx.AsyncClient, delays: list[float]) -> list[float]:
        samples = []
        for delay in delays:
            await asyncio.sleep(delay)
            samples.append(await _post(client))
        return samples

    plans = [[rng.expovariate(1 / THINK_MEAN_S) for _ in range(STEADY_REQUESTS)] for _ in clients]
    started = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(c, p) for c, p in zip(clients, plans, strict=True)))
    return Run([s for samples in per_client for s in samples], time.perf_counter() - started)


async def _burst(clients: list[httpx.AsyncClient]) -> Run:
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(BURST_ROUNDS):
        samples += await asyncio.gather(*(_post(c) for c in clients))
    return Run(samples, time.perf_counter() - started)


async def _runs(gateway_url: str) -> dict[str, list[Run]]:
    clients = [httpx.AsyncClient(base_url=gateway_url, timeout=30, trust_env=False) for _ in range(CLIENTS)]
    rng = random.Random(35)
    runs: dict[str, list[Run]] = {"steady": [], "burst": []}
    try:
        for _ in range(WARMUP_PER_CLIENT):
            await asyncio.gather(*(_post(c) for c in clients))
        for _ in range(RUNS):
            runs["steady"].append(await _steady(clients, rng))
            runs["burst"].append(await _burst(clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return runs


def percentile_of_runs(runs: list[Run], q: float) -> float:
    """The median over runs of each run's q-th percentile, in ms."""
    return median([percentile(run.samples, q) for run in runs]) * 1000


def measure(stack: Stack) -> list[Measurement]:
    runs = asyncio.run(_runs(stack.gateway_url))
    with Redis.from_url(stack.redis_url) as connection:
        connection.flushdb()  # thousands of queued jobs no worker will take

    def row(load: str, what: str, q: float, goal: Goal | None) -> Measurement:
        of = runs[load]
        pooled = [s for run in of for s in run.samples]
        return Measurement(
            key=f"submit.{load}.p{q:g}",
            label=f"POST /generate p{q:g}, {CLIENTS} clients {what}",
            value=round(percentile_of_runs(of, q), 2),
            unit="ms",
            goal=goal,
            note=f"median of {len(of)} runs, {len(pooled)} requests at {median([r.rate for r in of]):.0f}/s",
            detail={
                f"p{q:g}_ms_per_run": [round(percentile(r.samples, q) * 1000, 2) for r in of],
                "pooled_ms": summary(pooled, 1000),
                "pooled_p99_ms": round(percentile(pooled, 99) * 1000, 2),
                "rate_per_run": [round(r.rate) for r in of],
            },
        )

    return [
        row("steady", "(each ~2/s)", 50, None),
        row("steady", "(each ~2/s)", 99, P99_GOAL),
        row("burst", "all at once", 50, None),
        row("burst", "all at once", 99, HIP35_GOAL),
    ]
