"""The models resident on a worker: pipelines loaded from models.yaml entries (the loading code
every model goes through, tiny or real), an LRU of IMAGES_MODEL_CACHE_SIZE text-to-image pipelines
with their refiner, the image-to-image/inpainting pipelines derived from them and the add-ons
(ControlNets, IP-Adapter encoders) loaded for them, and the memory handed back when one leaves."""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open

from ...catalog import PICKLE_HINT, SAFE_SUFFIX, is_pickle, weight_files
from ...errors import EngineError, KittyError, ModelNotFound, ValidationFailed
from ...models import ModelEntry
from ...worker.metrics import MODEL_LOAD_SECONDS, MODEL_LOADS
from ..acceleration import accelerate, attention_processors, denoiser
from .device import DTYPE_KWARG, dtype_name, free_memory, is_out_of_memory, short_error
from .validation import IMG2IMG, INPAINT, TXT2IMG, scheduler_choice

logger = logging.getLogger("kitty.images.engines.diffusers")

DERIVED_PIPELINES: dict[str, Any] = {IMG2IMG: AutoPipelineForImage2Image, INPAINT: AutoPipelineForInpainting}
"""Mode → the auto class whose ``from_pipe`` builds that pipeline from the resident text-to-image one."""

CONTROLLED_PIPELINES: dict[str, Any] = {TXT2IMG: AutoPipelineForText2Image, **DERIVED_PIPELINES}
"""Mode → the auto class whose ``from_pipe(..., controlnet=...)`` builds its ControlNet pipeline."""


ADDON_CACHE_SIZE = 4
"""Add-ons (ControlNets, IP-Adapters) kept loaded per resident model: a job with two controls and a
reference reuses all three; a real SD1.5 ControlNet holds ~0.7 GB in half precision."""


@dataclass
class Resident:
    """A loaded pipeline and what a job needs to reset it to before use."""

    name: str
    source: str
    pipe: Any
    scheduler_class: type[Any]
    scheduler_config: dict[str, Any]
    call_params: frozenset[str]
    optimizations: list[str] = field(default_factory=list)
    """The CUDA speed-ups applied at load (`acceleration.accelerate`); empty elsewhere."""
    attention: list[str] = field(default_factory=list)
    """Attention processor classes of the UNet/transformer (SDPA ones end in ``2_0``)."""
    refiner: Resident | None = field(default=None)
    derived: dict[str, Resident] = field(default_factory=dict)
    """Image-to-image and inpainting pipelines made from this one (same components, no reload)."""
    addons: OrderedDict[tuple[str, str], Any] = field(default_factory=OrderedDict)
    """Add-ons loaded for this model by (kind, name): ControlNets, IP-Adapters (`ADDON_CACHE_SIZE`
    of them, least recently used evicted first); they leave with it."""

    @classmethod
    def loaded(
        cls, entry: ModelEntry, pipe: Any, *, optimizations: list[str] | None = None, attention: list[str]
    ) -> Resident:
        """`pipe`, just loaded for `entry`: its scheduler as loaded is what each job starts from."""
        return cls(
            name=entry.name,
            source=entry.source,
            pipe=pipe,
            scheduler_class=type(pipe.scheduler),
            scheduler_config=dict(pipe.scheduler.config),
            call_params=frozenset(inspect.signature(pipe.__call__).parameters),
            optimizations=optimizations or [],
            attention=attention,
        )

    @property
    def pipeline_class(self) -> str:
        return type(self.pipe).__name__

    def accepts(self, param: str) -> bool:
        return param in self.call_params

    def set_scheduler(self, name: str | None) -> None:
        """Give the pipeline a fresh scheduler for this job, so no state or choice leaks between jobs."""
        choice = scheduler_choice(name, self.name, self.scheduler_class.__name__)
        if choice is None:
            self.pipe.scheduler = self.scheduler_class.from_config(self.scheduler_config)
            return
        class_name, overrides = choice
        if class_name == "LMSDiscreteScheduler" and not diffusers.utils.is_scipy_available():
            raise EngineError(
                f"scheduler '{name}' needs scipy, which this worker does not have",
                remediation=["Install scipy on the worker (pip install scipy), or choose another scheduler."],
            )
        scheduler_class = getattr(diffusers, class_name)
        self.pipe.scheduler = scheduler_class.from_config(self.scheduler_config, **overrides)


LDM_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
"""A single file's first UNet convolution in the original layout: its shape says the UNet's width and
input channels (4, or 9 for an inpainting model) before anything is loaded."""


PULL_EXAMPLES = {"sd15": "sd15_base", "sdxl": "sdxl_base", "sd3": "sd35_medium", "flux": "flux_schnell"}
"""Family → a `kitty-images models pull` name whose folder lends its configs to that family's files."""


def is_single_file(entry: ModelEntry) -> bool:
    """Whether `entry` is one weight file (the original Stable Diffusion layout), not a folder."""
    return entry.is_local and Path(entry.source).is_file()


def single_file_config(entry: ModelEntry) -> str:
    """The diffusers folder whose configs (and tokenizer, scheduler) `entry`'s single file loads with
    (`ModelEntry.config`); a pickle file the entry does not allow, or no fitting folder, raises."""
    source = Path(entry.source)
    if is_pickle(source) and not entry.allow_pickle:
        raise ValidationFailed(
            f"model '{entry.name}' is a pickle weight file ({source.name}); refused",
            remediation=[PICKLE_HINT, "Or set `allow_pickle: true` on its models.yaml entry."],
        )
    if not is_pickle(source) and source.suffix.lower() != SAFE_SUFFIX:
        raise ValidationFailed(
            f"model '{entry.name}' is {source.name}, not a weight file this worker loads",
            remediation=[f"Register a diffusers folder or a {SAFE_SUFFIX} checkpoint."],
        )
    family = entry.family or "sd15"
    how = [
        f"Register a diffusers folder of this family, e.g. `kitty-images models pull "
        f"{PULL_EXAMPLES.get(family, 'sd15_base')}`, with `family: {family}` on its models.yaml entry.",
        f"Or set `config:` on '{entry.name}' in models.yaml (`models add ... --config NAME|PATH`): a "
        "diffusers folder of the same family and size, or a registered model's name whose folder to use.",
    ]
    if entry.config is None:
        of = f"family '{entry.family}'" if entry.family else "no family"
        raise ModelNotFound(
            f"model '{entry.name}' is a single-file checkpoint ({source.name}) of {of}; it loads with "
            "the configs of a diffusers folder of its family, and none is registered",
            remediation=how,
        )
    if Path(entry.config).is_absolute():
        folder = Path(entry.config)
    else:  # a registered hub model: its snapshot in the HF cache
        cached = try_to_load_from_cache(entry.config, "model_index.json")
        folder = Path(cached).parent if isinstance(cached, str) else Path(entry.config)
    if not (folder / "model_index.json").is_file():
        raise ModelNotFound(
            f"model '{entry.name}' loads with the configs of {entry.config}, which is not a diffusers "
            "folder on this machine (no model_index.json)",
            remediation=how,
        )
    # components the file lacks weights for load from the folder: no pickle there either
    weight_files(folder, allow_pickle=entry.allow_pickle)
    _check_fits(entry, folder, how)
    return str(folder)


def _check_fits(entry: ModelEntry, folder: Path, how: list[str]) -> None:
    """`ValidationFailed` when `folder`'s UNet is not the width or input channels of `entry`'s file
    (a tiny or inpainting folder for a full-size checkpoint): diffusers would fail halfway through."""
    unet_config = folder / "unet" / "config.json"
    if is_pickle(entry.source) or not unet_config.is_file():
        return
    with safe_open(entry.source, framework="pt") as checkpoint:
        if LDM_CONV_IN not in checkpoint.keys():
            return
        shape = tuple(checkpoint.get_slice(LDM_CONV_IN).get_shape()[:2])
    config = json.loads(unet_config.read_text())
    expected = (config["block_out_channels"][0], config["in_channels"])
    if shape != expected:
        raise ValidationFailed(
            f"model '{entry.name}' does not fit the configs of {folder}: its UNet starts with "
            f"{shape[0]} channels from {shape[1]} inputs, the folder's with {expected[0]} from {expected[1]}",
            remediation=how[1:],
        )


def single_file_pipeline(entry: ModelEntry, auto_class: Any, **kwargs: Any) -> Any:
    """`entry`'s single file as `auto_class`'s pipeline, built with its config folder's classes and
    configs by diffusers' ``from_single_file`` (given a local folder, it fetches nothing)."""
    config = single_file_config(entry)
    class_name = json.loads((Path(config) / "model_index.json").read_text())["_class_name"]
    pipeline_class: Any = getattr(diffusers, class_name, None)
    if not hasattr(pipeline_class, "from_single_file"):
        raise ValidationFailed(
            f"model '{entry.name}': diffusers cannot load a {class_name} from a single file",
            remediation=["Register the model's diffusers folder instead."],
        )
    pipe = pipeline_class.from_single_file(entry.source, config=config, **kwargs)
    return auto_class.from_pipe(pipe)


def check_available(entry: ModelEntry) -> None:
    """`ModelNotFound` unless `entry`'s files are on this machine (a folder, a single file with its
    config folder, or the HF cache)."""
    if entry.is_local:
        if is_single_file(entry):
            single_file_config(entry)
            return
        if not (Path(entry.source) / "model_index.json").is_file():
            raise ModelNotFound(
                f"model '{entry.name}' is registered at {entry.source}, but no diffusers model is there",
                remediation=[f"Fetch it: {entry.fetch_hint()}", "Or fix its path in models.yaml."],
            )
    elif not isinstance(try_to_load_from_cache(entry.source, "model_index.json"), str):
        raise ModelNotFound(
            f"model '{entry.name}' ({entry.source}) is not in this machine's Hugging Face cache",
            remediation=[
                f"Fetch it: {entry.fetch_hint()}",
                "Check HF_HOME points at the cache it was pulled into.",
            ],
        )


class ModelCache:
    """Pipelines held resident by model name, the least recently used evicted first, except that a
    pinned one (IMAGES_PINNED_MODELS) is never evicted: when only pinned models are resident and
    another is needed, it is loaded beyond `size` rather than refused (a warning says so).

    Not locked itself: its owner (`DiffusersEngine`) calls it under the lock its renders hold, so a
    load never races a render.
    """

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        *,
        size: int,
        compile_mode: str | None,
        pinned: frozenset[str] = frozenset(),
    ) -> None:
        if size < 1:
            raise ValueError("cache_size must be at least 1")
        self.device = device
        self.dtype = dtype
        self.size = size
        self.compile_mode = compile_mode
        self.pinned = pinned
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        self.loads = 0
        """Models and add-ons read from disk so far: a job's prepare that changed it loaded something."""

    def names(self) -> list[str]:
        """Resident models, least recently used first."""
        return list(self._resident)

    def base(self, entry: ModelEntry) -> Resident:
        """`entry`'s text-to-image pipeline: the resident one (now the most recently used), or one
        loaded after evicting the least recently used unpinned ones until there is room."""
        return self._resident_or_load(entry, lambda: self._load(entry, AutoPipelineForText2Image))

    def video(self, entry: ModelEntry) -> Resident:
        """`entry`'s video pipeline (SVD, or AnimateDiff with its motion adapter), held in the same
        LRU as the image models: a worker switching between a clip and a picture evicts as it would
        between two image models."""
        return self._resident_or_load(entry, lambda: self._load_video(entry))

    def _resident_or_load(self, entry: ModelEntry, load: Any) -> Resident:
        resident = self._resident.get(entry.name)
        if resident is not None and resident.source == entry.source:
            self._resident.move_to_end(entry.name)
            return resident
        self._resident.pop(entry.name, None)
        while len(self._resident) >= self.size:
            evicted = next((name for name in self._resident if name not in self.pinned), None)
            if evicted is None:
                logger.warning(
                    "all %d resident models are pinned (IMAGES_PINNED_MODELS); loading %s beyond "
                    "IMAGES_MODEL_CACHE_SIZE=%d",
                    len(self._resident),
                    entry.name,
                    self.size,
                )
                break
            del self._resident[evicted]
            logger.info("evicting model %s to make room for %s", evicted, entry.name)
            self.free_memory()
        resident = load()
        self._resident[entry.name] = resident
        return resident

    def _load_video(self, entry: ModelEntry) -> Resident:
        from ...video.pipelines import load_video_pipeline

        if not entry.is_local:
            raise ModelNotFound(
                f"video model '{entry.name}' must be a local diffusers folder, not {entry.source}",
                remediation=["Download it, and set its models.yaml `path:` to the folder."],
            )
        started = time.perf_counter()
        pipe = load_video_pipeline(
            str(entry.family),
            entry.source,
            motion_adapter=entry.motion_adapter,
            device=self.device,
            dtype=self.dtype,
        )
        if self.device.type == "mps":
            pipe.enable_attention_slicing()
        seconds = time.perf_counter() - started
        self.loads += 1
        MODEL_LOADS.labels(model=entry.name).inc()
        MODEL_LOAD_SECONDS.labels(model=entry.name).observe(seconds)
        return Resident.loaded(entry, pipe, attention=attention_processors(denoiser(pipe)))

    def derived(self, base: Resident, mode: str) -> Resident:
        """The image-to-image or inpainting pipeline of `base`, made once from its components."""
        derived = base.derived.get(mode)
        if derived is None:
            try:
                pipe = DERIVED_PIPELINES[mode].from_pipe(base.pipe)
            except ValueError as exc:  # no such pipeline for this model's family
                raise ValidationFailed(
                    f"model '{base.name}' ({base.pipeline_class}) has no {mode} pipeline in diffusers",
                    remediation=["Use an SD 1.5, SDXL, SD3 or Flux model for image-to-image and inpainting."],
                ) from exc
            pipe.set_progress_bar_config(disable=True)
            derived = self._derive(base, pipe)
            base.derived[mode] = derived
            logger.info("derived %s pipeline %s from model %s", mode, type(pipe).__name__, base.name)
        return derived

    @staticmethod
    def _derive(base: Resident, pipe: Any) -> Resident:
        """`pipe`, made from `base`'s components, with `base`'s scheduler and load facts."""
        return Resident(
            name=base.name,
            source=base.source,
            pipe=pipe,
            scheduler_class=base.scheduler_class,
            scheduler_config=base.scheduler_config,
            call_params=frozenset(inspect.signature(pipe.__call__).parameters),
            optimizations=base.optimizations,
            attention=base.attention,
        )

    def controlled(self, base: Resident, mode: str, controlnets: list[Any]) -> Resident:
        """`base`'s ControlNet pipeline for `mode` with `controlnets` (several: diffusers' multi-
        ControlNet), made from its components for one job; nothing of `base` changes."""
        controlnet: Any = controlnets[0] if len(controlnets) == 1 else list(controlnets)
        try:
            pipe = CONTROLLED_PIPELINES[mode].from_pipe(base.pipe, controlnet=controlnet)
        except ValueError as exc:  # no ControlNet pipeline for this model's family
            raise ValidationFailed(
                f"model '{base.name}' ({base.pipeline_class}) has no {mode} ControlNet pipeline in diffusers",
                remediation=["Use an SD 1.5 or SDXL model with ControlNets."],
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        return self._derive(base, pipe)

    def addon(self, base: Resident, kind: str, name: str, path: str, load: Any) -> Any:
        """The add-on `name` of `kind` loaded from `path` for `base`: the one kept from an earlier job,
        or ``load()``'s, kept for the next (up to `ADDON_CACHE_SIZE`, least recently used out)."""
        key = (kind, name)
        kept = base.addons.get(key)
        if kept is not None and kept[0] == path:
            base.addons.move_to_end(key)
            return kept[1]
        base.addons.pop(key, None)
        loaded = load()
        self.loads += 1
        while len(base.addons) >= ADDON_CACHE_SIZE:
            base.addons.popitem(last=False)
            self.free_memory()
        base.addons[key] = (path, loaded)
        return loaded

    def refiner(self, base: Resident, entry: ModelEntry) -> Resident:
        """`entry`'s image-to-image pipeline, kept as `base`'s refiner."""
        # The refiner lives with its base so an LRU of one keeps both rather than evicting each in turn.
        if base.refiner is None or (base.refiner.name, base.refiner.source) != (entry.name, entry.source):
            base.refiner = None
            base.refiner = self._load(entry, AutoPipelineForImage2Image)
        return base.refiner

    def drop(self, base: Resident) -> None:
        """Unload `base` (if still resident), so the next job that needs it loads it clean."""
        if self._resident.get(base.name) is base:
            del self._resident[base.name]
        self.free_memory()

    def clear(self) -> None:
        self._resident.clear()
        self.free_memory()

    def free_memory(self) -> None:
        free_memory(self.device)

    def _load(self, entry: ModelEntry, auto_class: Any) -> Resident:
        check_available(entry)
        started = time.perf_counter()
        # Downloads belong to `kitty-images models pull`, not to a job running under a timeout.
        kwargs: dict[str, Any] = {DTYPE_KWARG: self.dtype, "local_files_only": True}
        try:
            if is_single_file(entry):
                pipe = single_file_pipeline(entry, auto_class, **kwargs)
            else:
                # pickle weights can run code: only models.yaml's allow_pickle loads them
                if not entry.allow_pickle:
                    kwargs["use_safetensors"] = True
                pipe = auto_class.from_pretrained(entry.source, **kwargs)
            pipe = pipe.to(self.device)
        except KittyError:  # already says what is wrong and what to do
            raise
        except Exception as exc:
            logger.exception("loading model %s from %s failed", entry.name, entry.source)
            if is_out_of_memory(exc):
                self.free_memory()
                raise EngineError(
                    f"{self.device} has not enough memory to load model '{entry.name}'",
                    remediation=["Set IMAGES_MODEL_CACHE_SIZE=1, use a smaller model, or another device."],
                ) from exc
            if isinstance(exc, OSError):
                raise ModelNotFound(
                    f"model '{entry.name}' at {entry.source} is incomplete: {short_error(exc)}",
                    remediation=[f"Fetch it again: {entry.fetch_hint()}"],
                ) from exc
            hints = [f"Fetch it again: {entry.fetch_hint()}", "Check the worker's log for details."]
            if is_single_file(entry):
                hints.insert(1, f"Check that {entry.config} is of its family and size, or set `config:`.")
            raise EngineError(
                f"could not load model '{entry.name}' from {entry.source}: {short_error(exc)}",
                remediation=hints,
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        if self.device.type == "mps":
            # Attention's peak memory is what overflows unified memory at SDXL sizes.
            pipe.enable_attention_slicing()
        try:
            optimizations = accelerate(pipe, self.device, self.compile_mode)
        except Exception:  # a speed-up that fails must not cost the model: it renders without it
            logger.warning("speed-ups not (all) applied to model %s", entry.name, exc_info=True)
            optimizations = []
        seconds = time.perf_counter() - started
        self.loads += 1
        MODEL_LOADS.labels(model=entry.name).inc()
        MODEL_LOAD_SECONDS.labels(model=entry.name).observe(seconds)
        attention = attention_processors(denoiser(pipe))
        logger.info(
            "loaded model %s (%s) on %s as %s in %.2f s; attention %s; %s",
            entry.name,
            type(pipe).__name__,
            self.device,
            dtype_name(self.dtype),
            seconds,
            ", ".join(attention) or "n/a",
            ", ".join(optimizations) or "no device-specific optimizations",
        )
        return Resident.loaded(entry, pipe, optimizations=optimizations, attention=attention)
