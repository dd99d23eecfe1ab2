"""LoRAs for one job: loaded into the resident pipeline's modules as peft adapters at their
weights, and taken out again afterwards, so the base model is never reloaded for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import diffusers

from ...errors import EngineError, ModelNotFound
from ...models import LORA_HOWTO, LoraEntry
from ..acceleration import denoiser
from .cache import ModelCache, Resident
from .device import short_error
from .validation import check_lora_bases, model_family

logger = logging.getLogger("kitty.images.engines.diffusers")

FUSED_DENOISER = "fused_qkv:denoiser"
"""The `accelerate` optimization a LoRA job undoes for its duration (see `loras_applied`)."""

ADAPTER_PREFIX = "kitty_lora_"
"""peft adapter names are ``{prefix}{position}``: registered LoRA names may hold dots, which peft
cannot take in a module key."""

WeightedLoras = Sequence[tuple[LoraEntry, float]]
"""A job's LoRAs, each with the weight it is applied at."""


@contextmanager
def loras_applied(
    cache: ModelCache, base: Resident, resident: Resident, loras: WeightedLoras
) -> Iterator[None]:
    """`loras` loaded into `resident`'s modules as peft adapters at their weights, for the body of
    the block; afterwards (also after a failure or a cancel) every one is taken out. `base` is the
    resident text-to-image pipeline `resident` is (or derives from): the one dropped from `cache`
    should taking them out fail."""
    if not diffusers.utils.USE_PEFT_BACKEND:
        raise EngineError(
            "LoRAs need the peft package on the worker",
            remediation=[
                "Install it with the locked versions: make install (or "
                "pip install -c requirements.lock -e '.[worker]')."
            ],
        )
    check_lora_bases((lora for lora, _ in loras), resident.name, model_family(resident.pipeline_class))
    model = denoiser(resident.pipe)
    fused = model is not None and FUSED_DENOISER in resident.optimizations
    if fused:
        # A fused QKV projection bypasses the to_q/to_k/to_v layers a LoRA patches.
        model.unfuse_qkv_projections()
    try:
        names = [f"{ADAPTER_PREFIX}{position}" for position in range(len(loras))]
        for (lora, _), adapter in zip(loras, names, strict=True):
            load_lora(resident, lora, adapter)
        resident.pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
        yield
    finally:
        remove_loras(cache, base, resident, refuse=fused)


def load_lora(resident: Resident, lora: LoraEntry, adapter: str) -> None:
    """Load `lora`'s weights into `resident` as the adapter named `adapter`."""
    path = Path(lora.path)
    if not path.exists():
        raise ModelNotFound(
            f"LoRA '{lora.name}' is registered at {lora.path}, but nothing is there",
            remediation=["Fix its path in models.yaml.", LORA_HOWTO],
        )
    folder, weight_name = (path, None) if path.is_dir() else (path.parent, path.name)
    try:
        resident.pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=adapter)
    except Exception as exc:
        logger.exception("loading LoRA %s from %s failed", lora.name, lora.path)
        raise EngineError(
            f"LoRA '{lora.name}' could not be applied to model '{resident.name}': {short_error(exc)}",
            remediation=[
                "Check it was trained for this model's family (its `base` in models.yaml).",
                "Check the file is a diffusers or kohya LoRA in .safetensors format.",
            ],
        ) from exc


def remove_loras(cache: ModelCache, base: Resident, resident: Resident, *, refuse: bool) -> None:
    """Take every LoRA out again, so the next job renders with the model's own weights (and its QKV
    projections fused again when `refuse`). Should that fail, the model is dropped from `cache`:
    the next job loads it clean."""
    try:
        resident.pipe.unload_lora_weights()
        model = denoiser(resident.pipe)
        if refuse and model is not None:
            model.fuse_qkv_projections()
    except Exception:
        logger.exception("removing LoRAs from model %s failed; unloading the model", base.name)
        cache.drop(base)
