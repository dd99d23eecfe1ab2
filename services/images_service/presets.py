"""Presets: named recipes that turn a short prompt into a full request — the AInfluencer spec's
"presets are the product". Each has a goal, its inputs, an engine preference, quality levels,
safety notes (consent), failure modes with remediation and, optionally, pipeline steps after the
render (post-processing, upscaling). The built-ins are data (presets.yaml); IMAGES_PRESETS_FILE adds
more, validated when the service starts. Resolved at submit time (``spec.py``), never by workers."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.contracts import QUALITY_NAMES, ErrorCode, GenerateRequest, PipelineStep, PresetInfo
from services.contracts.schema import MAX_SIDE, MIN_SIDE, NAME_PATTERN, SIDE_MULTIPLE, EngineName

from .errors import ConsentMissing, ValidationFailed

PROMPT_SLOT = "{prompt}"
"""Where a template puts the user's prompt. Substituted literally, so braces in a prompt stay text."""


@dataclass(frozen=True)
class QualityLevel:
    steps: int
    cfg: float


QUALITY_LEVELS: Mapping[str, QualityLevel] = {
    "low": QualityLevel(steps=20, cfg=6.0),
    "standard": QualityLevel(steps=30, cfg=7.0),
    "pro": QualityLevel(steps=50, cfg=8.0),
}
"""The AInfluencer seed's levels: low 20 steps/cfg 6 (drafts), standard 30/7, pro 50/8. A request may
name one with or without a preset; a free key's 30-step ceiling refuses `pro`."""

assert tuple(QUALITY_LEVELS) == QUALITY_NAMES, "the wire's quality names and the levels must agree"

DEFAULT_QUALITY = "standard"

COMMON_NEGATIVES = "blurry, low quality, jpeg artifacts, watermark, signature, text, deformed"
"""HIP-35's "quality negatives by default": what no preset wants."""


INPUT_TYPES = ("text", "texts", "image", "images", "number")
"""`texts`: a list of lines (a storyboard's `beats`)."""
PRESETS_FILE = Path(__file__).with_name("presets.yaml")
"""The built-in presets; IMAGES_PRESETS_FILE adds to them (and may replace one by name)."""


class PresetInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[INPUT_TYPES]  # type: ignore[valid-type]
    required: bool = False
    description: str = ""


class FailureMode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    when: str
    remediation: list[str] = Field(min_length=1)


class PresetDef(BaseModel):
    """One preset as written in a presets file (the AInfluencer spec's preset schema)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=100)
    goal: str = Field(min_length=1, max_length=500)
    prompt_template: str
    negative_prompt: str = ""
    size: tuple[int, int]
    quality: Literal[QUALITY_NAMES] = DEFAULT_QUALITY  # type: ignore[valid-type]
    qualities: dict[Literal[QUALITY_NAMES], dict[Literal["steps", "cfg"], float]] = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    engines: list[EngineName] = Field(default_factory=list)
    inputs: dict[str, PresetInput] = Field(
        default_factory=lambda: {"prompt": PresetInput(type="text", required=True)}
    )
    requires_consent: bool = False
    safety_notes: list[str] = Field(default_factory=list)
    failure_modes: list[FailureMode] = Field(default_factory=list)
    steps: list[PipelineStep] = Field(default_factory=list)

    @field_validator("prompt_template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count(PROMPT_SLOT) != 1:
            raise ValueError(f"prompt_template must contain {PROMPT_SLOT} exactly once")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(MIN_SIDE <= side <= MAX_SIDE and side % SIDE_MULTIPLE == 0 for side in value):
            raise ValueError(f"size sides must be multiples of {SIDE_MULTIPLE} in {MIN_SIDE}..{MAX_SIDE}")
        return value

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, value: dict[str, PresetInput]) -> dict[str, PresetInput]:
        unknown = sorted(set(value) - set(GenerateRequest.model_fields))
        if unknown:
            raise ValueError(f"inputs {unknown} are not request fields (e.g. prompt, image, reference_image)")
        return value


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    """The preset's goal."""
    prompt_template: str
    """Contains `PROMPT_SLOT` once."""
    negative_prompt: str
    """Used when the request has no negative prompt of its own."""
    width: int
    height: int
    quality: str = DEFAULT_QUALITY
    """The level used when the request names none."""
    qualities: Mapping[str, QualityLevel] = field(default_factory=lambda: dict(QUALITY_LEVELS))
    """The levels with this preset's overrides."""
    engines: tuple[str, ...] = ()
    inputs: Mapping[str, PresetInput] = field(default_factory=dict)
    requires_consent: bool = False
    safety_notes: tuple[str, ...] = ()
    failure_modes: tuple[FailureMode, ...] = ()
    steps: tuple[PipelineStep, ...] = ()

    def apply(self, prompt: str) -> str:
        return self.prompt_template.replace(PROMPT_SLOT, prompt.strip())

    def info(self) -> PresetInfo:
        return PresetInfo(
            name=self.name,
            title=self.title,
            description=self.description,
            prompt_template=self.prompt_template,
            negative_prompt=self.negative_prompt,
            defaults={"width": self.width, "height": self.height, "quality": self.quality},
            qualities={
                name: {"steps": level.steps, "cfg": level.cfg} for name, level in self.qualities.items()
            },
            engines=list(self.engines),
            inputs={name: spec.model_dump() for name, spec in self.inputs.items()},
            requires_consent=self.requires_consent,
            safety_notes=list(self.safety_notes),
            failure_modes=[mode.model_dump(mode="json") for mode in self.failure_modes],
            steps=[
                step.model_dump(mode="json", exclude_defaults=True) | {"kind": step.kind}
                for step in self.steps
            ],
        )

    @classmethod
    def of(cls, name: str, written: PresetDef) -> Preset:
        qualities = {
            level: QualityLevel(
                steps=int(written.qualities.get(level, {}).get("steps", base.steps)),
                cfg=float(written.qualities.get(level, {}).get("cfg", base.cfg)),
            )
            for level, base in QUALITY_LEVELS.items()
        }
        return cls(
            name=name,
            title=written.title,
            description=written.goal,
            prompt_template=written.prompt_template,
            negative_prompt=written.negative_prompt.replace("{common}", COMMON_NEGATIVES),
            width=written.size[0],
            height=written.size[1],
            quality=written.quality,
            qualities=qualities,
            engines=tuple(written.engines),
            inputs=dict(written.inputs),
            requires_consent=written.requires_consent,
            safety_notes=tuple(written.safety_notes),
            failure_modes=tuple(written.failure_modes),
            steps=tuple(written.steps),
        )


class PresetsFileError(ValueError):
    """A presets file that does not validate: the message names the file, the preset and the field."""


def parse_presets(text: str, source: str) -> dict[str, Preset]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PresetsFileError(f"{source}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PresetsFileError(f"{source}: must map preset names to presets")
    presets: dict[str, Preset] = {}
    for name, raw in data.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or len(name) > 100:
            raise PresetsFileError(f"{source}: preset name {name!r} must match {NAME_PATTERN}")
        try:
            written = PresetDef.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'preset'}: {error['msg']}"
                for error in exc.errors()
            )
            raise PresetsFileError(f"{source}: preset '{name}': {problems}") from None
        check_ops = _postprocess_checker()
        for index, step in enumerate(written.steps):
            if step.kind == "postprocess":
                try:
                    check_ops(step.ops)
                except ValueError as exc:
                    raise PresetsFileError(f"{source}: preset '{name}': steps.{index}: {exc}") from None
        presets[name] = Preset.of(name, written)
    return presets


def _postprocess_checker() -> Callable[[list[dict[str, Any]]], Any]:
    """Checks a postprocess step's ops as a job would (postprocess.resolve_steps; torch-free)."""
    from .postprocess import resolve_steps

    return lambda ops: resolve_steps(ops, seed=0)


PRESETS: Mapping[str, Preset] = parse_presets(PRESETS_FILE.read_text(), str(PRESETS_FILE))
"""The built-in presets, in the order they are listed."""

_book_lock = threading.Lock()
_books: dict[tuple[str, float, int], Mapping[str, Preset]] = {}


def preset_book(path: Path | None) -> Mapping[str, Preset]:
    """The built-in presets plus those of the file at `path` (IMAGES_PRESETS_FILE; absent file: the
    built-ins alone), re-read when the file changes. `PresetsFileError` when it does not validate."""
    if path is None:
        return PRESETS
    try:
        stat = path.stat()
    except FileNotFoundError:
        return PRESETS
    stamp = (str(path), stat.st_mtime, stat.st_size)
    with _book_lock:
        if stamp not in _books:
            _books.clear()
            _books[stamp] = {**PRESETS, **parse_presets(path.read_text(), str(path))}
        return _books[stamp]


def get_preset(name: str, book: Mapping[str, Preset] = PRESETS) -> Preset:
    """The preset called `name`; `ValidationFailed` naming the known ones otherwise."""
    try:
        return book[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown preset '{name}'",
            remediation=[
                f"Use one of: {', '.join(book)} (GET /api/images/presets, `kitty-cli images.presets`).",
                "Or leave `preset` out to send the prompt as it is.",
            ],
            detail=[{"field": "preset", "message": f"unknown preset '{name}'", "allowed": list(book)}],
        ) from None


@dataclass(frozen=True)
class Styled:
    """What a request's preset and quality make of its text and of the fields it left unset; None
    where they have nothing to say (the model's default applies)."""

    prompt: str
    negative_prompt: str
    width: int | None
    height: int | None
    steps: int | None
    cfg: float | None
    preset: str | None
    quality: str | None


def apply_preset(request: GenerateRequest, book: Mapping[str, Preset] = PRESETS) -> Styled:
    """The preset's template wraps the prompt, its negatives apply when the request has none, and
    its size and quality level fill what the request left unset: request > quality level > preset
    default > model default. A `quality` without a preset sets steps and cfg on its own. The
    preset's required inputs must be there, and its consent when it asks for one."""
    preset = get_preset(request.preset, book) if request.preset else None
    if preset is not None:
        check_inputs(preset, request)
    quality = request.quality or (preset.quality if preset else None)
    if request.workflow is not None and quality is not None:
        raise ValidationFailed(
            "`preset` and `quality` shape the built-in template; a raw workflow carries its own settings",
            remediation=['Drop "preset" and "quality", or drop "workflow".'],
        )
    levels = preset.qualities if preset else QUALITY_LEVELS
    level = levels[quality] if quality else None
    return Styled(
        prompt=preset.apply(request.prompt) if preset else request.prompt,
        negative_prompt=request.negative_prompt or (preset.negative_prompt if preset else ""),
        width=preset.width if preset else None,
        height=preset.height if preset else None,
        steps=request.steps or (level.steps if level else None),
        cfg=request.cfg if request.cfg is not None else (level.cfg if level else None),
        preset=preset.name if preset else None,
        quality=quality,
    )


def check_inputs(preset: Preset, request: GenerateRequest) -> None:
    """A preset's required inputs are in the request, and its consent when it asks for one."""
    missing = [name for name, spec in preset.inputs.items() if spec.required and not getattr(request, name)]
    if missing:
        described = "; ".join(
            f"`{name}`: {preset.inputs[name].description}" if preset.inputs[name].description else f"`{name}`"
            for name in missing
        )
        raise ValidationFailed(
            f"the {preset.name} preset needs {', '.join(f'`{name}`' for name in missing)} ({described})",
            remediation=[
                "Upload pictures first (POST /api/images/uploads) and send their keys."
                if any(preset.inputs[name].type in ("image", "images") for name in missing)
                else f"Add {', '.join(missing)} to the request.",
                "GET /api/images/presets lists every preset's inputs.",
            ],
            detail={"preset": preset.name, "missing": missing},
        )
    if preset.requires_consent and not request.consent:
        raise ConsentMissing(
            f"the {preset.name} preset renders a real person's likeness: send `consent: true` to state "
            "that the person pictured agreed to this use",
            remediation=[
                'Add "consent": true once the person pictured has agreed (kitty-cli: --consent; the '
                "gallery: the consent checkbox).",
                "Or drop the preset to use the picture as a style reference only.",
            ],
        )


def with_preset_defaults(
    request: GenerateRequest, book: Mapping[str, Preset], can_run: Callable[[str], bool]
) -> GenerateRequest:
    """What a request's preset decides before it is resolved: the engine, when the request names
    none (the first of the preset's `engines` that `can_run` now — a live worker, or a server that
    answers — else IMAGE_ENGINE as without a preset), and the preset's pipeline steps when the
    request brings none of its own."""
    preset = book.get(request.preset) if request.preset else None
    if preset is None:
        return request
    update: dict[str, Any] = {}
    if request.engine is None and preset.engines:
        picked = next((engine for engine in preset.engines if can_run(engine)), None)
        if picked is not None:
            update["engine"] = picked
    if not request.pipeline and preset.steps:
        update["pipeline"] = list(preset.steps)
    return request.model_copy(update=update) if update else request


def failure_remediation(book: Mapping[str, Preset], preset: str | None, code: str) -> list[str]:
    """What the preset's failure modes say to do about an error `code` (empty when nothing)."""
    found = book.get(preset) if preset else None
    if found is None:
        return []
    return [step for mode in found.failure_modes if mode.code == code for step in mode.remediation]
