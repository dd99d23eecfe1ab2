"""A fake InvokeAI 4+/5+ server (FastAPI) with the real routes and payload shapes, for adapter tests.

What it reproduces, read from InvokeAI's source (``api/routers/session_queue.py``, ``images.py``,
``app_info.py``, ``model_manager.py``, ``services/session_queue/session_queue_common.py``):
- ``GET /api/v1/app/version`` → ``{"version"}``; ``GET /api/v2/models/?model_type=`` → ``{"models"}``.
- ``POST /api/v1/queue/{q}/enqueue_batch`` with body ``{"batch", "prepend"}``, validated like the real
  pydantic models (unknown node types, unknown fields, dangling edges, bad batch data → 422 with
  FastAPI's ``{"detail": [...]}``); answers **200** (the route lists 201 only under ``responses=``).
  Sessions = ``runs × product(outer data lists)``, items of one inner list zipped.
- Items run one at a time: pending → in_progress → completed (or failed), ``run_s`` each. A finished
  item holds its session: ``results`` keyed by execution ids, ``source_prepared_mapping`` from ours.
- ``GET /api/v1/queue/{q}/i/{id}`` (None fields left out, as ``response_model_exclude_none``),
  ``PUT .../cancel``, ``GET /api/v1/queue/{q}/list`` (cursor pages, for servers without ``item_ids``).
- ``GET /api/v1/images/i/{name}/full``: a PNG of the noise node's size with ``invokeai_metadata``,
  ``invokeai_graph`` (and ``invokeai_workflow`` when the batch carried a workflow).
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
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Query, Response
from PIL import Image
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
                "vae",
            }
        ),
        frozenset({"metadata"}),
    ),
    "l2i": (
        frozenset({"latents", "vae", "tiled", "tile_size", "fp32", "metadata", "board"}),
        frozenset({"image", "width", "height"}),
    ),
}
"""Node type → (input fields, output fields), from ``invokeai/app/invocations/`` (v4/v5)."""

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
        return self


def check_values(node_id: str, node: dict[str, Any]) -> None:
    """The field constraints of the real invocations that a wrong adapter would trip over."""
    node_type = node["type"]
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
        loader = next(n for n in item.graph["nodes"].values() if n["type"].endswith("model_loader"))
        known = {m["key"] for m in self.models}
        if self.fail_next is not None or loader["model"]["key"] not in known:
            error_type, message = self.fail_next or ("Exception", f"Unknown model {loader['model']['key']}")
            self.fail_next = None
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
        for node_id, node in item.graph["nodes"].items():
            prepared = str(uuid.uuid4())
            item.source_prepared_mapping[node_id] = [prepared]
            item.results[prepared] = self._output(item, node)
        item.set_status("completed")

    def _output(self, item: QueueItem, node: dict[str, Any]) -> dict[str, Any]:
        if node["type"] != "l2i":
            return {"type": f"{node['type']}_output"}
        noise = next(n for n in item.graph["nodes"].values() if n["type"] == "noise")
        width, height, seed = noise.get("width", 512), noise.get("height", 512), noise.get("seed", 0)
        info = PngInfo()
        metadata = self._metadata_for(item, node["id"])
        if metadata is not None:
            info.add_text("invokeai_metadata", json.dumps(metadata))
        info.add_text("invokeai_graph", json.dumps(item.graph))
        if item.batch.workflow is not None:
            info.add_text("invokeai_workflow", json.dumps(item.batch.workflow))
        buffer = io.BytesIO()
        color = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
        Image.new("RGB", (width, height), color).save(buffer, format="PNG", pnginfo=info)
        image_name = f"{uuid.uuid4()}.png"
        self.images[image_name] = buffer.getvalue()
        return {"type": "image_output", "image": {"image_name": image_name}, "width": width, "height": height}

    def _metadata_for(self, item: QueueItem, output_id: str) -> dict[str, Any] | None:
        for edge in item.graph["edges"]:
            if edge["destination"] == {"node_id": output_id, "field": "metadata"}:
                source = item.graph["nodes"][edge["source"]["node_id"]]
                data = {k: v for k, v in source.items() if k not in COMMON_FIELDS}
                return {**data, "app_version": self.version}
        return None

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

        @api.get("/api/v1/images/i/{image_name}/full")
        def get_image_full(image_name: str) -> Response:
            data = self.images.get(image_name)
            if data is None:
                raise HTTPException(404)
            return Response(data, media_type="image/png")

        return api
