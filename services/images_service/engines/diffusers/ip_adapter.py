"""An IP-Adapter reference image for one job: the registered adapter's weights and CLIP vision
encoder loaded once (kept beside the resident model), put into the model's UNet at the job's
weight for the render, and the UNet given back exactly as it was afterwards, so a job without a
reference renders as if no adapter had ever been loaded."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ...errors import EngineError, ModelNotFound
from ...models import ADDON_HOWTO, AddonEntry
from ..acceleration import denoiser
from .cache import ModelCache, Resident
from .device import short_error
from .validation import check_base, check_guided_family, model_family

logger = logging.getLogger("kitty.images.engines.diffusers")

IP_ADAPTERS = "ip_adapters"
"""models.yaml's section of IP-Adapters, and their kind in the add-on cache."""

ADAPTER_KEY_GROUPS = ("image_proj", "ip_adapter")
"""Top-level key prefixes of an IP-Adapter weight file (h94/IP-Adapter's layout), which diffusers'
`load_ip_adapter` takes as a dict of two state dicts."""


@dataclass
class LoadedAdapter:
    """An IP-Adapter's weights (as `load_ip_adapter` takes them) and its image encoder."""

    state_dict: dict[str, dict[str, Any]]
    image_encoder: Any
    feature_extractor: Any


def loaded_adapter(cache: ModelCache, base: Resident, entry: AddonEntry) -> LoadedAdapter:
    """`entry` loaded for `base` (kept for the next job), once it is known to fit `base`'s family."""
    family = model_family(base.pipeline_class)
    check_guided_family("IP-Adapter", base.name, family)
    check_base("IP-Adapter", entry.name, entry.base, base.name, family)
    key = f"{entry.path}|{entry.image_encoder}"
    adapter: LoadedAdapter = cache.addon(
        base, IP_ADAPTERS, entry.name, key, partial(load_adapter, cache, entry)
    )
    return adapter


def load_adapter(cache: ModelCache, entry: AddonEntry) -> LoadedAdapter:
    """`entry`'s weight file (.safetensors) and CLIP vision encoder folder, on the cache's device."""
    from safetensors import safe_open
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    weights, encoder = Path(entry.path), Path(entry.image_encoder or "")
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise ModelNotFound(
            f"IP-Adapter '{entry.name}' is registered at {entry.path}, which is not a .safetensors file",
            remediation=["Register the adapter's .safetensors weight file.", ADDON_HOWTO[IP_ADAPTERS]],
        )
    if not (encoder / "config.json").is_file():
        raise ModelNotFound(
            f"IP-Adapter '{entry.name}' names image encoder {entry.image_encoder}, but no model is there",
            remediation=[
                "Point `image_encoder` at the CLIP vision encoder's folder (config.json + weights)."
            ],
        )
    try:
        state_dict: dict[str, dict[str, Any]] = {group: {} for group in ADAPTER_KEY_GROUPS}
        with safe_open(str(weights), framework="pt", device="cpu") as file:
            for key in file.keys():
                group, _, rest = key.partition(".")
                if group in state_dict:
                    state_dict[group][rest] = file.get_tensor(key)
        # transformers' precision keyword is `dtype` (since 4.56; the lock has 5.x).
        image_encoder: Any = CLIPVisionModelWithProjection.from_pretrained(
            encoder, dtype=cache.dtype, local_files_only=True, use_safetensors=True
        )
        image_encoder = image_encoder.to(cache.device)
    except Exception as exc:
        logger.exception("loading IP-Adapter %s from %s failed", entry.name, entry.path)
        raise ModelNotFound(
            f"IP-Adapter '{entry.name}' could not be loaded: {short_error(exc)}",
            remediation=["Check the weight file and the image encoder folder are .safetensors models."],
        ) from exc
    if not all(state_dict.values()):
        raise ModelNotFound(
            f"IP-Adapter '{entry.name}' ({weights.name}) has no image_proj.*/ip_adapter.* weights",
            remediation=["Register an IP-Adapter weight file as h94/IP-Adapter publishes them."],
        )
    size = image_encoder.config.image_size
    # Sized to the encoder (224 for CLIP-H/bigG); a pipeline's own one may be the safety checker's.
    feature_extractor = CLIPImageProcessor(size=size, crop_size=size)
    logger.info("loaded IP-Adapter %s on %s", entry.name, cache.device)
    return LoadedAdapter(state_dict, image_encoder, feature_extractor)


@contextmanager
def reference_applied(
    cache: ModelCache, base: Resident, pipelines: Sequence[Resident], adapter: LoadedAdapter, weight: float
) -> Iterator[None]:
    """`adapter` in the UNet shared by `pipelines` (all made from `base`) at `weight`, and its image
    encoder on each of them, for the body of the block; afterwards (also after a failure or a
    cancel) the UNet's attention processors and image projection, and each pipeline's encoder and
    feature extractor, are what they were before. Should that fail, `base` is dropped from `cache`:
    the next job loads it clean."""
    unet = denoiser(base.pipe)
    processors = dict(unet.attn_processors)
    projection, projection_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    kept = [
        (resident.pipe, resident.pipe.image_encoder, resident.pipe.feature_extractor)
        for resident in pipelines
    ]
    try:
        for resident in pipelines:
            resident.pipe.register_modules(
                image_encoder=adapter.image_encoder, feature_extractor=adapter.feature_extractor
            )
        try:
            pipelines[0].pipe.load_ip_adapter(
                adapter.state_dict, subfolder=None, weight_name=None, image_encoder_folder=None
            )
        except Exception as exc:
            logger.exception("applying an IP-Adapter to model %s failed", base.name)
            raise EngineError(
                f"the IP-Adapter could not be applied to model '{base.name}': {short_error(exc)}",
                remediation=["Check it was made for this model's family (its `base` in models.yaml)."],
            ) from exc
        pipelines[0].pipe.set_ip_adapter_scale(weight)
        yield
    finally:
        try:
            unet.set_attn_processor(processors)
            unet.encoder_hid_proj = projection
            unet.config.encoder_hid_dim_type = projection_type
            for pipe, image_encoder, feature_extractor in kept:
                pipe.register_modules(image_encoder=image_encoder, feature_extractor=feature_extractor)
        except Exception:
            logger.exception("removing the IP-Adapter from model %s failed; unloading the model", base.name)
            cache.drop(base)
