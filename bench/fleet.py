"""(9) The fleet: many workers on one Redis and one S3 store, and the gallery index at a million.

- Scaling: jobs/min with 1, 2, 4 and 8 workers. Each worker is a real `images-worker` process
  (`bench.sleep_worker`: only the engine sleeps instead of rendering, so two CPU cores can serve
  eight of them), with its own IMAGES_DATA_DIR, all on one redis-server and one moto S3 bucket;
  jobs are submitted through the images-service's HTTP API. One model, preloaded, so no load counts.
- Warm hits: on a burst over two models with 4 workers that each hold one model, the share of jobs
  that found their model loaded (the worker records ``warm`` in the job), with model-aware dispatch
  (``IMAGES_DISPATCH_WAIT_S=2``, the default) and with first come first served (``=0``).
- The gallery index at 1,000,000 images: Redis memory per indexed image on a redis-server of its
  own, and ``latest`` p50 against 200 images through two images-service processes. The entries are
  written by `GalleryIndex`'s own code (`write_to`, as `rebuild` does), not stored as images.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from redis import Redis
from rq.job import Job

from services.common.processes import ProcessHandle
from services.contracts import LatestItem, RenderSpec
from services.images_service.gallery import GalleryIndex, item_from_sidecar, thumb_key_for
from services.images_service.metadata import build_sidecar
from services.images_service.storage.keys import meta_key_for, new_image_key

from .latest import LIMIT, PREFIX, PROMPTS, s3_env
from .processes import Processes, clean_env, wait_for_workers
from .report import Goal, Measurement, interleaved, median, ratio, summary

log = logging.getLogger("bench.fleet")

REPO = Path(__file__).resolve().parent.parent

ENGINE = "diffusers"
"""The engine the sleep workers serve (the sleep engine stands in for diffusers)."""

MODELS = ("sleep-a", "sleep-b")
"""Registered in the fleet's models.yaml; the sleep engine never opens their folder."""

# --- scaling -------------------------------------------------------------------------------------
SCALING_WORKERS = (1, 2, 4, 8)
SCALING_RENDER_S = 1.0
"""Seconds a sleep render takes: long beside a job's own costs (RQ, PNG, three PUTs to moto, the
index), so eight workers' bookkeeping stays well inside two cores."""

SCALING_JOBS_PER_WORKER = 12
"""Jobs per worker at each point: about 13 s each. All are submitted at once; with equal renders
every worker takes the same number, so the last one ends when the burst is done."""

SCALING_GOAL = Goal(">=", 7.0, "×")
"""8 workers do at least 7 × the jobs of one."""

# --- warm hits -----------------------------------------------------------------------------------
WARM_WORKERS = 4
WARM_JOBS = 60
"""The burst: half the jobs for each model, in a shuffled order, all submitted at once. Not strictly
alternating: that stream, taken round-robin by 4 workers alternately holding the two models, lands
on a warm worker most of the time whatever the dispatch (FIFO measured 87 % warm that way)."""

BURST_SEED = 19
"""Seed of the shuffle, so every run submits the same order."""

WARM_LOAD_S, WARM_RENDER_S, WARM_CACHE = 1.0, 0.2, 1
"""A model load costs 5 renders, and each worker holds one model."""

DISPATCH_WAIT_S = 2.0
"""IMAGES_DISPATCH_WAIT_S of the dispatch run (the default); the FIFO run has 0."""

WARM_GOAL = Goal(">=", 90.0, "%")

ADVERTISE_WAIT_S = 15.0
"""How long to wait for the workers to say which models they hold before the burst."""

# --- the index at a million ------------------------------------------------------------------------
INDEX_SIZES = (200, 1_000_000)
FILL_BATCH = 5_000
"""Index entries per pipeline while filling."""

LATEST_WARMUP, LATEST_ROUNDS = 20, 200
LATEST_GOAL = Goal("<=", 1.5, "×")
MEMORY_GOAL = Goal("<=", 300.0, "bytes")

JOB_TIMEOUT_S = 180.0
"""A burst that has not finished by then has stalled (a stranded queue, dead workers)."""

POLL_S = 0.05
"""Pause between looks at the jobs' statuses in Redis while a burst runs."""


# --- the pure parts: what the rows say -------------------------------------------------------------
@dataclass(frozen=True)
class JobRecord:
    """What the job view says about one finished job of a burst."""

    worker: str | None
    warm: bool | None
    started_at: str | None

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> JobRecord:
        return cls(view.get("worker"), view.get("warm"), view.get("started_at"))


def jobs_per_minute(jobs: int, seconds: float) -> float:
    return jobs * 60 / seconds


def warm_share(records: Sequence[JobRecord]) -> float | None:
    """Percentage of jobs that found their model loaded; None when the workers recorded no ``warm``."""
    known = [r.warm for r in records if r.warm is not None]
    if not known or len(known) != len(records):
        return None
    return 100 * sum(known) / len(known)


def after_first_jobs(records: Sequence[JobRecord]) -> list[JobRecord]:
    """The jobs left once each worker's first (by start time) is dropped: the share "once both
    models are resident", without the loads a fresh worker must make whatever the dispatch."""
    first: dict[str | None, JobRecord] = {}
    for record in sorted(records, key=lambda r: r.started_at or ""):
        first.setdefault(record.worker, record)
    firsts = {id(r) for r in first.values()}
    return [r for r in records if id(r) not in firsts]


def mixed_burst(jobs: int, seed: int = BURST_SEED) -> list[str]:
    """`jobs` model names, half of each of `MODELS`, shuffled with `seed`."""
    burst = [MODELS[i % 2] for i in range(jobs)]
    random.Random(seed).shuffle(burst)
    return burst


def scaling_rows(rates: dict[int, float], detail: dict[int, dict[str, Any]]) -> list[Measurement]:
    """A row per worker count (jobs/min) and the ratio of the most workers to one, with its goal."""
    rows = [
        Measurement(
            key=f"fleet.scaling.{workers}",
            label=f"jobs/min, {workers} worker{'s' if workers > 1 else ''} ({SCALING_RENDER_S:g} s sleeps)",
            value=round(rate, 1),
            unit="jobs/min",
            detail=detail.get(workers, {}),
        )
        for workers, rate in sorted(rates.items())
    ]
    most = max(rates)
    if 1 in rates and most > 1:
        gain = ratio(rates[most], rates[1])
        rows.append(
            Measurement(
                key="fleet.scaling.ratio",
                label=f"jobs/min, {most} workers ÷ 1",
                value=round(gain, 2),
                unit="×",
                goal=SCALING_GOAL,
                note=f"{100 * gain / most:.0f} % of linear",
                detail={"how": "one redis-server, one moto S3 bucket, HTTP submissions, one model preloaded"},
            )
        )
    return rows


def _share_text(share: float | None) -> str:
    return "—" if share is None else f"{share:.0f} %"


def warm_rows(runs: dict[str, tuple[list[JobRecord], float]]) -> list[Measurement]:
    """Rows of the warm-hit runs: ``runs[mode] = (records, seconds)`` for ``dispatch`` and ``fifo``."""
    shares = {mode: warm_share(records) for mode, (records, _) in runs.items()}
    resident = {mode: warm_share(after_first_jobs(records)) for mode, (records, _) in runs.items()}
    what = (
        f"{len(next(iter(runs.values()))[0])} jobs over 2 models, {WARM_WORKERS} workers holding 1 model each"
    )
    rows = []
    for mode, title in (("dispatch", "model-aware dispatch"), ("fifo", "first come first served")):
        if mode not in runs:
            continue
        records, seconds = runs[mode]
        share = shares[mode]
        note = (
            f"{_share_text(resident[mode])} once both models are resident; "
            f"{jobs_per_minute(len(records), seconds):.0f} jobs/min"
        )
        if mode == "dispatch" and "fifo" in runs:
            note += f"; FIFO {_share_text(shares['fifo'])}"
        if share is None:
            note = "not measured: the workers recorded no `warm` in the jobs (dispatch not in the worker)"
        rows.append(
            Measurement(
                key=f"fleet.warm.{mode}",
                label=f"warm-hit ratio, {title} ({what})",
                value=None if share is None else round(share, 1),
                unit="%",
                goal=WARM_GOAL if mode == "dispatch" else None,
                note=note,
                detail={
                    "jobs": len(records),
                    "warm": sum(1 for r in records if r.warm),
                    "after_first_jobs_pct": resident[mode],
                    "seconds": round(seconds, 2),
                    "workers": sorted({r.worker or "?" for r in records}),
                    "load_s": WARM_LOAD_S,
                    "render_s": WARM_RENDER_S,
                },
            )
        )
    return rows


def index_rows(
    p50_ms: dict[int, list[float]],
    used_memory: tuple[int, int],
    key_bytes: dict[str, int],
    sizes: tuple[int, int],
) -> list[Measurement]:
    """`latest` p50 at the large index ÷ at the small, and Redis memory per indexed image."""
    small, large = sizes
    p50_small, p50_large = median(p50_ms[small]), median(p50_ms[large])
    before, after = used_memory
    per_image = (after - before) / large
    parts = ", ".join(f"{name} {size / large:.0f}" for name, size in key_bytes.items())
    return [
        Measurement(
            key="fleet.latest.ratio",
            label=f"latest?limit={LIMIT} p50, {large:,} ÷ {small:,} indexed images",
            value=round(ratio(p50_large, p50_small), 3),
            unit="×",
            goal=LATEST_GOAL,
            note=f"{p50_large:.1f} vs {p50_small:.1f} ms",
            detail={f"{small}_ms": summary(p50_ms[small]), f"{large}_ms": summary(p50_ms[large])},
        ),
        Measurement(
            key="fleet.index.bytes_per_image",
            label=f"Redis memory per indexed image, {large:,} images",
            value=round(per_image, 1),
            unit="bytes",
            goal=MEMORY_GOAL,
            note=f"MEMORY USAGE per image: {parts}",
            detail={"used_memory_before": before, "used_memory_after": after, "key_bytes": key_bytes},
        ),
    ]


# --- a fleet of processes ---------------------------------------------------------------------------
def write_models_yaml(folder: Path) -> Path:
    """models.yaml with `MODELS`, each pointing at an empty folder that exists (nothing is loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights"
    weights.mkdir(exist_ok=True)
    models = {
        name: {"path": str(weights), "defaults": {"width": 64, "height": 64, "steps": 2}} for name in MODELS
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@dataclass
class Fleet:
    """An images-service and sleep workers on one Redis database and one S3 bucket."""

    procs: Processes
    name: str
    env: dict[str, str]
    redis_url: str
    queue_prefix: str
    url: str = ""
    workers: list[ProcessHandle] = field(default_factory=list)

    @property
    def queue_name(self) -> str:
        return f"{self.queue_prefix}:{ENGINE}"

    def start_service(self) -> None:
        data_dir = self.procs.workdir / self.name / "service"
        self.url = self.procs.images_service(
            f"{self.name}-service", {**self.env, "IMAGES_DATA_DIR": str(data_dir)}
        )

    def add_workers(self, count: int, *, preload: Callable[[int], str], sleep: dict[str, float]) -> None:
        """Start `count` more sleep workers (the i-th preloading `preload(i)`) and wait for them."""
        for _ in range(count):
            index = len(self.workers)
            env = {
                **self.env,
                "IMAGES_DATA_DIR": str(self.procs.workdir / self.name / f"worker-{index}"),
                "IMAGES_WORKER_METRICS_PORT": "0",
                "PYTHONPATH": str(REPO),
                **{f"KITTY_SLEEP_{name.upper()}": f"{value:g}" for name, value in sleep.items()},
            }
            cmd = [
                sys.executable,
                "-m",
                "bench.sleep_worker",
                "--metrics-port",
                "0",
                "--preload",
                preload(index),
            ]
            self.workers.append(self.procs.start(f"{self.name}-worker-{index}", cmd, env, None))
        wait_for_workers(self.redis_url, self.queue_name, len(self.workers))

    def wait_advertised(self, models: Sequence[str]) -> bool:
        """Whether the workers said (dispatch's warm hash) that they hold `models`, within a while."""
        key = f"{self.queue_prefix}:warm:{ENGINE}"
        deadline = time.monotonic() + ADVERTISE_WAIT_S
        with Redis.from_url(self.redis_url) as redis:
            while time.monotonic() < deadline:
                said = {k.decode(): float(v) for k, v in redis.hgetall(key).items()}
                if all(said.get(m, 0) > time.time() for m in models):
                    return True
                time.sleep(0.2)
        return False

    def burst(self, client: httpx.Client, models: Sequence[str]) -> tuple[list[str], float]:
        """Submit a job per entry of `models` through the API; (job ids, seconds from the first
        submission until every job is done)."""
        started = time.perf_counter()
        ids = []
        for seed, model in enumerate(models):
            response = client.post(
                "/api/images/generate", json={"prompt": PROMPTS[seed % 4], "model": model, "seed": seed}
            )
            if response.status_code != 202:
                raise RuntimeError(f"generate answered {response.status_code}: {response.text[:300]}")
            ids.append(response.json()["job_id"])
        with Redis.from_url(self.redis_url) as redis:
            finished_at = wait_done(redis, ids, started)
        return ids, finished_at - started


def wait_done(redis: Redis, ids: Sequence[str], started: float) -> float:
    """perf_counter time when every job of `ids` has finished (their RQ status, read in one round
    trip a look); raises when one failed or the burst stalls."""
    while True:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(f"{Job.redis_job_namespace_prefix}{job_id}", "status")
            statuses = [s.decode() if s else None for s in pipe.execute()]
        now = time.perf_counter()
        if all(s == "finished" for s in statuses):
            return now
        bad = [
            (job_id, s)
            for job_id, s in zip(ids, statuses, strict=True)
            if s in ("failed", "stopped", "canceled")
        ]
        if bad:
            raise RuntimeError(f"{len(bad)} job(s) did not finish, e.g. {bad[0]}")
        if now - started > JOB_TIMEOUT_S:
            waiting = sum(1 for s in statuses if s != "finished")
            raise RuntimeError(f"{waiting} of {len(ids)} jobs not finished after {JOB_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def job_records(client: httpx.Client, ids: Sequence[str]) -> list[JobRecord]:
    records = []
    for job_id in ids:
        response = client.get(f"/api/images/jobs/{job_id}")
        response.raise_for_status()
        records.append(JobRecord.from_view(response.json()))
    return records


def fleet_env(
    redis_url: str, prefix: str, models_yaml: Path, s3: dict[str, str], **extra: str
) -> dict[str, str]:
    return clean_env(
        REDIS_URL=redis_url, IMAGES_QUEUE_PREFIX=prefix, MODELS_YAML=str(models_yaml), **s3, **extra
    )


def measure_scaling(
    procs: Processes, redis_url: str, models_yaml: Path, s3: dict[str, str]
) -> list[Measurement]:
    with ExitStack() as stack:
        prefix = "bench-fleet-scaling"
        fleet = Fleet(
            Processes(stack, procs.workdir),
            "scaling",
            fleet_env(redis_url, prefix, models_yaml, s3),
            redis_url,
            prefix,
        )
        fleet.start_service()
        rates: dict[int, float] = {}
        detail: dict[int, dict[str, Any]] = {}
        with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
            for workers in SCALING_WORKERS:
                fleet.add_workers(
                    workers - len(fleet.workers),
                    preload=lambda _: MODELS[0],
                    sleep={"load_s": 0.0, "render_s": SCALING_RENDER_S, "cache": 1},
                )
                fleet.wait_advertised(MODELS[:1])
                jobs = workers * SCALING_JOBS_PER_WORKER
                ids, seconds = fleet.burst(client, [MODELS[0]] * jobs)
                rates[workers] = jobs_per_minute(jobs, seconds)
                spread = _per_worker(job_records(client, ids))
                detail[workers] = {"jobs": jobs, "seconds": round(seconds, 2), "jobs_per_worker": spread}
                log.info("scaling point", extra={"workers": workers, "jobs_per_min": rates[workers]})
    return scaling_rows(rates, detail)


def _per_worker(records: Sequence[JobRecord]) -> list[int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.worker or "?"] = counts.get(record.worker or "?", 0) + 1
    return sorted(counts.values(), reverse=True)


def measure_warm(
    procs: Processes, redis_url: str, models_yaml: Path, s3: dict[str, str]
) -> list[Measurement]:
    runs: dict[str, tuple[list[JobRecord], float]] = {}
    advertised: dict[str, bool] = {}
    burst = mixed_burst(WARM_JOBS)
    for mode, wait_s in (("dispatch", DISPATCH_WAIT_S), ("fifo", 0.0)):
        with ExitStack() as stack:
            prefix = f"bench-fleet-{mode}"
            env = fleet_env(redis_url, prefix, models_yaml, s3, IMAGES_DISPATCH_WAIT_S=f"{wait_s:g}")
            fleet = Fleet(Processes(stack, procs.workdir), mode, env, redis_url, prefix)
            fleet.start_service()
            fleet.add_workers(
                WARM_WORKERS,
                preload=lambda i: MODELS[i % 2],
                sleep={"load_s": WARM_LOAD_S, "render_s": WARM_RENDER_S, "cache": WARM_CACHE},
            )
            advertised[mode] = fleet.wait_advertised(MODELS) if wait_s > 0 else False
            with httpx.Client(base_url=fleet.url, timeout=30, trust_env=False) as client:
                ids, seconds = fleet.burst(client, burst)
                runs[mode] = (job_records(client, ids), seconds)
    rows = warm_rows(runs)
    for row in rows:
        row.detail["advertised_before_burst"] = advertised.get(row.key.rsplit(".", 1)[1])
    return rows


# --- the index at a million ------------------------------------------------------------------------
def index_items(count: int, now: datetime) -> Iterator[LatestItem]:
    """`count` gallery items, one a second up to `now`, as a worker indexes them: built from a
    sidecar like the worker's (`item_from_sidecar`), varied in key, time, prompt, seed and job."""
    created = now - timedelta(seconds=count)
    png_key = new_image_key(PREFIX, created) + ".png"
    spec = RenderSpec(prompt=PROMPTS[0], model="sd15", width=512, height=512, steps=30, cfg=7.0, seed=0)
    sidecar = build_sidecar(
        job_id="0" * 32,
        engine=ENGINE,
        spec=spec,
        seed=0,
        width=512,
        height=512,
        device="cuda",
        png_key=png_key,
        meta_key=meta_key_for(png_key),
        engine_info={},
        timings={},
        created_at=created,
        index=0,
    )
    sidecar["thumb_key"] = thumb_key_for(png_key)
    template = item_from_sidecar(sidecar, size=400_000, last_modified=created)
    for i in range(count):
        created_at = now - timedelta(seconds=count - i)
        key = new_image_key(PREFIX, created_at) + ".png"
        yield template.model_copy(
            update={
                "key": key,
                "meta_key": meta_key_for(key),
                "thumb_key": thumb_key_for(key),
                "last_modified": created_at.isoformat(),
                "prompt": f"{PROMPTS[i % len(PROMPTS)]} #{i}",
                "seed": i,
                "job_id": f"{i:032x}",
            }
        )


def fill_index(index: GalleryIndex, items: Iterator[LatestItem]) -> int:
    """Write `items` with the index's own `write_to` (what `add` and `rebuild` run), `FILL_BATCH` a
    round trip; returns how many."""
    written = 0
    pipe = index.redis.pipeline(transaction=False)
    for item in items:
        index.write_to(pipe, item)
        written += 1
        if written % FILL_BATCH == 0:
            pipe.execute()
    pipe.execute()
    return written


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def measure_index(
    procs: Processes, sizes: tuple[int, int] = (INDEX_SIZES[0], INDEX_SIZES[1])
) -> list[Measurement]:
    with ExitStack() as stack:
        own = Processes(stack, procs.workdir)
        redis_url = f"{own.redis()}/0"
        now = datetime.now(UTC)
        small, large = sizes
        with Redis.from_url(redis_url) as redis:
            before = used_memory(redis)
            big = GalleryIndex(redis, f"bench-index-{large}")
            started = time.perf_counter()
            fill_index(big, index_items(large, now))
            fill_s = time.perf_counter() - started
            after = used_memory(redis)
            key_bytes = {
                "index (sorted set)": int(redis.memory_usage(big.index_key, samples=0) or 0),
                "aliases (hash)": int(redis.memory_usage(big.aliases_key, samples=0) or 0),
            }
            fill_index(GalleryIndex(redis, f"bench-index-{small}"), index_items(small, now))
            assert big.count() == large, big.count()
            sample = redis.zrevrangebylex(big.index_key, "+", "-", start=0, num=1)[0]
        log.info("index filled", extra={"images": large, "seconds": round(fill_s, 1)})
        urls = {}
        for size in sizes:
            env = clean_env(
                REDIS_URL=redis_url,
                IMAGES_QUEUE_PREFIX=f"bench-index-{size}",
                IMAGES_DATA_DIR=str(procs.workdir / "index" / str(size)),
                IMAGES_SIGNING_KEY="bench-signing-key-0123456789abcdef",
            )
            urls[size] = own.images_service(f"images-index-{size}", env)
        p50_ms = _time_latest(urls)
    rows = index_rows(p50_ms, (before, after), key_bytes, sizes)
    rows[1].detail.update(fill_s=round(fill_s, 1), member_bytes=len(sample), member=sample.decode())
    return rows


def _time_latest(urls: dict[int, str]) -> dict[int, list[float]]:
    """Milliseconds of ``GET latest`` per service, interleaved round by round."""
    clients = {size: httpx.Client(base_url=url, timeout=30, trust_env=False) for size, url in urls.items()}
    try:
        for size, client in clients.items():
            items = (
                client.get("/api/images/latest", params={"limit": LIMIT}).raise_for_status().json()["items"]
            )
            assert len(items) == min(LIMIT, size) and all(i.get("thumb_url") for i in items), (
                size,
                len(items),
            )

        def request(client: httpx.Client) -> Callable[[], float]:
            def one() -> float:
                started = time.perf_counter()
                response = client.get("/api/images/latest", params={"limit": LIMIT})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed * 1000

            return one

        cases = {str(size): request(client) for size, client in clients.items()}
        interleaved(LATEST_WARMUP, cases)
        samples = interleaved(LATEST_ROUNDS, cases)
    finally:
        for client in clients.values():
            client.close()
    return {int(size): values for size, values in samples.items()}


# --- the section --------------------------------------------------------------------------------------
def measure(procs: Processes, redis_base: str, *, db: int = 4) -> list[Measurement]:
    """Scaling, warm hits, then the index; every process it starts stops when it returns."""
    with ExitStack() as stack:
        own = Processes(stack, procs.workdir)
        redis_url = f"{redis_base}/{db}"
        with Redis.from_url(redis_url) as redis:
            redis.flushdb()
        models_yaml = write_models_yaml(procs.workdir / "fleet")
        s3 = s3_env(own.moto(), "bench-fleet")
        rows = measure_scaling(own, redis_url, models_yaml, s3)
        rows += measure_warm(own, redis_url, models_yaml, s3)
    rows += measure_index(procs)
    return rows
