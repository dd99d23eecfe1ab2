"""ControlNets for one job: each registered ControlNet loaded once (kept beside the resident model),
checked against the model's family, and the pipeline arguments that make them steer the render:
their maps, weights and the fraction of the steps each acts on."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from services.contracts import ControlInput

from ...control_maps import CANNY_THRESHOLDS, is_preprocessed
from ...errors import EngineError, ModelNotFound
from ...models import ADDON_HOWTO, AddonEntry
from .cache import ModelCache, Resident
from .device import DTYPE_KWARG, is_out_of_memory, short_error
from .validation import TXT2IMG, check_base, check_guided_family, model_family

logger = logging.getLogger("kitty.images.engines.diffusers")

CONTROLNETS = "controlnets"
"""models.yaml's section of ControlNets, and their kind in the add-on cache."""

GuidedControls = list[tuple[ControlInput, AddonEntry]]
"""A job's acting controls, each with the registered ControlNet that renders it."""


def controlnets_for(cache: ModelCache, base: Resident, controls: GuidedControls) -> list[Any]:
    """The loaded ControlNet of every control, once each is known to fit `base`'s family."""
    family = model_family(base.pipeline_class)
    check_guided_family("ControlNet", base.name, family)
    for _, entry in controls:
        check_base("ControlNet", entry.name, entry.base, base.name, family)
    return [
        cache.addon(base, CONTROLNETS, entry.name, entry.path, partial(load_controlnet, cache, entry))
        for _, entry in controls
    ]


def load_controlnet(cache: ModelCache, entry: AddonEntry) -> Any:
    """`entry`'s ControlNet (a diffusers folder of safetensors) on the cache's device and dtype."""
    from diffusers import ControlNetModel

    folder = Path(entry.path)
    if not (folder / "config.json").is_file():
        what = "a single file; this worker loads diffusers folders" if folder.is_file() else "not there"
        raise ModelNotFound(
            f"ControlNet '{entry.name}' is registered at {entry.path}, which is {what}",
            remediation=[
                "Register the ControlNet's diffusers folder (config.json + weights).",
                ADDON_HOWTO[CONTROLNETS],
            ],
        )
    try:
        # Safetensors only: pickle weights can run code, and add-on entries cannot allow them.
        model = ControlNetModel.from_pretrained(
            folder, **{DTYPE_KWARG: cache.dtype}, local_files_only=True, use_safetensors=True
        )
        model = model.to(cache.device)
    except Exception as exc:
        logger.exception("loading ControlNet %s from %s failed", entry.name, entry.path)
        if is_out_of_memory(exc):
            cache.free_memory()
            raise EngineError(
                f"{cache.device} has not enough memory to load ControlNet '{entry.name}'",
                remediation=["Use fewer controls, a smaller model, or IMAGES_MODEL_CACHE_SIZE=1."],
            ) from exc
        raise ModelNotFound(
            f"ControlNet '{entry.name}' at {entry.path} could not be loaded: {short_error(exc)}",
            remediation=["Check the folder holds a diffusers ControlNet in .safetensors format."],
        ) from exc
    logger.info("loaded ControlNet %s (%s) on %s", entry.name, entry.type, cache.device)
    return model


def control_kwargs(mode: str, controls: GuidedControls, maps: list[Image.Image]) -> dict[str, Any]:
    """The pipeline arguments of the controls: their maps (``image`` for text-to-image, whose
    `image` is the control; ``control_image`` where `image` is the picture to change), weights and
    step ranges, one value each for a single ControlNet, lists for several."""
    weights = [control.weight for control, _ in controls]
    starts = [control.start for control, _ in controls]
    ends = [control.end for control, _ in controls]
    single = len(controls) == 1
    return {
        "image" if mode == TXT2IMG else "control_image": maps[0] if single else maps,
        "controlnet_conditioning_scale": weights[0] if single else weights,
        "control_guidance_start": starts[0] if single else starts,
        "control_guidance_end": ends[0] if single else ends,
    }


def controls_info(controls: GuidedControls) -> list[dict[str, Any]]:
    """What the sidecar's `engine_info` records of the controls that acted."""
    info = []
    for control, entry in controls:
        row: dict[str, Any] = {
            "model": entry.name,
            "type": control.type,
            "weight": control.weight,
            "start": control.start,
            "end": control.end,
            "preprocess": is_preprocessed(control),
        }
        if is_preprocessed(control):
            row["canny_thresholds"] = list(CANNY_THRESHOLDS)
        info.append(row)
    return info
