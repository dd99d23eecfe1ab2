"""ComfyUI's graphs, pure: the built-in template in the API format (txt2img, image-to-image,
inpainting, ControlNet guidance, the hires fix), the same graph in the UI's format for the PNG's
``workflow`` chunk, the settings a raw graph renders with, model file names, and what ComfyUI's
``node_errors`` and node failures say."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from services.contracts import RenderSpec
from services.contracts.schema import MAX_CONTROLS

from ...uploads import DEFAULT_STRENGTH

COMFYUI_SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("euler", "normal"),
    "euler_a": ("euler_ancestral", "normal"),
    "heun": ("heun", "normal"),
    "lms": ("lms", "normal"),
    "ddim": ("ddim", "ddim_uniform"),
    # ComfyUI has no PNDM/PLMS; "ipndm" (improved PNDM) is the same pseudo-numerical family.
    "pndm": ("ipndm", "normal"),
    "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_sde": ("dpmpp_sde", "normal"),
    "unipc": ("uni_pc", "normal"),
}
"""Our scheduler names → ComfyUI's KSampler (``sampler_name``, ``scheduler``)."""

DEFAULT_SAMPLER = ("euler", "normal")
"""ComfyUI's own KSampler defaults, used when a request names no scheduler."""

OUTPUT_PREFIX = "kitty"
"""SaveImage's ``filename_prefix``: our renders are recognisable in ComfyUI's output folder."""

PREFIX_INPUT = "filename_prefix"
"""The input of SaveImage (and savers like it) that says where in ComfyUI's output folder it writes."""

PREFIXED_OUTPUT_NODES = frozenset({"SaveImage"})
"""Output nodes that take a `PREFIX_INPUT`; PreviewImage has none (it writes to ComfyUI's temp folder
under a name of its own)."""

KEPT_CHUNKS = ("prompt", "workflow")
"""ComfyUI's PNG text chunks kept in the stored image, so it can be dragged back into ComfyUI."""

CHECKPOINT_NODE, SAMPLER_NODE, SAVE_NODE = "4", "3", "9"
"""Node ids of the template (those of ComfyUI's default workflow, familiar to its users)."""

IMAGE_NODE, MASK_NODE = "10", "13"
"""The image-to-image template's LoadImage and LoadImageMask: they read our uploaded files."""

CONTROL_FIRST_NODE, CONTROL_NODE_COUNT = 20, 4
"""Control i's nodes are ``20 + 4i`` (LoadImage of its map), ``+1`` (Canny, only in a graph that
computes the edges itself), ``+2`` (ControlNetLoader) and ``+3`` (ControlNetApplyAdvanced)."""

HIRES_SAMPLER_NODE = "34"
"""The hires fix's second KSampler; ``30``-``35`` are that pass's nodes."""

HIRES_SCALE_METHOD = "lanczos"
"""ImageScale's method for the hires fix's resize (and the only one without an upscaler): Lanczos,
as the wire promises when `HiresFix.upscaler` is absent."""

CANNY_THRESHOLDS = (100 / 255, 200 / 255)
"""The Canny node's (low, high) in a graph that computes edges itself (the equivalent graph of a
`canny` control with `preprocess`): OpenCV's 100 and 200 on its 0-255 scale, ComfyUI's 0-1 one."""

MASK_CHANNEL = "red"
"""LoadImageMask's channel for our masks, greyscale PNGs (white = repaint): "red" reads the grey
value as is; "alpha" would read their absent alpha as opaque, and invert it."""

CONTROL_AFTER_GENERATE = "fixed"
"""The UI's seed widget mode written into the workflow chunk: reloading it reproduces the image."""

UPLOAD_WIDGET = "image"
"""What the UI saves for LoadImage's upload button, a widget with no input behind it."""

_UI_ONLY_WIDGETS = {"control_after_generate": CONTROL_AFTER_GENERATE, "upload": UPLOAD_WIDGET}

_Ports = tuple[tuple[str, str], ...]
_UI_NODE_SHAPES: dict[str, tuple[_Ports, _Ports, tuple[str, ...]]] = {
    # class_type: ((linked inputs (name, type)), (outputs (name, type)), widget inputs in UI order)
    "CheckpointLoaderSimple": ((), (("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")), ("ckpt_name",)),
    "CLIPTextEncode": ((("clip", "CLIP"),), (("CONDITIONING", "CONDITIONING"),), ("text",)),
    "EmptyLatentImage": ((), (("LATENT", "LATENT"),), ("width", "height", "batch_size")),
    "KSampler": (
        (
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ),
        (("LATENT", "LATENT"),),
        ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    ),
    "VAEDecode": ((("samples", "LATENT"), ("vae", "VAE")), (("IMAGE", "IMAGE"),), ()),
    "SaveImage": ((("images", "IMAGE"),), (), ("filename_prefix",)),
    "LoadImage": ((), (("IMAGE", "IMAGE"), ("MASK", "MASK")), ("image", "upload")),
    "LoadImageMask": ((), (("MASK", "MASK"),), ("image", "channel", "upload")),
    "VAEEncode": ((("pixels", "IMAGE"), ("vae", "VAE")), (("LATENT", "LATENT"),), ()),
    "RepeatLatentBatch": ((("samples", "LATENT"),), (("LATENT", "LATENT"),), ("amount",)),
    "SetLatentNoiseMask": ((("samples", "LATENT"), ("mask", "MASK")), (("LATENT", "LATENT"),), ()),
    "RepeatImageBatch": ((("image", "IMAGE"),), (("IMAGE", "IMAGE"),), ("amount",)),
    "ImageCompositeMasked": (
        (("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")),
        (("IMAGE", "IMAGE"),),
        ("x", "y", "resize_source"),
    ),
    "Canny": ((("image", "IMAGE"),), (("IMAGE", "IMAGE"),), ("low_threshold", "high_threshold")),
    "ControlNetLoader": ((), (("CONTROL_NET", "CONTROL_NET"),), ("control_net_name",)),
    "ControlNetApplyAdvanced": (
        (
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("control_net", "CONTROL_NET"),
            ("image", "IMAGE"),
        ),
        (("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
        ("strength", "start_percent", "end_percent"),
    ),
    "UpscaleModelLoader": ((), (("UPSCALE_MODEL", "UPSCALE_MODEL"),), ("model_name",)),
    "ImageUpscaleWithModel": (
        (("upscale_model", "UPSCALE_MODEL"), ("image", "IMAGE")),
        (("IMAGE", "IMAGE"),),
        (),
    ),
    "ImageScale": (
        (("image", "IMAGE"),),
        (("IMAGE", "IMAGE"),),
        ("upscale_method", "width", "height", "crop"),
    ),
    # The equivalent graphs of other engines' renders also use these (services/images_service/provenance.py).
    "LoraLoader": (
        (("model", "MODEL"), ("clip", "CLIP")),
        (("MODEL", "MODEL"), ("CLIP", "CLIP")),
        ("lora_name", "strength_model", "strength_clip"),
    ),
    "KSamplerAdvanced": (
        (
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ),
        (("LATENT", "LATENT"),),
        (
            "add_noise",
            "noise_seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ),
    ),
}
"""The template's node types as ComfyUI's UI describes them, to write a loadable ``workflow`` chunk."""

SAMPLER_SEED_INPUTS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed"}
"""ComfyUI's core sampler nodes and the input that holds each one's seed."""

LOADER_NODES = frozenset(
    {
        "CheckpointLoaderSimple",
        "CheckpointLoader",
        "UNETLoader",
        "VAELoader",
        "LoraLoader",
        "ControlNetLoader",
        "UpscaleModelLoader",
    }
)
"""Nodes that read a model file: their failures are about the file, not about memory."""


@dataclass(frozen=True)
class ControlFiles:
    """What the template's graph names for one of the spec's controls (same order)."""

    image: str
    """The picture LoadImage reads (a name in ComfyUI's input folder)."""
    model: str
    """The ControlNet file ControlNetLoader reads (a name in ComfyUI's models/controlnet)."""
    detect_edges: bool = False
    """`image` is a plain picture whose edges a Canny node computes; False: `image` is the map."""


def control_nodes(index: int) -> tuple[str, str, str, str]:
    """Control `index`'s node ids: LoadImage, Canny, ControlNetLoader, ControlNetApplyAdvanced."""
    first = CONTROL_FIRST_NODE + CONTROL_NODE_COUNT * index
    return str(first), str(first + 1), str(first + 2), str(first + 3)


INPUT_NODES = frozenset({IMAGE_NODE, MASK_NODE, *(control_nodes(i)[0] for i in range(MAX_CONTROLS))})
"""The template's nodes that read our uploads: their failing validation means an upload is gone."""


def template_steps(spec: RenderSpec) -> dict[str, int]:
    """The template's samplers and, for each, how many steps run before it: its progress adds on."""
    samplers = {SAMPLER_NODE: 0}
    if spec.hires is not None:
        samplers[HIRES_SAMPLER_NODE] = spec.steps
    return samplers


def hires_steps(spec: RenderSpec) -> int:
    """The hires fix's second pass's steps (0 without one): its own, or the request's."""
    if spec.hires is None:
        return 0
    return spec.hires.steps or spec.steps


def template_graph(
    spec: RenderSpec,
    ckpt_name: str,
    *,
    image: str | None = None,
    mask: str | None = None,
    controls: Sequence[ControlFiles] = (),
    upscale_model: str | None = None,
) -> dict[str, Any]:
    """The built-in graph in ComfyUI's API format (links are ``[node_id, output_index]``): txt2img,
    or image-to-image from `image` (inpainting with `mask`), the names ComfyUI gave our uploads.

    Each of `controls` (one per ``spec.controls``, in order) chains a ControlNetApplyAdvanced onto
    both prompts before they reach a sampler, at the control's weight and step range. With
    ``spec.hires`` a second pass follows: the first pass's pixels resized to ``spec.output_size``
    (through `upscale_model`, a file of ComfyUI's models/upscale_models, then Lanczos to the exact
    size; Lanczos alone without one), encoded again and resampled at the hires strength, with the
    same seed and the same (controlled) prompts — A1111's hires fix.

    Image-to-image encodes the picture (VAEEncode) instead of starting from an empty latent, and
    the KSampler's ``denoise`` is the job's strength. A batch repeats that latent in the one prompt
    (RepeatLatentBatch): ComfyUI draws every image's noise from the one seed, as for txt2img, and
    progress stays one sampler's. Inpainting resamples only white (SetLatentNoiseMask), then pastes
    the decoded pixels over the original through the mask (ImageCompositeMasked): the VAE's round
    trip shifts every pixel a little, and black must come back exactly as sent.
    """
    sampler_name, scheduler = COMFYUI_SAMPLERS.get(spec.scheduler or "", DEFAULT_SAMPLER)
    graph: dict[str, Any] = {
        CHECKPOINT_NODE: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": spec.prompt, "clip": [CHECKPOINT_NODE, 1]}},
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": spec.negative_prompt, "clip": [CHECKPOINT_NODE, 1]},
        },
    }
    # Nodes go in in the order they run: the UI workflow is laid out from that order.
    if len(controls) != len(spec.controls):
        raise ValueError(f"the spec has {len(spec.controls)} controls; {len(controls)} were named")
    positive, negative = _apply_controls(graph, spec, controls)
    if image is None:
        graph["5"] = {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": spec.width, "height": spec.height, "batch_size": spec.num_images},
        }
        latent, denoise = ["5", 0], 1.0
    else:
        latent = _input_latent(graph, spec, image, mask)
        denoise = spec.strength if spec.strength is not None else DEFAULT_STRENGTH
    graph[SAMPLER_NODE] = {
        "class_type": "KSampler",
        "inputs": {
            "seed": spec.seed,
            "steps": spec.steps,
            "cfg": spec.cfg,
            "sampler_name": sampler_name,
            "scheduler": scheduler,
            "denoise": denoise,
            "model": [CHECKPOINT_NODE, 0],
            "positive": positive,
            "negative": negative,
            "latent_image": latent,
        },
    }
    graph["8"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": [SAMPLER_NODE, 0], "vae": [CHECKPOINT_NODE, 2]},
    }
    images = ["8", 0] if mask is None else _paste_over_original(graph, spec, ["8", 0])
    if spec.hires is not None:
        images = _hires_pass(graph, spec, images, upscale_model)
    graph[SAVE_NODE] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": OUTPUT_PREFIX, "images": images},
    }
    return graph


def _apply_controls(
    graph: dict[str, Any], spec: RenderSpec, controls: Sequence[ControlFiles]
) -> tuple[list[Any], list[Any]]:
    """Adds each control's nodes; returns the links to the (positive, negative) conditioning."""
    positive: list[Any] = ["6", 0]
    negative: list[Any] = ["7", 0]
    for index, (control, files) in enumerate(zip(spec.controls, controls, strict=True)):
        load, canny, loader, apply = control_nodes(index)
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": files.image}}
        hint: list[Any] = [load, 0]
        if files.detect_edges:
            low, high = CANNY_THRESHOLDS
            graph[canny] = {
                "class_type": "Canny",
                "inputs": {"image": hint, "low_threshold": round(low, 2), "high_threshold": round(high, 2)},
            }
            hint = [canny, 0]
        graph[loader] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": files.model}}
        graph[apply] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": positive,
                "negative": negative,
                "control_net": [loader, 0],
                "image": hint,
                "strength": control.weight,
                "start_percent": control.start,
                "end_percent": control.end,
            },
        }
        positive, negative = [apply, 0], [apply, 1]
    return positive, negative


def _hires_pass(
    graph: dict[str, Any], spec: RenderSpec, pixels: list[Any], upscale_model: str | None
) -> list[Any]:
    """Adds the hires fix's second pass over the first pass's `pixels`; returns the link to its
    decoded images."""
    assert spec.hires is not None
    width, height = spec.output_size
    if upscale_model is not None:
        graph["30"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": upscale_model}}
        graph["31"] = {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["30", 0], "image": pixels},
        }
        pixels = ["31", 0]
    graph["32"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": pixels,
            "upscale_method": HIRES_SCALE_METHOD,
            "width": width,
            "height": height,
            "crop": "disabled",
        },
    }
    graph["33"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["32", 0], "vae": [CHECKPOINT_NODE, 2]}}
    first = graph[SAMPLER_NODE]["inputs"]
    graph[HIRES_SAMPLER_NODE] = {
        "class_type": "KSampler",
        "inputs": {
            **first,
            "steps": hires_steps(spec),
            "denoise": spec.hires.strength,
            "latent_image": ["33", 0],
        },
    }
    graph["35"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": [HIRES_SAMPLER_NODE, 0], "vae": [CHECKPOINT_NODE, 2]},
    }
    return ["35", 0]


def _input_latent(graph: dict[str, Any], spec: RenderSpec, image: str, mask: str | None) -> list[Any]:
    """Adds the nodes that turn the uploaded `image` (and `mask`) into the KSampler's latent."""
    graph[IMAGE_NODE] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph["11"] = {
        "class_type": "VAEEncode",
        "inputs": {"pixels": [IMAGE_NODE, 0], "vae": [CHECKPOINT_NODE, 2]},
    }
    latent: list[Any] = ["11", 0]
    if spec.num_images > 1:
        graph["12"] = {
            "class_type": "RepeatLatentBatch",
            "inputs": {"samples": latent, "amount": spec.num_images},
        }
        latent = ["12", 0]
    if mask is not None:
        graph[MASK_NODE] = {"class_type": "LoadImageMask", "inputs": {"image": mask, "channel": MASK_CHANNEL}}
        graph["14"] = {
            "class_type": "SetLatentNoiseMask",
            "inputs": {"samples": latent, "mask": [MASK_NODE, 0]},
        }
        latent = ["14", 0]
    return latent


def _paste_over_original(graph: dict[str, Any], spec: RenderSpec, decoded: list[Any]) -> list[Any]:
    """Adds the nodes that keep the original outside the mask; returns the link to the result."""
    original: list[Any] = [IMAGE_NODE, 0]
    if spec.num_images > 1:
        # ImageCompositeMasked cuts its source batch down to its destination's: one image would remain.
        graph["15"] = {
            "class_type": "RepeatImageBatch",
            "inputs": {"image": original, "amount": spec.num_images},
        }
        original = ["15", 0]
    graph["16"] = {
        "class_type": "ImageCompositeMasked",
        "inputs": {
            "destination": original,
            "source": decoded,
            "x": 0,
            "y": 0,
            "resize_source": False,
            "mask": [MASK_NODE, 0],
        },
    }
    return ["16", 0]


def raw_output_prefix(prompt_id: str) -> str:
    """Where a raw workflow's images go in ComfyUI's output folder: ``kitty/<prompt id>``, a folder
    of ours and a name no other prompt writes."""
    return f"{OUTPUT_PREFIX}/{prompt_id}"


def force_output_prefix(graph: dict[str, Any], prefix: str) -> tuple[dict[str, Any], list[str]]:
    """A copy of a raw `graph` whose every saving node (SaveImage, or any node with a
    ``filename_prefix``) writes under `prefix`, whatever the user sent: a workflow never chooses
    where ComfyUI writes, nor overwrites another's files. Also the ids of the nodes changed.
    `graph` itself is left as it is (it is the job's stored request)."""
    forced: dict[str, Any] = dict(graph)
    changed: list[str] = []
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs")
        inputs = inputs if isinstance(inputs, dict) else {}
        if node.get("class_type") in PREFIXED_OUTPUT_NODES or PREFIX_INPUT in inputs:
            forced[node_id] = {**node, "inputs": {**inputs, PREFIX_INPUT: prefix}}
            changed.append(str(node_id))
    return forced, changed


def ui_workflow(graph: dict[str, Any]) -> dict[str, Any]:
    """The template `graph` in the UI's format (nodes, links, widget values), which ComfyUI writes
    into the PNG's ``workflow`` chunk and loads back when the image is dropped on its canvas."""
    links: list[list[Any]] = []
    outgoing: dict[tuple[str, int], list[int]] = {}
    depth: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    for order, (node_id, node) in enumerate(graph.items()):
        linked, outputs, widgets = _UI_NODE_SHAPES[node["class_type"]]
        inputs = []
        for slot, (name, kind) in enumerate(linked):
            source, source_slot = node["inputs"][name]
            links.append([len(links) + 1, int(source), source_slot, int(node_id), slot, kind])
            outgoing.setdefault((str(source), source_slot), []).append(len(links))
            inputs.append({"name": name, "type": kind, "link": len(links)})
        sources = [str(node["inputs"][name][0]) for name, _ in linked]
        depth[node_id] = 1 + max((depth[s] for s in sources), default=-1)
        values = [
            _UI_ONLY_WIDGETS[name] if name in _UI_ONLY_WIDGETS else node["inputs"][name] for name in widgets
        ]
        nodes.append(
            {
                "id": int(node_id),
                "type": node["class_type"],
                "pos": [
                    40 + 360 * depth[node_id],
                    40 + 260 * sum(d == depth[node_id] for d in depth.values()),
                ],
                "size": [320, 120],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [
                    {"name": name, "type": kind, "slot_index": slot}
                    for slot, (name, kind) in enumerate(outputs)
                ],
                "properties": {"Node name for S&R": node["class_type"]},
                "widgets_values": values,
            }
        )
    for ui_node in nodes:
        for output in ui_node["outputs"]:
            output["links"] = outgoing.get((str(ui_node["id"]), output["slot_index"]), [])
    return {
        "last_node_id": max(int(node_id) for node_id in graph),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def graph_settings(graph: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """The seed and sampler settings a raw graph renders with, read from its one sampler node: a
    value wired from another node, or a graph with no or several samplers, is unknown (None) and so
    recorded nowhere — never the request's defaults, which the graph did not use."""
    samplers = [
        node
        for node in graph.values()
        if isinstance(node, dict) and node.get("class_type") in SAMPLER_SEED_INPUTS
    ]
    if len(samplers) != 1:
        return None, {"steps": None, "cfg": None, "sampler": None, "scheduler": None}
    node = samplers[0]
    raw_inputs = node.get("inputs")
    inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}

    def plain(name: str, kind: type | tuple[type, ...]) -> Any:
        value = inputs.get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    seed = plain(SAMPLER_SEED_INPUTS[str(node["class_type"])], int)
    return seed, {
        "steps": plain("steps", int),
        "cfg": plain("cfg", (int, float)),
        "sampler": plain("sampler_name", str),
        "scheduler": plain("scheduler", str),
    }


def combo_options(input_spec: Any) -> list[str]:
    """The choices of a combo input in ``/object_info``: ``[[choices...], {...}]`` (classic nodes)
    or ``["COMBO", {"options": [...]}]`` (the newer node schema)."""
    if isinstance(input_spec, list) and input_spec:
        if isinstance(input_spec[0], list):
            return [str(choice) for choice in input_spec[0]]
        if input_spec[0] == "COMBO" and len(input_spec) > 1 and isinstance(input_spec[1], dict):
            return [str(choice) for choice in input_spec[1].get("options", [])]
    return []


def match_checkpoint(model: str, available: list[str]) -> str | None:
    """`model` as ComfyUI names it: exact, or by file name or stem (``sd_xl_base_1.0`` finds
    ``SDXL/sd_xl_base_1.0.safetensors``); None when nothing or several match. Any model file
    (ControlNets, upscalers) is matched the same way."""
    if model in available:
        return model
    paths = {name: PurePosixPath(name.replace("\\", "/")) for name in available}
    found = [name for name, path in paths.items() if model in (path.name, path.stem)]
    return found[0] if len(found) == 1 else None


def node_problems(node_errors: Any) -> list[dict[str, Any]]:
    """ComfyUI's ``node_errors`` (``{node_id: {"errors": [...], "class_type", ...}}``) as one flat
    list of what crosses to the client: a node's ``extra_info`` can carry a Python traceback."""
    problems: list[dict[str, Any]] = []
    for node_id, entry in (node_errors if isinstance(node_errors, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        for item in entry.get("errors") or []:
            if not isinstance(item, dict):
                continue
            problems.append(
                {
                    "node_id": str(node_id),
                    "class_type": entry.get("class_type"),
                    "type": item.get("type"),
                    "message": item.get("message"),
                    "details": item.get("details"),
                    "input_name": (item.get("extra_info") or {}).get("input_name"),
                }
            )
    return problems


def describe_problems(problems: list[dict[str, Any]]) -> str:
    """``node 1 (EmptyImage): Required input is missing: color; ...``."""
    return "; ".join(
        f"node {p['node_id']} ({p['class_type']}): {p['message']}"
        + (f": {p['details'] or p['input_name']}" if p["details"] or p["input_name"] else "")
        for p in problems
    )


def failure_remediation(data: dict[str, Any]) -> list[str]:
    """What to do about a node's failure, by what failed: a model file that does not load, memory, or
    anything else (ComfyUI's console has the traceback)."""
    message = f"{data.get('exception_type')}: {data.get('exception_message')}".lower()
    steps = ["See ComfyUI's console for the full error."]
    if "out of memory" in message or "outofmemory" in message:
        steps.append("Out of memory: try a smaller size or fewer images.")
    elif data.get("node_type") in LOADER_NODES:
        steps.append(
            "The model file could not be loaded: check that it is complete and of a family ComfyUI "
            "knows (GET /object_info lists the files it sees), or choose another."
        )
    return steps
