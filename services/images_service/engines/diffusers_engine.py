"""The in-process diffusers engine: loads pipelines by name from models.yaml, keeps them resident in
an LRU, and renders a `RenderSpec` on CUDA, MPS or the CPU: text-to-image, image-to-image and
inpainting (pipelines derived from the resident one, sharing its weights), with LoRAs applied for
one job at a time.

Owns device/dtype choice, the scheduler table, the SDXL refiner pass, LoRA loading and removal,
warming a model at worker start and the mapping of torch's failures to the service's errors; the
CUDA speed-ups themselves live in `acceleration.py`. With `tiny.py` and `acceleration.py` the only
modules that import torch; workers import it, the API never does.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from services.contracts import RenderSpec

from ..errors import EngineError, KittyError, ModelNotFound, ValidationFailed
from ..models import LORA_HOWTO, LoraEntry, ModelEntry, ModelRegistry
from ..refiner import REFINER_SPLIT, base_steps, check_refiner_follows, refiner_of
from ..worker.metrics import MODEL_LOAD_SECONDS, MODEL_LOADS
from .acceleration import accelerate, attention_processors, compile_mode, denoiser, set_vae_tiling
from .base import EngineHealth, JobCanceled, ProgressFn, RenderedImage, RenderResult

logger = logging.getLogger("kitty.images.engines.diffusers")

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    # DPMSolverSDEScheduler needs the optional `torchsde` package; the single-step SDE solver needs
    # nothing extra, so a result never depends on what happens to be installed.
    "dpmpp_sde": (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "lower_order_final": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
"""Wire scheduler name → (diffusers scheduler class, config overrides), built with
``from_config(model's own scheduler config, **overrides)``. The DDIM/PNDM overrides are the
Stable Diffusion configs' own values for those samplers; `lower_order_final` is what the
single-step solver forces anyway with a zero final sigma (it warns on every job otherwise)."""

FLOW_MATCH_PREFIX = "FlowMatch"
"""Scheduler class prefix of flow-matching models (SD3, Flux): their own Euler is the only sampler
in the table that fits them."""

FLOW_MATCH_ALIASES = frozenset({"euler"})
"""Wire names that mean the flow-matching model's own scheduler."""

WARMUP_STEPS = 2
"""Denoising steps of the warm-up render `preload` makes on CUDA: the first call compiles (with
IMAGES_TORCH_COMPILE) and picks convolution algorithms; one step would skip the scheduler's second
branch on multistep samplers."""

WARMUP_PROMPT = "warm-up"

TXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"
"""A job's mode, from its spec: an `image` makes it image-to-image, a `mask` as well inpainting."""

DERIVED_PIPELINES: dict[str, Any] = {IMG2IMG: AutoPipelineForImage2Image, INPAINT: AutoPipelineForInpainting}
"""Mode → the auto class whose ``from_pipe`` builds that pipeline from the resident text-to-image one."""

FUSED_DENOISER = "fused_qkv:denoiser"
"""The `accelerate` optimization a LoRA job undoes for its duration (see `_loras_applied`)."""

ADAPTER_PREFIX = "kitty_lora_"
"""peft adapter names are ``{prefix}{position}``: registered LoRA names may hold dots, which peft
cannot take in a module key."""

LORA_FAMILIES = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd15"),
)
"""Pipeline class-name prefix → the model family a LoRA's `base` names (first match wins)."""

ERROR_TEXT_LIMIT = 300
"""Characters of a library exception kept in a user-facing message; the full trace goes to the log."""

_DTYPE_KWARG = "dtype" if hasattr(diffusers.utils.deprecation_utils, "_resolve_dtype") else "torch_dtype"
# diffusers renamed `torch_dtype` to `dtype` (the old name warns, then goes away in 1.0).


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else the first of CUDA, MPS, CPU that is available."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"'{requested}' is not a device torch knows",
                remediation=["Set IMAGES_DEVICE to cuda, cuda:N, mps or cpu, or leave it unset to detect."],
            ) from exc
        unavailable = (device.type == "cuda" and not torch.cuda.is_available()) or (
            device.type == "mps" and not torch.backends.mps.is_available()
        )
        if unavailable:
            raise EngineError(
                f"device '{requested}' was asked for but this torch build or machine has none",
                remediation=["Unset IMAGES_DEVICE to detect the device, or install a torch build with it."],
            )
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def pick_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where the GPU has it natively: fp16 overflows in SDXL's VAE);
    fp32 elsewhere (fp16 on MPS yields black images on several models; CPUs gain nothing)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return torch.bfloat16
        return torch.float16
    return torch.float32


def _library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for package in ("torch", "diffusers", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def job_mode(spec: RenderSpec) -> str:
    if spec.mask is not None and spec.image is None:
        raise ValidationFailed("a mask needs an image to inpaint", remediation=["Send `image` with `mask`."])
    return INPAINT if spec.mask is not None else IMG2IMG if spec.image is not None else TXT2IMG


def denoise_steps(steps: int, strength: float) -> int:
    """Denoising steps an image-to-image pass runs: diffusers' ``int(steps × strength)``, at least one
    for any strength above 0 (the lightest touch the schedule allows); 0 only for strength 0."""
    if strength <= 0:
        return 0
    return max(1, min(steps, int(steps * strength)))


def pipeline_strength(steps: int, strength: float) -> float:
    """The strength passed to diffusers: `strength` itself, unless it would run no step at all, then
    one that runs exactly one (diffusers reads only ``int(steps × strength)`` from it)."""
    if int(steps * strength) >= 1:
        return strength
    return min(1.0, 1.5 / steps)


def model_family(pipe: Any) -> str | None:
    name = type(pipe).__name__
    return next((family for prefix, family in LORA_FAMILIES if name.startswith(prefix)), None)


@dataclass
class _JobInputs:
    """The pictures of an image-to-image or inpainting job, at the output size."""

    image: Image.Image
    mask: Image.Image | None = None


@dataclass
class _Resident:
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
    refiner: _Resident | None = field(default=None)
    derived: dict[str, _Resident] = field(default_factory=dict)
    """Image-to-image and inpainting pipelines made from this one (same components, no reload)."""

    def accepts(self, param: str) -> bool:
        return param in self.call_params

    def set_scheduler(self, name: str | None) -> None:
        """Give the pipeline a fresh scheduler for this job, so no state or choice leaks between jobs."""
        is_flow = self.scheduler_class.__name__.startswith(FLOW_MATCH_PREFIX)
        if name is None or (is_flow and name in FLOW_MATCH_ALIASES):
            self.pipe.scheduler = self.scheduler_class.from_config(self.scheduler_config)
            return
        if name not in SCHEDULERS:
            raise ValidationFailed(
                f"unknown scheduler '{name}'", remediation=[f"Use one of: {', '.join(SCHEDULERS)}."]
            )
        if is_flow:
            raise ValidationFailed(
                f"model '{self.name}' is a flow-matching model; scheduler '{name}' does not apply to it",
                remediation=[f"Omit the scheduler, or use one of: {', '.join(sorted(FLOW_MATCH_ALIASES))}."],
            )
        class_name, overrides = SCHEDULERS[name]
        if class_name == "LMSDiscreteScheduler" and not diffusers.utils.is_scipy_available():
            raise EngineError(
                f"scheduler '{name}' needs scipy, which this worker does not have",
                remediation=["Install scipy on the worker (pip install scipy), or choose another scheduler."],
            )
        scheduler_class = getattr(diffusers, class_name)
        self.pipe.scheduler = scheduler_class.from_config(self.scheduler_config, **overrides)


class _StepReporter:
    """Turns the pipelines' per-iteration callbacks into one monotonic (step, total) sequence.

    A pass is given a share of `total`; its iterations (2n-1 of them for Heun, fewer for a partial
    schedule) are scaled into that share, and a step is reported only when it advances.
    """

    def __init__(self, progress: ProgressFn, total: int) -> None:
        self._progress = progress
        self.total = total
        self._last = -1

    def report(self, step: int) -> None:
        step = min(step, self.total)
        if step > self._last:
            self._last = step
            self._progress(step, self.total)

    def callback(self, offset: int, share: int) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
        def on_step_end(pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            iterations = max(int(getattr(pipe, "_num_timesteps", 0) or 0), index + 1)
            self.report(offset + (index + 1) * share // iterations)
            return tensors

        return on_step_end


def quiet_libraries() -> None:
    """Turn off diffusers'/transformers' tqdm bars and info chatter: workers log JSON lines."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


class DiffusersEngine:
    """Renders with diffusers pipelines held resident per worker (an LRU of `cache_size` models)."""

    name = "diffusers"

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str | None = None,
        cache_size: int = 1,
        torch_compile: str | None = None,
        image_loader: Callable[[str], Image.Image] | None = None,
    ) -> None:
        """`torch_compile` is IMAGES_TORCH_COMPILE's value: unset/``0`` off, ``1`` or a mode name on
        (CUDA only; elsewhere it is ignored with a log line). `image_loader` reads a stored image by
        key, for a spec's `image` and `mask`; without one, image-to-image jobs are refused."""
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._registry = registry
        self._image_loader = image_loader
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device)
        self.cache_size = cache_size
        try:
            self.compile_mode = compile_mode(torch_compile)
        except ValueError as exc:
            raise EngineError(str(exc), remediation=["Fix or unset IMAGES_TORCH_COMPILE."]) from exc
        if self.compile_mode and self.device.type != "cuda":
            logger.info("IMAGES_TORCH_COMPILE=%s is ignored on %s", torch_compile, self.device)
            self.compile_mode = None
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._lock = threading.Lock()
        self._versions = _library_versions()
        quiet_libraries()

    # --- public ---------------------------------------------------------------------------------
    def preload(self, model: str) -> None:
        """Load `model` before the first job (``images-worker --preload``). On CUDA also render once
        at the model's default size, so compilation (IMAGES_TORCH_COMPILE) and the choice of
        convolution algorithms happen now rather than in a user's job."""
        with self._lock:
            self._base(self._registry.get(model))
        if self.device.type != "cuda":
            return
        entry = self._registry.get(model)
        started = time.perf_counter()
        warmup = RenderSpec(
            prompt=WARMUP_PROMPT,
            model=model,
            width=int(entry.default("width")),
            height=int(entry.default("height")),
            steps=WARMUP_STEPS,
            cfg=float(entry.default("cfg")),
            seed=0,
            scheduler=entry.default("scheduler"),
        )
        self.render(warmup, lambda step, total: None)
        logger.info(
            "warmed model %s at %dx%d in %.2f s%s",
            model,
            warmup.width,
            warmup.height,
            time.perf_counter() - started,
            f" (torch.compile {self.compile_mode})" if self.compile_mode else "",
        )

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if spec.model is None:  # the API always resolves one; a hand-made job may not
            raise ValidationFailed("the diffusers engine needs a model name", remediation=["Set `model`."])
        mode = job_mode(spec)
        if spec.refiner:
            check_refiner_follows(mode == TXT2IMG)
        with self._lock:
            entry = self._registry.get(spec.model)
            loras = [(self._registry.lora(ref.name), ref.weight) for ref in spec.loras]
            refiner_name = refiner_of(entry, spec.model) if spec.refiner else None
            started = time.perf_counter()
            base = self._base(entry)
            refiner = None
            if refiner_name is not None:
                if not base.accepts("denoising_end"):
                    raise ValidationFailed(
                        f"model '{spec.model}' ({type(base.pipe).__name__}) cannot hand over to a refiner",
                        remediation=["Send refiner=false; the refiner pass is for SDXL-family models."],
                    )
                refiner = self._refiner(base, self._registry.get(refiner_name))
            resident = base if mode == TXT2IMG else self._derived(base, mode)
            load_s = time.perf_counter() - started
            inputs = self._inputs(spec) if mode != TXT2IMG else None

            started = time.perf_counter()
            try:
                with ExitStack() as stack:
                    if loras:
                        stack.enter_context(self._loras_applied(base, resident, loras))
                    lora_s = time.perf_counter() - started
                    images = self._run(spec, resident, refiner, progress, inputs)
            except (JobCanceled, KittyError):
                raise
            except Exception as exc:
                raise self._render_error(spec, exc) from exc
            render_s = time.perf_counter() - started

        engine_info: dict[str, Any] = {
            "mode": mode,
            "dtype": str(self.dtype).removeprefix("torch."),
            "pipeline_class": type(resident.pipe).__name__,
            "scheduler_class": type(resident.pipe.scheduler).__name__,
            "attention": list(base.attention),
            "optimizations": list(base.optimizations),
            "versions": dict(self._versions),
        }
        if getattr(getattr(base.pipe, "vae", None), "use_tiling", False):
            engine_info["vae_tiling"] = True
        if refiner is not None:
            engine_info["refiner"] = refiner.name
            engine_info["refiner_pipeline_class"] = type(refiner.pipe).__name__
        if spec.strength is not None and mode != TXT2IMG:
            engine_info["strength"] = spec.strength
            engine_info["denoise_steps"] = denoise_steps(spec.steps, spec.strength)
        timings = {"load_s": round(load_s, 4), "render_s": round(render_s, 4)}
        if loras:
            engine_info["loras"] = [{"name": lora.name, "weight": weight} for lora, weight in loras]
            timings["lora_s"] = round(lora_s, 4)
        return RenderResult(
            images=[RenderedImage(image=image, seed=spec.seed + i) for i, image in enumerate(images)],
            device=str(self.device),
            engine_info=engine_info,
            timings=timings,
        )

    def health(self) -> EngineHealth:
        if not self._registry.names():
            return EngineHealth("misconfigured", f"no models registered in {self._registry.path}")
        resident = ", ".join(self._resident) or "none yet"
        return EngineHealth(
            "ready", f"{self.device} {self.dtype}; resident: {resident}", self._versions.get("diffusers")
        )

    def close(self) -> None:
        with self._lock:
            self._resident.clear()
            self._free_memory()

    # --- rendering -------------------------------------------------------------------------------
    def _run(
        self,
        spec: RenderSpec,
        base: _Resident,
        refiner: _Resident | None,
        progress: ProgressFn,
        inputs: _JobInputs | None = None,
    ) -> list[Any]:
        """Render with `base` (the text-to-image pipeline, or an image-to-image/inpainting one made
        from it when `inputs` are given), then `refiner` if any."""
        strength = spec.strength if spec.strength is not None else 1.0
        total = spec.steps if inputs is None else denoise_steps(spec.steps, strength)
        reporter = _StepReporter(progress, total)
        reporter.report(0)
        if inputs is not None and total == 0:
            # Strength 0 keeps the picture: no pass can run without a denoising step.
            reporter.report(total)
            return [inputs.image.copy() for _ in range(spec.num_images)]
        base.set_scheduler(spec.scheduler)
        # One CPU generator per image: the same spec gives the same pixels on a device, and image i
        # of a batch is re-rendered alone from seed+i (up to batched float rounding).
        generators = [
            torch.Generator(device="cpu").manual_seed(spec.seed + i) for i in range(spec.num_images)
        ]
        common = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt or None,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.cfg,
            "num_images_per_prompt": spec.num_images,
            "generator": generators,
        }
        base_share = spec.steps if refiner is None else base_steps(spec.steps)
        base_kwargs: dict[str, Any] = {**common, "width": spec.width, "height": spec.height}
        if inputs is not None:
            base_kwargs.update(
                image=inputs.image, mask_image=inputs.mask, strength=pipeline_strength(spec.steps, strength)
            )
            base_share = total
        for resident in (base, refiner):
            if resident is not None:
                set_vae_tiling(resident.pipe, self.device, spec.width, spec.height)
        if refiner is not None:
            base_kwargs.update(denoising_end=REFINER_SPLIT, output_type="latent")
        with torch.inference_mode():
            output = base.pipe(**self._accepted(base, base_kwargs, reporter.callback(0, base_share)))
            images = output.images
            if refiner is not None:
                refiner.set_scheduler(spec.scheduler)
                refiner_kwargs = {**common, "image": images, "denoising_start": REFINER_SPLIT}
                callback = reporter.callback(base_share, spec.steps - base_share)
                images = refiner.pipe(**self._accepted(refiner, refiner_kwargs, callback)).images
        reporter.report(total)
        if inputs is not None and inputs.mask is not None:
            # Outside the mask the picture is kept as sent, not as the VAE redraws it (A1111's overlay).
            return [Image.composite(image, inputs.image, inputs.mask) for image in images]
        return list(images)

    def _inputs(self, spec: RenderSpec) -> _JobInputs:
        """The job's image (RGB) and mask (L, white = repaint), read by key and resized to the output
        size: the pipelines then render exactly width × height."""
        if self._image_loader is None:
            raise EngineError(
                "this diffusers engine was built without access to stored images",
                remediation=[
                    "Run image-to-image jobs on an images-worker (it reads uploads from the store)."
                ],
            )
        size = (spec.width, spec.height)
        assert spec.image is not None
        image = self._image_loader(spec.image).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        mask = None
        if spec.mask is not None:
            mask = self._image_loader(spec.mask).convert("L").resize(size, Image.Resampling.LANCZOS)
        return _JobInputs(image=image, mask=mask)

    # --- LoRA ------------------------------------------------------------------------------------
    @contextmanager
    def _loras_applied(
        self, base: _Resident, resident: _Resident, loras: list[tuple[LoraEntry, float]]
    ) -> Iterator[None]:
        """`loras` loaded into the pipeline's modules as peft adapters at their weights, for the
        body of the block; afterwards (also after a failure or a cancel) every one is taken out."""
        if not diffusers.utils.USE_PEFT_BACKEND:
            raise EngineError(
                "LoRAs need the peft package on the worker",
                remediation=["Install it: pip install -e '.[worker]' (or pip install peft)."],
            )
        family = model_family(resident.pipe)
        for lora, _ in loras:
            if lora.base and family and lora.base != family:
                raise ValidationFailed(
                    f"LoRA '{lora.name}' is for {lora.base} models; model '{resident.name}' is {family}",
                    remediation=[f"Use it with a {lora.base} model, or pick a LoRA made for {family}."],
                )
        model = denoiser(resident.pipe)
        fused = model is not None and FUSED_DENOISER in resident.optimizations
        if fused:
            # A fused QKV projection bypasses the to_q/to_k/to_v layers a LoRA patches.
            model.unfuse_qkv_projections()
        try:
            names = [f"{ADAPTER_PREFIX}{position}" for position in range(len(loras))]
            for (lora, _), adapter in zip(loras, names, strict=True):
                self._load_lora(resident, lora, adapter)
            resident.pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
            yield
        finally:
            self._remove_loras(base, resident, refuse=fused)

    def _load_lora(self, resident: _Resident, lora: LoraEntry, adapter: str) -> None:
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
                f"LoRA '{lora.name}' could not be applied to model '{resident.name}': {_short(exc)}",
                remediation=[
                    "Check it was trained for this model's family (its `base` in models.yaml).",
                    "Check the file is a diffusers or kohya LoRA in .safetensors format.",
                ],
            ) from exc

    def _remove_loras(self, base: _Resident, resident: _Resident, *, refuse: bool) -> None:
        """Take every LoRA out again, so the next job renders with the model's own weights. Should
        that fail, the model is dropped from memory: the next job loads it clean."""
        try:
            resident.pipe.unload_lora_weights()
            model = denoiser(resident.pipe)
            if refuse and model is not None:
                model.fuse_qkv_projections()
        except Exception:
            logger.exception("removing LoRAs from model %s failed; unloading the model", base.name)
            if self._resident.get(base.name) is base:
                del self._resident[base.name]
            self._free_memory()

    @staticmethod
    def _accepted(
        resident: _Resident, kwargs: dict[str, Any], callback: Callable[..., Any]
    ) -> dict[str, Any]:
        """Only what this pipeline's __call__ takes (Flux has no negative prompt on older releases, ...)."""
        if resident.accepts("callback_on_step_end"):
            kwargs = {**kwargs, "callback_on_step_end": callback}
        return {key: value for key, value in kwargs.items() if resident.accepts(key) and value is not None}

    def _render_error(self, spec: RenderSpec, exc: Exception) -> EngineError:
        logger.exception("render of model %s failed on %s", spec.model, self.device)
        if _is_out_of_memory(exc):
            self._free_memory()
            return EngineError(
                f"{self.device} ran out of memory rendering {spec.width}x{spec.height} x{spec.num_images} "
                f"with model '{spec.model}'",
                remediation=[
                    "Lower width/height or num_images, or turn the refiner off.",
                    "Or set IMAGES_MODEL_CACHE_SIZE=1 so only one model stays resident.",
                ],
            )
        return EngineError(f"rendering with model '{spec.model}' failed: {_short(exc)}")

    # --- loading ---------------------------------------------------------------------------------
    def _base(self, entry: ModelEntry) -> _Resident:
        resident = self._resident.get(entry.name)
        if resident is not None and resident.source == entry.source:
            self._resident.move_to_end(entry.name)
            return resident
        self._resident.pop(entry.name, None)
        while len(self._resident) >= self.cache_size:
            evicted, _ = self._resident.popitem(last=False)
            logger.info("evicting model %s to make room for %s", evicted, entry.name)
            self._free_memory()
        resident = self._load(entry, AutoPipelineForText2Image)
        self._resident[entry.name] = resident
        return resident

    def _derived(self, base: _Resident, mode: str) -> _Resident:
        """The image-to-image or inpainting pipeline of `base`, made once from its components."""
        derived = base.derived.get(mode)
        if derived is None:
            try:
                pipe = DERIVED_PIPELINES[mode].from_pipe(base.pipe)
            except ValueError as exc:  # no such pipeline for this model's family
                raise ValidationFailed(
                    f"model '{base.name}' ({type(base.pipe).__name__}) has no {mode} pipeline in diffusers",
                    remediation=["Use an SD 1.5, SDXL, SD3 or Flux model for image-to-image and inpainting."],
                ) from exc
            pipe.set_progress_bar_config(disable=True)
            derived = _Resident(
                name=base.name,
                source=base.source,
                pipe=pipe,
                scheduler_class=base.scheduler_class,
                scheduler_config=base.scheduler_config,
                call_params=frozenset(inspect.signature(pipe.__call__).parameters),
                optimizations=base.optimizations,
                attention=base.attention,
            )
            base.derived[mode] = derived
            logger.info("derived %s pipeline %s from model %s", mode, type(pipe).__name__, base.name)
        return derived

    def _refiner(self, base: _Resident, entry: ModelEntry) -> _Resident:
        # The refiner lives with its base so an LRU of one keeps both rather than evicting each in turn.
        if base.refiner is None or (base.refiner.name, base.refiner.source) != (entry.name, entry.source):
            base.refiner = None
            base.refiner = self._load(entry, AutoPipelineForImage2Image)
        return base.refiner

    def _check_available(self, entry: ModelEntry) -> None:
        if entry.is_local:
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

    def _load(self, entry: ModelEntry, auto_class: Any) -> _Resident:
        self._check_available(entry)
        started = time.perf_counter()
        # Downloads belong to `kitty-images models pull`, not to a job running under a timeout.
        kwargs: dict[str, Any] = {_DTYPE_KWARG: self.dtype, "local_files_only": True}
        try:
            pipe = auto_class.from_pretrained(entry.source, **kwargs)
            pipe = pipe.to(self.device)
        except Exception as exc:
            logger.exception("loading model %s from %s failed", entry.name, entry.source)
            if _is_out_of_memory(exc):
                self._free_memory()
                raise EngineError(
                    f"{self.device} has not enough memory to load model '{entry.name}'",
                    remediation=["Set IMAGES_MODEL_CACHE_SIZE=1, use a smaller model, or another device."],
                ) from exc
            if isinstance(exc, OSError):
                raise ModelNotFound(
                    f"model '{entry.name}' at {entry.source} is incomplete: {_short(exc)}",
                    remediation=[f"Fetch it again: {entry.fetch_hint()}"],
                ) from exc
            raise EngineError(
                f"could not load model '{entry.name}' from {entry.source}: {_short(exc)}",
                remediation=[f"Fetch it again: {entry.fetch_hint()}", "Check the worker's log for details."],
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
        MODEL_LOADS.labels(model=entry.name).inc()
        MODEL_LOAD_SECONDS.labels(model=entry.name).observe(seconds)
        attention = attention_processors(denoiser(pipe))
        logger.info(
            "loaded model %s (%s) on %s as %s in %.2f s; attention %s; %s",
            entry.name,
            type(pipe).__name__,
            self.device,
            str(self.dtype).removeprefix("torch."),
            seconds,
            ", ".join(attention) or "n/a",
            ", ".join(optimizations) or "no device-specific optimizations",
        )
        return _Resident(
            name=entry.name,
            source=entry.source,
            pipe=pipe,
            scheduler_class=type(pipe.scheduler),
            scheduler_config=dict(pipe.scheduler.config),
            call_params=frozenset(inspect.signature(pipe.__call__).parameters),
            optimizations=optimizations,
            attention=attention,
        )

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()
