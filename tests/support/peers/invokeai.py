"""A fake InvokeAI 4+/5+ server (FastAPI) with the real routes and payload shapes, for adapter tests.

What it reproduces, read from InvokeAI's source (``api/routers/session_queue.py``, ``images.py``,
``app_info.py``, ``model_manager.py``, ``services/session_queue/session_queue_common.py``,
``invocations/image_to_latents.py``, ``create_denoise_mask.py``, ``denoise_latents.py``, ``image.py``):
- ``GET /api/v1/app/version`` → ``{"version"}``; ``GET /api/v2/models/?model_type=`` → ``{"models"}``.
- ``POST /api/v1/queue/{q}/enqueue_batch`` with body ``{"batch", "prepend"}``, validated like the real
  pydantic models (unknown node types, unknown fields, dangling edges, bad batch data → 422 with
  FastAPI's ``{"detail": [...]}``); answers **200** (the route lists 201 only under ``responses=``).
  Sessions = ``runs × product(outer data lists)``, items of one inner list zipped.
- Items run one at a time: pending → in_progress → completed (or failed), ``run_s`` each. A finished
  item holds its session: ``results`` keyed by execution ids, ``source_prepared_mapping`` from ours.
- Running a session evaluates its nodes in edge order, so inputs matter; latents are pixels here.
  ``denoise_latents`` paints the seed's colour: over the whole noise size from nothing, or over
  ``i2l``'s latents by ``1 - denoising_start`` (only where a ``create_denoise_mask`` mask is black:
  white keeps). The fake VAE is lossy (``i2l`` drops low bits), and ``img_paste`` composites as the
  real one, inverting its mask. A node that names an image the store lacks fails the item with
  ``ImageFileNotFoundException``; a required input left unset fails it as InvokeAI's checks do.
- ``POST /api/v1/images/upload`` (multipart ``file``, query ``image_category``, ``is_intermediate``)
  → 201 and an ImageDTO; 415 for a non-image; ``DELETE /api/v1/images/intermediates`` → the count.
- ``GET /api/v1/queue/{q}/i/{id}`` (None fields left out, as ``response_model_exclude_none``),
  ``PUT .../cancel``, ``GET /api/v1/queue/{q}/list`` (cursor pages, for servers without ``item_ids``).
- ``GET /api/v1/images/i/{name}/full``: an upload as sent, or a node's PNG with ``invokeai_metadata``,
  ``invokeai_graph`` (and ``invokeai_workflow`` when the batch carried a workflow).
- Guidance (``controlnet.py``, ``graph.py``'s ``collect``, ``image.py``'s ``img_resize``): a
  ``controlnet`` node's ``control`` reaches ``denoise_latents.control`` directly or through a
  ``collect`` node (every ``item`` edge gathered, in order); the denoise paints each control image's
  bright pixels white by its weight, so a render shows the map that steered it. A ControlNet of
  another base than the main model fails the item, as InvokeAI's model check does.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Annotated, Any, Literal, get_args

from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, Field, model_validator

COMMON_FIELDS = frozenset({"id", "type", "is_intermediate", "use_cache"})
"""Fields every invocation has (``BaseInvocation``)."""

NODE_TYPES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "main_model_loader": (frozenset({"model"}), frozenset({"unet", "clip", "vae"})),
    "sdxl_model_loader": (frozenset({"model"}), frozenset({"unet", "clip", "clip2", "vae"})),
    "compel": (frozenset({"prompt", "clip", "mask"}), frozenset({"conditioning"})),
    "sdxl_compel_prompt": (
        frozenset(
            {
                "prompt",
                "style",
                "original_width",
                "original_height",
                "crop_top",
                "crop_left",
                "target_width",
                "target_height",
                "clip",
                "clip2",
                "mask",
            }
        ),
        frozenset({"conditioning"}),
    ),
    "noise": (frozenset({"seed", "width", "height", "use_cpu"}), frozenset({"noise", "width", "height"})),
    "denoise_latents": (
        frozenset(
            {
                "positive_conditioning",
                "negative_conditioning",
                "noise",
                "steps",
                "cfg_scale",
                "denoising_start",
                "denoising_end",
                "scheduler",
                "unet",
                "control",
                "ip_adapter",
                "t2i_adapter",
                "cfg_rescale_multiplier",
                "latents",
                "denoise_mask",
            }
        ),
        frozenset({"latents", "width", "height"}),
    ),
    "i2l": (
        frozenset({"image", "vae", "tiled", "tile_size", "fp32", "color_compensation"}),
        frozenset({"latents", "width", "height"}),
    ),
    "create_denoise_mask": (
        frozenset({"vae", "image", "mask", "tiled", "fp32"}),
        frozenset({"denoise_mask"}),
    ),
    "img_paste": (
        frozenset({"base_image", "image", "mask", "x", "y", "crop", "metadata", "board"}),
        frozenset({"image", "width", "height"}),
    ),
    "core_metadata": (
        frozenset(
            {
                "generation_mode",
                "positive_prompt",
                "negative_prompt",
                "width",
                "height",
                "seed",
                "rand_device",
                "cfg_scale",
                "cfg_rescale_multiplier",
                "steps",
                "scheduler",
                "seamless_x",
                "seamless_y",
                "clip_skip",
                "model",
                "controlnets",
                "ipAdapters",
                "t2iAdapters",
                "loras",
                "strength",
                "init_image",
                "vae",
                "hrf_enabled",
                "hrf_method",
                "hrf_strength",
            }
        ),
        frozenset({"metadata"}),
    ),
    "l2i": (
        frozenset({"latents", "vae", "tiled", "tile_size", "fp32", "metadata", "board"}),
        frozenset({"image", "width", "height"}),
    ),
    "controlnet": (
        frozenset(
            {
                "image",
                "control_model",
                "control_weight",
                "begin_step_percent",
                "end_step_percent",
                "control_mode",
                "resize_mode",
            }
        ),
        frozenset({"control"}),
    ),
    "collect": (frozenset({"item", "collection"}), frozenset({"collection"})),
    "img_resize": (
        frozenset({"image", "width", "height", "resample_mode", "metadata", "board"}),
        frozenset({"image", "width", "height"}),
    ),
}
"""Node type → (input fields, output fields), from ``invokeai/app/invocations/`` (v4/v5)."""

REQUIRED_CONNECTIONS: dict[str, tuple[str, ...]] = {
    "compel": ("clip",),
    "sdxl_compel_prompt": ("clip", "clip2"),
    "denoise_latents": ("positive_conditioning", "negative_conditioning", "unet"),
    "i2l": ("vae",),
    "create_denoise_mask": ("vae",),
    "l2i": ("latents", "vae"),
}
"""Inputs that only an edge can set; a node run without one fails (``RequiredConnectionException``)."""

REQUIRED_VALUES: dict[str, tuple[str, ...]] = {
    "i2l": ("image",),
    "controlnet": ("image", "control_model"),
    "img_resize": ("image",),
    "create_denoise_mask": ("mask",),
    "img_paste": ("base_image", "image"),
}
"""Inputs a value or an edge must set; a node run without one fails (``MissingInputException``)."""

IMAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "i2l": ("image",),
    "controlnet": ("image",),
    "img_resize": ("image",),
    "create_denoise_mask": ("image", "mask"),
    "img_paste": ("base_image", "image", "mask"),
}
"""Inputs that are an ``ImageField`` (``{"image_name"}``): the name of an image in the store."""

GenerationMode = Literal[
    "txt2img",
    "img2img",
    "inpaint",
    "outpaint",
    "sdxl_txt2img",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_outpaint",
]
"""``core_metadata.generation_mode`` (``GENERATION_MODES`` of SD and SDXL)."""

ImageCategory = Literal["general", "mask", "control", "user", "other"]

CONTROL_MODES = ("balanced", "more_prompt", "more_control", "unbalanced")
CONTROL_RESIZE_MODES = ("just_resize", "crop_resize", "fill_resize", "just_resize_simple")
RESAMPLING_MODES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
"""``CONTROLNET_MODE_VALUES``, ``CONTROLNET_RESIZE_VALUES`` and ``PIL_RESAMPLING_MODES``."""
"""``ImageCategory`` of an image record, which the upload route asks for."""

VAE_KEPT_BITS = 0xF8
"""The fake VAE's loss: encoding keeps these bits of each channel, so a decoded picture differs
from the one encoded, as a real VAE's round trip does."""

SCHEDULER_NAMES = frozenset(
    {
        "ddim",
        "ddpm",
        "deis",
        "deis_k",
        "lms",
        "lms_k",
        "pndm",
        "heun",
        "heun_k",
        "euler",
        "euler_k",
        "euler_a",
        "kdpm_2",
        "kdpm_2_k",
        "kdpm_2_a",
        "kdpm_2_a_k",
        "dpmpp_2s",
        "dpmpp_2s_k",
        "dpmpp_2m",
        "dpmpp_2m_k",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_k",
        "dpmpp_3m",
        "dpmpp_3m_k",
        "dpmpp_sde",
        "dpmpp_sde_k",
        "unipc",
        "unipc_k",
        "lcm",
        "tcd",
    }
)
"""``SCHEDULER_MAP`` keys of InvokeAI 5."""

SEED_MAX = 2**32 - 1
LATENT_SCALE_FACTOR = 8


class NodeError(Exception):
    """A node failing as InvokeAI reports it: ``NodeError(error_type, error_message)``."""


def seed_color(seed: int) -> tuple[int, int, int]:
    """What the fake's denoise paints for a seed: images of different seeds differ."""
    return seed % 256, (seed >> 8) % 256, (seed >> 16) % 256


def denoise(inputs: dict[str, Any]) -> Image.Image:
    """``denoise_latents``: the seed's colour over the noise's size from nothing; from ``latents``,
    those moved towards the colour by the share of the schedule that runs (``1 - denoising_start``),
    and only where the denoise mask is black (1 keeps the latents, as ``create_denoise_mask`` has it)."""
    noise, latents = inputs.get("noise"), inputs.get("latents")
    if latents is None:
        if noise is None:
            raise NodeError("ValueError", "'latents' or 'noise' must be provided!")
        return Image.new("RGB", (noise["width"], noise["height"]), seed_color(noise["seed"]))
    seed = 0  # InvokeAI falls back on the latents' seed, which i2l leaves unset
    if noise is not None:
        noise_size = (noise["width"], noise["height"])
        if noise_size != latents.size:
            # InvokeAI's own spelling.
            raise NodeError(
                "ValueError", f"Incompatable 'noise' and 'latents' shapes: {latents.size=} {noise_size=}"
            )
        seed = noise["seed"]
    drawn = Image.new("RGB", latents.size, seed_color(seed))
    moved = Image.blend(latents, drawn, 1 - float(inputs.get("denoising_start", 0.0)))
    mask = inputs.get("denoise_mask")
    if mask is None:
        return moved
    return Image.composite(latents, moved, mask.resize(latents.size, Image.Resampling.BILINEAR))


def default_models() -> list[dict[str, Any]]:
    """Two installed main models (SD1.5 first, as a fresh install lists them) and one VAE."""

    def record(key: str, name: str, base: str, model_type: str = "main") -> dict[str, Any]:
        return {
            "key": key,
            "hash": f"blake3:{uuid.uuid5(uuid.NAMESPACE_URL, key).hex}",
            "path": f"{base}/{model_type}/{name}",
            "name": name,
            "base": base,
            "type": model_type,
            "format": "diffusers",
            "description": f"{name} ({base})",
            "source": f"hf/{name}",
            "source_type": "hf_repo_id",
            "variant": "normal",
            "prediction_type": "epsilon",
            "repo_variant": "fp16",
        }

    return [
        record("5a4bb1c1-8c6e-4b8e-9c41-6d0c1d2f0a01", "stable-diffusion-v1-5", "sd-1"),
        record("9e0f3e55-2f4b-4c61-b0a7-0ab2a5d7c302", "Juggernaut XL v9", "sdxl"),
        record("1b9a7c2d-5d6e-4f70-8a91-b2c3d4e5f603", "sdxl-vae-fp16-fix", "sdxl", "vae"),
        record("c0a1b2c3-d4e5-4f60-8a71-92b3c4d5e604", "canny", "sd-1", "controlnet"),
        record("d1b2c3d4-e5f6-4071-9b82-a3c4d5e6f705", "depth-sdxl", "sdxl", "controlnet"),
    ]


# --- request bodies, validated as the real pydantic models would -------------------------------------
class NodeFieldRef(BaseModel):
    node_id: str
    field: str


class Edge(BaseModel):
    source: NodeFieldRef
    destination: NodeFieldRef


class Graph(BaseModel):
    id: str | None = None
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    edges: list[Edge] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_graph(self) -> Graph:
        for node_id, node in self.nodes.items():
            node_type = node.get("type")
            if node_type not in NODE_TYPES:
                raise ValueError(f"Node {node_id} has unknown type {node_type!r}")
            if node.get("id") != node_id:
                raise ValueError(f"Node {node_id}'s id {node.get('id')!r} does not match its key")
            inputs, _ = NODE_TYPES[node_type]
            unknown = set(node) - inputs - COMMON_FIELDS
            if unknown:
                raise ValueError(f"Node {node_id} ({node_type}) has unknown fields {sorted(unknown)}")
            check_values(node_id, node)
        for edge in self.edges:
            for end, fields_of in ((edge.source, 1), (edge.destination, 0)):
                if end.node_id not in self.nodes:
                    raise ValueError(f"Edge references node {end.node_id} not in graph")
                known = NODE_TYPES[self.nodes[end.node_id]["type"]][fields_of]
                if end.field not in known:
                    raise ValueError(f"Edge field {end.field} not on node {end.node_id}")
        if execution_order(self.model_dump(mode="json")) is None:
            raise ValueError("Graph contains cycles")
        return self


def execution_order(graph: dict[str, Any]) -> list[str] | None:
    """Node ids with every edge's source before its destination; None when edges make a cycle."""
    sources = {node_id: set[str]() for node_id in graph["nodes"]}
    for edge in graph["edges"]:
        sources[edge["destination"]["node_id"]].add(edge["source"]["node_id"])
    order: list[str] = []
    while sources:
        ready = [node_id for node_id, needs in sources.items() if needs <= set(order)]
        if not ready:
            return None
        for node_id in ready:
            order.append(node_id)
            del sources[node_id]
    return order


def check_values(node_id: str, node: dict[str, Any]) -> None:
    """The field constraints of the real invocations that a wrong adapter would trip over."""
    node_type = node["type"]
    for name in IMAGE_FIELDS.get(node_type, ()):
        value = node.get(name)
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("image_name"), str)):
            raise ValueError(f"{node_id}.{name} must be an ImageField {{image_name}}")
    if node_type == "core_metadata" and node.get("generation_mode") not in (None, *get_args(GenerationMode)):
        raise ValueError(
            f"{node_id}.generation_mode {node.get('generation_mode')!r} is not a generation mode"
        )
    if node_type == "noise":
        for side in ("width", "height"):
            value = node.get(side, 512)
            if value <= 0 or value % LATENT_SCALE_FACTOR:
                raise ValueError(f"{node_id}.{side} must be a positive multiple of {LATENT_SCALE_FACTOR}")
    if node_type == "denoise_latents":
        if node.get("cfg_scale", 7.5) < 1:
            raise ValueError("cfg_scale must be greater than 1")
        if node.get("steps", 10) <= 0:
            raise ValueError(f"{node_id}.steps must be > 0")
        if node.get("scheduler", "euler") not in SCHEDULER_NAMES:
            raise ValueError(f"{node_id}.scheduler {node.get('scheduler')!r} is not a scheduler")
        for name in ("denoising_start", "denoising_end"):
            if not 0 <= node.get(name, 0) <= 1:
                raise ValueError(f"{node_id}.{name} must be within [0, 1]")
    if node_type == "controlnet":
        model = node.get("control_model")
        if not isinstance(model, dict) or not {"key", "hash", "name", "base", "type"} <= set(model):
            raise ValueError(f"{node_id}.control_model must be a ModelIdentifierField")
        weight = node.get("control_weight", 1.0)
        if not -1 <= weight <= 2:
            raise ValueError(f"{node_id}.control_weight must be within [-1, 2]")
        begin, end = node.get("begin_step_percent", 0), node.get("end_step_percent", 1)
        if not 0 <= begin <= 1 or not 0 <= end <= 1 or begin > end:
            raise ValueError("Begin step percent must be less than or equal to end step percent")
        if node.get("control_mode", "balanced") not in CONTROL_MODES:
            raise ValueError(f"{node_id}.control_mode {node.get('control_mode')!r} is not a control mode")
        if node.get("resize_mode", "just_resize") not in CONTROL_RESIZE_MODES:
            raise ValueError(f"{node_id}.resize_mode {node.get('resize_mode')!r} is not a resize mode")
    if node_type == "img_resize" and node.get("resample_mode", "bicubic") not in RESAMPLING_MODES:
        raise ValueError(f"{node_id}.resample_mode {node.get('resample_mode')!r} is not a resampling mode")
    if node_type in ("main_model_loader", "sdxl_model_loader"):
        model = node.get("model")
        if not isinstance(model, dict) or not {"key", "hash", "name", "base", "type"} <= set(model):
            raise ValueError(
                f"{node_id}.model must be a ModelIdentifierField {{key, hash, name, base, type}}"
            )


class BatchDatum(BaseModel):
    node_path: str
    field_name: str
    items: list[Any] = Field(default_factory=list)


class Batch(BaseModel):
    batch_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    origin: str | None = None
    destination: str | None = None
    data: list[list[BatchDatum]] | None = None
    graph: Graph
    workflow: dict[str, Any] | None = None
    runs: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _valid_data(self) -> Batch:
        seen: set[tuple[str, str]] = set()
        for zipped in self.data or []:
            if len({len(datum.items) for datum in zipped}) > 1:
                raise ValueError("Zipped batch items must all have the same length")
            for datum in zipped:
                node = self.graph.nodes.get(datum.node_path)
                if node is None:
                    raise ValueError(f"Node {datum.node_path} not found in graph")
                if datum.field_name not in NODE_TYPES[node["type"]][0]:
                    raise ValueError(f"Field {datum.field_name} not found in node {datum.node_path}")
                pair = (datum.node_path, datum.field_name)
                if pair in seen:
                    raise ValueError("Each batch data must have unique node_id and field_name")
                seen.add(pair)
        return self


def form_parts(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as {field: (the part's Content-Type, bytes)}."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            declared = part.get("content-type")
            parts[name] = (
                str(declared) if declared else None,
                payload if isinstance(payload, bytes) else b"",
            )
    return parts


def field_value_sets(batch: Batch) -> list[list[dict[str, Any]]]:
    """The field values of each session: ``runs × product(zip(inner lists))``."""
    groups = []
    for zipped in batch.data or []:
        groups.append(
            [
                [
                    {"node_path": d.node_path, "field_name": d.field_name, "value": v}
                    for d, v in zip(zipped, values, strict=True)
                ]
                for values in zip(*(d.items for d in zipped), strict=True)
            ]
        )
    combos = [list(itertools.chain.from_iterable(combo)) for combo in itertools.product(*groups)]
    return [list(values) for _ in range(batch.runs) for values in combos]


# --- the queue ------------------------------------------------------------------------------------
def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class QueueItem:
    item_id: int
    batch: Batch
    graph: dict[str, Any]
    field_values: list[dict[str, Any]]
    enqueued_at: float
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "pending"
    priority: int = 0
    ends_at: float = 0.0
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    created_at: str = field(default_factory=now_text)
    updated_at: str = field(default_factory=now_text)
    started_at: str | None = None
    completed_at: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    source_prepared_mapping: dict[str, list[str]] = field(default_factory=dict)

    def set_status(self, status: str) -> None:
        self.status = status
        self.updated_at = now_text()

    def view(self, *, with_session: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "item_id": self.item_id,
            "status": self.status,
            "priority": self.priority,
            "batch_id": self.batch.batch_id,
            "origin": self.batch.origin,
            "destination": self.batch.destination,
            "session_id": self.session_id,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "error_traceback": self.error_traceback,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "queue_id": "default",
            "field_values": self.field_values or None,
        }
        if with_session:
            body["session"] = {
                "id": self.session_id,
                "graph": self.graph,
                "execution_graph": {"id": str(uuid.uuid4()), "nodes": {}, "edges": []},
                "executed": list(self.results),
                "executed_history": list(self.source_prepared_mapping),
                "results": self.results,
                "errors": {},
                "prepared_source_mapping": {
                    p: s for s, ps in self.source_prepared_mapping.items() for p in ps
                },
                "source_prepared_mapping": self.source_prepared_mapping,
            }
            body["workflow"] = self.batch.workflow
        return {key: value for key, value in body.items() if value is not None}


@dataclass
class FakeInvokeAI:
    """The server's state; `app()` serves it. Thread-safe: uvicorn runs it in its own thread."""

    version: str = "5.6.0"
    models: list[dict[str, Any]] = field(default_factory=default_models)
    run_s: float = 0.05
    """Seconds each queue item spends in_progress."""
    item_ids_in_enqueue: bool = True
    """False mimics servers before ``EnqueueBatchResult.item_ids`` (clients must list the queue)."""
    fail_next: tuple[str, str] | None = None
    """(error_type, error_message) for the next item that runs."""
    batches: list[dict[str, Any]] = field(default_factory=list)
    """Every accepted enqueue_batch body, as sent."""
    cancel_requests: list[int] = field(default_factory=list)
    items: dict[int, QueueItem] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    """The image store: name → PNG bytes (uploads as sent, node outputs)."""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name → ImageDTO of every image in the store."""
    uploads: list[dict[str, Any]] = field(default_factory=list)
    """The ImageDTO answered to every accepted upload, in order."""
    uploaded_bytes: dict[str, bytes] = field(default_factory=dict)
    """Every upload's bytes by name, kept after a delete (for tests to look at)."""
    deleted: list[str] = field(default_factory=list)
    """Every name ``DELETE /api/v1/images/i/{name}`` was asked for, in order."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._current: QueueItem | None = None
        self._free_at = 0.0

    # --- queue mechanics, advanced lazily on every request (no thread to stop) -------------------
    def _advance(self) -> None:
        now = time.monotonic()
        while True:
            if self._current is not None:
                if now < self._current.ends_at:
                    return
                self._finish(self._current)
                self._free_at = self._current.ends_at
                self._current = None
            pending = [i for i in self.items.values() if i.status == "pending"]
            if not pending:
                return
            item = min(pending, key=lambda i: (-i.priority, i.item_id))
            start = max(self._free_at, item.enqueued_at)
            if start > now:
                return
            item.set_status("in_progress")
            item.started_at = now_text()
            item.ends_at = start + self.run_s
            self._current = item

    def _finish(self, item: QueueItem) -> None:
        item.completed_at = now_text()
        try:
            if self.fail_next is not None:
                error_type, message = self.fail_next
                self.fail_next = None
                raise NodeError(error_type, message)
            self._run_session(item)
        except Exception as exc:  # as InvokeAI: whatever a node raises fails the item
            error_type, message = exc.args if isinstance(exc, NodeError) else (type(exc).__name__, str(exc))
            item.error_type, item.error_message = error_type, message
            item.error_traceback = (
                "Traceback (most recent call last):\n"
                '  File "/opt/invokeai/invokeai/app/services/session_processor/session_processor_default.py",'
                " line 129, in run_node\n"
                "    output = invocation.invoke_internal(context=context, services=self._services)\n"
                f"{error_type}: {message}\n"
            )
            item.set_status("failed")
            return
        item.set_status("completed")

    def _run_session(self, item: QueueItem) -> None:
        """Runs each node on its values and the outputs its edges bring; results as InvokeAI keeps them."""
        graph = item.graph
        outputs: dict[str, dict[str, Any]] = {}
        for node_id in execution_order(graph) or []:
            node = graph["nodes"][node_id]
            inputs = {name: value for name, value in node.items() if name not in COMMON_FIELDS}
            connected = set()
            items = []
            for edge in graph["edges"]:
                if edge["destination"]["node_id"] == node_id:
                    source = edge["source"]
                    value = outputs[source["node_id"]][source["field"]]
                    if node["type"] == "collect" and edge["destination"]["field"] == "item":
                        items.append(value)  # a collector gathers every item edge
                        continue
                    inputs[edge["destination"]["field"]] = value
                    connected.add(edge["destination"]["field"])
            if node["type"] == "collect":
                inputs["collection"] = [*inputs.get("collection", []), *items]
            for name in REQUIRED_CONNECTIONS.get(node["type"], ()):
                if name not in connected:
                    raise NodeError(
                        "RequiredConnectionException",
                        f"Node {node['type']} missing connections for field {name}",
                    )
            for name in REQUIRED_VALUES.get(node["type"], ()):
                if inputs.get(name) is None:
                    raise NodeError(
                        "MissingInputException",
                        f"Node {node['type']} missing value or connection for field {name}",
                    )
            outputs[node_id] = self._invoke(item, node, inputs)
            prepared = str(uuid.uuid4())
            item.source_prepared_mapping[node_id] = [prepared]
            if "image" in outputs[node_id]:
                result = {
                    "type": "image_output",
                    **{k: outputs[node_id][k] for k in ("image", "width", "height")},
                }
            else:
                result = {"type": f"{node['type']}_output"}
            item.results[prepared] = result

    def _invoke(self, item: QueueItem, node: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        """One node's outputs. Latents are pixels (an RGB image at the image's size)."""
        node_type = node["type"]
        if node_type.endswith("model_loader"):
            key = inputs["model"]["key"]
            if key not in {m["key"] for m in self.models}:
                raise NodeError("Exception", f"Unknown model {key}")
            return {name: f"{name}:{key}" for name in NODE_TYPES[node_type][1]}
        if node_type in ("compel", "sdxl_compel_prompt"):
            return {"conditioning": inputs.get("prompt", "")}
        if node_type == "noise":
            size = {"width": inputs.get("width", 512), "height": inputs.get("height", 512)}
            return {"noise": {"seed": inputs.get("seed", 0), **size}, **size}
        if node_type == "i2l":
            latents = self._open(inputs["image"]).convert("RGB").point(lambda value: value & VAE_KEPT_BITS)
            return {"latents": latents, "width": latents.width, "height": latents.height}
        if node_type == "create_denoise_mask":
            if inputs.get("image") is not None:
                self._open(inputs["image"])
            return {"denoise_mask": self._open(inputs["mask"]).convert("L")}
        if node_type == "denoise_latents":
            latents = denoise(inputs)
            control = inputs.get("control")
            for hint in control if isinstance(control, list) else [control] if control else []:
                latents = self._steer(latents, hint, item)
            return {"latents": latents, "width": latents.width, "height": latents.height}
        if node_type == "controlnet":
            fields = {name: inputs.get(name) for name in NODE_TYPES[node_type][0]}
            return {"control": {**fields, "control_weight": inputs.get("control_weight", 1.0)}}
        if node_type == "collect":
            return {"collection": list(inputs["collection"])}
        if node_type == "img_resize":
            target = (int(inputs.get("width", 512)), int(inputs.get("height", 512)))
            resized = self._open(inputs["image"]).convert("RGB").resize(target, Image.Resampling.LANCZOS)
            return self._save(item, node, resized, inputs.get("metadata"))
        if node_type == "core_metadata":
            return {"metadata": {**inputs, "app_version": self.version}}
        if node_type == "l2i":
            return self._save(item, node, inputs["latents"], inputs.get("metadata"))
        if node_type == "img_paste":
            return self._save(item, node, self._paste(inputs), inputs.get("metadata"))
        raise NodeError("NotImplementedError", f"the fake does not run {node_type}")

    def _steer(self, latents: Image.Image, control: dict[str, Any], item: QueueItem) -> Image.Image:
        """A ControlNet's effect in the fake: its image's bright pixels painted white by its weight.
        The ControlNet must be installed and of the main model's base (InvokeAI's model check)."""
        key = control["control_model"]["key"]
        record = next((m for m in self.models if m["key"] == key and m["type"] == "controlnet"), None)
        if record is None:
            raise NodeError("UnknownModelException", f"Unknown model: {key}")
        loaders = [n for n in item.graph["nodes"].values() if n["type"].endswith("model_loader")]
        if loaders and loaders[0]["model"]["base"] != record["base"]:
            raise NodeError("ValueError", f"ControlNet {record['name']} is incompatible with the main model")
        bright = self._open(control["image"]).convert("L").resize(latents.size, Image.Resampling.BILINEAR)
        share = min(float(control["control_weight"]), 1.0)
        white = Image.new("RGB", latents.size, (255, 255, 255))
        return Image.composite(white, latents, bright.point([int(v * share) for v in range(256)]))

    def _paste(self, inputs: dict[str, Any]) -> Image.Image:
        """``img_paste``: `image` over `base_image` at (x, y) on a transparent canvas big enough for
        both (cut to the base with ``crop``), through the inverted mask: black takes `image`."""
        base, over = self._open(inputs["base_image"]), self._open(inputs["image"])
        x, y = int(inputs.get("x", 0)), int(inputs.get("y", 0))
        mask = (
            None if inputs.get("mask") is None else ImageOps.invert(self._open(inputs["mask"]).convert("L"))
        )
        left, top = -min(0, x), -min(0, y)
        width = max(base.width, over.width + x) + left
        height = max(base.height, over.height + y) + top
        canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        canvas.paste(base, (left, top))
        canvas.paste(over, (max(0, x), max(0, y)), mask)
        if inputs.get("crop"):
            canvas = canvas.crop((left, top, left + base.width, top + base.height))
        return canvas

    def _open(self, field: dict[str, Any]) -> Image.Image:
        data = self.images.get(field["image_name"])
        if data is None:
            raise NodeError("ImageFileNotFoundException", "Image file not found")
        picture = Image.open(io.BytesIO(data))
        picture.load()
        return picture

    def _save(
        self, item: QueueItem, node: dict[str, Any], picture: Image.Image, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A node's image into the store, with the chunks InvokeAI writes; the node's ``ImageOutput``."""
        info = PngInfo()
        if metadata is not None:
            info.add_text("invokeai_metadata", json.dumps(metadata))
        info.add_text("invokeai_graph", json.dumps(item.graph))
        if item.batch.workflow is not None:
            info.add_text("invokeai_workflow", json.dumps(item.batch.workflow))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", pnginfo=info)
        dto = self._record(buffer.getvalue(), picture.size, "general", bool(node.get("is_intermediate")))
        dto.update(image_origin="internal", session_id=item.session_id, node_id=node["id"])
        return {"image": {"image_name": dto["image_name"]}, "width": picture.width, "height": picture.height}

    def _record(
        self, data: bytes, size: tuple[int, int], category: str, is_intermediate: bool
    ) -> dict[str, Any]:
        """Stores `data` under a new name; its ImageDTO (``None`` fields left out, as the real one)."""
        image_name = f"{uuid.uuid4()}.png"
        self.images[image_name] = data
        created = now_text()
        dto: dict[str, Any] = {
            "image_name": image_name,
            "image_url": f"api/v1/images/i/{image_name}/full",
            "thumbnail_url": f"api/v1/images/i/{image_name}/thumbnail",
            "image_origin": "external",
            "image_category": category,
            "width": size[0],
            "height": size[1],
            "created_at": created,
            "updated_at": created,
            "is_intermediate": is_intermediate,
            "starred": False,
            "has_workflow": False,
        }
        self.records[image_name] = dto
        return dto

    def upload(
        self, data: bytes, category: str, is_intermediate: bool, board_id: str | None
    ) -> dict[str, Any]:
        with self._lock:
            with Image.open(io.BytesIO(data)) as picture:
                size = picture.size
            dto = self._record(data, size, category, is_intermediate)
            self.uploaded_bytes[dto["image_name"]] = data
            if board_id is not None:
                dto["board_id"] = board_id
            self.uploads.append(dto)
            return dto

    def delete_image(self, image_name: str) -> dict[str, Any]:
        """``DELETE /api/v1/images/i/{name}``: 200 with what went, also when nothing had that name
        (the real route swallows the error)."""
        with self._lock:
            found = self.records.pop(image_name, None) is not None
            self.images.pop(image_name, None)
            self.deleted.append(image_name)
            return {"deleted_images": [image_name] if found else [], "affected_boards": []}

    def clear_intermediates(self) -> int:
        """Settings → "Clear Intermediates" in InvokeAI's UI: deletes every intermediate image."""
        with self._lock:
            doomed = [name for name, dto in self.records.items() if dto["is_intermediate"]]
            for name in doomed:
                del self.records[name]
                self.images.pop(name, None)
            return len(doomed)

    def enqueue(self, batch: Batch, prepend: bool) -> dict[str, Any]:
        with self._lock:
            self._advance()
            raw = batch.graph.model_dump(mode="json")
            priority = 1 if prepend else 0
            created: list[int] = []
            for values in field_value_sets(batch):
                graph = copy.deepcopy(raw)
                for value in values:
                    graph["nodes"][value["node_path"]][value["field_name"]] = value["value"]
                item_id = next(self._ids)
                self.items[item_id] = QueueItem(
                    item_id, batch, graph, values, time.monotonic(), priority=priority
                )
                created.append(item_id)
            result: dict[str, Any] = {
                "queue_id": "default",
                "enqueued": len(created),
                "requested": len(created),
                "batch": batch.model_dump(mode="json"),
                "priority": priority,
            }
            if self.item_ids_in_enqueue:
                result["item_ids"] = sorted(created, reverse=True)  # the real query orders them DESC
            return result

    def get(self, item_id: int) -> QueueItem:
        item = self.items.get(item_id)
        if item is None:
            raise HTTPException(404, detail=f"Queue item with id {item_id} not found in queue default")
        return item

    def cancel(self, item_id: int) -> dict[str, Any]:
        with self._lock:
            self._advance()
            item = self.get(item_id)
            if item.status not in ("completed", "failed", "canceled"):
                item.set_status("canceled")
                if item is self._current:
                    self._current, self._free_at = None, time.monotonic()
            return item.view()

    def cancel_all(self) -> None:
        """What a user pressing "Cancel and clear all" in InvokeAI's UI does to our items."""
        for item_id in list(self.items):
            self.cancel(item_id)

    def statuses(self) -> dict[int, str]:
        with self._lock:
            self._advance()
            return {i: item.status for i, item in self.items.items()}

    # --- HTTP ---------------------------------------------------------------------------------------
    def app(self) -> FastAPI:
        api = FastAPI(title="fake InvokeAI")

        @api.get("/api/v1/app/version")
        def app_version() -> dict[str, str]:
            return {"version": self.version}

        @api.get("/api/v2/models/")
        def list_model_records(
            model_type: str | None = None,
            base_models: Annotated[list[str] | None, Query()] = None,
            model_name: str | None = None,
        ) -> dict[str, Any]:
            found = [
                m
                for m in self.models
                if (model_type is None or m["type"] == model_type)
                and (not base_models or m["base"] in base_models)
                and (model_name is None or m["name"] == model_name)
            ]
            return {"models": found}

        @api.post("/api/v1/queue/{queue_id}/enqueue_batch")
        def enqueue_batch(
            queue_id: str, batch: Annotated[Batch, Body()], prepend: Annotated[bool, Body()] = False
        ) -> dict[str, Any]:
            self.batches.append({"batch": batch.model_dump(mode="json"), "prepend": prepend})
            return self.enqueue(batch, prepend)

        @api.get("/api/v1/queue/{queue_id}/i/{item_id}")
        def get_queue_item(queue_id: str, item_id: int) -> dict[str, Any]:
            with self._lock:
                self._advance()
                return self.get(item_id).view()

        @api.put("/api/v1/queue/{queue_id}/i/{item_id}/cancel")
        def cancel_queue_item(queue_id: str, item_id: int) -> dict[str, Any]:
            self.cancel_requests.append(item_id)
            return self.cancel(item_id)

        @api.get("/api/v1/queue/{queue_id}/list")
        def list_queue_items(
            queue_id: str,
            limit: int = 50,
            status: str | None = None,
            cursor: int | None = None,
            priority: int = 0,
        ) -> dict[str, Any]:
            with self._lock:
                self._advance()
                ordered = sorted(self.items.values(), key=lambda i: (-i.priority, i.item_id))
                if status is not None:
                    ordered = [i for i in ordered if i.status == status]
                if cursor is not None:
                    ordered = [
                        i
                        for i in ordered
                        if i.priority < priority or (i.priority == priority and i.item_id > cursor)
                    ]
                page = ordered[: limit + 1]
                return {
                    "limit": limit,
                    "has_more": len(page) > limit,
                    "items": [i.view(with_session=False) for i in page[:limit]],
                }

        @api.post("/api/v1/images/upload", status_code=201)
        async def upload_image(
            request: Request,
            response: Response,
            image_category: Annotated[ImageCategory, Query()],
            is_intermediate: Annotated[bool, Query()],
            board_id: str | None = None,
        ) -> dict[str, Any]:
            parts = form_parts(request.headers.get("content-type", ""), await request.body())
            if "file" not in parts:
                missing = {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
                raise HTTPException(422, detail=[missing])
            content_type, data = parts["file"]
            if not content_type or not content_type.startswith("image"):
                raise HTTPException(415, detail="Not an image")
            try:
                with Image.open(io.BytesIO(data)) as picture:
                    picture.load()
            except Exception:
                raise HTTPException(415, detail="Failed to read image") from None
            dto = self.upload(data, image_category, is_intermediate, board_id)
            response.headers["Location"] = dto["image_url"]
            return dto

        @api.delete("/api/v1/images/i/{image_name}")
        def delete_image(image_name: str) -> dict[str, Any]:
            return self.delete_image(image_name)

        @api.delete("/api/v1/images/intermediates")
        def clear_intermediates() -> int:
            return self.clear_intermediates()

        @api.get("/api/v1/images/i/{image_name}/full")
        def get_image_full(image_name: str) -> Response:
            data = self.images.get(image_name)
            if data is None:
                raise HTTPException(404)
            return Response(data, media_type="image/png")

        return api
