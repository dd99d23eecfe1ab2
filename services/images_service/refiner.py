"""The SDXL refiner rules, for the API (at submit time) and the diffusers engine (at render time):
which models take a refiner, which jobs it may follow, and how the steps are shared. No torch here."""

from __future__ import annotations

from .errors import ValidationFailed
from .models import ModelEntry, ModelRegistry

REFINER_SPLIT = 0.8
"""Fraction of the noise schedule the SDXL base denoises before the refiner takes over (diffusers'
and A1111's usual ensemble-of-experts split)."""


def refiner_of(entry: ModelEntry | None, model: str | None) -> str:
    """The refiner `entry` names in models.yaml (a model takes one only if its entry says which);
    `model` is the requested name, for the message when there is no entry."""
    if entry is None or not entry.refiner:
        name = entry.name if entry else model
        raise ValidationFailed(
            f"model '{name}' has no refiner configured",
            remediation=[
                f"Add 'refiner: <model name>' to the '{name}' entry of models.yaml,",
                "or send the request without refiner.",
            ],
        )
    return entry.refiner


def wants_refiner(
    asked: bool | str | None, entry: ModelEntry | None, model: str | None, registry: ModelRegistry
) -> bool:
    """Whether a request's `refiner` asks for the pass, checked against models.yaml: null and false
    say no (the KITTY guide sends null); true or a name say yes. A name must be the refiner the
    model's entry registers: the worker finishes a render with that model's own refiner, whose
    latents it was paired with, so another refiner-capable model is refused rather than swapped in.
    An unregistered name is MODEL_NOT_FOUND; the refiner itself must be registered too."""
    if asked is None or asked is False:
        return False
    configured = refiner_of(entry, model)
    if isinstance(asked, str):
        registry.get(asked)  # 400 MODEL_NOT_FOUND, listing the registered names
        if asked != configured:
            raise ValidationFailed(
                f"'{asked}' is not the refiner of model '{entry.name if entry else model}' "
                f"(its refiner is '{configured}')",
                remediation=[f'Send "refiner": true or "refiner": "{configured}".'],
            )
    registry.get(configured)
    return True


def check_refiner_follows(is_text_to_image: bool) -> None:
    """The refiner finishes a text-to-image render only: it takes over the base's latents mid-schedule."""
    if not is_text_to_image:
        raise ValidationFailed(
            "the refiner pass follows text-to-image only, not image-to-image or inpainting",
            remediation=["Send refiner=false with `image`."],
        )


def base_steps(steps: int) -> int:
    """Of `steps`, those the base model runs before the refiner takes over (at least one)."""
    return min(steps, max(1, round(steps * REFINER_SPLIT)))
