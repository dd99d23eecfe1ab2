"""A fake ComfyUI server for adapter tests: v0.3.64's routes, bodies and websocket event order
(``/work/shared/PEERS.md``), served for real by `serve_asgi`. It "renders" PNGs with Pillow — a
colour drawn from the seed, or for a latent encoded from a picture that picture moved towards the
colour by ``denoise`` — carrying ComfyUI's ``prompt``/``workflow`` text chunks, and keeps a
per-node cache. ``POST /upload/image`` keeps files in memory, where LoadImage finds them.

Switches a test may flip at any time: `step_delay_s`, `node_delay_s` (every other node's run time),
`checkpoints`, `controlnets`, `upscale_models`, `paused` (hold the queue), `fail_node_type` (that
node raises → ``execution_error``), `websocket_enabled`, `forget_uploads`.

Guidance: ControlNetApplyAdvanced adds its hint to the conditioning, and the KSampler paints each
hint's bright pixels (edges) white over its colour, by the hint's strength — so a render shows the
map it was steered by. ImageUpscaleWithModel scales by 4, as the common ESRGAN files do.

Differences from the real server are found by tests/integration/test_comfyui_real.py, which runs
the same scenarios against both."""

from __future__ import annotations

import asyncio
import io
import json
import posixpath
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageFilter, ImageOps
from PIL.PngImagePlugin import PngInfo

VERSION = "0.3.64"
DEVICE_NAME = "cuda:0 NVIDIA H200 : cudaMallocAsync"
DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "SDXL/sd_xl_base_1.0.safetensors")
DEFAULT_CONTROLNETS = ("control_v11p_sd15_canny.pth", "SDXL/controlnet-depth-sdxl-1.0.safetensors")
DEFAULT_UPSCALE_MODELS = ("RealESRGAN_x4plus.pth",)
UPSCALE_MODEL_FACTOR = 4
"""What ImageUpscaleWithModel multiplies sides by (the files above are 4x models)."""

QUEUE_POLL_S = 0.005
"""How often the fake's executor looks for queued work."""

PREVIEW_EVENT, PREVIEW_JPEG = 1, 1
"""Binary frame header: event type 1 (preview image), image format 1 (JPEG)."""

VAE_KEPT_BITS = 0xFC
"""The fake VAE keeps 6 bits a channel: like a real one, it gives back a picture close to the one
encoded, not the same — which is why an inpainting graph pastes the original back."""

UPLOAD_TYPES = ("input", "temp", "output")
"""The folders ``/upload/image`` writes to (its ``type`` field; ``input`` when absent)."""

MASK_CHANNELS = ["alpha", "red", "green", "blue"]
"""LoadImageMask's ``channel`` choices."""

UPSCALE_METHODS = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
"""ImageScale's ``upscale_method`` choices, as Pillow filters."""

INVERTED = [int(np.float32(255.0) * (np.float32(1.0) - np.float32(value / 255))) for value in range(256)]
"""ImageInvert of each 8-bit value as ComfyUI computes it: ``1.0 - x`` in float32, then SaveImage's
``255. * x`` cut (not rounded) to 8 bits. 48 comes back as 207, but 207 as 47."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class NodeType:
    required: tuple[str, ...]
    outputs: tuple[str, ...]
    is_output: bool = False
    optional: tuple[str, ...] = ()


NODE_TYPES: dict[str, NodeType] = {
    "CheckpointLoaderSimple": NodeType(("ckpt_name",), ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": NodeType(("text", "clip"), ("CONDITIONING",)),
    "EmptyLatentImage": NodeType(("width", "height", "batch_size"), ("LATENT",)),
    "KSampler": NodeType(
        (
            "model",
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "positive",
            "negative",
            "latent_image",
            "denoise",
        ),
        ("LATENT",),
    ),
    "VAEDecode": NodeType(("samples", "vae"), ("IMAGE",)),
    "EmptyImage": NodeType(("width", "height", "batch_size", "color"), ("IMAGE",)),
    "SaveImage": NodeType(("images", "filename_prefix"), (), is_output=True),
    "PreviewImage": NodeType(("images",), (), is_output=True),
    "LoadImage": NodeType(("image",), ("IMAGE", "MASK")),
    "LoadImageMask": NodeType(("image", "channel"), ("MASK",)),
    "VAEEncode": NodeType(("pixels", "vae"), ("LATENT",)),
    "RepeatLatentBatch": NodeType(("samples", "amount"), ("LATENT",)),
    "SetLatentNoiseMask": NodeType(("samples", "mask"), ("LATENT",)),
    "RepeatImageBatch": NodeType(("image", "amount"), ("IMAGE",)),
    "ImageCompositeMasked": NodeType(
        ("destination", "source", "x", "y", "resize_source"), ("IMAGE",), optional=("mask",)
    ),
    "ImageScale": NodeType(("image", "upscale_method", "width", "height", "crop"), ("IMAGE",)),
    "ImageInvert": NodeType(("image",), ("IMAGE",)),
    # nodes.py and comfy_extras (nodes_upscale_model.py, nodes_canny.py), v0.3.64
    "ControlNetLoader": NodeType(("control_net_name",), ("CONTROL_NET",)),
    "ControlNetApplyAdvanced": NodeType(
        ("positive", "negative", "control_net", "image", "strength", "start_percent", "end_percent"),
        ("CONDITIONING", "CONDITIONING"),
        optional=("vae",),
    ),
    "UpscaleModelLoader": NodeType(("model_name",), ("UPSCALE_MODEL",)),
    "ImageUpscaleWithModel": NodeType(("upscale_model", "image"), ("IMAGE",)),
    "Canny": NodeType(("image", "low_threshold", "high_threshold"), ("IMAGE",)),
}
"""The nodes this fake knows (a real server has hundreds). An IMAGE is a list of Pillow images (a
batch), a MASK one greyscale image (white = 1), a LATENT a dict of its size and batch, with the
pixels it decodes to once encoded or sampled."""


COMBO_FILES = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ControlNetLoader", "control_net_name"): "controlnets",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}
"""Loader inputs whose choices are the files of a models folder: (node, input) → the fake's list."""

FLOAT_BOUNDS = {
    ("ControlNetApplyAdvanced", "strength"): (0.0, 10.0),
    ("ControlNetApplyAdvanced", "start_percent"): (0.0, 1.0),
    ("ControlNetApplyAdvanced", "end_percent"): (0.0, 1.0),
    ("KSampler", "denoise"): (0.0, 1.0),
    ("Canny", "low_threshold"): (0.01, 0.99),
    ("Canny", "high_threshold"): (0.01, 0.99),
}
"""FLOAT inputs' min and max (``value_smaller_than_min`` / ``value_bigger_than_max`` outside)."""


@dataclass(frozen=True)
class Conditioning:
    """CONDITIONING: the prompt's text and the ControlNet hints applied to it, in order."""

    text: str
    hints: tuple[tuple[Image.Image, float, float, float], ...] = ()
    """(hint, strength, start_percent, end_percent)."""


class Interrupted(Exception):
    pass


class NodeFailed(Exception):
    pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _error(
    kind: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as {field: (filename or None, bytes)} (aiohttp's ``post()``)."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


def _seed_color(seed: int, index: int) -> tuple[int, int, int]:
    return ((seed * 37 + 91 * index) % 256, (seed * 11 + 53 * index) % 256, (seed + 29 * index) % 256)


def _is_foreign_origin(host: str | None, origin: str | None) -> bool:
    """ComfyUI's origin-only middleware: a loopback Host whose Origin names another host."""
    if not host or not origin:
        return False
    host_domain = host.lower()
    parsed = urlsplit(origin)
    origin_domain: str | None = parsed.netloc.lower()
    host_parsed = urlsplit("//" + host_domain)
    loopback = host_parsed.hostname in ("127.0.0.1", "localhost", "::1")
    compared_host: str | None = host_domain if parsed.port is not None else host_parsed.hostname
    if host_parsed.port is None:
        origin_domain = parsed.hostname
    return bool(loopback and compared_host and origin_domain and compared_host != origin_domain)


class FakeComfyUI:
    def __init__(
        self, *, checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS, step_delay_s: float = 0.01
    ) -> None:
        self.checkpoints = list(checkpoints)
        self.controlnets = list(DEFAULT_CONTROLNETS)
        self.upscale_models = list(DEFAULT_UPSCALE_MODELS)
        self.step_delay_s = step_delay_s
        self.node_delay_s = 0.0
        """How long each node but a sampler takes: a slow graph, to cancel while it runs."""
        self.paused = False
        self.fail_node_type: str | None = None
        self.websocket_enabled = True
        self.forget_uploads = False
        """Answer uploads but keep nothing: an input folder cleared meanwhile, or a second server
        behind the same URL."""
        # What tests assert on.
        self.submitted: list[dict[str, Any]] = []
        self.interrupts: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.socket_clients: list[str] = []
        # Server state, touched only from the server's event loop.
        self.pending: list[list[Any]] = []
        self.running: list[Any] | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.sockets: dict[str, WebSocket] = {}
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.number = 0
        self.counter = 0
        self.interrupt_flag = False
        self.node_progress: dict[str, tuple[float, float, str]] = {}
        """The running prompt's nodes: (value, max, state), as its progress_state events carry them."""
        self._executor: asyncio.Task[None] | None = None
        self.app = self._origin_check(self._api_prefix(self._build()))

    # --- ASGI wrappers ------------------------------------------------------------------------
    @staticmethod
    def _api_prefix(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """Every route also answers under ``/api`` (ComfyUI's frontend uses those)."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] in ("http", "websocket") and (path == "/api" or path.startswith("/api/")):
                scope = dict(scope, path=path[4:] or "/", raw_path=(path[4:] or "/").encode())
            await app(scope, receive, send)

        return wrapped

    @staticmethod
    def _origin_check(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """A loopback Host with a different Origin gets 403, HTTP and websocket alike."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
                if _is_foreign_origin(headers.get("host"), headers.get("origin")):
                    if scope["type"] == "http":
                        await send({"type": "http.response.start", "status": 403, "headers": []})
                        await send({"type": "http.response.body", "body": b""})
                    else:
                        await send({"type": "websocket.close", "code": 1008})
                    return
            await app(scope, receive, send)

        return wrapped

    # --- routes -------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.websocket("/ws")
        async def websocket(ws: WebSocket) -> None:
            if not self.websocket_enabled:
                await ws.close()  # before accept: the handshake is refused (HTTP 403)
                return
            await ws.accept()
            sid = ws.query_params.get("clientId") or uuid.uuid4().hex
            self.sockets[sid] = ws
            self.socket_clients.append(sid)
            try:
                await ws.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
                while True:
                    await ws.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                if self.sockets.get(sid) is ws:
                    del self.sockets[sid]

        @app.post("/prompt")
        async def post_prompt(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except ValueError:
                return Response(
                    "500 Internal Server Error\n\nServer got itself in trouble", 500, media_type="text/plain"
                )
            self.submitted.append(body)
            if "prompt" not in body:
                return JSONResponse(
                    {"error": _error("no_prompt", "No prompt provided"), "node_errors": {}}, status_code=400
                )
            prompt = body["prompt"]
            error, outputs, node_errors = self._validate(prompt)
            if error is not None:
                return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
            number = self.number
            self.number += 1
            if body.get("front"):
                number = -number
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            extra_data = dict(body.get("extra_data") or {})
            if "client_id" in body:
                extra_data["client_id"] = body["client_id"]
            extra_data["create_time"] = _now_ms()
            self.pending.append([number, prompt_id, prompt, extra_data, outputs])
            self.pending.sort(key=lambda item: item[0])
            if self._executor is None or self._executor.done():
                self._executor = asyncio.create_task(self._execute_queue())
            await self._broadcast("status", {"status": self._queue_info()})
            return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

        @app.get("/prompt")
        async def get_prompt() -> dict[str, Any]:
            return self._queue_info()

        @app.get("/queue")
        async def get_queue() -> dict[str, Any]:
            return {"queue_running": [self.running] if self.running else [], "queue_pending": self.pending}

        @app.post("/queue")
        async def post_queue(request: Request) -> Response:
            body = await request.json()
            if body.get("clear"):
                self.pending.clear()
            for prompt_id in body.get("delete") or []:
                self.deleted.append(prompt_id)
                self.pending[:] = [item for item in self.pending if item[1] != prompt_id]
            return Response(status_code=200)

        @app.post("/interrupt")
        async def post_interrupt(request: Request) -> Response:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = {}
            self.interrupts.append(body)
            prompt_id = body.get("prompt_id")
            if self.running is not None and (not prompt_id or self.running[1] == prompt_id):
                self.interrupt_flag = True
            return Response(status_code=200)

        @app.get("/history")
        async def get_all_history() -> dict[str, Any]:
            return self.history

        @app.get("/history/{prompt_id}")
        async def get_history(prompt_id: str) -> dict[str, Any]:
            return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}

        @app.get("/view")
        async def view(filename: str = "", subfolder: str = "", type: str = "output") -> Response:
            if not filename or filename.startswith("/") or ".." in filename:
                return Response(status_code=400)
            data = self.files.get((type, subfolder, filename))
            if data is None:
                return Response(status_code=404)
            return Response(
                data, media_type="image/png", headers={"Content-Disposition": f'filename="{filename}"'}
            )

        @app.post("/upload/image")
        async def upload_image(request: Request) -> Response:
            form = _form_fields(request.headers.get("content-type", ""), await request.body())
            filename, data = form.get("image", (None, b""))
            if not filename:
                return Response(status_code=400)
            kind = form.get("type", (None, b"input"))[1].decode()
            if kind not in UPLOAD_TYPES:  # the real server fails on an unbound variable
                return Response(
                    "500 Internal Server Error\n\nServer got itself in trouble", 500, media_type="text/plain"
                )
            subfolder = form.get("subfolder", (None, b""))[1].decode()
            if ".." in posixpath.join(subfolder, filename).split("/") or subfolder.startswith("/"):
                return Response(status_code=400)
            if form.get("overwrite", (None, b""))[1] not in (b"true", b"1"):
                # ComfyUI keeps an identical file and renames a different one: "x (1).png".
                stem, ext = posixpath.splitext(filename)
                number = 1
                while self.files.get((kind, subfolder, filename)) not in (None, data):
                    filename, number = f"{stem} ({number}){ext}", number + 1
            if not self.forget_uploads:
                self.files[(kind, subfolder, filename)] = data
            return JSONResponse({"name": filename, "subfolder": subfolder, "type": kind})

        @app.get("/system_stats")
        async def system_stats() -> dict[str, Any]:
            return {
                "system": {
                    "os": "posix",
                    "ram_total": 137438953472,
                    "ram_free": 120000000000,
                    "comfyui_version": VERSION,
                    "required_frontend_version": "1.27.10",
                    "python_version": "3.11.9",
                    "pytorch_version": "2.8.0+cu128",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", "127.0.0.1"],
                },
                "devices": [
                    {
                        "name": DEVICE_NAME,
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 150754820096,
                        "vram_free": 149000000000,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }

        @app.get("/object_info")
        async def object_info() -> dict[str, Any]:
            return {name: self._node_info(name) for name in NODE_TYPES}

        @app.get("/object_info/{node_class}")
        async def object_info_node(node_class: str) -> dict[str, Any]:
            return {node_class: self._node_info(node_class)} if node_class in NODE_TYPES else {}

        return app

    def _node_info(self, name: str) -> dict[str, Any]:
        node = NODE_TYPES[name]
        required: dict[str, Any] = {key: ["*", {}] for key in node.required}
        for (node_class, input_name), files in COMBO_FILES.items():
            if name == node_class:
                required[input_name] = [list(getattr(self, files)), {}]
        if name in ("LoadImage", "LoadImageMask"):
            inputs = sorted(filename for kind, _, filename in self.files if kind == "input")
            required["image"] = [inputs, {"image_upload": True}]
        if name == "LoadImageMask":
            required["channel"] = [MASK_CHANNELS, {}]
        optional = {key: ["*", {}] for key in node.optional}
        return {
            "input": {"required": required, **({"optional": optional} if optional else {})},
            "input_order": {
                "required": list(node.required),
                **({"optional": list(node.optional)} if optional else {}),
            },
            "output": list(node.outputs),
            "output_is_list": [False] * len(node.outputs),
            "output_name": list(node.outputs),
            "name": name,
            "display_name": name,
            "description": "",
            "python_module": "nodes",
            "category": "fake",
            "output_node": node.is_output,
        }

    # --- validation (execution.validate_prompt's answers) -------------------------------------
    def _validate(self, prompt: Any) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
        if not isinstance(prompt, dict):
            return _error("invalid_prompt", "Prompt must be a dict"), [], {}
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                return (
                    _error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                    {},
                )
            if class_type not in NODE_TYPES:
                return (
                    _error(
                        "invalid_prompt",
                        f"Cannot execute because node {class_type} does not exist.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                    {},
                )
        outputs = [node_id for node_id, node in prompt.items() if NODE_TYPES[node["class_type"]].is_output]
        if not outputs:
            return _error("prompt_no_outputs", "Prompt has no outputs"), [], {}
        node_errors: dict[str, Any] = {}
        good: list[str] = []
        for output in outputs:
            bad = False
            for node_id in self._ancestry(prompt, output):
                errors = self._node_errors(prompt, node_id)
                if errors:
                    bad = True
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": errors,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output)
            if not bad:
                good.append(output)
        if not good:
            return (
                _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
                [],
                node_errors,
            )
        return None, good, node_errors

    def _ancestry(self, prompt: dict[str, Any], node_id: str, seen: set[str] | None = None) -> list[str]:
        """`node_id` and every node it depends on, dependencies first."""
        seen = set() if seen is None else seen
        if node_id in seen or node_id not in prompt:
            return []
        seen.add(node_id)
        order: list[str] = []
        for value in prompt[node_id].get("inputs", {}).values():
            if _is_link(value):
                order += self._ancestry(prompt, value[0], seen)
        return order + [node_id]

    def _node_errors(self, prompt: dict[str, Any], node_id: str) -> list[dict[str, Any]]:
        node = prompt[node_id]
        inputs = node.get("inputs", {})
        errors = []
        for name in NODE_TYPES[node["class_type"]].required:
            if name not in inputs:
                errors.append(
                    _error("required_input_missing", "Required input is missing", name, {"input_name": name})
                )
            elif _is_link(inputs[name]) and inputs[name][0] not in prompt:
                errors.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [string, int]",
                        name,
                        {"input_name": name},
                    )
                )
        if node["class_type"] in ("LoadImage", "LoadImageMask") and "image" in inputs:
            # LoadImage's VALIDATE_INPUTS: the file must exist in the input folder.
            if self._input_file(str(inputs["image"])) is None:
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"image - Invalid image file: {inputs['image']}",
                        {"input_name": "image"},
                    )
                )
        for (node_class, input_name), files in COMBO_FILES.items():
            if node["class_type"] == node_class and input_name in inputs:
                value, choices = inputs[input_name], getattr(self, files)
                if value not in choices:
                    errors.append(
                        _error(
                            "value_not_in_list",
                            "Value not in list",
                            f"{input_name}: '{value}' not in {choices}",
                            {"input_name": input_name, "received_value": value},
                        )
                    )
        for (node_class, input_name), (low, high) in FLOAT_BOUNDS.items():
            value = inputs.get(input_name) if node["class_type"] == node_class else None
            if isinstance(value, int | float) and not low <= value <= high:
                kind, message = (
                    ("value_smaller_than_min", f"Value {value} smaller than min of {low}")
                    if value < low
                    else ("value_bigger_than_max", f"Value {value} bigger than max of {high}")
                )
                errors.append(_error(kind, message, f"{input_name}", {"input_name": input_name}))
        return errors

    def _input_file(self, name: str) -> bytes | None:
        """A file of the input folder by the name LoadImage takes (``subfolder/name``)."""
        subfolder, _, filename = name.rpartition("/")
        return self.files.get(("input", subfolder, filename))

    # --- execution ----------------------------------------------------------------------------
    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    async def _send(self, sid: str | None, event: str, data: Any) -> None:
        ws = self.sockets.get(sid or "")
        if ws is None:
            return
        try:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_json({"type": event, "data": data})
        except Exception:  # a client that went away must not stop execution
            self.sockets.pop(sid or "", None)

    async def _broadcast(self, event: str, data: Any) -> None:
        for sid in list(self.sockets):
            await self._send(sid, event, data)

    async def _execute_queue(self) -> None:
        while True:
            if self.paused or not self.pending:
                await asyncio.sleep(QUEUE_POLL_S)
                continue
            item = self.running = self.pending.pop(0)
            try:
                await self._execute(*item)
            finally:
                self.running = None
            # The history is written before these two: a client may fetch it on `executing` null.
            await self._broadcast("status", {"status": self._queue_info()})
            client = item[3].get("client_id")
            await self._send(client, "executing", {"node": None, "display_node": None, "prompt_id": item[1]})

    async def _execute(
        self,
        number: int,
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        outputs: list[str],
    ) -> None:
        client = extra_data.get("client_id")
        self.interrupt_flag = False
        messages: list[list[Any]] = []
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []

        async def emit(event: str, data: dict[str, Any]) -> None:
            data = {**data, "prompt_id": prompt_id}
            if event.startswith("execution_"):
                messages.append([event, data])
            await self._send(client, event, data)

        order: list[str] = []
        seen: set[str] = set()
        for output in outputs:
            order += self._ancestry(prompt, output, seen)
        signatures = {node_id: self._signature(prompt, node_id) for node_id in order}
        cached = [node_id for node_id in order if signatures[node_id] in self.cache]
        await emit("execution_start", {"timestamp": _now_ms()})
        await emit("execution_cached", {"nodes": cached, "timestamp": _now_ms()})
        values: dict[str, tuple[Any, ...]] = {}
        status = "success"
        # Every node's progress so far: each progress_state event carries all that are not pending.
        self.node_progress = {}
        try:
            for node_id in order:
                class_type = prompt[node_id]["class_type"]
                if node_id in cached:
                    values[node_id], ui = self.cache[signatures[node_id]]
                    if ui is None:
                        continue  # ComfyUI visits only the cached outputs: no event for the rest
                else:
                    if self.interrupt_flag:
                        raise Interrupted(node_id)
                    await self._send_progress_state(client, prompt_id, node_id, 0.0, 1.0, "running")
                    await emit(
                        "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                    )
                    inputs = {
                        name: values[value[0]][value[1]] if _is_link(value) else value
                        for name, value in prompt[node_id]["inputs"].items()
                    }
                    if class_type == self.fail_node_type:
                        raise NodeFailed(node_id)
                    values[node_id], ui = await self._run_node(
                        class_type, node_id, inputs, prompt_id, prompt, extra_data, emit, client
                    )
                    self.cache[signatures[node_id]] = (values[node_id], ui)
                    executed.append(node_id)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    await emit(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                    )
                maximum = self.node_progress.get(node_id, (0, 1))[1]
                await self._send_progress_state(client, prompt_id, node_id, maximum, maximum, "finished")
            await emit("execution_success", {"timestamp": _now_ms()})
        except Interrupted as stop:
            status = "error"
            node_id = stop.args[0]
            await emit(
                "execution_interrupted",
                {
                    "node_id": node_id,
                    "node_type": prompt[node_id]["class_type"],
                    "executed": executed,
                    "timestamp": _now_ms(),
                },
            )
        except NodeFailed as failed:
            status = "error"
            node_id = failed.args[0]
            await emit(
                "execution_error",
                {
                    "node_id": node_id,
                    "node_type": prompt[node_id]["class_type"],
                    "executed": executed,
                    "exception_message": "Allocation on device would exceed allowed memory. (out of memory)",
                    "exception_type": "torch.OutOfMemoryError",
                    "traceback": ['  File "/ComfyUI/execution.py", line 496, in execute\n'],
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": _now_ms(),
                },
            )
        self.history[prompt_id] = {
            "prompt": [number, prompt_id, prompt, extra_data, outputs],
            "outputs": ui_outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in ui_outputs
            },
        }

    async def _send_progress_state(
        self, client: str | None, prompt_id: str, node_id: str, value: float, maximum: float, state: str
    ) -> None:
        """ComfyUI's progress registry: `node_id`'s new state, sent with every started node's."""
        self.node_progress[node_id] = (value, maximum, state)
        nodes = {
            key: {
                "value": node_value,
                "max": node_max,
                "state": node_state,
                "node_id": key,
                "prompt_id": prompt_id,
                "display_node_id": key,
                "parent_node_id": None,
                "real_node_id": key,
            }
            for key, (node_value, node_max, node_state) in self.node_progress.items()
        }
        await self._send(client, "progress_state", {"prompt_id": prompt_id, "nodes": nodes})

    def _signature(self, prompt: dict[str, Any], node_id: str) -> str:
        node = prompt[node_id]
        inputs = {
            name: self._signature(prompt, value[0]) + f"#{value[1]}" if _is_link(value) else value
            for name, value in sorted(node["inputs"].items())
        }
        return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)

    async def _run_node(
        self,
        class_type: str,
        node_id: str,
        inputs: dict[str, Any],
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        emit: Callable[[str, dict[str, Any]], Awaitable[None]],
        client: str | None,
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        if class_type != "KSampler" and self.node_delay_s:
            await asyncio.sleep(self.node_delay_s)
        if class_type == "CheckpointLoaderSimple":
            return (f"model:{inputs['ckpt_name']}", "clip", "vae"), None
        if class_type == "CLIPTextEncode":
            return (Conditioning(str(inputs["text"])),), None
        if class_type in ("ControlNetLoader", "UpscaleModelLoader"):
            return (f"{class_type}:{next(iter(inputs.values()))}",), None
        if class_type == "ControlNetApplyAdvanced":
            strength = float(inputs["strength"])
            if strength == 0:  # as ComfyUI: the conditioning passes unchanged
                return (inputs["positive"], inputs["negative"]), None
            hint = (
                inputs["image"][0],
                strength,
                float(inputs["start_percent"]),
                float(inputs["end_percent"]),
            )
            return tuple(
                Conditioning(cond.text, (*cond.hints, hint))
                for cond in (inputs["positive"], inputs["negative"])
            ), None
        if class_type == "ImageUpscaleWithModel":
            return (
                [
                    image.resize((image.width * UPSCALE_MODEL_FACTOR, image.height * UPSCALE_MODEL_FACTOR))
                    for image in inputs["image"]
                ],
            ), None
        if class_type == "Canny":
            return ([self._edges(image) for image in inputs["image"]],), None
        if class_type == "EmptyLatentImage":
            return (
                {"width": inputs["width"], "height": inputs["height"], "batch": inputs["batch_size"]},
            ), None
        if class_type == "KSampler":
            steps = int(inputs["steps"])
            for step in range(1, steps + 1):
                await asyncio.sleep(self.step_delay_s)
                await self._send_progress_state(client, prompt_id, node_id, step, steps, "running")
                await emit("progress", {"value": step, "max": steps, "node": node_id})
                if step == 1:
                    await self._send(client, "", self._preview())
            return (
                self._sample(
                    inputs["latent_image"], int(inputs["seed"]), float(inputs["denoise"]), inputs["positive"]
                ),
            ), None
        if class_type == "VAEDecode":
            return (list(inputs["samples"]["pixels"]),), None
        if class_type == "EmptyImage":
            color = int(inputs["color"])
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
            size = (int(inputs["width"]), int(inputs["height"]))
            return ([Image.new("RGB", size, rgb)] * int(inputs["batch_size"]),), None
        if class_type in ("LoadImage", "LoadImageMask"):
            with Image.open(io.BytesIO(self._input_file(inputs["image"]) or b"")) as opened:
                picture = ImageOps.exif_transpose(opened)
            if class_type == "LoadImage":
                # The MASK output is the inverted alpha, or 64×64 of nothing without one.
                alpha = picture.getchannel("A") if "A" in picture.getbands() else None
                mask = ImageOps.invert(alpha) if alpha is not None else Image.new("L", (64, 64), 0)
                return ([picture.convert("RGB")], mask), None
            rgba = picture if picture.mode == "RGBA" else picture.convert("RGBA")
            channel = rgba.getchannel("RGBA".index(str(inputs["channel"])[0].upper()))
            return (ImageOps.invert(channel) if inputs["channel"] == "alpha" else channel,), None
        if class_type == "VAEEncode":
            pixels = [image.point(lambda value: value & VAE_KEPT_BITS) for image in inputs["pixels"]]
            width, height = pixels[0].size
            return ({"width": width, "height": height, "batch": len(pixels), "pixels": pixels},), None
        if class_type == "RepeatLatentBatch":
            latent, amount = dict(inputs["samples"]), int(inputs["amount"])
            latent["batch"] *= amount
            if "pixels" in latent:
                latent["pixels"] = latent["pixels"] * amount
            return (latent,), None
        if class_type == "SetLatentNoiseMask":
            return ({**inputs["samples"], "noise_mask": inputs["mask"]},), None
        if class_type == "RepeatImageBatch":
            return (list(inputs["image"]) * int(inputs["amount"]),), None
        if class_type == "ImageCompositeMasked":
            return (self._composite(inputs),), None
        if class_type == "ImageScale":
            return (self._scale(inputs),), None
        if class_type == "ImageInvert":
            return ([image.point(INVERTED * len(image.getbands())) for image in inputs["image"]],), None
        # SaveImage / PreviewImage
        saved = class_type == "SaveImage"
        kind = "output" if saved else "temp"
        prefix = str(inputs.get("filename_prefix", "ComfyUI")) if saved else "ComfyUI_temp_fake"
        refs = []
        for image in inputs["images"]:
            self.counter += 1
            filename = f"{prefix}_{self.counter:05}_.png"
            info = PngInfo()
            info.add_text("prompt", json.dumps(prompt))
            for key, value in (extra_data.get("extra_pnginfo") or {}).items():
                info.add_text(key, json.dumps(value))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
            self.files[(kind, "", filename)] = buffer.getvalue()
            refs.append({"filename": filename, "subfolder": "", "type": kind})
        return (), {"images": refs}

    @staticmethod
    def _scale(inputs: dict[str, Any]) -> list[Image.Image]:
        """ImageScale: a width or height of 0 keeps the aspect ratio; both 0 keep the size."""
        images, width, height = list(inputs["image"]), int(inputs["width"]), int(inputs["height"])
        if width == 0 and height == 0:
            return images
        old_width, old_height = images[0].size
        width = width or max(1, round(old_width * height / old_height))
        height = height or max(1, round(old_height * width / old_width))
        method = UPSCALE_METHODS[str(inputs["upscale_method"])]
        if inputs["crop"] == "center":
            return [ImageOps.fit(image, (width, height), method) for image in images]
        return [image.resize((width, height), method) for image in images]

    @staticmethod
    def _edges(image: Image.Image) -> Image.Image:
        """Canny's output: white edges on black, as RGB."""
        found = image.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v >= 64 else 0)
        return found.convert("RGB")

    @staticmethod
    def _sample(
        latent: dict[str, Any], seed: int, denoise: float, positive: Conditioning | None = None
    ) -> dict[str, Any]:
        """KSampler's "render": each image a colour drawn from the seed, with the bright pixels of
        each ControlNet hint painted white over it by the hint's strength; from a latent that has
        pixels (an encoded picture), those moved towards the drawing by `denoise`, and only inside
        its noise mask."""
        size = (latent["width"], latent["height"])
        hints = positive.hints if isinstance(positive, Conditioning) else ()
        pixels = []
        for index in range(latent["batch"]):
            drawn = Image.new("RGB", size, _seed_color(seed, index))
            for hint, strength, _, _ in hints:
                # ComfyUI scales a hint to the latent's size (`set_cond_hint`, then `get_control`).
                bright = hint.convert("L").resize(size, Image.Resampling.BILINEAR)
                share = min(strength, 1.0)
                weight = bright.point([int(v * share) for v in range(256)])
                drawn = Image.composite(Image.new("RGB", size, (255, 255, 255)), drawn, weight)
            if "pixels" in latent:
                start = latent["pixels"][index]
                drawn = Image.blend(start, drawn, denoise)
                if "noise_mask" in latent:
                    noise_mask = latent["noise_mask"].resize(start.size, Image.Resampling.BILINEAR)
                    drawn = Image.composite(drawn, start, noise_mask)
            pixels.append(drawn)
        return {**latent, "pixels": pixels}

    @staticmethod
    def _composite(inputs: dict[str, Any]) -> list[Image.Image]:
        """ImageCompositeMasked: `source` pasted on `destination` at (x, y) through the mask (white
        takes the source). As in ComfyUI, the source batch is repeated or cut to the destination's."""
        destination = list(inputs["destination"])
        source = (list(inputs["source"]) * len(destination))[: len(destination)]
        mask = inputs.get("mask")
        composited = []
        for under, over in zip(destination, source, strict=True):
            if inputs["resize_source"]:
                over = over.resize(under.size, Image.Resampling.BILINEAR)
            canvas = under.copy()
            through = None if mask is None else mask.resize(over.size, Image.Resampling.BILINEAR)
            canvas.paste(over, (int(inputs["x"]), int(inputs["y"])), through)
            composited.append(canvas)
        return composited

    @staticmethod
    def _preview() -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="JPEG")
        return struct.pack(">I", PREVIEW_EVENT) + struct.pack(">I", PREVIEW_JPEG) + buffer.getvalue()
