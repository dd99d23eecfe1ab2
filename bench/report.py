"""What a bench run produces: measurements with their goals, the statistics behind them, the table
printed at the end and the JSON file saved under `bench/results/` (named by date and machine)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where each run's JSON lands; committed, so the README can quote the latest one."""

SCHEMA_VERSION = 1
"""Bumped when the JSON's shape changes incompatibly."""

Op = Literal["<=", "<", ">=", ">"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
    ">=": lambda value, bound: value >= bound,
    ">": lambda value, bound: value > bound,
}

_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


@dataclass(frozen=True)
class Goal:
    """A bound the measured value must meet: ``value <op> bound``."""

    op: Op
    bound: float
    unit: str = ""

    def is_met(self, value: float) -> bool:
        return _COMPARE[self.op](value, self.bound)

    def text(self) -> str:
        return f"{_SYMBOL[self.op]} {format_value(self.bound, self.unit)}"


@dataclass
class Measurement:
    """One row of the table. `value` None means not measured here (`note` says why)."""

    key: str
    """Stable identifier, e.g. ``latest.fs.ratio``; what a later run is compared by."""
    label: str
    value: float | None
    unit: str = ""
    goal: Goal | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    """The numbers behind the value: medians, sample counts, raw samples."""

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None when there is no goal or no value."""
        if self.goal is None or self.value is None:
            return None
        return self.goal.is_met(self.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "goal": None if self.goal is None else {"op": self.goal.op, "bound": self.goal.bound},
            "goal_text": None if self.goal is None else self.goal.text(),
            "met": self.met,
            "note": self.note,
            "detail": self.detail,
        }


# --- statistics ------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, refusing a zero or negative denominator (a broken measurement)."""
    if denominator <= 0:
        raise ValueError(f"ratio over a non-positive value ({denominator})")
    return numerator / denominator


def summary(samples: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """n, median, p10, p90, min, max of `samples` (multiplied by `scale`, e.g. 1000 for ms)."""
    return {
        "n": len(samples),
        "median": round(median(samples) * scale, 4),
        "p10": round(percentile(samples, 10) * scale, 4),
        "p90": round(percentile(samples, 90) * scale, 4),
        "min": round(min(samples) * scale, 4),
        "max": round(max(samples) * scale, 4),
    }


def interleaved(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each case once per round, the order rotating every round, so slow phases of a busy
    machine fall on every case alike; return each case's samples (what the callables return)."""
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(cases[name]())
    return samples


def timed(action: Callable[[], object]) -> float:
    """Seconds `action` takes (perf_counter)."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- presentation ------------------------------------------------------------------------------------
def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "jobs/min":
        return f"{value:,.0f} jobs/min"
    if unit == "calls":
        return f"{value:g} call" if value == 1 else f"{value:g} calls"
    return f"{value:g} {unit}".strip()


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "—"}[met]


def render_table(measurements: Sequence[Measurement]) -> str:
    """measurement | value | goal | met?, as a Markdown table (readable in a terminal, pastable in
    the README); a note follows its row's value in parentheses."""
    rows = [("measurement", "value", "goal", "met?")]
    for m in measurements:
        value = format_value(m.value, m.unit)
        if m.note:
            value = f"{value} ({m.note})" if m.value is not None else m.note
        rows.append((m.label, value, m.goal.text() if m.goal else "—", met_text(m.met)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(rows[0]), separator, *(line(row) for row in rows[1:])])


# --- the machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                return text_line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}" if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(accelerator: str | None = None) -> dict[str, Any]:
    """Where the numbers came from: OS, CPU, cores, memory, load, Python, torch, the device."""
    cores_usable: int | None
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": cores_usable,
        "memory_gib": _memory_gib(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "device": accelerator or "cpu",
        "git": _git_commit(),
    }


def machine_slug(machine: dict[str, Any]) -> str:
    """A file-name-safe name for the machine: ``linux-x86_64-2cpu`` or ``…-16cpu-nvidia-h200``."""
    system = platform.system().lower() or "unknown"
    parts = [system, str(machine.get("machine") or "unknown"), f"{machine.get('cpu_count') or 0}cpu"]
    device = str(machine.get("device") or "cpu")
    if device != "cpu":
        parts.append(device)
    slug = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", slug).strip("-")


def result_path(machine: dict[str, Any], started: datetime, kind: str = "bench") -> Path:
    return RESULTS_DIR / f"{started.strftime('%Y%m%d-%H%M%S')}_{kind}_{machine_slug(machine)}.json"


def write_results(
    measurements: Sequence[Measurement],
    machine: dict[str, Any],
    *,
    started: datetime,
    kind: str = "bench",
    path: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save the run as JSON (machine, every measurement with its goal and detail) and return the path."""
    path = path or result_path(machine, started, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    goals = [m.met for m in measurements if m.met is not None]
    document = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "started_at": started.astimezone(UTC).isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "goals_met": sum(goals),
        "goals_total": len(goals),
        "measurements": [m.to_json() for m in measurements],
        **(extra or {}),
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def latest_result(kind: str, directory: Path = RESULTS_DIR) -> tuple[Path, dict[str, Any]] | None:
    """The newest saved result of `kind` (file names sort by date), or None."""
    paths = sorted(directory.glob(f"*_{kind}_*.json"))
    if not paths:
        return None
    return paths[-1], json.loads(paths[-1].read_text())
