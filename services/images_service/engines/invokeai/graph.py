"""The InvokeAI graph of a `RenderSpec`, built with no I/O: the choice of main model (and of
ControlNet models) among the server's, the scheduler's name, the graphs of InvokeAI's own node types
for SD1.x/SD2.x and SDXL (text-to-image, image-to-image, inpainting, ControlNet guidance, the hires
fix), the batch that gives each image its own seed, and where a finished queue item keeps our output
node's image and seed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.contracts import MAX_SEED, RenderSpec

from ...errors import ModelNotFound, ValidationFailed
from ...uploads import DEFAULT_STRENGTH

ENGINE_LABEL = "InvokeAI"

ORIGIN = "kitty-images"
"""`Batch.origin`: lets InvokeAI's own UI tell our items from its own (v5+; older servers ignore it)."""


SD_BASES = frozenset({"sd-1", "sd-2"})
SDXL_BASE = "sdxl"
SUPPORTED_BASES = SD_BASES | {SDXL_BASE}
"""Model bases the built-in graph renders (``base`` of a v2 model record)."""

SCHEDULERS: dict[str, str] = {
    "euler": "euler",
    "euler_a": "euler_a",
    "heun": "heun",
    "lms": "lms",
    "ddim": "ddim",
    "pndm": "pndm",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_karras": "dpmpp_2m_k",
    "dpmpp_sde": "dpmpp_sde",
    "unipc": "unipc",
}
"""Wire scheduler name → InvokeAI's scheduler name (``SCHEDULER_MAP`` keys; ``_k`` = Karras sigmas)."""

DEFAULT_SCHEDULER = "euler"
"""InvokeAI's own default for ``denoise_latents.scheduler``."""


# Node ids of the graph we send; `output_node` says whose result holds the finished image.
LOADER_NODE, POSITIVE_NODE, NEGATIVE_NODE = "model_loader", "positive_prompt", "negative_prompt"
NOISE_NODE, DENOISE_NODE, METADATA_NODE, DECODE_NODE = "noise", "denoise", "core_metadata", "l2i"
ENCODE_NODE, MASK_NODE, PASTE_NODE = "i2l", "denoise_mask", "paste_back"
CONTROL_COLLECT_NODE = "control_collect"
"""Gathers the ``controlnet`` nodes (``control_0``, ``control_1``, ...) for the denoise: one
``collect`` node, as InvokeAI's own linear UI builds it."""
HIRES_RESIZE_NODE, HIRES_ENCODE_NODE, HIRES_NOISE_NODE = "hires_resize", "hires_i2l", "hires_noise"
HIRES_DENOISE_NODE, HIRES_DECODE_NODE = "hires_denoise", "hires_l2i"
"""The hires fix's second pass: the first pass's image resized, encoded, noised and denoised again."""

CONTROL_MODE, CONTROL_RESIZE_MODE = "balanced", "just_resize"
"""``controlnet``'s ``control_mode`` and ``resize_mode``: the defaults; our maps come at the job's size."""

HIRES_RESAMPLE = "lanczos"
"""``img_resize``'s ``resample_mode`` for the hires fix: Lanczos, as the wire promises."""


AddNode = Callable[..., None]
AddEdge = Callable[[str, str, str, str], None]
"""`build_graph`'s helpers: add a node (id, type, fields), add an edge (source, field, destination, field)."""


@dataclass(frozen=True)
class InvokeModel:
    """One main model record of ``GET /api/v2/models/``, reduced to its identifier."""

    key: str
    hash: str
    name: str
    base: str
    type: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> InvokeModel:
        return cls(
            key=str(record["key"]),
            hash=str(record.get("hash", "")),
            name=str(record.get("name", record["key"])),
            base=str(record.get("base", "")),
            type=str(record.get("type", "main")),
        )

    @property
    def identifier(self) -> dict[str, str]:
        """InvokeAI's ``ModelIdentifierField``."""
        return {"key": self.key, "hash": self.hash, "name": self.name, "base": self.base, "type": self.type}

    @property
    def is_sdxl(self) -> bool:
        return self.base == SDXL_BASE


@dataclass(frozen=True)
class ControlImage:
    """One of the spec's controls as the graph names it: its uploaded map and its ControlNet."""

    image: str
    """The name InvokeAI gave our upload of the map."""
    model: InvokeModel


def slug(name: str) -> str:
    """A model name as a request can spell it (requests allow only ``[A-Za-z0-9._-]``):
    ``"Juggernaut XL v9"`` and ``"juggernaut-xl-v9"`` compare equal."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def invoke_scheduler(name: str | None) -> str:
    if name is None:
        return DEFAULT_SCHEDULER
    if name not in SCHEDULERS:
        raise ValidationFailed(
            f"scheduler '{name}' has no InvokeAI equivalent",
            remediation=[f"Use one of: {', '.join(SCHEDULERS)}"],
        )
    return SCHEDULERS[name]


def image_seeds(spec: RenderSpec) -> list[int]:
    # The noise node wraps seeds the same way (``modulo_seed``); wrapping here records the seed used.
    return [(spec.seed + i) % (MAX_SEED + 1) for i in range(spec.num_images)]


def output_node(spec: RenderSpec, mask: str | None) -> str:
    """The node whose image is the result: the hires fix's decoder, the paste-back when inpainting,
    else the decoder."""
    if spec.hires is not None:
        return HIRES_DECODE_NODE
    return DECODE_NODE if mask is None else PASTE_NODE


def build_graph(
    spec: RenderSpec,
    model: InvokeModel,
    scheduler: str,
    *,
    image: str | None = None,
    mask: str | None = None,
    controls: Sequence[ControlImage] = (),
) -> dict[str, Any]:
    """The graph of InvokeAI's own linear UI for an SD1.x/SD2.x or an SDXL model: text-to-image, or
    image-to-image from `image` (inpainting with `mask`), the names InvokeAI gave our uploads.

    Each of `controls` (one per ``spec.controls``) is a ``controlnet`` node at the control's weight
    and step range, fed to the denoise's ``control`` (through a ``collect`` node when there are
    several). ``spec.hires`` adds a second pass: the first pass's image resized to
    ``spec.output_size`` (Lanczos), encoded, noised from the same seed and denoised again from
    ``1 - strength`` of the schedule, with the same prompts and controls.

    Image-to-image starts the denoise from the picture's latents (``i2l``, the model's VAE) noised to
    ``denoising_start = 1 - strength`` of the schedule, as InvokeAI's UI does: the first
    ``1 - strength`` of the timesteps are skipped, so strength 1 repaints from pure noise.

    Inpainting follows InvokeAI's convention for masks, the opposite of ours: white keeps, black is
    repainted. ``create_denoise_mask`` hands the denoise a tensor where 1 keeps the picture's latents
    (InvokeAI's canvas draws the area to repaint in black on white), and ``img_paste`` inverts its
    mask before pasting, so the decoded image lands where the mask is black. That is why the worker
    uploads our mask inverted (see `InvokeAIEngine.render`), and both nodes read that one
    upload. The paste puts the picture back outside the repainted area pixel for pixel: the VAE's
    round trip shifts every pixel a little, and black of our mask must come back exactly as sent.

    Every node but the output is an intermediate; the output skips the invocation cache so each
    run saves a fresh image instead of pointing at one that may have been deleted since.
    """
    if len(controls) != len(spec.controls):
        raise ValueError(f"the spec has {len(spec.controls)} controls; {len(controls)} were named")
    strength = spec.strength if spec.strength is not None else DEFAULT_STRENGTH
    output = output_node(spec, mask)
    final = {"is_intermediate": False, "use_cache": False}
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []

    def node(node_id: str, node_type: str, **fields: Any) -> None:
        nodes[node_id] = {
            "id": node_id,
            "type": node_type,
            "is_intermediate": True,
            "use_cache": True,
            **fields,
        }

    def edge(source: str, source_field: str, destination: str, destination_field: str) -> None:
        edges.append(
            {
                "source": {"node_id": source, "field": source_field},
                "destination": {"node_id": destination, "field": destination_field},
            }
        )

    node(LOADER_NODE, "sdxl_model_loader" if model.is_sdxl else "main_model_loader", model=model.identifier)
    for prompt_node, text in ((POSITIVE_NODE, spec.prompt), (NEGATIVE_NODE, spec.negative_prompt)):
        if model.is_sdxl:
            # SDXL conditions on the image size too; the style prompt feeds the second text encoder.
            node(
                prompt_node,
                "sdxl_compel_prompt",
                prompt=text,
                style=text,
                original_width=spec.width,
                original_height=spec.height,
                crop_top=0,
                crop_left=0,
                target_width=spec.width,
                target_height=spec.height,
            )
            edge(LOADER_NODE, "clip2", prompt_node, "clip2")
        else:
            node(prompt_node, "compel", prompt=text)
        edge(LOADER_NODE, "clip", prompt_node, "clip")
    # The seed here is image 0's; the batch data sets each run's own (`seed_data`).
    node(NOISE_NODE, "noise", seed=image_seeds(spec)[0], width=spec.width, height=spec.height, use_cpu=True)
    node(
        DENOISE_NODE,
        "denoise_latents",
        steps=spec.steps,
        cfg_scale=spec.cfg,
        scheduler=scheduler,
        denoising_start=0.0 if image is None else 1 - strength,
        denoising_end=1.0,
    )
    mode = "txt2img" if image is None else "img2img" if mask is None else "inpaint"
    from_picture = {} if image is None else {"strength": strength, "init_image": image}
    # Core metadata becomes the image's `invokeai_metadata` chunk: InvokeAI's gallery recalls it.
    node(
        METADATA_NODE,
        "core_metadata",
        generation_mode=f"sdxl_{mode}" if model.is_sdxl else mode,
        positive_prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        width=spec.width,
        height=spec.height,
        seed=image_seeds(spec)[0],
        steps=spec.steps,
        cfg_scale=spec.cfg,
        scheduler=scheduler,
        model=model.identifier,
        **from_picture,
    )
    if controls:
        metadata = nodes[METADATA_NODE]
        metadata["controlnets"] = [
            {
                "image": {"image_name": files.image},
                "control_model": files.model.identifier,
                "control_weight": control.weight,
                "begin_step_percent": control.start,
                "end_step_percent": control.end,
                "control_mode": CONTROL_MODE,
                "resize_mode": CONTROL_RESIZE_MODE,
            }
            for control, files in zip(spec.controls, controls, strict=True)
        ]
    if spec.hires is not None:
        nodes[METADATA_NODE].update(
            hrf_enabled=True, hrf_method=HIRES_RESAMPLE, hrf_strength=spec.hires.strength
        )
    node(DECODE_NODE, "l2i", **(final if output == DECODE_NODE else {}))
    edge(LOADER_NODE, "unet", DENOISE_NODE, "unet")
    edge(POSITIVE_NODE, "conditioning", DENOISE_NODE, "positive_conditioning")
    edge(NEGATIVE_NODE, "conditioning", DENOISE_NODE, "negative_conditioning")
    edge(NOISE_NODE, "noise", DENOISE_NODE, "noise")
    edge(DENOISE_NODE, "latents", DECODE_NODE, "latents")
    edge(LOADER_NODE, "vae", DECODE_NODE, "vae")
    edge(METADATA_NODE, "metadata", output, "metadata")
    control_source = _add_controls(spec, controls, node, edge)
    if control_source is not None:
        edge(*control_source, DENOISE_NODE, "control")
    if spec.hires is not None:
        _add_hires_pass(spec, scheduler, node, edge, control_source)
    if image is not None:
        picture = {"image_name": image}
        node(ENCODE_NODE, "i2l", image=picture)
        edge(LOADER_NODE, "vae", ENCODE_NODE, "vae")
        edge(ENCODE_NODE, "latents", DENOISE_NODE, "latents")
        if mask is not None:
            # The picture too: an inpainting model (9-channel UNet) also reads it with the area cut out.
            node(MASK_NODE, "create_denoise_mask", image=picture, mask={"image_name": mask})
            edge(LOADER_NODE, "vae", MASK_NODE, "vae")
            edge(MASK_NODE, "denoise_mask", DENOISE_NODE, "denoise_mask")
            node(PASTE_NODE, "img_paste", base_image=picture, mask={"image_name": mask}, crop=True, **final)
            edge(DECODE_NODE, "image", PASTE_NODE, "image")
    return {"id": f"kitty-{uuid.uuid4().hex[:12]}", "nodes": nodes, "edges": edges}


def _add_controls(
    spec: RenderSpec, controls: Sequence[ControlImage], node: AddNode, edge: AddEdge
) -> tuple[str, str] | None:
    """Adds a ``controlnet`` node per control (and the ``collect`` node of several); the (node,
    field) the denoise reads its ``control`` from, or None without controls."""
    ids = [f"control_{index}" for index in range(len(controls))]
    for node_id, control, files in zip(ids, spec.controls, controls, strict=True):
        node(
            node_id,
            "controlnet",
            image={"image_name": files.image},
            control_model=files.model.identifier,
            control_weight=control.weight,
            begin_step_percent=control.start,
            end_step_percent=control.end,
            control_mode=CONTROL_MODE,
            resize_mode=CONTROL_RESIZE_MODE,
        )
    if len(ids) == 1:
        return ids[0], "control"
    if not ids:
        return None
    node(CONTROL_COLLECT_NODE, "collect")
    for node_id in ids:
        edge(node_id, "control", CONTROL_COLLECT_NODE, "item")
    return CONTROL_COLLECT_NODE, "collection"


def _add_hires_pass(
    spec: RenderSpec, scheduler: str, node: AddNode, edge: AddEdge, control_source: tuple[str, str] | None
) -> None:
    """Adds the hires fix's second pass after the first pass's decoder; its decoder is the output."""
    assert spec.hires is not None
    width, height = spec.output_size
    node(HIRES_RESIZE_NODE, "img_resize", width=width, height=height, resample_mode=HIRES_RESAMPLE)
    node(HIRES_ENCODE_NODE, "i2l")
    node(HIRES_NOISE_NODE, "noise", seed=image_seeds(spec)[0], width=width, height=height, use_cpu=True)
    node(
        HIRES_DENOISE_NODE,
        "denoise_latents",
        steps=spec.hires.steps or spec.steps,
        cfg_scale=spec.cfg,
        scheduler=scheduler,
        denoising_start=1 - spec.hires.strength,
        denoising_end=1.0,
    )
    node(HIRES_DECODE_NODE, "l2i", is_intermediate=False, use_cache=False)
    edge(DECODE_NODE, "image", HIRES_RESIZE_NODE, "image")
    edge(HIRES_RESIZE_NODE, "image", HIRES_ENCODE_NODE, "image")
    edge(LOADER_NODE, "vae", HIRES_ENCODE_NODE, "vae")
    edge(HIRES_ENCODE_NODE, "latents", HIRES_DENOISE_NODE, "latents")
    edge(HIRES_NOISE_NODE, "noise", HIRES_DENOISE_NODE, "noise")
    edge(LOADER_NODE, "unet", HIRES_DENOISE_NODE, "unet")
    edge(POSITIVE_NODE, "conditioning", HIRES_DENOISE_NODE, "positive_conditioning")
    edge(NEGATIVE_NODE, "conditioning", HIRES_DENOISE_NODE, "negative_conditioning")
    if control_source is not None:
        edge(*control_source, HIRES_DENOISE_NODE, "control")
    edge(HIRES_DENOISE_NODE, "latents", HIRES_DECODE_NODE, "latents")
    edge(LOADER_NODE, "vae", HIRES_DECODE_NODE, "vae")


def seed_data(spec: RenderSpec) -> list[list[dict[str, Any]]]:
    """Batch data giving run i the seed ``seed + i``.

    InvokeAI enqueues ``runs × (product of the outer lists)`` sessions, and zips the items of one
    inner list: so ``runs: 1`` with one inner list of n seeds makes exactly n sessions, the noise
    and the metadata node agreeing on each seed (``runs: n`` would make n² of them).
    """
    seeds = image_seeds(spec)
    noises = [NOISE_NODE] if spec.hires is None else [NOISE_NODE, HIRES_NOISE_NODE]
    return [
        [
            *({"node_path": noise, "field_name": "seed", "items": seeds} for noise in noises),
            {"node_path": METADATA_NODE, "field_name": "seed", "items": seeds},
        ]
    ]


def item_seed(item: dict[str, Any], fallback: int) -> int:
    """The seed a queue item ran with, from the batch values it recorded."""
    for value in item.get("field_values") or []:
        if value.get("node_path") == NOISE_NODE and value.get("field_name") == "seed":
            return int(value["value"])
    return fallback


def output_image_name(item: dict[str, Any], node_id: str) -> str | None:
    """The image name our output node `node_id` produced in a finished queue item.

    ``session.results`` is keyed by *execution* node ids; ``source_prepared_mapping`` maps the ids
    we sent to them (InvokeAI 4.2+ stores the finished session in the queue item).
    """
    session = item.get("session") or {}
    results: dict[str, Any] = session.get("results") or {}
    prepared = (session.get("source_prepared_mapping") or {}).get(node_id) or []
    for executed in [*prepared, node_id]:
        image = (results.get(executed) or {}).get("image") or {}
        if image.get("image_name"):
            return str(image["image_name"])
    return None


def choose_model(models: list[InvokeModel], wanted: str | None, url: str) -> InvokeModel:
    """The main model to render with among `models` (the server's at `url`): `wanted` by name, key
    or slug, or the first SD1.x, SD2.x or SDXL one when the request names none."""
    names = ", ".join(f"{m.name} ({m.base})" for m in models) or "none"
    install = "Install one in InvokeAI's model manager (Models tab), then retry."
    if wanted is None:
        usable = [m for m in models if m.base in SUPPORTED_BASES]
        if usable:
            return usable[0]
        raise ModelNotFound(
            f"{ENGINE_LABEL} at {url} has no SD1.x, SD2.x or SDXL main model (it has: {names})",
            remediation=[install],
        )
    matches = [m for m in models if wanted in (m.name, m.key)] or [
        m for m in models if slug(m.name) == slug(wanted)
    ]
    if not matches:
        raise ModelNotFound(
            f"{ENGINE_LABEL} at {url} has no main model named '{wanted}' (it has: {names})",
            remediation=[
                install,
                "Name a model by its InvokeAI name (spaces as '-') or its key.",
            ],
        )
    usable = [m for m in matches if m.base in SUPPORTED_BASES]
    if not usable:
        raise ModelNotFound(
            f"model '{wanted}' is a {matches[0].base} model; the invokeai engine renders SD1.x, "
            "SD2.x and SDXL models",
            remediation=[f"Choose one of: {names}"],
        )
    return usable[0]


def choose_controlnets(
    models: list[InvokeModel], wanted: Sequence[str | None], main: InvokeModel, url: str
) -> list[InvokeModel]:
    """The ControlNet model each of `wanted` names among `models` (the server's), by key, name or
    slug; each must be of `main`'s base (an SD1.x ControlNet cannot steer an SDXL model)."""
    names = ", ".join(f"{m.name} ({m.base})" for m in models) or "none"
    chosen: list[InvokeModel] = []
    for model in wanted:
        if model is None:
            raise ValidationFailed(
                f"a control on {ENGINE_LABEL} must name one of its ControlNet models in `model`",
                remediation=[f"Name one by its key or name: {names}"],
            )
        matches = [m for m in models if model in (m.name, m.key)] or [
            m for m in models if slug(m.name) == slug(model)
        ]
        if not matches:
            raise ModelNotFound(
                f"{ENGINE_LABEL} at {url} has no ControlNet model '{model}' (it has: {names})",
                remediation=["Install one in InvokeAI's model manager (Models tab), then retry."],
            )
        usable = [m for m in matches if m.base == main.base]
        if not usable:
            raise ValidationFailed(
                f"ControlNet '{model}' is for {matches[0].base} models; '{main.name}' is {main.base}",
                remediation=[f"Name a {main.base} ControlNet: {names}"],
            )
        chosen.append(usable[0])
    return chosen


def make_batch(spec: RenderSpec, graph: dict[str, Any]) -> dict[str, Any]:
    """The ``batch`` of ``enqueue_batch``: `graph` once per image of `spec` (see `seed_data`)."""
    return {"graph": graph, "runs": 1, "data": seed_data(spec), "origin": ORIGIN}
