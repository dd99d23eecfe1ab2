"""What actually rendered an image, in the words of the tools people open it with: the sampler and
schedule by AUTOMATIC1111's names (the infotext's ``Sampler:``/``Schedule type:``), and a ComfyUI
API-format graph equivalent to the render, so any of our images dropped into ComfyUI opens as a
workflow, whichever engine made it.

The request's `scheduler` is often None (the model's or the server's own default ran), so the name
comes from what the engine reports: diffusers' scheduler class, InvokeAI's scheduler, A1111's
answer, a raw ComfyUI graph's sampler node. Only a name nothing reports is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from services.contracts import A1111_SAMPLERS, RenderSpec

from .engines.base import RenderedImage, RenderResult
from .engines.comfyui.graph import (
    CHECKPOINT_NODE,
    COMFYUI_SAMPLERS,
    DEFAULT_SAMPLER,
    SAMPLER_NODE,
    ControlFiles,
    template_graph,
    template_steps,
    ui_workflow,
)
from .engines.invokeai.graph import DEFAULT_SCHEDULER as INVOKEAI_DEFAULT
from .engines.invokeai.graph import SCHEDULERS as INVOKEAI_SCHEDULERS
from .refiner import base_steps

CKPT_SUFFIX = ".safetensors"
"""The equivalent graph's ``ckpt_name`` is the model's name plus this: ComfyUI lists checkpoints by
file name, and our registry's names are those files' stems by convention. A checkpoint stored under
another name is picked again in ComfyUI's loader node; everything else stays as rendered."""

UNKNOWN_CKPT = "model"
"""The checkpoint stem when neither the request nor the server named one."""

DIFFUSERS_SCHEDULERS: dict[str, str] = {
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "HeunDiscreteScheduler": "heun",
    "LMSDiscreteScheduler": "lms",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "UniPCMultistepScheduler": "unipc",
}
"""A model's own diffusers scheduler class → our scheduler name (what runs when none is asked for;
SD 1.5 ships PNDM, SDXL Euler). Karras sigmas turn ``dpmpp_2m`` into ``dpmpp_2m_karras``."""

FLOW_MATCH_A1111: tuple[str, str | None] = ("Euler", "Simple")
FLOW_MATCH_COMFYUI: tuple[str, str] = ("euler", "simple")
"""Flow-matching models (SD3, Flux) run their own Euler on a linear sigma schedule: what Forge
writes as Euler/Simple and ComfyUI's default Flux workflow runs as euler/simple."""

COMFYUI_SCHEDULE_NAMES: dict[str, str | None] = {
    "normal": None,
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "ddim_uniform": "DDIM",
    "beta": "Beta",
    "kl_optimal": "KL Optimal",
}
"""ComfyUI's KSampler ``scheduler`` → A1111's "Schedule type" (None: the sampler's default, which
A1111 leaves unwritten)."""

COMFYUI_SAMPLER_NAMES: dict[str, str] = {
    **{comfy: A1111_SAMPLERS[ours][0] for ours, (comfy, _) in COMFYUI_SAMPLERS.items()},
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lcm": "LCM",
}
"""ComfyUI's KSampler ``sampler_name`` → A1111's sampler name; any other is written as ComfyUI
spells it."""


@dataclass(frozen=True)
class SamplerUsed:
    """One sampler and schedule, by A1111's names and by ComfyUI's."""

    a1111: tuple[str, str | None]
    comfyui: tuple[str, str]

    @classmethod
    def named(cls, name: str) -> SamplerUsed:
        """Ours (``dpmpp_2m_karras``); a name outside the table is kept as is for both."""
        return cls(A1111_SAMPLERS.get(name, (name, None)), COMFYUI_SAMPLERS.get(name, (name, "normal")))


@dataclass
class Provenance:
    """What `prepare_objects` writes of how one image was made."""

    sampler: SamplerUsed | None
    graph: dict[str, Any] | None = None
    """The ComfyUI API-format graph equivalent to the render (None for ComfyUI's own images, which
    carry the graph ComfyUI ran)."""
    chunks: dict[str, str] = field(default_factory=dict)
    """PNG text chunks: ComfyUI's ``prompt`` (API graph) and ``workflow`` (its UI layout)."""


def sampler_used(spec: RenderSpec, engine: str, result: RenderResult) -> SamplerUsed | None:
    """The sampler that ran; None only when nothing says (a raw graph whose sampler is wired)."""
    info = result.engine_info
    if result.settings_used is not None:  # a raw ComfyUI graph: its sampler node, not the request
        sampler, schedule = result.settings_used.get("sampler"), result.settings_used.get("scheduler")
        if not isinstance(sampler, str):
            return None
        schedule = schedule if isinstance(schedule, str) else "normal"
        a1111 = (COMFYUI_SAMPLER_NAMES.get(sampler, sampler), COMFYUI_SCHEDULE_NAMES.get(schedule, schedule))
        return SamplerUsed(a1111, (sampler, schedule))
    if engine == "diffusers" and spec.scheduler is None:
        return _diffusers_own(info)
    if engine == "invokeai":
        reverse = {theirs: ours for ours, theirs in INVOKEAI_SCHEDULERS.items()}
        used = str(info.get("scheduler") or INVOKEAI_DEFAULT)
        return SamplerUsed.named(reverse.get(used, spec.scheduler or used))
    if engine == "a1111" and spec.scheduler is None:
        answer = info.get("info") if isinstance(info.get("info"), dict) else {}
        name = answer.get("sampler_name") if isinstance(answer, dict) else None
        if isinstance(name, str) and name:
            schedule = answer.get("scheduler") if isinstance(answer, dict) else None
            schedule = schedule if isinstance(schedule, str) and schedule != "Automatic" else None
            ours = next((n for n, pair in A1111_SAMPLERS.items() if pair == (name, schedule)), None)
            comfy = COMFYUI_SAMPLERS[ours] if ours else DEFAULT_SAMPLER
            return SamplerUsed((name, schedule), comfy)
        return None
    return SamplerUsed.named(spec.scheduler or "euler")  # ComfyUI's template: its KSampler default


def _diffusers_own(info: dict[str, Any]) -> SamplerUsed | None:
    class_name = str(info.get("scheduler_class") or "")
    if class_name.startswith("FlowMatch"):
        return SamplerUsed(FLOW_MATCH_A1111, FLOW_MATCH_COMFYUI)
    name = DIFFUSERS_SCHEDULERS.get(class_name)
    if name is None and not class_name:
        return None
    if name is None:  # still named: a reader shows the class, better than no sampler at all
        return SamplerUsed((class_name.removesuffix("Scheduler"), None), DEFAULT_SAMPLER)
    if name == "dpmpp_2m" and info.get("scheduler_karras"):
        name = "dpmpp_2m_karras"
    return SamplerUsed.named(name)


def equivalent_graph(
    spec: RenderSpec, engine: str, result: RenderResult, rendered: RenderedImage, sampler: SamplerUsed | None
) -> dict[str, Any]:
    """The template graph rendering this one image: its own seed, a batch of one, the sampler that
    ran. Uploaded inputs are named by file name (put them in ComfyUI's input folder); so are the
    controls' pictures, whose edges a Canny node computes where ours were computed from a plain
    picture (`canny` with `preprocess`), and their ControlNets and the hires upscaler (by the model's
    name plus `CKPT_SUFFIX`, as the checkpoint). LoRAs become LoraLoader nodes between the checkpoint
    and its users (`_with_loras`), the SDXL refiner pass two KSamplerAdvanced split where ours is
    (`_with_refiner`). A reference image (IP-Adapter) has no core ComfyUI node: the graph opens
    without it."""
    single = spec.model_copy(
        update={"seed": rendered.seed if rendered.seed is not None else spec.seed, "num_images": 1}
    )
    image = PurePosixPath(spec.image).name if spec.image else None
    mask = PurePosixPath(spec.mask).name if spec.mask and image else None
    controls = [
        ControlFiles(
            PurePosixPath(control.image).name,
            (control.model or control.type) + CKPT_SUFFIX,
            detect_edges=control.type == "canny" and control.preprocess,
        )
        for control in spec.controls
    ]
    upscaler = spec.hires.upscaler if spec.hires is not None else None
    graph = template_graph(
        single,
        _ckpt_stem(spec, engine, result) + CKPT_SUFFIX,
        image=image,
        mask=mask,
        controls=controls,
        upscale_model=upscaler + CKPT_SUFFIX if upscaler else None,
    )
    if sampler is not None:
        sampler_name, schedule = sampler.comfyui
        for node_id in template_steps(spec):
            graph[node_id]["inputs"].update(sampler_name=sampler_name, scheduler=schedule)
    _with_loras(graph, spec)
    refiner = result.engine_info.get("refiner")
    if spec.refiner and isinstance(refiner, str):
        _with_refiner(graph, spec, refiner + CKPT_SUFFIX)
    return graph


LORA_FIRST_NODE = 40
"""LoraLoader node ids: 40, 41, … (ComfyUI's UI wants numeric ids; the template's stay below 30)."""
REFINER_NODES = ("50", "51", "52", "53")
"""The refiner's checkpoint loader, its two text encodes and its KSamplerAdvanced."""


def _insert_after(graph: dict[str, Any], anchor: str, nodes: dict[str, Any]) -> None:
    """Put `nodes` right after `anchor` in `graph`'s order (the UI workflow is laid out from it)."""
    items = list(graph.items())
    at = next(index for index, (node_id, _) in enumerate(items) if node_id == anchor) + 1
    graph.clear()
    graph.update(items[:at] + list(nodes.items()) + items[at:])


def _relink(graph: dict[str, Any], old: list[Any], new: list[Any], *, skip: set[str]) -> None:
    """Point every input linked to `old` at `new` (but in the nodes of `skip`)."""
    for node_id, node in graph.items():
        if node_id in skip:
            continue
        for name, value in node["inputs"].items():
            if value == old:
                node["inputs"][name] = list(new)


def _with_loras(graph: dict[str, Any], spec: RenderSpec) -> None:
    """Each of ``spec.loras`` as a LoraLoader (the file by its name plus `CKPT_SUFFIX`, its weight on
    both the model and the text encoder, as diffusers applies it), chained after the checkpoint."""
    model: list[Any] = [CHECKPOINT_NODE, 0]
    clip: list[Any] = [CHECKPOINT_NODE, 1]
    added: dict[str, Any] = {}
    for index, lora in enumerate(spec.loras):
        node_id = str(LORA_FIRST_NODE + index)
        added[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora.name + CKPT_SUFFIX,
                "strength_model": lora.weight,
                "strength_clip": lora.weight,
            },
        }
        model, clip = [node_id, 0], [node_id, 1]
    if added:
        _relink(graph, [CHECKPOINT_NODE, 0], model, skip=set(added))
        _relink(graph, [CHECKPOINT_NODE, 1], clip, skip=set(added))
        _insert_after(graph, CHECKPOINT_NODE, added)


def _with_refiner(graph: dict[str, Any], spec: RenderSpec, refiner_ckpt: str) -> None:
    """The SDXL refiner pass as ComfyUI's own SDXL workflow runs it: the base's KSampler becomes a
    KSamplerAdvanced that stops at `REFINER_SPLIT` of the steps and keeps its leftover noise, and
    the refiner checkpoint's KSamplerAdvanced finishes from there with its own text encodes."""
    base = graph[SAMPLER_NODE]["inputs"]
    split = base_steps(spec.steps)
    ckpt, positive, negative, sampler = REFINER_NODES
    graph[SAMPLER_NODE] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "add_noise": "enable",
            "noise_seed": base["seed"],
            "steps": spec.steps,
            "cfg": base["cfg"],
            "sampler_name": base["sampler_name"],
            "scheduler": base["scheduler"],
            "start_at_step": 0,
            "end_at_step": split,
            "return_with_leftover_noise": "enable",
            "model": base["model"],
            "positive": base["positive"],
            "negative": base["negative"],
            "latent_image": base["latent_image"],
        },
    }
    refiner: dict[str, Any] = {
        ckpt: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": refiner_ckpt}},
        **{
            node_id: {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [ckpt, 1]}}
            for node_id, text in ((positive, spec.prompt), (negative, spec.negative_prompt))
        },
    }
    refiner[sampler] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **graph[SAMPLER_NODE]["inputs"],
            "add_noise": "disable",
            "start_at_step": split,
            "end_at_step": spec.steps,
            "return_with_leftover_noise": "disable",
            "model": [ckpt, 0],
            "positive": [positive, 0],
            "negative": [negative, 0],
            "latent_image": [SAMPLER_NODE, 0],
        },
    }
    _relink(graph, [SAMPLER_NODE, 0], [sampler, 0], skip=set())
    _insert_after(graph, SAMPLER_NODE, refiner)


def _ckpt_stem(spec: RenderSpec, engine: str, result: RenderResult) -> str:
    info = result.engine_info
    if spec.model:
        return spec.model
    model = info.get("model")
    named = info.get("sd_model_name") or (model.get("name") if isinstance(model, dict) else None)
    return str(named) if named else UNKNOWN_CKPT


def provenance(spec: RenderSpec, engine: str, result: RenderResult, rendered: RenderedImage) -> Provenance:
    """The sampler for the infotext and, for engines other than ComfyUI, the equivalent graph and
    its PNG chunks. ComfyUI's images keep the chunks ComfyUI wrote; their sidecar records its
    ``prompt`` graph too."""
    sampler = sampler_used(spec, engine, result)
    if engine == "comfyui":
        try:
            graph = json.loads(rendered.text_chunks["prompt"]) if "prompt" in rendered.text_chunks else None
        except ValueError:
            graph = None
        return Provenance(sampler, graph if isinstance(graph, dict) else None)
    graph = equivalent_graph(spec, engine, result, rendered, sampler)
    chunks = {"prompt": json.dumps(graph, separators=(",", ":")), "workflow": json.dumps(ui_workflow(graph))}
    return Provenance(sampler, graph, chunks)
