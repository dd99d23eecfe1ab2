"""`make bench` (``python -m bench.run``): every measurement of the performance issue in one run,
side by side, each goal printed beside its measured value, the whole saved as JSON under
`bench/results/`. Real processes on loopback (redis-server, moto's S3, images-service, gateway,
diffusers workers on tiny pipelines built here); nothing reaches a model hub.

    python -m bench.run                    # everything (10+ minutes on 2 cores; peer and fleet take 8)
    python -m bench.run --only latest,queue
    python -m bench.run --no-save          # print the table, write no JSON
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .gpu_sdxl import SDXL_GOAL
from .report import (
    Measurement,
    latest_result,
    machine_info,
    render_table,
    write_results,
)

TORCH_THREADS = 1
"""CPU threads torch uses in the bench process and in the workers it starts. With two OpenMP threads
on two cores that other processes also use (the services, the client, whatever else runs), each
operator's threads wait for each other and a tiny render measured 4 to 60 s instead of 0.4 s; one
thread keeps the comparisons stable. Both sides of every ratio run with the same setting."""


def configure_environment() -> None:
    """Before anything imports torch or huggingface_hub; the processes the bench starts inherit it."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(TORCH_THREADS)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


REPO = Path(__file__).resolve().parent.parent

SECTIONS = (
    "latest",
    "queue",
    "submit",
    "delivery",
    "throughput",
    "batch",
    "previews",
    "video",
    "peer",
    "fleet",
    "gpu",
)
"""What `--only` can name, in the order they run."""

log = logging.getLogger("bench")


def _say(text: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)


def failed_row(section: str, exc: BaseException) -> Measurement:
    """A row saying a section could not be measured, so one failure does not lose the others."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Measurement(
        key=f"{section}.failed",
        label=f"{section}: not measured",
        value=None,
        note=f"failed: {type(exc).__name__}: {first_line[:200]}",
        detail={"traceback": traceback.format_exc()[-4000:]},
    )


QUOTED_GPU_KEYS = ("gpu.sdxl.best", "gpu.sd15.tuned", "gpu.sd15.batch_gain")
"""Rows of a saved GPU result quoted in a CPU run's table."""


def gpu_rows() -> list[Measurement]:
    """On CUDA, the GPU bench itself (without torch.compile, which takes minutes); elsewhere the
    latest saved GPU result, quoted with its machine and file (not a measurement of this run)."""
    import torch

    if torch.cuda.is_available():
        from . import gpu_sdxl

        options = gpu_sdxl.Options([], warmup=2, repeats=5, smoke=False, skip_sd15=False, out=None)
        return gpu_sdxl.run(options, save=lambda measurements: Path(os.devnull))
    return quoted_gpu_rows(latest_result("gpu"))


def quoted_gpu_rows(found: tuple[Path, dict[str, Any]] | None) -> list[Measurement]:
    if found is None:
        return [
            Measurement(
                key="gpu.sdxl.best",
                label="SDXL 1024×1024, 30 steps, s/image (CUDA)",
                value=None,
                goal=SDXL_GOAL,
                note="no CUDA here and no saved GPU result: run python -m bench.gpu_sdxl on a GPU",
            )
        ]
    path, document = found
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    device = document.get("machine", {}).get("device", "?")
    day = str(document.get("started_at", "?"))[:10]
    return [
        Measurement(
            key=saved["key"],
            label=f"{saved['label']} (CUDA)",
            value=None,
            goal=SDXL_GOAL if saved.get("key") == "gpu.sdxl.best" else None,
            note=(
                f"not measured here (no CUDA); {saved.get('value')} {saved.get('unit', '')} "
                f"on {device}, {day}, {shown}"
            ),
            detail={"saved": saved, "file": path.name},
        )
        for saved in document.get("measurements", [])
        if saved.get("key") in QUOTED_GPU_KEYS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="KITTY Images performance bench")
    parser.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)}")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args(argv)
    configure_environment()
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")

    # Warnings and errors on the terminal; a section may raise the root level to log to a file.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    from services.images_service.engines.diffusers_engine import quiet_libraries

    quiet_libraries()
    import torch

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine = machine_info(accelerator)
    machine["torch_threads"] = torch.get_num_threads()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    measurements: list[Measurement] = []

    def section(name: str, measure: Callable[[], list[Measurement]]) -> None:
        if name not in sections:
            return
        _say(f"{name} …", started)
        section_started = time.perf_counter()
        try:
            rows = measure()
        except Exception as exc:  # keep what the other sections measure
            log.error("section %s failed", name, exc_info=True)
            rows = [failed_row(name, exc)]
        for row in rows:
            row.detail.setdefault("section_s", round(time.perf_counter() - section_started, 1))
        measurements.extend(rows)
        for row in rows:
            _say(f"  {row.label}: {row.value} {row.unit} {row.note}".rstrip(), started)

    with tempfile.TemporaryDirectory(prefix="kitty-bench-") as tmp, ExitStack() as stack:
        from . import (
            batching,
            delivery,
            fleet,
            latest,
            peer,
            previews,
            queue_overhead,
            submission,
            throughput,
            video,
        )
        from .processes import Processes, start_stack

        workdir = Path(tmp)
        procs = Processes(stack, workdir)
        _say(f"bench in {workdir}; machine: {machine['cpu']}, {machine['cpu_usable']} cores", started)
        redis_base = procs.redis()
        models_yaml = workdir / "models.yaml"
        if {"queue", "submit", "batch", "previews"} & set(sections):
            from services.images_service.tiny import build_tiny_models

            _say("building the tiny models …", started)
            build_tiny_models(workdir / "models", models_yaml)

        section("latest", lambda: latest.measure(procs, redis_base))
        if {"queue", "submit", "delivery"} & set(sections):
            # The stack's processes stop before the next sections, which want the CPU to themselves.
            with ExitStack() as stack_processes:
                stack_procs = Processes(stack_processes, workdir)
                bench_stack = start_stack(stack_procs, redis_base, models_yaml)
                section("queue", lambda: queue_overhead.measure(stack_procs, bench_stack, models_yaml))
                section("submit", lambda: submission.measure(bench_stack))
                section("delivery", lambda: delivery.measure(bench_stack))
        section("throughput", lambda: throughput.measure(workdir / "noop", redis_base))
        section("batch", lambda: batching.measure(models_yaml))
        section("previews", lambda: previews.measure(models_yaml, redis_base))
        section("video", lambda: video.measure(workdir / "video-models"))
        section("peer", lambda: peer.measure(procs, redis_base))
        section("fleet", lambda: fleet.measure(procs, redis_base))
        section("gpu", gpu_rows)

    machine["duration_s"] = round(time.perf_counter() - started, 1)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(render_table(measurements))
    goals = [m.met for m in measurements if m.met is not None]
    print(
        f"\ngoals met: {sum(goals)} of {len(goals)}; {machine['cpu']}, {machine['cpu_usable']} cores, "
        f"{machine['device']}; {machine['duration_s']:.0f} s"
    )
    if not args.no_save:
        path = write_results(measurements, machine, started=started_at, kind="bench", path=args.out)
        print(f"saved {path}")
    failed = [m for m in measurements if m.key.endswith(".failed")]
    if failed or (args.strict and not all(goals)):
        for m in failed:
            print(f"{m.label}: {m.note}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
