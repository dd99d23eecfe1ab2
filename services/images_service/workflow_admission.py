"""Admitting a raw ComfyUI workflow (API format: ``{node_id: {"class_type", "inputs"}}``) by what it
is and what it would cost, before it is queued.

ComfyUI runs whatever a graph says, and coerces what it is given (``"steps": "1000"`` becomes 1000),
so checking a few input names is no ceiling: a graph could repeat its latent 64 times, upscale it
8×, chain 500 samplers or read and write files by path. Here a graph is admitted only when

- every node is of an allowed type (`DEFAULT_NODE_TYPES`, or IMAGES_WORKFLOW_NODES);
- every input is a plain value or a link to a node of the graph, numbers are numbers (finite, never
  strings), and the links form no cycle;
- LoadImage/LoadImageMask read only inputs this service uploaded to ComfyUI, model names stay inside
  ComfyUI's model folders, and no ``filename_prefix`` names a path (the engine replaces it anyway);
- its cost fits the caller's tier: at most `MAX_SAMPLER_NODES` samplers, none over the tier's steps
  or sampling beyond the tier's size, no batch beyond the tier's images, no image anywhere beyond
  `MAX_UPSCALE`× the tier's side, no more images saved than the tier gives a job, and
  Σ steps × pixels × batch over all samplers within ``max_steps × max_pixels × max_images`` —
  exactly what our own template costs at the tier's limits.

Sizes are estimated by walking the graph in link order: each node's image or latent follows from
its inputs (scaled, padded, repeated); a picture whose size is unknown here (LoadImage) counts as the
tier's largest. Torch-free and pure: it raises `ValidationFailed` (400) naming the node and why.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from services.contracts.schema import MAX_IMAGES, MAX_SIDE, MAX_STEPS

from .errors import ValidationFailed


class WorkflowLimits(Protocol):
    """What a workflow is held to: a quotas `Tier`, or `OPEN_LIMITS`."""

    @property
    def name(self) -> str: ...
    @property
    def max_side(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def max_steps(self) -> int: ...
    @property
    def max_images(self) -> int: ...


@dataclass(frozen=True)
class Limits:
    name: str
    max_side: int
    max_pixels: int
    max_steps: int
    max_images: int


OPEN_NAME = "open"
OPEN_LIMITS = Limits(OPEN_NAME, MAX_SIDE, MAX_SIDE * MAX_SIDE, MAX_STEPS, MAX_IMAGES)
"""Without API keys there are no tiers, and a template request may ask for anything the wire takes
(4096², 150 steps, 8 images) within the deployment's IMAGES_MAX_SIDE and IMAGES_MAX_IMAGES
(`open_limits`): a raw workflow may cost as much as that largest request, no more."""


def open_limits(max_side: int, max_images: int) -> Limits:
    """`OPEN_LIMITS` within a deployment's own ceilings."""
    side = min(max_side, MAX_SIDE)
    return Limits(OPEN_NAME, side, side * side, MAX_STEPS, min(max_images, MAX_IMAGES))

DEFAULT_NODE_TYPES = frozenset(
    {
        # models, LoRA and prompts
        "CheckpointLoaderSimple",
        "VAELoader",
        "LoraLoader",
        "LoraLoaderModelOnly",
        "CLIPSetLastLayer",
        "CLIPTextEncode",
        "CLIPTextEncodeSDXL",
        "CLIPTextEncodeSDXLRefiner",
        "ConditioningCombine",
        "ConditioningConcat",
        "ConditioningSetTimestepRange",
        "ConditioningZeroOut",
        # latents and sampling: txt2img, img2img, inpainting, SDXL base + refiner
        "EmptyLatentImage",
        "VAEEncode",
        "VAEEncodeForInpaint",
        "InpaintModelConditioning",
        "VAEDecode",
        "SetLatentNoiseMask",
        "RepeatLatentBatch",
        "LatentFromBatch",
        "LatentUpscale",
        "LatentUpscaleBy",
        "KSampler",
        "KSamplerAdvanced",
        "SamplerCustom",
        "KSamplerSelect",
        "BasicScheduler",
        "KarrasScheduler",
        "ExponentialScheduler",
        "SDTurboScheduler",
        # upscaling
        "UpscaleModelLoader",
        "ImageUpscaleWithModel",
        "ImageScale",
        "ImageScaleBy",
        "ImageScaleToTotalPixels",
        # images and masks
        "EmptyImage",
        "LoadImage",
        "LoadImageMask",
        "ImageInvert",
        "ImageCompositeMasked",
        "RepeatImageBatch",
        "ImagePadForOutpaint",
        "ImageCrop",
        "ImageBlur",
        "ImageSharpen",
        "ImageToMask",
        "MaskToImage",
        "InvertMask",
        "GrowMask",
        # outputs
        "SaveImage",
        "PreviewImage",
    }
)
"""ComfyUI core nodes for SD1.5/SDXL text-to-image, image-to-image, inpainting, upscaling and LoRA,
and plain image operations: none reads or writes a file a graph may name (model files are chosen
from ComfyUI's own folders), none runs code, and the cost of each is modelled below. Left out on
purpose: file savers and loaders other than SaveImage/LoadImage (SaveLatent, LoadLatent, …), and
every custom node."""

MAX_SAMPLER_NODES = 4
"""Samplers in one graph: base, refiner and a hires-fix pass fit; 500 chained samplers do not."""

MAX_UPSCALE = 4
"""An image or latent anywhere in a graph may be this many times the tier's side (16× its pixels):
room for a 4× upscale of a full-size render, none for a chain of them."""

UPSCALE_MODEL_FACTOR = 4
"""ImageUpscaleWithModel's scale as estimated here: the model's own is unknown before it loads, and
4× (ESRGAN and its kind) is the usual one."""

MAX_NUMBER = 2**64
"""Largest magnitude of a number input (ComfyUI's seeds go up to 2⁶⁴ − 1)."""

SAMPLER_NODES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom"})
"""Nodes that denoise: each costs its steps × its latent's pixels × batch."""

OUTPUT_NODES = ("SaveImage", "PreviewImage")
"""The job's images: what SaveImage saves, or PreviewImage's when nothing is saved (the engine's rule)."""

UPLOAD_NAME = re.compile(r"kitty_(?:image|mask)_[0-9a-f]{32}\.png")
"""The names ComfyUIClient.upload gives the inputs it sends to ComfyUI's input folder
(``{OUTPUT_PREFIX}_{role}_{uuid4 hex}.png``): the only files a raw graph's LoadImage may read."""

IMAGE_FILE_INPUTS = {"LoadImage": "image", "LoadImageMask": "image"}
"""Nodes that read a picture from ComfyUI's input folder, and the input naming the file."""

MODEL_FILE_INPUTS = frozenset(
    {"ckpt_name", "vae_name", "lora_name", "model_name", "clip_name", "unet_name", "control_net_name"}
)
"""Inputs naming a model file in one of ComfyUI's model folders: relative, never leaving it."""

PREFIX_INPUT = "filename_prefix"

COST_INPUTS = frozenset(
    {
        "steps",
        "start_at_step",
        "end_at_step",
        "width",
        "height",
        "batch_size",
        "amount",
        "scale_by",
        "megapixels",
        "left",
        "top",
        "right",
        "bottom",
    }
)
"""Number inputs the cost is estimated from: they must be written in the graph (not linked), ≥ 0."""

NUMBER_INPUTS = COST_INPUTS | {
    "seed",
    "noise_seed",
    "cfg",
    "denoise",
    "strength_model",
    "strength_clip",
    "stop_at_clip_layer",
    "crop_w",
    "crop_h",
    "target_width",
    "target_height",
    "ascore",
    "start",
    "end",
    "grow_mask_by",
    "batch_index",
    "length",
    "sigma_max",
    "sigma_min",
    "rho",
    "color",
    "feathering",
    "x",
    "y",
    "blur_radius",
    "sigma",
    "sharpen_radius",
    "alpha",
    "expand",
}
"""Inputs that are numbers on the allowed nodes: a string there (which ComfyUI would convert) or a
NaN is refused."""

SETTING = "IMAGES_WORKFLOW_NODES"

HOW_TO_EXPORT = "Export the graph from ComfyUI with 'Export (API)' and send it as `workflow`."


@dataclass(frozen=True)
class Shape:
    """An image or latent batch as it would be in pixel space (a latent is 1/8 of each side)."""

    width: float
    height: float
    batch: float

    @property
    def pixels(self) -> float:
        return self.width * self.height

    def describe(self) -> str:
        batch = f", batch of {self.batch:.0f}" if self.batch != 1 else ""
        return f"{self.width:.0f}×{self.height:.0f} pixels{batch}"


@dataclass(frozen=True)
class WorkflowCost:
    """What an admitted graph was estimated to cost (steps × pixels × batch), per sampler node."""

    samplers: dict[str, float] = field(default_factory=dict)
    ceiling: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.samplers.values())


# --- the setting ----------------------------------------------------------------------------------
def allowed_node_types(setting: str | None) -> frozenset[str]:
    """IMAGES_WORKFLOW_NODES as a set of node types. Unset or empty: `DEFAULT_NODE_TYPES`. Plain
    names (``A,B``) replace the default; ``+A`` adds to it and ``-B`` takes away from it (with
    plain names, from those). Raises ValueError for an entry that is only a sign, or a ``-B`` that
    names nothing on the list (a typo would otherwise keep the node allowed)."""
    entries = [entry.strip() for entry in (setting or "").split(",") if entry.strip()]
    plain = {entry for entry in entries if entry[0] not in "+-"}
    allowed = set(plain) if plain else set(DEFAULT_NODE_TYPES)
    for entry in entries:
        sign, name = entry[0], entry[1:].strip()
        if sign not in "+-":
            continue
        if not name:
            raise ValueError(f"{SETTING}: '{entry}' names no node type")
        if sign == "+":
            allowed.add(name)
        elif name not in allowed:
            raise ValueError(f"{SETTING}: '-{name}' removes a node type that is not on the list")
        else:
            allowed.discard(name)
    return frozenset(allowed)


# --- refusals -------------------------------------------------------------------------------------
def _clip(text: object, limit: int = 60) -> str:
    """User text fit for a message: cut short, repr-quoted (no newline or control byte gets through)."""
    value = str(text)
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _where(node_id: str, class_type: object) -> str:
    plain = "".join(char if char.isprintable() else "?" for char in str(class_type)[:60])
    return f"workflow node {_clip(node_id)} ({plain})"


def _bad_node(
    node_id: str, class_type: object, reason: str, fix: str, *, problem: str, input_name: str | None = None
) -> ValidationFailed:
    detail: dict[str, Any] = {
        "node_id": node_id[:200],
        "class_type": str(class_type)[:200],
        "reason": problem,
    }
    if input_name is not None:
        detail["input"] = input_name[:200]
    return ValidationFailed(f"{_where(node_id, class_type)}: {reason}", remediation=[fix], detail=detail)


def _over(
    limits: WorkflowLimits,
    what: str,
    limit: str,
    requested: str,
    allowed: object,
    fix: str,
    node: tuple[str, object] | None = None,
) -> ValidationFailed:
    """A graph beyond its caller's ceiling, in the words (and detail) of the tier refusals."""
    who = f"tier '{limits.name}'" if limits.name != OPEN_NAME else "this service (no API keys)"
    asker = _where(*node) if node else "this workflow"
    remediation = [fix]
    if limits.name != OPEN_NAME:
        remediation.append("Or use a key of a higher tier (free < pro < enterprise).")
    detail: dict[str, Any] = {"tier": limits.name, "limit": limit, "allowed": allowed, "requested": requested}
    if node:
        detail["node_id"] = node[0][:200]
    return ValidationFailed(
        f"{who} allows {what}; {asker} asks for {requested}", remediation=remediation, detail=detail
    )


# --- the graph's shape ----------------------------------------------------------------------------
def _is_link(value: Any) -> TypeGuard[list[Any]]:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_file_name(node_id: str, class_type: str, name: str, value: Any) -> None:
    if class_type in IMAGE_FILE_INPUTS and name == IMAGE_FILE_INPUTS[class_type]:
        if not (isinstance(value, str) and UPLOAD_NAME.fullmatch(value)):
            raise _bad_node(
                node_id,
                class_type,
                f"`{name}` must name an input this service uploaded to ComfyUI "
                f"(kitty_image_<32 hex>.png or kitty_mask_<32 hex>.png), not {_clip(value)}",
                "Send the picture as the request's `image` (POST /api/images/uploads first) with the "
                "built-in template, or reuse the name a finished job recorded in engine_info.inputs.",
                problem="file_name",
                input_name=name,
            )
    elif name in MODEL_FILE_INPUTS and isinstance(value, str):
        parts = re.split(r"[\\/]", value)
        if ".." in parts or value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", value) or "\0" in value:
            raise _bad_node(
                node_id,
                class_type,
                f"`{name}` must be a model file inside ComfyUI's model folders, not the path {_clip(value)}",
                "Use a name ComfyUI lists (GET /object_info), e.g. 'sd_xl_base_1.0.safetensors' or "
                "'SDXL/sd_xl_base_1.0.safetensors'.",
                problem="file_name",
                input_name=name,
            )
    elif name == PREFIX_INPUT and isinstance(value, str):
        if "/" in value or "\\" in value or ".." in value or "\0" in value or ":" in value:
            raise _bad_node(
                node_id,
                class_type,
                f"`{name}` must be a plain name, not the path {_clip(value)}: a workflow cannot choose "
                "where ComfyUI writes",
                "Drop `filename_prefix` (or send a plain word): this service saves a raw workflow's "
                "images under its own prefix, kitty/<prompt id>, whatever it says.",
                problem="file_name",
                input_name=name,
            )


def _check_input(node_id: str, class_type: str, name: str, value: Any, graph: Mapping[str, Any]) -> None:
    """One input: a link to a node of the graph, or a plain value of the right kind."""

    def refuse(reason: str, fix: str, problem: str) -> ValidationFailed:
        return _bad_node(node_id, class_type, reason, fix, problem=problem, input_name=name)

    if _is_link(value):
        source, output = value
        if source not in graph:
            raise refuse(
                f"`{name}` links to node {_clip(source)}, which the workflow does not have",
                f"Add node {_clip(source)} or link `{name}` to a node that exists. {HOW_TO_EXPORT}",
                "missing_node",
            )
        if output < 0:
            raise refuse(
                f"`{name}` links to output {output} of node {_clip(source)}; outputs count from 0",
                HOW_TO_EXPORT,
                "bad_link",
            )
        if name in COST_INPUTS:
            raise refuse(
                f"`{name}` must be a number written in the workflow, not a link: the workflow's cost "
                "is estimated from it",
                f"Write the value of `{name}` into node {_clip(node_id)}.",
                "linked_number",
            )
    elif isinstance(value, list | dict) or value is None:
        raise refuse(
            f"`{name}` is neither a value nor a link ([node_id, output_index])",
            f'Give `{name}` a number, text or true/false, or a link like ["4", 0]. {HOW_TO_EXPORT}',
            "bad_value",
        )
    elif name in NUMBER_INPUTS and not _is_number(value):
        raise refuse(
            f"`{name}` must be a number, not {type(value).__name__} {_clip(value)}",
            f'Send `{name}` as a JSON number (e.g. 20, not "20").',
            "not_a_number",
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise refuse(
            f"`{name}` is {value}, not a finite number",
            f"Send `{name}` as a finite JSON number.",
            "not_finite",
        )
    elif _is_number(value) and (abs(value) > MAX_NUMBER or (name in COST_INPUTS and value < 0)):
        raise refuse(
            f"`{name}` is {str(value)[:30]}, out of range",
            f"Send `{name}` between 0 and {MAX_NUMBER}.",
            "out_of_range",
        )
    _check_file_name(node_id, class_type, name, value)


def _check_nodes(
    graph: Mapping[str, Any], node_types: frozenset[str]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each node's type against the allow-list and each input's value; (class_type, inputs) by id."""
    nodes: dict[str, tuple[str, dict[str, Any]]] = {}
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        inputs = node.get("inputs", {}) if isinstance(node, dict) else None
        if not isinstance(node_id, str) or not isinstance(class_type, str) or not isinstance(inputs, dict):
            raise _bad_node(
                str(node_id),
                class_type,
                "a node needs a 'class_type' string and an 'inputs' object",
                HOW_TO_EXPORT,
                problem="bad_node",
            )
        if class_type not in node_types:
            raise _bad_node(
                node_id,
                class_type,
                f"node type {_clip(class_type)} is not allowed here",
                f"Use the node types this service admits: {', '.join(sorted(node_types))}. An operator "
                f"can allow more with {SETTING} (e.g. {SETTING}=+{class_type[:60]}).",
                problem="node_type",
            )
        for name, value in inputs.items():
            _check_input(node_id, class_type, str(name), value, graph)
        nodes[node_id] = (class_type, inputs)
    return nodes


def _link_order(nodes: Mapping[str, tuple[str, dict[str, Any]]]) -> list[str]:
    """The node ids, each after the nodes it links from; a cycle is refused (ComfyUI would too, but
    only once it is queued)."""
    sources = {
        node_id: {value[0] for value in inputs.values() if _is_link(value)}
        for node_id, (_, inputs) in nodes.items()
    }
    order: list[str] = []
    done: set[str] = set()
    ready = deque(node_id for node_id, needs in sources.items() if not needs)
    users: dict[str, list[str]] = {}
    for node_id, needs in sources.items():
        for source in needs:
            users.setdefault(source, []).append(node_id)
    waiting = {node_id: len(needs) for node_id, needs in sources.items()}
    while ready:
        node_id = ready.popleft()
        order.append(node_id)
        done.add(node_id)
        for user in users.get(node_id, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) < len(nodes):
        stuck = next(node_id for node_id in nodes if node_id not in done)
        raise _bad_node(
            stuck,
            nodes[stuck][0],
            "its links form a cycle: the node depends on its own output",
            f"Remove the cycle through node {_clip(stuck)}. {HOW_TO_EXPORT}",
            problem="cycle",
        )
    return order


class _Estimate:
    """Each node's image or latent (`Shape`), worked out in link order, and the samplers' cost."""

    def __init__(self, nodes: Mapping[str, tuple[str, dict[str, Any]]], limits: WorkflowLimits) -> None:
        self.nodes = nodes
        self.limits = limits
        side = min(limits.max_side, math.isqrt(limits.max_pixels))
        self.largest_picture = Shape(side, side, 1)
        """A picture whose size is unknown here: the largest the tier renders."""
        self.shapes: dict[str, Shape | None] = {}

    def number(self, inputs: dict[str, Any], name: str, default: float) -> float:
        value = inputs.get(name)
        return float(value) if _is_number(value) else default

    def source(self, inputs: dict[str, Any], name: str) -> Shape:
        """The shape linked into `name`; unknown (not linked, or from a node not modelled here):
        the tier's largest picture at its largest batch."""
        value = inputs.get(name)
        shape = self.shapes.get(value[0]) if _is_link(value) else None
        if shape is None:
            return Shape(self.largest_picture.width, self.largest_picture.height, self.limits.max_images)
        return shape

    def shape_of(self, class_type: str, inputs: dict[str, Any]) -> Shape | None:
        rule = _SHAPE_RULES.get(class_type)
        return rule(self, inputs) if rule else None


def _sized(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
    default = estimate.largest_picture
    return Shape(
        max(1.0, estimate.number(inputs, "width", default.width)),
        max(1.0, estimate.number(inputs, "height", default.height)),
        max(1.0, estimate.number(inputs, "batch_size", 1)),
    )


def _passing(name: str) -> Callable[[_Estimate, dict[str, Any]], Shape]:
    """A node whose output is (at most) the size of its input `name`."""
    return lambda estimate, inputs: estimate.source(inputs, name)


def _scaled_to(name: str) -> Callable[[_Estimate, dict[str, Any]], Shape]:
    """LatentUpscale/ImageScale: to width × height; one of them 0 keeps the aspect, both keep the size."""

    def rule(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
        src = estimate.source(inputs, name)
        width, height = estimate.number(inputs, "width", 0), estimate.number(inputs, "height", 0)
        if width == 0 and height == 0:
            return src
        width = width or src.width * height / src.height
        height = height or src.height * width / src.width
        return Shape(max(1.0, width), max(1.0, height), src.batch)

    return rule


def _scaled_by(name: str) -> Callable[[_Estimate, dict[str, Any]], Shape]:
    def rule(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
        src, factor = estimate.source(inputs, name), estimate.number(inputs, "scale_by", 1)
        return Shape(max(1.0, src.width * factor), max(1.0, src.height * factor), src.batch)

    return rule


def _repeated(name: str) -> Callable[[_Estimate, dict[str, Any]], Shape]:
    def rule(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
        src = estimate.source(inputs, name)
        return Shape(src.width, src.height, src.batch * max(1.0, estimate.number(inputs, "amount", 1)))

    return rule


def _total_pixels(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
    src = estimate.source(inputs, "image")
    factor = math.sqrt(estimate.number(inputs, "megapixels", 1) * 1024 * 1024 / src.pixels)
    return Shape(max(1.0, src.width * factor), max(1.0, src.height * factor), src.batch)


def _model_upscaled(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
    src = estimate.source(inputs, "image")
    return Shape(src.width * UPSCALE_MODEL_FACTOR, src.height * UPSCALE_MODEL_FACTOR, src.batch)


def _padded(estimate: _Estimate, inputs: dict[str, Any]) -> Shape:
    src = estimate.source(inputs, "image")
    width = src.width + estimate.number(inputs, "left", 0) + estimate.number(inputs, "right", 0)
    height = src.height + estimate.number(inputs, "top", 0) + estimate.number(inputs, "bottom", 0)
    return Shape(width, height, src.batch)


_SHAPE_RULES: dict[str, Callable[[_Estimate, dict[str, Any]], Shape]] = {
    "EmptyLatentImage": _sized,
    "EmptyImage": _sized,
    "LoadImage": lambda estimate, inputs: estimate.largest_picture,
    "LoadImageMask": lambda estimate, inputs: estimate.largest_picture,
    "VAEEncode": _passing("pixels"),
    "VAEEncodeForInpaint": _passing("pixels"),
    "InpaintModelConditioning": _passing("pixels"),
    "VAEDecode": _passing("samples"),
    "SetLatentNoiseMask": _passing("samples"),
    "LatentFromBatch": _passing("samples"),
    "KSampler": _passing("latent_image"),
    "KSamplerAdvanced": _passing("latent_image"),
    "SamplerCustom": _passing("latent_image"),
    "ImageInvert": _passing("image"),
    "ImageBlur": _passing("image"),
    "ImageSharpen": _passing("image"),
    "ImageCrop": _passing("image"),
    "ImageToMask": _passing("image"),
    "ImageCompositeMasked": _passing("destination"),
    "MaskToImage": _passing("mask"),
    "InvertMask": _passing("mask"),
    "GrowMask": _passing("mask"),
    "SaveImage": _passing("images"),
    "PreviewImage": _passing("images"),
    "LatentUpscale": _scaled_to("samples"),
    "ImageScale": _scaled_to("image"),
    "LatentUpscaleBy": _scaled_by("samples"),
    "ImageScaleBy": _scaled_by("image"),
    "ImageScaleToTotalPixels": _total_pixels,
    "ImageUpscaleWithModel": _model_upscaled,
    "ImagePadForOutpaint": _padded,
    "RepeatLatentBatch": _repeated("samples"),
    "RepeatImageBatch": _repeated("image"),
}
"""How each modelled node's image or latent follows from its inputs (crops and batch slices count at
their input's size: they never grow it). Nodes without a rule carry no picture (models, prompts),
or one not modelled (a node added by IMAGES_WORKFLOW_NODES): a sampler or image node fed from one
counts the tier's largest picture at its largest batch."""

AT_TIER_SIZE = frozenset({"EmptyLatentImage", "EmptyImage"}) | SAMPLER_NODES
"""Nodes held to the tier's image size like a request: those that make a picture from nothing, and
the samplers (whose memory grows faster than their latent's pixels). Upscaling beyond it is for
after the last sampler, in pixels (ImageScale, ImageUpscaleWithModel), up to `MAX_UPSCALE`×."""


def _sampler_steps(estimate: _Estimate, class_type: str, inputs: dict[str, Any]) -> float:
    """The steps a sampler denoises: KSampler's; KSamplerAdvanced's between its start and end step;
    SamplerCustom's from its sigmas' scheduler (unknown: the tier's most)."""
    most = float(estimate.limits.max_steps)
    if class_type == "SamplerCustom":
        sigmas = inputs.get("sigmas")
        scheduler = estimate.nodes.get(sigmas[0]) if _is_link(sigmas) else None
        return estimate.number(scheduler[1], "steps", most) if scheduler else most
    steps = estimate.number(inputs, "steps", most)
    if class_type == "KSamplerAdvanced":
        end = min(steps, estimate.number(inputs, "end_at_step", steps))
        return max(0.0, end - estimate.number(inputs, "start_at_step", 0))
    return steps


def _check_cost(
    nodes: Mapping[str, tuple[str, dict[str, Any]]], order: list[str], limits: WorkflowLimits
) -> WorkflowCost:
    samplers = [node_id for node_id in order if nodes[node_id][0] in SAMPLER_NODES]
    if len(samplers) > MAX_SAMPLER_NODES:
        raise _over(
            limits,
            f"at most {MAX_SAMPLER_NODES} sampler nodes in a workflow",
            "samplers",
            f"{len(samplers)} ({', '.join(samplers[:8])}{', …' if len(samplers) > 8 else ''})",
            MAX_SAMPLER_NODES,
            f"Use at most {MAX_SAMPLER_NODES} of KSampler, KSamplerAdvanced and SamplerCustom.",
        )
    for node_id in order:
        class_type, inputs = nodes[node_id]
        steps = inputs.get("steps")
        if _is_number(steps) and steps > limits.max_steps:
            raise _over(
                limits,
                f"at most {limits.max_steps} steps",
                "steps",
                f"{steps:g} steps",
                limits.max_steps,
                f"Set `steps` of workflow node {_clip(node_id)} to {limits.max_steps} or less.",
                (node_id, class_type),
            )
    estimate = _Estimate(nodes, limits)
    largest = MAX_UPSCALE * limits.max_side
    for node_id in order:
        class_type, inputs = nodes[node_id]
        shape = estimate.shape_of(class_type, inputs)
        estimate.shapes[node_id] = shape
        if shape is None:
            continue
        node = (node_id, class_type)
        if class_type in AT_TIER_SIZE and (
            max(shape.width, shape.height) > limits.max_side or shape.pixels > limits.max_pixels
        ):
            raise _over(
                limits,
                f"images of at most {limits.max_side}×{limits.max_side} pixels",
                "size",
                shape.describe(),
                f"{limits.max_side}×{limits.max_side}",
                f"Keep what workflow node {_clip(node_id)} makes or samples within {limits.max_side}×"
                f"{limits.max_side} (width and height, upscales before it included); upscale after "
                "the last sampler instead.",
                node,
            )
        if shape.batch > limits.max_images:
            raise _over(
                limits,
                f"at most {limits.max_images} image(s) per job",
                "num_images",
                shape.describe(),
                limits.max_images,
                f"Keep every batch of the workflow (batch_size, amount) to {limits.max_images} or less.",
                node,
            )
        if max(shape.width, shape.height) > largest or shape.pixels > MAX_UPSCALE**2 * limits.max_pixels:
            raise _over(
                limits,
                f"images and latents of at most {largest}×{largest} pixels, upscales included",
                "size",
                shape.describe(),
                f"{largest}×{largest}",
                "Upscale less: one 4× upscale of a full-size image is the most a workflow may do.",
                node,
            )
    outputs = [node_id for node_id in order if nodes[node_id][0] == OUTPUT_NODES[0]] or [
        node_id for node_id in order if nodes[node_id][0] == OUTPUT_NODES[1]
    ]
    images = sum(shape.batch for node_id in outputs if (shape := estimate.shapes[node_id]) is not None)
    if images > limits.max_images:
        raise _over(
            limits,
            f"at most {limits.max_images} image(s) per job",
            "num_images",
            f"{images:.0f} images saved by nodes {', '.join(outputs[:8])}",
            limits.max_images,
            f"Save at most {limits.max_images} image(s): fewer SaveImage nodes or smaller batches.",
        )
    costs: dict[str, float] = {}
    for node_id in samplers:
        class_type, inputs = nodes[node_id]
        shape = estimate.source(inputs, "latent_image")
        costs[node_id] = _sampler_steps(estimate, class_type, inputs) * shape.pixels * shape.batch
    ceiling = float(limits.max_steps * limits.max_pixels * limits.max_images)
    cost = WorkflowCost(costs, ceiling)
    if cost.total > ceiling:
        parts = ", ".join(f"node {_clip(node_id)} {value:,.0f}" for node_id, value in costs.items())
        raise _over(
            limits,
            f"a workflow cost of at most {ceiling:,.0f} (steps × pixels × images: {limits.max_steps} × "
            f"{limits.max_side}×{limits.max_side} × {limits.max_images})",
            "cost",
            f"{cost.total:,.0f} ({parts})",
            int(ceiling),
            "Use fewer steps, smaller latents, fewer images or fewer sampler passes (a hires-fix pass "
            "costs its steps at the upscaled size).",
        )
    return cost


def admit_workflow(
    graph: Mapping[str, Any], limits: WorkflowLimits, node_types: frozenset[str] = DEFAULT_NODE_TYPES
) -> WorkflowCost:
    """Admit a raw ComfyUI graph for a caller held to `limits`, or raise `ValidationFailed` naming
    the node and the reason: its type, an input's value, a link, a file name, then its cost."""
    nodes = _check_nodes(graph, node_types)
    return _check_cost(nodes, _link_order(nodes), limits)
