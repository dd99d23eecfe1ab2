"""The ComfyUI engine: renders through a ComfyUI server's own API — ``POST /prompt``, the ``/ws``
event stream (``/history`` polling when it is unavailable), ``/view``, ``/upload/image`` for a job's
input picture and mask — from a built-in template (txt2img, image-to-image, inpainting) or from a
raw API-format graph sent by the client."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from services.contracts import RenderSpec

from ..errors import EngineError, EngineOffline, EngineTimeout, KittyError, ModelNotFound, ValidationFailed
from ..settings import Settings
from ..uploads import DEFAULT_STRENGTH
from .base import EngineHealth, ImageLoader, ProgressFn, RenderedImage, RenderResult
from .remote import (
    HEALTH_TIMEOUT_S,
    decode_image,
    job_input,
    make_client,
    png_bytes,
    png_text_chunks,
    speaking_to,
)

log = logging.getLogger("kitty.images.engines.comfyui")

SERVER = "ComfyUI"
START_HINT = "python main.py --listen 127.0.0.1 --port 8188"
"""How to start ComfyUI where this service expects it (COMFYUI_URL's default)."""

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

KEPT_CHUNKS = ("prompt", "workflow")
"""ComfyUI's PNG text chunks kept in the stored image, so it can be dragged back into ComfyUI."""

WS_MAX_MESSAGE_BYTES = 64 * 2**20
"""Previews are small JPEGs, but custom nodes may stream bigger frames; a larger one closes the
socket, and the render goes on by polling ``/history``."""

CHECKPOINT_NODE, SAMPLER_NODE, SAVE_NODE = "4", "3", "9"
"""Node ids of the template (those of ComfyUI's default workflow, familiar to its users)."""

IMAGE_NODE, MASK_NODE = "10", "13"
"""The image-to-image template's LoadImage and LoadImageMask: they read our uploaded files."""

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
}
"""The template's node types as ComfyUI's UI describes them, to write a loadable ``workflow`` chunk."""


def template_graph(
    spec: RenderSpec, ckpt_name: str, *, image: str | None = None, mask: str | None = None
) -> dict[str, Any]:
    """The built-in graph in ComfyUI's API format (links are ``[node_id, output_index]``): txt2img,
    or image-to-image from `image` (inpainting with `mask`), the names ComfyUI gave our uploads.

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
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": latent,
        },
    }
    graph["8"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": [SAMPLER_NODE, 0], "vae": [CHECKPOINT_NODE, 2]},
    }
    images = ["8", 0] if mask is None else _paste_over_original(graph, spec, ["8", 0])
    graph[SAVE_NODE] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": OUTPUT_PREFIX, "images": images},
    }
    return graph


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
    ``SDXL/sd_xl_base_1.0.safetensors``); None when nothing or several match."""
    if model in available:
        return model
    paths = {name: PurePosixPath(name.replace("\\", "/")) for name in available}
    found = [name for name, path in paths.items() if model in (path.name, path.stem)]
    return found[0] if len(found) == 1 else None


def _in_queue(items: Any, prompt_id: str) -> bool:
    """Whether a ``/queue`` list (``[[number, prompt_id, prompt, extra_data, outputs], ...]``) holds it."""
    return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items or [])


def _node_problems(node_errors: Any) -> list[dict[str, Any]]:
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


def _describe_problems(problems: list[dict[str, Any]]) -> str:
    """``node 1 (EmptyImage): Required input is missing: color; ...``."""
    return "; ".join(
        f"node {p['node_id']} ({p['class_type']}): {p['message']}"
        + (f": {p['details'] or p['input_name']}" if p["details"] or p["input_name"] else "")
        for p in problems
    )


class _PromptFailed(EngineError):
    """The prompt ended badly on the server: there is nothing left to stop there."""


@dataclass
class _Run:
    """One prompt being followed: its deadline and the progress reported so far.

    Steps are reported monotonically: a raw graph with several samplers adds each pass's steps to
    the total instead of starting again from 1.
    """

    prompt_id: str
    report_to: ProgressFn
    deadline: float
    poll_interval_s: float
    sampler_node: str | None
    """The template counts only its KSampler's steps (a tiled VAE decode sends progress too)."""
    total: int
    step: int = 0
    finished_passes: int = 0
    pass_node: str | None = None
    pass_value: int = 0
    pass_max: int = 0
    reported_at: float = 0.0

    def report(self) -> None:
        self.reported_at = time.monotonic()
        self.report_to(self.step, self.total)

    def heartbeat(self) -> None:
        """Report even when nothing moved, so a cancel request (raised by `report_to`) is seen."""
        if time.monotonic() - self.reported_at >= self.poll_interval_s:
            self.report()

    def wait_s(self) -> float:
        """How long to wait for the next event; raises `EngineTimeout` past the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise EngineTimeout(
                f"{SERVER} did not finish prompt {self.prompt_id} in time (IMAGES_JOB_TIMEOUT)"
            )
        return min(self.poll_interval_s, remaining)

    def advance(self, data: dict[str, Any]) -> None:
        node = None if data.get("node") is None else str(data["node"])
        value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
        if self.sampler_node is not None:
            if node is not None and node != self.sampler_node:
                return
            step, total = value, max(maximum, self.total)
        else:
            if self.pass_max and (node != self.pass_node or value < self.pass_value):
                self.finished_passes += self.pass_max
            self.pass_node, self.pass_value, self.pass_max = node, value, maximum
            step, total = self.finished_passes + value, self.finished_passes + maximum
        self.step = max(self.step, min(step, total))
        self.total = max(self.total, total, self.step)
        self.report()

    def finish(self) -> None:
        self.total = max(self.total, self.step, 1)
        self.step = self.total
        self.report()


SAMPLER_SEED_INPUTS = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed"}
"""ComfyUI's core sampler nodes and the input that holds each one's seed."""


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


LOADER_NODES = frozenset(
    {"CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "VAELoader", "LoraLoader"}
)
"""Nodes that read a model file: their failures are about the file, not about memory."""


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


class ComfyUIEngine:
    """Renders on a ComfyUI server (``COMFYUI_URL``).

    Without ``spec.workflow`` the built-in template runs (checkpoint `spec.model`, or the server's
    first checkpoint when None) and all ``num_images`` come from one batch: ComfyUI draws a batch's
    noise from a single seed, so every image of it records ``spec.seed`` (its ``index`` in the
    sidecar tells them apart; re-running the same request reproduces the whole batch). A raw
    ``spec.workflow`` is sent as is; its images record the seed and sampler settings of its sampler
    node (`graph_settings`), not the request's, which it did not use.

    With ``spec.image`` the template starts from that picture (and ``spec.mask``): both are read
    from our store, resized here to the job's size and uploaded to ComfyUI's input folder
    (``POST /upload/image``) before the prompt is queued (see `template_graph`). ComfyUI offers no
    route to delete an input, so the uploads stay in that folder.

    Canceling (the progress callback raising `JobCanceled`) or running out of time deletes the
    prompt from ComfyUI's queue when it is still pending, or interrupts it when it is running.
    """

    name = "comfyui"

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        image_loader: ImageLoader | None = None,
    ) -> None:
        """`image_loader` reads a job's input image and mask from our store (image-to-image)."""
        self.settings = settings
        self._image_loader = image_loader
        self.base_url = settings.comfyui_url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        """Our websocket session: ComfyUI sends a prompt's events only to the client that queued it."""
        # An injected transport carries HTTP only; the event stream cannot go through it.
        self._use_websocket = transport is None
        self._client = make_client(
            self.base_url, connect_timeout_s=settings.engine_connect_timeout_s, transport=transport
        )

    # --- the protocol ---------------------------------------------------------------------------
    def health(self) -> EngineHealth:
        try:
            response = self._client.get("/system_stats", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
            stats = response.json()
            version = str(stats["system"]["comfyui_version"])
        except httpx.TransportError as exc:
            return EngineHealth(
                "offline", f"{SERVER} is not reachable at {self.base_url}: {exc}. Start it: {START_HINT}"
            )
        except httpx.HTTPStatusError as exc:
            return EngineHealth(
                "misconfigured", f"{self.base_url} answered HTTP {exc.response.status_code} to /system_stats"
            )
        except (ValueError, KeyError, TypeError):
            return EngineHealth(
                "misconfigured", f"{self.base_url} does not answer /system_stats like {SERVER}"
            )
        devices = [
            str(device.get("name")) for device in stats.get("devices") or [] if isinstance(device, dict)
        ]
        on = f" on {devices[0]}" if devices else ""
        return EngineHealth("ready", f"{SERVER} {version} at {self.base_url}{on}", version=version)

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        started = time.monotonic()
        version = self._server_version()
        is_template = spec.workflow is None
        engine_info: dict[str, Any] = {
            "server": "comfyui",
            "version": version,
            "versions": {"comfyui": version},
        }
        if is_template:
            checkpoint = self._checkpoint(spec.model)
            image, mask = self._upload_inputs(spec)
            graph = template_graph(spec, checkpoint, image=image, mask=mask)
            pnginfo: dict[str, Any] | None = {"workflow": ui_workflow(graph)}
            engine_info["checkpoint"] = checkpoint
            if image is not None:
                # Their names in ComfyUI's input folder, where they stay (see the class docstring).
                engine_info["inputs"] = {"image": image, "mask": mask}
        else:
            graph = dict(spec.workflow or {})
            # A UI workflow cannot be rebuilt from an API graph without the node definitions;
            # without one ComfyUI loads a dropped image from its `prompt` chunk, the exact graph.
            pnginfo = None
        run = _Run(
            prompt_id=str(uuid.uuid4()),
            report_to=progress,
            deadline=started + self.settings.job_timeout_s,
            poll_interval_s=self.settings.engine_poll_interval_s,
            sampler_node=SAMPLER_NODE if is_template else None,
            total=spec.steps if is_template else 0,
        )
        run.report()
        with ExitStack() as stack:
            # Connected before the prompt is queued, or its first events would be missed.
            socket = self._open_socket(stack)
            run.prompt_id = self._submit(graph, run.prompt_id, pnginfo, is_template)
            try:
                if socket is not None:
                    self._follow_events(socket, run)
                entry = self._wait_for_history(run)
            except _PromptFailed:
                raise
            except BaseException:
                self._stop(run.prompt_id)
                raise
        images = self._fetch_images(entry, run.prompt_id, is_template)
        run.finish()
        engine_info.update(prompt_id=run.prompt_id, workflow="template" if is_template else "raw")
        seed, settings_used = (spec.seed, None) if is_template else graph_settings(graph)
        return RenderResult(
            images=[
                RenderedImage(decode_image(data), seed, png_text_chunks(data, KEPT_CHUNKS)) for data in images
            ],
            device=self.base_url,
            engine_info=engine_info,
            timings={"render_s": time.monotonic() - started},
            settings_used=settings_used,
        )

    def close(self) -> None:
        self._client.close()

    # --- the server's routes --------------------------------------------------------------------
    def _speaking(self) -> AbstractContextManager[None]:
        return speaking_to(SERVER, self.base_url, START_HINT, "COMFYUI_URL")

    def _get_json(self, path: str) -> Any:
        with self._speaking():
            response = self._client.get(path)
            response.raise_for_status()
            return response.json()

    def _server_version(self) -> str:
        """ComfyUI's version; asked first, so an unreachable server fails fast as ENGINE_OFFLINE."""
        stats = self._get_json("/system_stats")
        system = stats.get("system") if isinstance(stats, dict) else None
        return str((system or {}).get("comfyui_version") or "unknown")

    def _checkpoint(self, model: str | None) -> str:
        info = self._get_json("/object_info/CheckpointLoaderSimple")
        node = info.get("CheckpointLoaderSimple") if isinstance(info, dict) else None
        required = ((node or {}).get("input") or {}).get("required") or {}
        available = combo_options(required.get("ckpt_name"))
        if not available:
            raise EngineOffline(
                f"{SERVER} at {self.base_url} has no checkpoint to render with",
                remediation=[
                    "Put a checkpoint (.safetensors) in ComfyUI's models/checkpoints folder; it is seen "
                    "without a restart.",
                    "Or send a raw workflow that loads its own models.",
                ],
            )
        if model is None:
            return available[0]
        found = match_checkpoint(model, available)
        if found is None:
            raise ModelNotFound(
                f"{SERVER} has no checkpoint named '{model}'",
                remediation=[
                    f"Use one of: {', '.join(available[:20])}",
                    f"Or put '{model}' in ComfyUI's models/checkpoints folder.",
                ],
            )
        return found

    def _upload_inputs(self, spec: RenderSpec) -> tuple[str | None, str | None]:
        """The job's picture and mask (None, None for txt2img) uploaded at the job's size: resized
        here, so the graph needs no scaling node and the mask covers the picture pixel for pixel."""
        if spec.image is None:
            return None, None
        size = (spec.width, spec.height)
        picture = job_input(self._image_loader, spec.image, "RGB", size, self.name)
        image = self._upload(png_bytes(picture), "image")
        if spec.mask is None:
            return image, None
        mask = job_input(self._image_loader, spec.mask, "L", size, self.name)
        return image, self._upload(png_bytes(mask), "mask")

    def _upload(self, png: bytes, role: str) -> str:
        """``POST /upload/image`` into ComfyUI's input folder, under a name of our own that is new
        each time (``overwrite``: ComfyUI keeps it as sent); answers the name LoadImage reads it by."""
        filename = f"{OUTPUT_PREFIX}_{role}_{uuid.uuid4().hex}.png"
        with self._speaking():
            response = self._client.post(
                "/upload/image",
                files={"image": (filename, png, "image/png")},
                data={"type": "input", "overwrite": "true"},
            )
            response.raise_for_status()
        try:
            answer = response.json()
            name, subfolder = answer["name"], answer.get("subfolder") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            name, subfolder = None, ""
        if not isinstance(name, str) or not name or not isinstance(subfolder, str):
            raise EngineError(
                f"{SERVER} at {self.base_url} did not answer /upload/image with the file's name",
                remediation=[
                    f"Check that COMFYUI_URL points at {SERVER} itself, not a proxy or another server."
                ],
            )
        return f"{subfolder}/{name}" if subfolder else name

    def _submit(
        self, graph: dict[str, Any], prompt_id: str, pnginfo: dict[str, Any] | None, is_template: bool
    ) -> str:
        body: dict[str, Any] = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        if pnginfo is not None:
            body["extra_data"] = {"extra_pnginfo": pnginfo}
        with self._speaking():
            response = self._client.post("/prompt", json=body)
            if response.status_code == 400:
                raise self._refusal(response, is_template)
            response.raise_for_status()
            answer = response.json()
        # Servers older than client-chosen ids make their own: follow whichever it runs.
        queued = str(answer.get("prompt_id") or prompt_id) if isinstance(answer, dict) else prompt_id
        log.info("comfyui prompt queued", extra={"prompt_id": queued, "comfyui_url": self.base_url})
        problems = _node_problems(answer.get("node_errors") if isinstance(answer, dict) else None)
        if problems:
            # A graph with an invalid output beside a valid one is queued (200) with node_errors,
            # and ComfyUI runs only the valid outputs ("Output will be ignored"). We fail the job
            # instead of finishing it with part of what was asked: "done" would hide the missing
            # outputs, and the wire has no field for a warning. What was queued is stopped, so it
            # renders nothing for nobody.
            self._stop(queued)
            raise self._partial_refusal(problems)
        return queued

    def _partial_refusal(self, problems: list[dict[str, Any]]) -> ValidationFailed:
        nodes = sorted({p["node_id"] for p in problems}, key=lambda node_id: (len(node_id), node_id))
        return ValidationFailed(
            f"{SERVER} would run only part of the workflow: {_describe_problems(problems)}",
            remediation=[
                f"Fix or remove node {', '.join(nodes)}: ComfyUI ignores every output that depends on "
                "an invalid node, and the job renders all of its outputs or none.",
            ],
            detail={"error_type": "outputs_ignored", "node_errors": problems},
        )

    def _refusal(self, response: httpx.Response, is_template: bool) -> KittyError:
        """``POST /prompt``'s 400 as a validation error naming each failing node and input; an
        engine error when what fails is the template's LoadImage of the input we just uploaded."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": str(error or response.text)}
        problems = _node_problems(body.get("node_errors") if isinstance(body, dict) else None)
        if problems:
            what = _describe_problems(problems)
        else:
            what = str(error.get("message") or "the prompt was refused")
            if error.get("details"):
                what += f" ({error['details']})"
        detail = {"error_type": error.get("type"), "node_errors": problems}
        if is_template and any(p["node_id"] in (IMAGE_NODE, MASK_NODE) for p in problems):
            # Our own upload, gone by the time the prompt came: nothing in the request to fix.
            return EngineError(
                f"{SERVER} at {self.base_url} no longer has the input uploaded for this job: {what}",
                remediation=[
                    "Submit the request again: the input is uploaded anew.",
                    "If it happens again: COMFYUI_URL must reach one server (uploads and prompts on "
                    "the same one), and nothing may clear ComfyUI's input folder while jobs run.",
                ],
                detail=detail,
            )
        return ValidationFailed(
            f"{SERVER} refused the workflow: {what}",
            remediation=[
                "Check the request's values; ComfyUI's console shows the validation in full."
                if is_template
                else "Fix the named node inputs; export the graph from ComfyUI with 'Export (API)'.",
            ],
            detail=detail,
        )

    def _stop(self, prompt_id: str) -> None:
        """Delete the prompt from the queue if still pending, else interrupt it if it is running.
        Never interrupts blindly: an old server's /interrupt stops whatever runs, maybe not ours."""
        try:
            queue = self._client.get("/queue", timeout=HEALTH_TIMEOUT_S).json()
            if _in_queue(queue.get("queue_pending"), prompt_id):
                self._client.post("/queue", json={"delete": [prompt_id]}, timeout=HEALTH_TIMEOUT_S)
                # It may have started between the two requests.
                queue = self._client.get("/queue", timeout=HEALTH_TIMEOUT_S).json()
            if _in_queue(queue.get("queue_running"), prompt_id):
                self._client.post("/interrupt", json={"prompt_id": prompt_id}, timeout=HEALTH_TIMEOUT_S)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not stop a comfyui prompt", extra={"prompt_id": prompt_id, "error": str(exc)})

    # --- following a prompt ---------------------------------------------------------------------
    def _socket_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit(
            (scheme, parts.netloc, parts.path + "/ws", urlencode({"clientId": self.client_id}), "")
        )

    def _open_socket(self, stack: ExitStack) -> ClientConnection | None:
        """ComfyUI's event stream, or None (then ``/history`` is polled). No Origin header is sent:
        ComfyUI refuses a foreign one."""
        if not self._use_websocket:
            return None
        try:
            return stack.enter_context(  # type: ignore[no-any-return]
                connect(
                    self._socket_url(),
                    open_timeout=self.settings.engine_connect_timeout_s,
                    max_size=WS_MAX_MESSAGE_BYTES,
                    close_timeout=self.settings.engine_connect_timeout_s,
                    proxy=None,  # like the HTTP client: a proxy meant for the internet never applies
                )
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("comfyui websocket unavailable; polling history", extra={"error": str(exc)})
            return None

    def _follow_events(self, socket: ClientConnection, run: _Run) -> None:
        """Read events until the prompt is over (``executing`` with node null) or the socket drops."""
        succeeded = False
        while True:
            try:
                message = socket.recv(timeout=run.wait_s())
            except TimeoutError:
                if succeeded:
                    return  # success was announced; the closing `executing` frame is not needed
                run.heartbeat()
                continue
            except (ConnectionClosed, OSError) as exc:
                log.warning("comfyui websocket lost; polling history", extra={"error": str(exc)})
                return
            run.heartbeat()
            if isinstance(message, bytes):
                continue  # a preview: 4-byte event type, 4-byte image format, then the image
            try:
                event = json.loads(message)
                kind, data = event["type"], event["data"]
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(data, dict) or data.get("prompt_id") != run.prompt_id:
                continue
            if kind == "progress":
                run.advance(data)
            elif kind == "executing" and data.get("node") is None:
                return
            elif kind == "execution_success":
                succeeded = True
            elif kind in ("execution_error", "execution_interrupted"):
                raise self._failure(kind, data)

    def _wait_for_history(self, run: _Run) -> dict[str, Any]:
        """The prompt's ``/history`` entry, polled until the server has written it."""
        while True:
            history = self._get_json(f"/history/{run.prompt_id}")
            entry = history.get(run.prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    for kind, data in status.get("messages") or []:
                        if kind in ("execution_error", "execution_interrupted"):
                            raise self._failure(kind, data)
                    raise _PromptFailed(f"{SERVER} reports prompt {run.prompt_id} failed")
                return entry
            time.sleep(run.wait_s())
            run.heartbeat()

    def _failure(self, kind: str, data: dict[str, Any]) -> _PromptFailed:
        node = f"node {data.get('node_id')} ({data.get('node_type')})"
        if kind == "execution_interrupted":
            # We never wait for our own interrupt (JobCanceled is raised at once): someone else's.
            return _PromptFailed(
                f"{SERVER} interrupted the prompt at {node}: it was canceled on the server",
                remediation=["Submit the request again; ComfyUI's Cancel (or another client) stopped it."],
                detail={"node_id": data.get("node_id"), "node_type": data.get("node_type")},
            )
        # The traceback stays in ComfyUI's console: no stack trace reaches a client.
        return _PromptFailed(
            f"{SERVER} failed in {node}: {data.get('exception_type')}: {data.get('exception_message')}",
            remediation=failure_remediation(data),
            detail={
                "node_id": data.get("node_id"),
                "node_type": data.get("node_type"),
                "exception_type": data.get("exception_type"),
            },
        )

    def _fetch_images(self, entry: dict[str, Any], prompt_id: str, is_template: bool) -> list[bytes]:
        outputs = entry.get("outputs") or {}
        if is_template:
            refs = list((outputs.get(SAVE_NODE) or {}).get("images") or [])
        else:
            refs = [ref for node in outputs.values() for ref in (node or {}).get("images") or []]
            # Saved images are the result; previews (type "temp") only when nothing was saved.
            refs = [ref for ref in refs if ref.get("type") == "output"] or refs
        if not refs:
            raise EngineError(
                f"{SERVER} finished prompt {prompt_id} without an image",
                remediation=["Give the workflow a SaveImage node."],
            )
        images = []
        with self._speaking():
            for ref in refs:
                response = self._client.get(
                    "/view",
                    params={
                        "filename": ref.get("filename", ""),
                        "subfolder": ref.get("subfolder", ""),
                        "type": ref.get("type", "output"),
                    },
                )
                response.raise_for_status()
                images.append(response.content)
        return images
