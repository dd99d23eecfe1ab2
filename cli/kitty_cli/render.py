"""How results look in a terminal: error lines, aligned tables (latest, models, presets, engines), a
job's view and the progress line.

Data goes to stdout, messages (errors, progress) to stderr.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import click

from services.contracts import EngineRow, ErrorInfo, JobStatus, JobView, LatestItem, ModelsView, PresetInfo

PROGRESS_BAR_WIDTH = 30
"""Characters of the progress bar, short enough to fit an 80-column line with the counts."""

PROMPT_EXCERPT_WIDTH = 40
"""Terminal columns a prompt gets in `images.latest`: enough to recognise it, short enough that the key
after it stays on a 100-column line."""

COLUMN_GAP = "  "
"""Between table columns: two spaces read as a column break where one reads as a word break."""

MISSING = "-"
"""An empty cell, so every row splits into the same number of words."""


def echo_json(data: Any) -> None:
    """Indented JSON on stdout: what scripts read (`jq`)."""
    click.echo(json.dumps(data, indent=2))


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


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide (CJK, emoji) characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def excerpt(text: str | None, width: int = PROMPT_EXCERPT_WIDTH) -> str:
    """``text`` on one line in at most ``width`` columns, ending in ``…`` when cut.

    Control characters are dropped: a prompt is user input, and an escape sequence in it must not
    drive the terminal.
    """
    if not text:
        return MISSING
    line = " ".join("".join(ch for ch in text if ch.isprintable() or ch.isspace()).split())
    if display_width(line) <= width:
        return line or MISSING
    cut, used = [], 0
    for ch in line:
        used += display_width(ch)
        if used > width - 1:
            break
        cut.append(ch)
    return "".join(cut).rstrip() + "…"


def aligned(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Rows as lines of columns padded to their widest cell (by terminal width); columns in ``right``
    are right-aligned. The last column is not padded, so lines carry no trailing spaces."""
    widths = [max(display_width(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = []
        for c, cell in enumerate(row):
            pad = " " * (widths[c] - display_width(cell))
            is_last = c == len(row) - 1
            cells.append(pad + cell if c in right else cell if is_last else cell + pad)
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return lines


def format_created(value: str | None) -> str:
    """A listing's timestamp in UTC to the second, without a zone suffix (the header says UTC)."""
    return format_time(value).removesuffix("Z")


def format_dimensions(width: int | None, height: int | None) -> str:
    return f"{width}x{height}" if width and height else MISSING


def latest_table(items: list[LatestItem]) -> list[str]:
    """Aligned rows, newest first and numbered from 1 (the numbers `images.select N` accepts); the key
    comes last so ``awk '{print $NF}'`` picks it whatever the prompt holds."""
    rows = [("#", "CREATED (UTC)", "MODEL", "SIZE", "PRESET", "PROMPT", "KEY")]
    rows += [
        (
            str(i),
            format_created(item.last_modified),
            item.model or MISSING,
            format_dimensions(item.width, item.height),
            format_preset(item.preset, item.quality),
            excerpt(item.prompt),
            item.key,
        )
        for i, item in enumerate(items, 1)
    ]
    return aligned(rows, right={0, 3})


def format_preset(preset: str | None, quality: str | None) -> str:
    """``photoreal/pro``; ``-/pro`` for a quality level without a preset."""
    if not preset and not quality:
        return MISSING
    return (preset or MISSING) + (f"/{quality}" if quality else "")


def presets_table(presets: list[PresetInfo]) -> list[str]:
    """One row per preset: its name (what ``--preset`` takes), title, default size and the quality
    levels as ``name steps/cfg``, the preset's default marked with ``*``."""
    rows = [("NAME", "TITLE", "SIZE", "QUALITIES (steps/cfg, * default)", "INPUTS (* required)", "AFTER")]
    for preset in presets:
        default = preset.defaults.get("quality")
        qualities = [
            f"{name}{'*' if name == default else ''} {level.get('steps')}/{_number(level.get('cfg'))}"
            for name, level in preset.qualities.items()
        ]
        size = format_dimensions(preset.defaults.get("width"), preset.defaults.get("height"))
        inputs = [f"{name}{'*' if spec.get('required') else ''}" for name, spec in preset.inputs.items()]
        if preset.requires_consent:
            inputs.append("consent*")
        after = " → ".join(str(step.get("kind")) for step in preset.steps) or MISSING
        rows.append(
            (
                preset.name,
                preset.title,
                size,
                ", ".join(qualities) or MISSING,
                ", ".join(inputs) or MISSING,
                after,
            )
        )
    return aligned(rows)


def preset_details(preset: PresetInfo) -> list[str]:
    """Everything about one preset, as `images.presets NAME` prints it."""
    lines = [
        f"{preset.name}: {preset.title}",
        f"  {preset.description}",
        f"  template: {preset.prompt_template}",
    ]
    lines.append(f"  engines (in order): {', '.join(preset.engines) or 'the service default'}")
    for name, spec in preset.inputs.items():
        need = "required" if spec.get("required") else "optional"
        lines.append(f"  input {name} ({spec.get('type')}, {need}): {spec.get('description') or ''}".rstrip())
    if preset.requires_consent:
        lines.append("  consent: required (--consent)")
    for step in preset.steps:
        details = ", ".join(f"{key}={value}" for key, value in step.items() if key != "kind")
        lines.append(f"  then {step.get('kind')}: {details}".rstrip(": "))
    lines += [f"  safety: {note}" for note in preset.safety_notes]
    for mode in preset.failure_modes:
        lines.append(
            f"  if {mode.get('code')} ({mode.get('when')}): {' '.join(mode.get('remediation') or [])}"
        )
    return lines


def _number(value: object) -> str:
    """7.0 → 7, 7.5 → 7.5."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def models_table(view: ModelsView) -> list[str]:
    """One row per registered model: whether it is the default, where it loads from, its refiner and
    the size and steps a request gets when it names neither."""
    rows = [("NAME", "DEFAULT", "SOURCE", "REFINER", "SIZE", "STEPS", "DESCRIPTION")]
    for model in view.models:
        defaults = model.defaults
        rows.append(
            (
                model.name,
                "yes" if model.name == view.default else MISSING,
                "local" if model.local else "hub",
                model.refiner or MISSING,
                format_dimensions(defaults.get("width"), defaults.get("height")),
                str(defaults["steps"]) if defaults.get("steps") else MISSING,
                excerpt(model.description, width=60) if model.description else "",
            )
        )
    return aligned(rows)


def image_keys(view: JobView) -> list[str]:
    """Every PNG a finished job wrote; older services only report the seed's single ``png_key``."""
    if view.result is None:
        return []
    return [image.key for image in view.result.images] or [view.result.png_key]


def job_lines(view: JobView) -> list[str]:
    """A job's view as ``label  value`` lines."""
    fields: list[tuple[str, str]] = [("job", view.job_id), ("status", view.status.value)]
    if view.waiting_for:
        fields.append(("waiting for", view.waiting_for))
    if view.position is not None:
        fields.append(("position", f"{view.position} (1 = next)"))
    if view.paused:
        fields.append(("paused", "yes: `kitty-cli images.resume` starts it again"))
    if view.progress.total:
        fields.append(("progress", f"{view.progress.step}/{view.progress.total}"))
    for label, value in (("engine", view.engine), ("model", view.model)):
        if value:
            fields.append((label, value))
    if view.worker:  # which worker took it, and whether its model was loaded there already
        fields.append(("worker", f"{view.worker} ({'model warm' if view.warm else 'model loaded for it'})"))
    for label, stamp in (
        ("enqueued", view.enqueued_at),
        ("started", view.started_at),
        ("ended", view.ended_at),
    ):
        if stamp:
            fields.append((label, format_time(stamp)))
    for step in view.steps or []:  # a pipeline: each step, its job, its state
        done = f" {step.progress.step}/{step.progress.total}" if step.progress.total else ""
        code = f" [{step.error.code.value}]" if step.error else ""
        after = f" after {', '.join(str(i + 1) for i in step.after)}" if len(step.after) > 1 else ""
        state = f"{step.status.value}{done}{code}{after}"
        fields.append((f"step {step.index + 1}", f"{step.kind:<13} {state}  {step.job_id}"))
    clips = view.result.videos if view.result else []
    for clip in clips:
        fields.append(
            ("video", f"{clip.key}  ({clip.frames} frames, {clip.fps} fps, {clip.width}x{clip.height})")
        )
        fields.append(("poster", clip.poster_key))
    for n, key in enumerate([] if clips else image_keys(view)):
        fields.append(("images" if n == 0 else "", key))
    if view.error is not None:
        fields.append(("error", f"[{view.error.code.value}] {view.error.message}"))
        fields.extend(("", f"→ {step}") for step in view.error.remediation)
    width = max(len(label) for label, _ in fields)
    return [f"{label:<{width}}  {value}".rstrip() for label, value in fields]


class ProgressLine:
    """Shows a waiting job on stderr: one line redrawn in place on a terminal, one line per change
    otherwise (a log file or CI output gets no carriage returns). What a queued job waits for gets a
    line of its own each time it changes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        # Looked up at call time: click's test runner swaps sys.stderr for each invocation.
        self.stream: IO[str] = stream or sys.stderr
        self.is_tty = self.stream.isatty()
        self._drawn_width = 0
        self._drawn = False
        self._last_text: str | None = None
        self._waiting_for: str | None = None

    def __call__(self, view: JobView) -> None:
        text = self.describe(view)
        waiting_for = view.waiting_for if view.status is JobStatus.QUEUED else None
        note = f"  waiting for {waiting_for}" if waiting_for and waiting_for != self._waiting_for else None
        self._waiting_for = waiting_for
        if self.is_tty:
            if note:
                # Kept above the redrawn line: a reason can be longer than the terminal is wide, and
                # a line that wrapped cannot be redrawn in place.
                self._redraw(note)
                click.echo("", file=self.stream)
                self._drawn_width = 0
            self._redraw(text)
        else:
            if text != self._last_text:  # a view that changed only its reason repeats the line
                click.echo(text, file=self.stream)
            if note:
                click.echo(note, file=self.stream)
        self._last_text = text
        self._drawn = True

    def _redraw(self, text: str) -> None:
        # Pad so a shorter line fully covers the one it replaces.
        padding = " " * max(0, self._drawn_width - len(text))
        click.echo(f"\r{text}{padding}", file=self.stream, nl=False)
        self._drawn_width = len(text)

    def finish(self) -> None:
        """End the redrawn line, so what follows starts on a line of its own."""
        if self.is_tty and self._drawn:
            click.echo("", file=self.stream)
        self._drawn, self._drawn_width = False, 0

    @staticmethod
    def describe(view: JobView) -> str:
        step, total = view.progress.step, view.progress.total
        if view.status is JobStatus.STARTED and total:
            filled = PROGRESS_BAR_WIDTH * min(step, total) // total
            bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
            return f"{view.status.value:<8} [{bar}] {step}/{total} {100 * min(step, total) // total:>3}%"
        return f"{view.status.value:<8} job {view.job_id}"


def engines_table(rows: list[EngineRow]) -> list[str]:
    """One aligned line per engine: name, status, workers, version, then what to do about it."""
    table = [("ENGINE", "STATUS", "WORKERS", "VERSION", "DETAIL")]
    table += [(r.engine_id, r.status, str(r.workers), r.version or MISSING, r.detail) for r in rows]
    return aligned(table)
