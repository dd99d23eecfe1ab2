"""Presets: named recipes (a prompt template, quality negatives, a default size and quality) that turn
a short prompt into a full request — the AInfluencer seed's "presets are the product" — and the
quality levels low/standard/pro they share. Resolved at submit time (``spec.py``), never by workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.contracts import QUALITY_NAMES, GenerateRequest, PresetInfo

from .errors import ValidationFailed

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


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    prompt_template: str
    """Contains `PROMPT_SLOT` once."""
    negative_prompt: str
    """Used when the request has no negative prompt of its own."""
    width: int
    height: int
    """Sizes within the free tier's 1024×1024 (SDXL-friendly), so any key can use any preset."""
    quality: str = DEFAULT_QUALITY
    """The level used when the request names none."""

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
                name: {"steps": level.steps, "cfg": level.cfg} for name, level in QUALITY_LEVELS.items()
            },
        )


# Presets name no scheduler on purpose: a flow-matching model (SD3, Flux) accepts only its own, so a
# preset's choice would fail there; the model's default (models.yaml) or the request's applies.
PRESETS: Mapping[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="photoreal",
            title="Photoreal portrait",
            description="A natural-looking photograph of a person: real skin texture, soft light, "
            "a portrait lens. No plastic skin.",
            prompt_template="RAW photo, {prompt}, natural skin texture with visible pores, soft window "
            "light, 85mm portrait lens, shallow depth of field, sharp focus on the eyes",
            negative_prompt="plastic skin, waxy skin, airbrushed, doll-like, overly smooth skin, "
            "cartoon, illustration, 3d render, cgi, extra fingers, " + COMMON_NEGATIVES,
            width=832,
            height=1024,
        ),
        Preset(
            name="cinematic",
            title="Cinematic still",
            description="A frame from a film: wide aspect, film grain, filmic tone mapping and a "
            "graded palette.",
            prompt_template="cinematic film still, {prompt}, anamorphic lens, film grain, filmic tone "
            "mapping, color graded, dramatic lighting, shallow depth of field",
            negative_prompt="flat lighting, oversaturated, overexposed, cartoon, illustration, "
            + COMMON_NEGATIVES,
            width=1024,
            height=576,
        ),
        Preset(
            name="product",
            title="Product render",
            description="A catalog shot of an object: studio softbox light on a seamless white "
            "background, crisp reflections.",
            prompt_template="professional product photograph of {prompt}, studio softbox lighting, "
            "seamless white background, soft contact shadow, crisp reflections, high detail",
            negative_prompt="cluttered background, people, hands, logo, noisy, distorted, "
            + COMMON_NEGATIVES,
            width=1024,
            height=1024,
        ),
        Preset(
            name="illustration",
            title="Illustration",
            description="A clean digital illustration: confident line art, flat vibrant colour, "
            "painterly shading.",
            prompt_template="digital illustration of {prompt}, clean line art, vibrant flat colors, "
            "painterly shading, detailed, cohesive palette",
            negative_prompt="photo, photorealistic, 3d render, muddy colors, " + COMMON_NEGATIVES,
            width=1024,
            height=1024,
        ),
        Preset(
            name="identity_lock",
            title="Identity lock",
            description="The person of a reference photo in a new scene: send the photo as "
            "`reference_image` (IP-Adapter) and `consent: true`, stating that they agreed.",
            prompt_template="photo of the same person, {prompt}, consistent facial features, natural "
            "skin texture, sharp focus on the face",
            negative_prompt="different person, distorted face, asymmetric eyes, plastic skin, "
            + COMMON_NEGATIVES,
            width=832,
            height=1024,
        ),
        Preset(
            name="storyboard",
            title="Storyboard frame",
            description="A quick grayscale sketch of a shot, wide framing: drafts at low quality by "
            "default, so a sequence comes fast.",
            prompt_template="storyboard panel, {prompt}, rough pencil sketch, grayscale, clear "
            "staging, cinematic framing",
            negative_prompt="color, photorealistic, cluttered, speech bubbles, " + COMMON_NEGATIVES,
            width=1024,
            height=576,
            quality="low",
        ),
    )
}
"""The built-in presets, in the order they are listed."""

assert all(p.prompt_template.count(PROMPT_SLOT) == 1 for p in PRESETS.values())
assert all(p.quality in QUALITY_LEVELS for p in PRESETS.values())


def get_preset(name: str) -> Preset:
    """The preset called `name`; `ValidationFailed` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown preset '{name}'",
            remediation=[
                f"Use one of: {', '.join(PRESETS)} (GET /api/images/presets, `kitty-cli images.presets`).",
                "Or leave `preset` out to send the prompt as it is.",
            ],
            detail=[{"field": "preset", "message": f"unknown preset '{name}'", "allowed": list(PRESETS)}],
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


def apply_preset(request: GenerateRequest) -> Styled:
    """The preset's template wraps the prompt, its negatives apply when the request has none, and
    its size and quality level fill what the request left unset: request > quality level > preset
    default > model default. A `quality` without a preset sets steps and cfg on its own."""
    preset = get_preset(request.preset) if request.preset else None
    quality = request.quality or (preset.quality if preset else None)
    if request.workflow is not None and quality is not None:
        raise ValidationFailed(
            "`preset` and `quality` shape the built-in template; a raw workflow carries its own settings",
            remediation=['Drop "preset" and "quality", or drop "workflow".'],
        )
    level = QUALITY_LEVELS[quality] if quality else None
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
