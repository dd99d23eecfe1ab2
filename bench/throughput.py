"""(2) Jobs per minute through one worker when rendering costs nothing: a real `KittyWorker` (the
non-forking worker `images-worker` runs), in this process, with a no-op engine behind the runtime.

What each job includes: RQ's dequeue and bookkeeping, the job's heartbeat thread, two progress
writes (start and end, as a one-step render makes), a 64×64 image encoded as PNG (with its
``parameters`` and ``kitty`` chunks) and as a WebP thumbnail, the JSON sidecar, three files written
(fsync'd) to the filesystem store, the gallery index entry, and a log line per job to a file.
What it leaves out: submission over HTTP (measured on its own) and the render itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PIL import Image
from rq import Queue
from rq.serializers import JSONSerializer

from services.contracts import RenderSpec
from services.images_service.engines import EngineHealth, ProgressFn, RenderedImage, RenderResult
from services.images_service.gallery import GalleryIndex
from services.images_service.models import ModelRegistry
from services.images_service.queue import JobQueue, connect_redis
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from services.images_service.worker.rq_worker import KittyWorker
from services.images_service.worker.tasks import Runtime, set_runtime

from .report import Goal, Measurement, median

JOBS = 300
"""Jobs per timed burst."""

WARMUP_JOBS = 20
"""An untimed burst first (imports, PIL's encoders, connections)."""

REPEATS = 3
"""Timed bursts; the median rate is kept."""

THROUGHPUT_GOAL = Goal(">=", 1000, "jobs/min")


class NoopEngine:
    """An engine whose render costs nothing: a flat 64×64 image per requested image."""

    name = "diffusers"

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        progress(0, spec.steps)
        progress(spec.steps, spec.steps)
        images = [
            RenderedImage(Image.new("RGB", (spec.width, spec.height), (90, 90, 90)), spec.seed + i)
            for i in range(spec.num_images)
        ]
        return RenderResult(images=images, device="none", engine_info={}, timings={"render_s": 0.0})

    def health(self) -> EngineHealth:
        return EngineHealth("ready", "no-op")

    def close(self) -> None:
        pass


def _burst(settings: Settings, queue: JobQueue, spec: RenderSpec, jobs: int) -> float:
    """Enqueue `jobs`, then drain them with one worker; seconds the draining took."""
    for _ in range(jobs):
        queue.enqueue(spec)
    connection = connect_redis(settings.redis_url)
    rq_queue = Queue(settings.queue_name("diffusers"), connection=connection, serializer=JSONSerializer)
    worker = KittyWorker([rq_queue], connection=connection, serializer=JSONSerializer)
    try:
        started = time.perf_counter()
        worker.work(burst=True, with_scheduler=False)
        return time.perf_counter() - started
    finally:
        connection.close()


def measure(workdir: Path, redis_base: str) -> list[Measurement]:
    workdir.mkdir(parents=True, exist_ok=True)
    models_yaml = workdir / "models.yaml"
    models_yaml.write_text("models: {}\n")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=f"{redis_base}/4",
        data_dir=workdir / "var",
        models_yaml=models_yaml,
        queue_prefix="bench-noop",
    )
    connection = connect_redis(settings.redis_url)
    connection.flushdb()
    queue = JobQueue(connection, settings)
    store = make_store(settings)
    set_runtime(Runtime(settings, ModelRegistry(models_yaml), store, {"diffusers": NoopEngine()}))
    spec = RenderSpec(prompt="a no-op job", model="noop", width=64, height=64, steps=1, cfg=0.0, seed=1)

    # A worker writes a line per job; so does this one, to a file, not the terminal.
    handler = logging.FileHandler(workdir / "worker.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        _burst(settings, queue, spec, WARMUP_JOBS)
        seconds = [_burst(settings, queue, spec, JOBS) for _ in range(REPEATS)]
        stored = GalleryIndex(connection, settings.queue_prefix).count()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
        set_runtime(None)
        connection.close()

    expected = WARMUP_JOBS + REPEATS * JOBS
    if stored != expected:
        raise RuntimeError(f"the no-op worker stored {stored} images of {expected}")
    rates = [JOBS / s * 60 for s in seconds]
    return [
        Measurement(
            key="queue.noop_jobs_per_min",
            label="jobs per minute, one worker, no-op engine (whole job path, fs store)",
            value=round(median(rates)),
            unit="jobs/min",
            goal=THROUGHPUT_GOAL,
            note=f"{median(seconds) / JOBS * 1000:.1f} ms a job",
            detail={"jobs_per_burst": JOBS, "bursts_s": [round(s, 3) for s in seconds], "stored": stored},
        )
    ]
