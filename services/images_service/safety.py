"""The content gate: a safety check on every rendered image before it is stored, the policy that
decides what a flagged image becomes (``off`` | ``blur`` | ``block``, per deployment and per tier),
and the prompt blocklist checked at submit.

Checkers never download anything: the diffusers safety checker is the model's own (diffusers loads
it from the model folder with the pipeline), and NudeNet's detector ships inside its wheel
(``nudenet/320n.onnx``). numpy, OpenCV and onnxruntime are imported only when a check runs, so the
API process (which only reads the blocklist) never loads them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from PIL import Image, ImageFilter
from prometheus_client import Counter

from services.common.api_keys import TIER_NAMES
from services.contracts import ErrorCode, RenderSpec

from .errors import EngineError, KittyError

if TYPE_CHECKING:
    from .models import ModelRegistry
    from .settings import Settings

log = logging.getLogger("kitty.images.safety")

Policy = Literal["off", "blur", "block"]
POLICIES: tuple[Policy, ...] = ("off", "blur", "block")
"""``off``: no check. ``blur``: a flagged image is stored blurred and flagged in its sidecar.
``block``: a job with a flagged image ends ``SAFETY_FILTER`` and stores nothing."""

BLUR_RADIUS_FRACTION = 1 / 16
"""Gaussian radius as a share of the image's longest side (32 px at 512): shapes and colours
survive, nothing identifiable does."""

NUDENET_EXPOSED = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
"""NudeNet's classes that flag an image; its others (faces, covered parts, feet, belly) do not."""

SAFETY_CHECKS = Counter(
    "images_safety_checks_total",
    "Rendered images the content gate looked at, by checker and what became of them.",
    ["checker", "action"],
)


class SafetyFiltered(KittyError):
    """A prompt on the blocklist (400 at submit) or a job whose image the gate withheld."""

    code, status = ErrorCode.SAFETY_FILTER, 400


class SafetyUnavailable(EngineError):
    """The policy asks for a check and this worker has no checker: it fails closed, storing nothing."""


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    checker: str
    label: str | None = None
    """What flagged it (a NudeNet class, ``nsfw_concept``), or the strongest finding when not flagged."""
    score: float | None = None
    """The checker's confidence in `label`, 0..1; None when the checker gives none."""

    def record(self) -> dict[str, Any]:
        found: dict[str, Any] = {"flagged": self.flagged, "checker": self.checker}
        if self.label is not None:
            found["label"] = self.label
        if self.score is not None:
            found["score"] = round(self.score, 4)
        return found


class SafetyChecker(Protocol):
    name: str

    def check(self, image: Image.Image) -> Verdict:
        """Look at one rendered image; must not change it."""
        ...


# --- the model's own diffusers safety checker ------------------------------------------------------
class PipelineSafetyChecker:
    """The verdict of the safety checker a diffusers pipeline carries (SD 1.x/2.x model folders).

    diffusers runs that checker inside the pipeline's own call and replaces every flagged image with
    an all-black one before any code of ours sees it; running it again here would only check that
    black image (and keep a second CLIP in memory). Its verdict is therefore read from the image:
    entirely black means the model's checker flagged it. The original pixels are gone, so under
    ``blur`` such an image is stored black (and flagged).
    """

    name = "diffusers-safety-checker"

    def check(self, image: Image.Image) -> Verdict:
        # getextrema() of an RGB image: one (low, high) pair per band.
        extrema = cast(tuple[tuple[int, int], ...], image.convert("RGB").getextrema())
        blanked = all(high == 0 for _, high in extrema)
        return Verdict(flagged=blanked, checker=self.name, label="nsfw_concept" if blanked else None)


def model_has_safety_checker(registry: ModelRegistry, model: str) -> bool:
    """Whether `model`'s diffusers folder names a safety checker in its model_index.json."""
    try:
        entry = registry.get(model)
    except KittyError:
        return False
    if entry.is_local:
        index: Path | None = Path(entry.source) / "model_index.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(entry.source, "model_index.json")
        index = Path(cached) if isinstance(cached, str) else None
    if index is None or not index.is_file():
        return False
    try:
        component = json.loads(index.read_text()).get("safety_checker")
    except (OSError, ValueError):
        return False
    # ["stable_diffusion", "StableDiffusionSafetyChecker"] when present; [null, null] when saved without.
    return isinstance(component, list) and any(part is not None for part in component)


# --- NudeNet --------------------------------------------------------------------------------------
class NudeNetChecker:
    """NudeNet's detector (an ONNX YOLO model inside the ``nudenet`` wheel) run by onnxruntime on the
    CPU: flags an image when an exposed-body class is found with at least `threshold` confidence."""

    name = "nudenet"

    def __init__(self, threshold: float, detector: Any = None) -> None:
        """`detector` stands in for ``nudenet.NudeDetector`` (anything with its ``detect``)."""
        self.threshold = threshold
        self._detector = detector
        self._lock = threading.Lock()

    def _detect(self, image: Image.Image) -> list[dict[str, Any]]:
        import numpy as np

        with self._lock:
            if self._detector is None:
                from nudenet import NudeDetector

                self._detector = NudeDetector()
        # NudeNet reads pictures as OpenCV does: BGR, uint8, contiguous.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return list(self._detector.detect(bgr))

    def check(self, image: Image.Image) -> Verdict:
        detections = self._detect(image)
        exposed = [d for d in detections if d.get("class") in NUDENET_EXPOSED]
        strongest = max(exposed or detections, key=lambda d: float(d.get("score", 0.0)), default=None)
        if strongest is None:
            return Verdict(flagged=False, checker=self.name, score=0.0)
        score = float(strongest.get("score", 0.0))
        flagged = bool(exposed) and score >= self.threshold
        return Verdict(flagged=flagged, checker=self.name, label=str(strongest.get("class")), score=score)


# --- which checker a job gets ---------------------------------------------------------------------
_override: SafetyChecker | None = None
_nudenet: NudeNetChecker | None = None
_nudenet_lock = threading.Lock()


def set_checker(checker: SafetyChecker | None) -> None:
    """Make every job use `checker` instead of choosing one (tests; a deployment embedding its own
    classifier). None restores the choice."""
    global _override
    _override = checker


def nudenet_checker(settings: Settings) -> NudeNetChecker:
    """This process's NudeNet checker (its ONNX session is built once, on first use)."""
    global _nudenet
    with _nudenet_lock:
        if _nudenet is None or _nudenet.threshold != settings.safety_threshold:
            import importlib.util

            if importlib.util.find_spec("nudenet") is None:
                raise SafetyUnavailable(
                    "the content gate is on but this worker has no checker for this model (NudeNet is "
                    "not installed)",
                    remediation=[
                        "Install the worker's dependencies: make install (or pip install -c "
                        "requirements.lock -e '.[worker]').",
                        "Or set IMAGES_SAFETY_POLICY=off (and IMAGES_SAFETY_POLICY_BY_TIER) to store "
                        "images unchecked.",
                    ],
                )
            _nudenet = NudeNetChecker(settings.safety_threshold)
        return _nudenet


def checker_for(settings: Settings, registry: ModelRegistry, spec: RenderSpec) -> SafetyChecker:
    """The model's own diffusers safety checker when its folder has one, else NudeNet."""
    if _override is not None:
        return _override
    if spec.engine == "diffusers" and spec.model and model_has_safety_checker(registry, spec.model):
        return PipelineSafetyChecker()
    return nudenet_checker(settings)


# --- policy ---------------------------------------------------------------------------------------
def parse_policy(value: str) -> Policy:
    policy = value.strip().lower()
    if policy not in POLICIES:
        raise ValueError(f"unknown safety policy '{value[:20]}': use one of {', '.join(POLICIES)}")
    return cast(Policy, policy)


KEY_ID = re.compile(r"^[0-9a-f]{12}$")
"""A key id (12 hex digits of the key's SHA-256, what `kitty-images audit` and job records show)."""


def parse_policy_by_tier(value: str | None) -> dict[str, Policy]:
    """``"free:block,pro:blur,3f2a9c1b7d4e:off"`` → {tier or key id: policy}; raises ValueError naming
    what is wrong. A key id names one key, and wins over its tier."""
    policies: dict[str, Policy] = {}
    for entry in (value or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        tier, colon, policy = entry.partition(":")
        if not colon or (tier.strip() not in TIER_NAMES and not KEY_ID.match(tier.strip())):
            raise ValueError(
                f"IMAGES_SAFETY_POLICY_BY_TIER entry '{entry[:40]}' is not TIER:POLICY (a tier of "
                f"{', '.join(TIER_NAMES)}) or KEY_ID:POLICY (12 hex digits)"
            )
        policies[tier.strip()] = parse_policy(policy)
    return policies


def policy_for(settings: Settings, tier: str | None, key_id: str | None = None) -> Policy:
    """A job's policy: its key's override, else its tier's, else IMAGES_SAFETY_POLICY, else the
    default (``block`` when API keys are configured, ``off`` for the open single-user service)."""
    by_tier = parse_policy_by_tier(settings.safety_policy_by_tier)
    if key_id is not None and key_id in by_tier:
        return by_tier[key_id]
    if tier is not None and tier in by_tier:
        return by_tier[tier]
    if settings.safety_policy:
        return parse_policy(settings.safety_policy)
    return "block" if settings.api_keys else "off"


def blur(image: Image.Image) -> Image.Image:
    """A strong Gaussian blur of `image` (same size and mode)."""
    radius = max(4.0, max(image.size) * BLUR_RADIUS_FRACTION)
    return image.filter(ImageFilter.GaussianBlur(radius))


@dataclass(frozen=True)
class GateOutcome:
    image: Image.Image
    """The image to store: the original, or its blurred copy."""
    record: dict[str, Any]
    """The sidecar's ``safety`` field."""


def gate(images: list[Image.Image], checker: SafetyChecker, policy: Policy) -> list[GateOutcome]:
    """Check every image of a job under `policy` (not ``off``). Raises `SafetyFiltered` under
    ``block`` when any image is flagged, before any of them is stored."""
    verdicts = [checker.check(image) for image in images]
    flagged = [v for v in verdicts if v.flagged]
    if flagged and policy == "block":
        for verdict in verdicts:
            SAFETY_CHECKS.labels(verdict.checker, "block" if verdict.flagged else "pass").inc()
        first = flagged[0]
        log.warning(
            "images withheld by the content gate",
            extra={"checker": first.checker, "label": first.label, "flagged": len(flagged)},
        )
        raise SafetyFiltered(
            f"the content filter withheld this job's image{'s' if len(images) > 1 else ''}: "
            f"{first.checker} flagged {len(flagged)} of {len(images)}; nothing was stored",
            remediation=[
                "Change the prompt (or the seed) and submit again.",
                "The service's operator sets what is filtered: IMAGES_SAFETY_POLICY and "
                "IMAGES_SAFETY_POLICY_BY_TIER (off | blur | block).",
            ],
            detail={"checker": first.checker, "label": first.label, "flagged": len(flagged)},
        )
    outcomes = []
    for image, verdict in zip(images, verdicts, strict=True):
        action = "blur" if verdict.flagged else "none"
        SAFETY_CHECKS.labels(verdict.checker, action if verdict.flagged else "pass").inc()
        record = {**verdict.record(), "action": action, "policy": policy}
        outcomes.append(GateOutcome(blur(image) if verdict.flagged else image, record))
    if flagged:
        log.info("images blurred by the content gate", extra={"flagged": len(flagged)})
    return outcomes


# --- prompt blocklist -----------------------------------------------------------------------------
@lru_cache(maxsize=8)
def parse_blocklist(value: str | None) -> tuple[re.Pattern[str], ...]:
    """``"word, two words, /regex/"`` → patterns, case-insensitive: a plain entry matches as whole
    words, an entry wrapped in slashes is a regular expression. Commas separate entries (write a
    comma inside a regex as ``\\x2c``). Raises ValueError for a regex that does not compile."""
    patterns = []
    for position, entry in enumerate((value or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
            try:
                patterns.append(re.compile(entry[1:-1], re.IGNORECASE))
            except re.error as exc:
                raise ValueError(
                    f"IMAGES_PROMPT_BLOCKLIST entry #{position} is not a valid regex: {exc}"
                ) from None
        else:
            words = r"\s+".join(re.escape(word) for word in entry.split())
            patterns.append(re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE))
    return tuple(patterns)


def _workflow_texts(workflow: dict[str, Any] | None) -> list[str]:
    """The text inputs of a raw ComfyUI graph (its prompts live there, not in `prompt`)."""
    texts: list[str] = []
    for node in (workflow or {}).values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict):
            texts += [value for value in inputs.values() if isinstance(value, str)]
    return texts


def check_prompt(spec: RenderSpec, settings: Settings) -> None:
    """Refuse (400 SAFETY_FILTER) a spec whose prompt, or a text input of its raw workflow, matches
    IMAGES_PROMPT_BLOCKLIST. The negative prompt is not checked: naming what to avoid is allowed."""
    patterns = parse_blocklist(settings.prompt_blocklist)
    if not patterns:
        return
    for field, text in [("prompt", spec.prompt)] + [("workflow", t) for t in _workflow_texts(spec.workflow)]:
        for pattern in patterns:
            match = pattern.search(text)
            if match:
                raise SafetyFiltered(
                    f"the {field} contains '{match.group(0)[:80]}', which this service does not render",
                    remediation=[
                        "Rephrase the prompt without it and submit again.",
                        "The service's operator keeps the list (IMAGES_PROMPT_BLOCKLIST).",
                    ],
                    detail={"field": field, "matched": match.group(0)[:80]},
                )
