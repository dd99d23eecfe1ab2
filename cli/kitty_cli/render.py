"""How results look in a terminal: error lines, the latest table, a job's view and the progress line.

Data goes to stdout, messages (errors, progress) to stderr.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO

import click

from services.contracts import EngineRow, ErrorInfo, JobStatus, JobView, LatestItem

PROGRESS_BAR_WIDTH = 30
"""Characters of the progress bar, short enough to fit an 80-column line with the counts."""


def print_error(info: ErrorInfo) -> None:
    """``Error [CODE]: message`` then one ``  → step`` line per remediation, on stderr."""
    click.echo(f"Error [{info.code.value}]: {info.message}", err=True)
    for step in info.remediation:
        click.echo(f"  → {step}", err=True)


def format_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def format_time(value: str | None) -> str:
    """ISO timestamps shown in UTC to the second; anything unparsable is shown as it came."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def latest_table(items: list[LatestItem]) -> list[str]:
    """Aligned rows, newest first and numbered from 1: the numbers `images.select N` accepts."""
    rows = [("#", "LAST MODIFIED (UTC)", "SIZE", "KEY")]
    rows += [
        (str(i), format_time(it.last_modified), format_size(it.size), it.key) for i, it in enumerate(items, 1)
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return [
        f"{index:>{widths[0]}}  {modified:<{widths[1]}}  {size:>{widths[2]}}  {key}"
        for index, modified, size, key in rows
    ]


def image_keys(view: JobView) -> list[str]:
    """Every PNG a finished job wrote; older services only report the seed's single ``png_key``."""
    if view.result is None:
        return []
    return [image.key for image in view.result.images] or [view.result.png_key]


def job_lines(view: JobView) -> list[str]:
    """A job's view as ``label  value`` lines."""
    fields: list[tuple[str, str]] = [("job", view.job_id), ("status", view.status.value)]
    if view.progress.total:
        fields.append(("progress", f"{view.progress.step}/{view.progress.total}"))
    for label, value in (("engine", view.engine), ("model", view.model)):
        if value:
            fields.append((label, value))
    for label, stamp in (
        ("enqueued", view.enqueued_at),
        ("started", view.started_at),
        ("ended", view.ended_at),
    ):
        if stamp:
            fields.append((label, format_time(stamp)))
    for n, key in enumerate(image_keys(view)):
        fields.append(("images" if n == 0 else "", key))
    if view.error is not None:
        fields.append(("error", f"[{view.error.code.value}] {view.error.message}"))
        fields.extend(("", f"→ {step}") for step in view.error.remediation)
    width = max(len(label) for label, _ in fields)
    return [f"{label:<{width}}  {value}".rstrip() for label, value in fields]


class ProgressLine:
    """Shows a waiting job on stderr: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        # Looked up at call time: click's test runner swaps sys.stderr for each invocation.
        self.stream: IO[str] = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self._drawn = False

    def __call__(self, view: JobView) -> None:
        text = self.describe(view)
        if self.is_tty:
            # Pad so a shorter line fully covers the one it replaces.
            click.echo(f"\r{text:<{PROGRESS_BAR_WIDTH + 40}}", file=self.stream, nl=False)
        else:
            click.echo(text, file=self.stream)
        self._drawn = True

    def finish(self) -> None:
        if self.is_tty and self._drawn:
            click.echo("", file=self.stream)
        self._drawn = False

    @staticmethod
    def describe(view: JobView) -> str:
        step, total = view.progress.step, view.progress.total
        if view.status is JobStatus.STARTED and total:
            filled = PROGRESS_BAR_WIDTH * min(step, total) // total
            bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
            return f"{view.status.value:<8} [{bar}] {step}/{total}"
        return f"{view.status.value:<8} job {view.job_id}"


def engines_table(rows: list[EngineRow]) -> list[str]:
    """One aligned line per engine: name, status, workers, version, then what to do about it."""
    table = [("ENGINE", "STATUS", "WORKERS", "VERSION", "DETAIL")]
    table += [(r.engine_id, r.status, str(r.workers), r.version or "-", r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in table
    ]
