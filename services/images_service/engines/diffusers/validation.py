"""What a render spec may ask of a diffusers model: a model name, the job's mode from its inputs,
the steps a strength runs, the refiner hand-over, a scheduler that fits the model, LoRAs and
guided-generation add-ons (ControlNets, IP-Adapters) made for its family, and which guides act.
Pure: no torch, no diffusers; where an answer needs a loaded pipeline, the caller passes what it
read from it (its class name, whether its call takes a parameter)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.contracts import ControlInput, RenderSpec

from ...errors import ValidationFailed
from ...models import LoraEntry
from ...refiner import check_refiner_follows

TXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"
"""A job's mode, from its spec: an `image` makes it image-to-image, a `mask` as well inpainting."""

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

LORA_FAMILIES = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd15"),
)
"""Pipeline class-name prefix → the model family a LoRA's `base` names (first match wins)."""


GUIDED_FAMILIES = ("sd15", "sdxl")
"""Model families whose pipelines take a `ControlNetModel` and an IP-Adapter in diffusers here."""


def check_spec(spec: RenderSpec) -> str:
    """The job's mode, once the spec names a model and asks for nothing its inputs rule out."""
    if spec.model is None:  # the API always resolves one; a hand-made job may not
        raise ValidationFailed("the diffusers engine needs a model name", remediation=["Set `model`."])
    mode = job_mode(spec)
    if spec.refiner:
        check_refiner_follows(mode == TXT2IMG)
    for control in active_controls(spec):
        if control.model is None:  # the API resolves one per control; a hand-made job may not
            raise ValidationFailed(
                f"the {control.type} control names no ControlNet",
                remediation=["Set the control's `model` to a models.yaml `controlnets:` entry."],
            )
    if is_referenced(spec) and spec.reference_model is None:
        raise ValidationFailed(
            "the reference image names no IP-Adapter",
            remediation=["Set `reference_model` to a models.yaml `ip_adapters:` entry."],
        )
    return mode


def active_controls(spec: RenderSpec) -> list[ControlInput]:
    """The controls that steer the render: a weight of 0 renders as if the control were absent,
    so it is left out altogether (no ControlNet pipeline, the very same pixels)."""
    return [control for control in spec.controls if control.weight > 0]


def is_referenced(spec: RenderSpec) -> bool:
    """Whether an IP-Adapter reference image acts (weight 0 renders as if none were sent)."""
    return spec.reference_image is not None and spec.reference_weight > 0


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


def check_refiner_handover(model: str, pipeline_class: str, *, takes_denoising_end: bool) -> None:
    """A refiner takes over mid-schedule: the base pipeline must stop early (``denoising_end``)."""
    if not takes_denoising_end:
        raise ValidationFailed(
            f"model '{model}' ({pipeline_class}) cannot hand over to a refiner",
            remediation=["Send refiner=false; the refiner pass is for SDXL-family models."],
        )


def scheduler_choice(
    name: str | None, model: str, own_scheduler_class: str, *, family: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The scheduler class and config overrides the wire name `name` asks of `model`, whose own
    scheduler is `own_scheduler_class` (and whose family, when known, the refusal names); None
    when the model's own scheduler is meant. A flow-matching model (SD3, Flux) takes only its own
    Euler: ``euler`` maps to it, any other name is refused rather than swapped for a sampler of
    the noise-prediction models that would render garbage or fail mid-job."""
    is_flow = own_scheduler_class.startswith(FLOW_MATCH_PREFIX)
    if name is None or (is_flow and name in FLOW_MATCH_ALIASES):
        return None
    if name not in SCHEDULERS:
        raise ValidationFailed(
            f"unknown scheduler '{name}'", remediation=[f"Use one of: {', '.join(SCHEDULERS)}."]
        )
    if is_flow:
        why = f"{family} models sample only with their own" if family else "it samples only with its own"
        raise ValidationFailed(
            f"model '{model}' is a flow-matching model; scheduler '{name}' does not apply to it "
            f"({why} flow-matching Euler)",
            remediation=[f"Omit the scheduler, or use one of: {', '.join(sorted(FLOW_MATCH_ALIASES))}."],
        )
    return SCHEDULERS[name]


def check_sides(model: str, family: str | None, sides: Iterable[int], multiple: int) -> None:
    """Every side a render draws is a multiple of `multiple`: what the model's latents (and SD3's
    patches, Flux's 2x2 packing) need. The wire allows multiples of 8; SD3 and Flux need 16, and
    would otherwise fail mid-job (SD3) or quietly render another size (Flux)."""
    odd = sorted({side for side in sides if side % multiple})
    if odd:
        raise ValidationFailed(
            f"model '{model}' ({family or 'unknown family'}) renders sides in multiples of {multiple}; "
            f"{', '.join(map(str, odd))} {'is not one' if len(odd) == 1 else 'are not'}",
            remediation=[f"Use a width and height (and hires size) divisible by {multiple}."],
        )


def unused_settings(family: str | None, spec: RenderSpec, *, has_guidance_embedding: bool) -> list[str]:
    """What of `spec` a model of `family` renders without, for its sidecar to say so. Flux runs no
    classifier-free guidance, so a negative prompt changes nothing; a timestep-distilled Flux
    (schnell: no guidance embedding) takes no cfg either, where FLUX.1-dev reads cfg as its
    distilled guidance (about 3.5). Ignored, not refused: presets and clients send both to every model."""
    if family != "flux":
        return []
    unused = ["negative_prompt"] if spec.negative_prompt else []
    if not has_guidance_embedding:
        unused.append("cfg")
    return unused


def model_family(pipeline_class: str) -> str | None:
    """The family (``sd15``, ``sdxl``, ...) of a pipeline, by its class name; None when unknown."""
    return next((family for prefix, family in LORA_FAMILIES if pipeline_class.startswith(prefix)), None)


def check_lora_bases(loras: Iterable[LoraEntry], model: str, family: str | None) -> None:
    """Every LoRA whose `base` is declared was made for `family` (a model of unknown family takes any)."""
    for lora in loras:
        check_base("LoRA", lora.name, lora.base, model, family)


def check_base(what: str, name: str, base: str | None, model: str, family: str | None) -> None:
    """An add-on (`what` names its kind: LoRA, ControlNet, IP-Adapter) whose `base` is declared was
    made for `family`; a model of unknown family takes any."""
    if base and family and base != family:
        raise ValidationFailed(
            f"{what} '{name}' is for {base} models; model '{model}' is {family}",
            remediation=[f"Use it with a {base} model, or pick a {what} made for {family}."],
        )


def check_guided_family(what: str, model: str, family: str | None) -> None:
    """ControlNets and IP-Adapters run here on SD1.5 and SDXL models only."""
    if family not in GUIDED_FAMILIES:
        raise ValidationFailed(
            f"model '{model}' ({family or 'unknown family'}) cannot take a {what} on the diffusers engine",
            remediation=[f"Use an {' or '.join(GUIDED_FAMILIES)} model for {what}s, or leave it out."],
        )
