"""The InvokeAI engine: renders a `RenderSpec` on an InvokeAI 4+ server through its session queue.

Owns the version gate, the choice of main model, the graphs for SD1.x/SD2.x and SDXL (InvokeAI's
own node types) for text-to-image, image-to-image and inpainting, uploading a job's picture and mask
into InvokeAI's image store, the batch that gives each image its own seed, polling the queue items,
cancelling them, and fetching the finished PNGs with their ``invokeai_*`` text chunks.

Progress is coarse: a queue item shows no step progress until it is finished (InvokeAI reports
steps only on its socket.io stream), so progress advances one whole image at a time, in units of
steps (image i of n done = ``i * steps`` of ``n * steps``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image, ImageOps

from services.contracts import MAX_SEED, RenderSpec

from ..errors import EngineError, EngineTimeout, ModelNotFound, ValidationFailed
from ..settings import Settings
from ..uploads import DEFAULT_STRENGTH
from .base import EngineHealth, ImageLoader, JobCanceled, ProgressFn, RenderedImage, RenderResult
from .remote import (
    HEALTH_TIMEOUT_S,
    decode_image,
    job_input,
    make_client,
    png_bytes,
    png_text_chunks,
    speaking_to,
)

logger = logging.getLogger("kitty.images.engines.invokeai")

ENGINE_LABEL = "InvokeAI"
START_HINT = "invokeai-web (host 127.0.0.1, port 9091 in invokeai.yaml)"

QUEUE_ID = "default"
"""InvokeAI serves one queue, named ``default``."""

ORIGIN = "kitty-images"
"""`Batch.origin`: lets InvokeAI's own UI tell our items from its own (v5+; older servers ignore it)."""

MIN_MAJOR_VERSION = 4
"""v4.0 moved models to ``/api/v2/models`` and dropped ``enqueue_graph``; 3.x speaks another API."""

TOO_OLD_MESSAGE = "InvokeAI 3.x has no enqueue_batch in this form; upgrade to 4 or later"

OUTPUT_CHUNKS = ("invokeai_metadata", "invokeai_graph", "invokeai_workflow")
"""The PNG text chunks InvokeAI writes; kept so its own gallery can recall the settings."""

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

MIN_CFG = 1.0
"""``denoise_latents`` refuses a cfg_scale below 1."""

TERMINAL = frozenset({"completed", "failed", "canceled"})
"""Queue item statuses that never change again (``pending``, ``in_progress``, ``waiting`` do)."""

LIST_PAGE = 100
"""Queue items per page when an older server (no ``item_ids`` in the enqueue answer) is searched."""

LIST_MAX_PAGES = 200
"""Stop searching an older server's queue after this many pages (its queue holds at most 10,000)."""

UPLOAD_ROUTE = "/api/v1/images/upload"
IMAGE_CATEGORY, MASK_CATEGORY = "user", "mask"
"""``image_category`` of our uploads (InvokeAI's ``ImageCategory``). Both go up as intermediates:
like the inputs InvokeAI's own canvas uploads, they stay out of its gallery until "Clear
Intermediates" deletes them."""

IMAGE_NOT_FOUND = "ImageFileNotFoundException"
"""What a node raises when the image it names is not in InvokeAI's store. Our graphs name no image
but the inputs we uploaded, so it means one was deleted before the item ran."""

# Node ids of the graph we send; `output_node` says whose result holds the finished image.
LOADER_NODE, POSITIVE_NODE, NEGATIVE_NODE = "model_loader", "positive_prompt", "negative_prompt"
NOISE_NODE, DENOISE_NODE, METADATA_NODE, DECODE_NODE = "noise", "denoise", "core_metadata", "l2i"
ENCODE_NODE, MASK_NODE, PASTE_NODE = "i2l", "denoise_mask", "paste_back"


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


def parse_version(text: str) -> tuple[int, ...]:
    """``"5.6.0rc1"`` → ``(5, 6, 0)``; the numeric release parts only."""
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.groups() if part is not None)


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


def output_node(mask: str | None) -> str:
    """The node whose image is the result: the paste-back when inpainting, else the decoder."""
    return DECODE_NODE if mask is None else PASTE_NODE


def build_graph(
    spec: RenderSpec,
    model: InvokeModel,
    scheduler: str,
    *,
    image: str | None = None,
    mask: str | None = None,
) -> dict[str, Any]:
    """The graph of InvokeAI's own linear UI for an SD1.x/SD2.x or an SDXL model: text-to-image, or
    image-to-image from `image` (inpainting with `mask`), the names InvokeAI gave our uploads.

    Image-to-image starts the denoise from the picture's latents (``i2l``, the model's VAE) noised to
    ``denoising_start = 1 - strength`` of the schedule, as InvokeAI's UI does: the first
    ``1 - strength`` of the timesteps are skipped, so strength 1 repaints from pure noise.

    Inpainting follows InvokeAI's convention for masks, the opposite of ours: white keeps, black is
    repainted. ``create_denoise_mask`` hands the denoise a tensor where 1 keeps the picture's latents
    (InvokeAI's canvas draws the area to repaint in black on white), and ``img_paste`` inverts its
    mask before pasting, so the decoded image lands where the mask is black. That is why the worker
    uploads our mask inverted (see `InvokeAIEngine._upload_inputs`), and both nodes read that one
    upload. The paste puts the picture back outside the repainted area pixel for pixel: the VAE's
    round trip shifts every pixel a little, and black of our mask must come back exactly as sent.

    Every node but the output is an intermediate; the output skips the invocation cache so each
    run saves a fresh image instead of pointing at one that may have been deleted since.
    """
    strength = spec.strength if spec.strength is not None else DEFAULT_STRENGTH
    output = output_node(mask)
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
    node(DECODE_NODE, "l2i", **(final if output == DECODE_NODE else {}))
    edge(LOADER_NODE, "unet", DENOISE_NODE, "unet")
    edge(POSITIVE_NODE, "conditioning", DENOISE_NODE, "positive_conditioning")
    edge(NEGATIVE_NODE, "conditioning", DENOISE_NODE, "negative_conditioning")
    edge(NOISE_NODE, "noise", DENOISE_NODE, "noise")
    edge(DENOISE_NODE, "latents", DECODE_NODE, "latents")
    edge(LOADER_NODE, "vae", DECODE_NODE, "vae")
    edge(METADATA_NODE, "metadata", output, "metadata")
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


def seed_data(spec: RenderSpec) -> list[list[dict[str, Any]]]:
    """Batch data giving run i the seed ``seed + i``.

    InvokeAI enqueues ``runs × (product of the outer lists)`` sessions, and zips the items of one
    inner list: so ``runs: 1`` with one inner list of n seeds makes exactly n sessions, the noise
    and the metadata node agreeing on each seed (``runs: n`` would make n² of them).
    """
    seeds = image_seeds(spec)
    return [
        [
            {"node_path": NOISE_NODE, "field_name": "seed", "items": seeds},
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


def failure_text(item: dict[str, Any]) -> str:
    """``error_type: error_message`` of a failed item, never its traceback. Servers older than
    ``error_type`` keep only the traceback: its last line is the same ``Type: message``."""
    error_type, message = item.get("error_type"), item.get("error_message")
    if error_type or message:
        return f"{error_type or 'Error'}: {message or ''}".strip()
    traceback = item.get("error_traceback") or item.get("error") or ""
    lines = [line.strip() for line in str(traceback).splitlines() if line.strip()]
    return lines[-1] if lines else "no error message recorded"


def item_failure(item_id: int, item: dict[str, Any]) -> EngineError:
    """The error a failed queue item becomes; an input deleted before the item ran says so."""
    text = failure_text(item)
    detail = {"item_id": item_id, "error_type": item.get("error_type")}
    if text.startswith(IMAGE_NOT_FOUND):
        return EngineError(
            f"{ENGINE_LABEL} no longer has the input uploaded for this job (queue item {item_id}: {text})",
            remediation=[
                "Submit the request again: the input is uploaded anew.",
                "If it happens again: nothing may clear InvokeAI's intermediate images while jobs run, "
                "and INVOKE_HOST/INVOKE_PORT must reach one server.",
            ],
            detail=detail,
        )
    return EngineError(
        f"{ENGINE_LABEL} failed queue item {item_id}: {text}",
        remediation=[
            f"See item {item_id} in InvokeAI's queue tab and its log for the full error.",
            "If it names the model, check that model in InvokeAI's model manager.",
        ],
        detail=detail,
    )


class InvokeAIEngine:
    """An HTTP adapter for one InvokeAI server (``INVOKE_HOST``:``INVOKE_PORT``).

    With ``spec.image`` the graph starts from that picture (and ``spec.mask``): both are read from
    our store, resized here to the job's size and uploaded to InvokeAI's image store before the
    batch is queued (see `build_graph`), and deleted again once the job has ended, however it ended
    (``DELETE /api/v1/images/i/{name}``): the next job uploads its own.
    """

    name = "invokeai"

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
        self.url = settings.invokeai_url
        self._client = make_client(
            self.url, connect_timeout_s=settings.engine_connect_timeout_s, transport=transport
        )
        self._version: str | None = None
        """The last version that passed the gate; a refused one is asked again next time, so an
        upgraded server is picked up without restarting the worker."""

    # --- the Engine protocol ----------------------------------------------------------------------
    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        started = time.monotonic()
        deadline = started + self.settings.job_timeout_s
        if spec.refiner:
            raise ValidationFailed(
                "the invokeai engine runs no refiner pass",
                remediation=["Send the request without refiner, or use the diffusers engine."],
            )
        if spec.cfg < MIN_CFG:
            raise ValidationFailed(
                f"InvokeAI needs cfg ≥ {MIN_CFG:g} (got {spec.cfg:g})",
                remediation=[f"Send cfg of {MIN_CFG:g} or more."],
            )
        scheduler = invoke_scheduler(spec.scheduler)
        with speaking_to(ENGINE_LABEL, self.url, START_HINT, "INVOKE_HOST/INVOKE_PORT"):
            version = self._checked_version()
            model = self._choose_model(spec.model)
            image, mask = self._upload_inputs(spec)
            try:
                batch = {
                    "graph": build_graph(spec, model, scheduler, image=image, mask=mask),
                    "runs": 1,
                    "data": seed_data(spec),
                    "origin": ORIGIN,
                }
                response = self._client.post(
                    f"/api/v1/queue/{QUEUE_ID}/enqueue_batch", json={"batch": batch, "prepend": False}
                )
                response.raise_for_status()
                enqueued = response.json()
                batch_id = str(enqueued.get("batch", {}).get("batch_id", ""))
                item_ids = sorted(int(i) for i in enqueued.get("item_ids") or self._find_item_ids(batch_id))
                if len(item_ids) != spec.num_images:
                    self._cancel(item_ids)
                    raise EngineError(
                        f"InvokeAI enqueued {len(item_ids)} of the {spec.num_images} images asked for",
                        remediation=["The InvokeAI queue may be full: clear or prune it, then retry."],
                        detail={"batch_id": batch_id, "item_ids": item_ids},
                    )
                items = self._wait(item_ids, spec.steps, progress, deadline)
                render_s = time.monotonic() - started
                fallback_seeds = image_seeds(spec)
                images = [
                    self._fetch(item, output_node(mask), item_seed(item, fallback_seeds[index]))
                    for index, item in enumerate(items)
                ]
            finally:
                self._delete_inputs(image, mask)
        engine_info: dict[str, Any] = {
            "server": "invokeai",
            "version": version,
            "model": {"name": model.name, "base": model.base, "key": model.key},
            "scheduler": scheduler,
            "item_ids": item_ids,
            "batch_id": batch_id,
        }
        if image is not None:
            # Their names in InvokeAI's image store while the job ran (deleted afterwards).
            engine_info["inputs"] = {"image": image, "mask": mask}
        return RenderResult(
            images=images,
            device=self.url,
            engine_info=engine_info,
            timings={"render_s": round(render_s, 4)},
        )

    def health(self) -> EngineHealth:
        try:
            response = self._client.get("/api/v1/app/version", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
            version = str(response.json()["version"])
            major = parse_version(version)[0]
        except httpx.TransportError as exc:
            return EngineHealth("offline", f"{ENGINE_LABEL} is not reachable at {self.url}: {exc}")
        except httpx.HTTPStatusError as exc:
            return EngineHealth(
                "misconfigured",
                f"{self.url}/api/v1/app/version answered HTTP {exc.response.status_code}: is this InvokeAI?",
            )
        except Exception as exc:  # a body we cannot read means something else listens there
            return EngineHealth("misconfigured", f"{self.url} did not answer like InvokeAI: {exc}")
        if major < MIN_MAJOR_VERSION:
            return EngineHealth("misconfigured", f"{ENGINE_LABEL} {version}: {TOO_OLD_MESSAGE}", version)
        self._version = version
        return EngineHealth("ready", f"{ENGINE_LABEL} {version} at {self.url}", version)

    def close(self) -> None:
        self._client.close()

    # --- steps of a render --------------------------------------------------------------------------
    def _checked_version(self) -> str:
        if self._version is not None:
            return self._version
        response = self._client.get("/api/v1/app/version")
        response.raise_for_status()
        version = str(response.json().get("version", ""))
        try:
            major = parse_version(version)[0]
        except ValueError:
            raise EngineError(
                f"{self.url} answered version {version!r}, which is not an InvokeAI version",
                remediation=["Check INVOKE_HOST and INVOKE_PORT point at InvokeAI."],
            ) from None
        if major < MIN_MAJOR_VERSION:
            raise EngineError(
                f"{ENGINE_LABEL} {version} at {self.url}: {TOO_OLD_MESSAGE}",
                remediation=["Upgrade InvokeAI to 4.0 or later, or point INVOKE_HOST/INVOKE_PORT at one."],
                detail={"version": version},
            )
        self._version = version
        return version

    def _choose_model(self, wanted: str | None) -> InvokeModel:
        response = self._client.get("/api/v2/models/", params={"model_type": "main"})
        response.raise_for_status()
        models = [
            InvokeModel.from_record(record)
            for record in response.json().get("models", [])
            if record.get("type", "main") == "main"
        ]
        names = ", ".join(f"{m.name} ({m.base})" for m in models) or "none"
        install = "Install one in InvokeAI's model manager (Models tab), then retry."
        if wanted is None:
            usable = [m for m in models if m.base in SUPPORTED_BASES]
            if usable:
                return usable[0]
            raise ModelNotFound(
                f"{ENGINE_LABEL} at {self.url} has no SD1.x, SD2.x or SDXL main model (it has: {names})",
                remediation=[install],
            )
        matches = [m for m in models if wanted in (m.name, m.key)] or [
            m for m in models if slug(m.name) == slug(wanted)
        ]
        if not matches:
            raise ModelNotFound(
                f"{ENGINE_LABEL} at {self.url} has no main model named '{wanted}' (it has: {names})",
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

    def _upload_inputs(self, spec: RenderSpec) -> tuple[str | None, str | None]:
        """The job's picture and mask (None, None for text-to-image) uploaded at the job's size: resized
        here, so no node scales them and the mask covers the picture pixel for pixel. The mask goes up
        inverted, in InvokeAI's polarity (white keeps; see `build_graph`)."""
        if spec.image is None:
            return None, None
        size = (spec.width, spec.height)
        picture = job_input(self._image_loader, spec.image, "RGB", size, self.name)
        image_name = self._upload(picture, IMAGE_CATEGORY)
        if spec.mask is None:
            return image_name, None
        mask = ImageOps.invert(job_input(self._image_loader, spec.mask, "L", size, self.name))
        return image_name, self._upload(mask, MASK_CATEGORY)

    def _delete_inputs(self, *names: str | None) -> None:
        """Remove our uploads from InvokeAI's image store. Best effort: a failure is logged, never
        raised over the job's own outcome (what is left is an intermediate "Clear Intermediates"
        also removes)."""
        for name in names:
            if name is None:
                continue
            try:
                self._client.delete(f"/api/v1/images/i/{name}", timeout=HEALTH_TIMEOUT_S).raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning(
                    "input not deleted from InvokeAI", extra={"image_name": name, "error": repr(exc)}
                )

    def _upload(self, picture: Image.Image, category: str) -> str:
        """``POST /api/v1/images/upload`` as a PNG; answers the name InvokeAI gave it (its own, new
        each time: the file name sent is not kept)."""
        response = self._client.post(
            UPLOAD_ROUTE,
            params={"image_category": category, "is_intermediate": "true"},
            files={"file": (f"kitty_{category}.png", png_bytes(picture), "image/png")},
        )
        response.raise_for_status()
        try:
            name = response.json().get("image_name")
        except (ValueError, AttributeError):
            name = None
        if not isinstance(name, str) or not name:
            raise EngineError(
                f"{self.url}{UPLOAD_ROUTE} did not answer with the uploaded image's name",
                remediation=["Check that INVOKE_HOST and INVOKE_PORT point at InvokeAI itself, not a proxy."],
            )
        return name

    def _find_item_ids(self, batch_id: str) -> list[int]:
        """Our queue items on servers whose enqueue answer has no ``item_ids`` (before ~5.10): page
        through the queue list for the batch id (items never move between batches)."""
        found: list[int] = []
        cursor: int | None = None
        for _ in range(LIST_MAX_PAGES):
            params: dict[str, int] = {"limit": LIST_PAGE, "priority": 0}
            if cursor is not None:
                params["cursor"] = cursor
            response = self._client.get(f"/api/v1/queue/{QUEUE_ID}/list", params=params)
            response.raise_for_status()
            page = response.json()
            items = page.get("items") or []
            found.extend(int(i["item_id"]) for i in items if i.get("batch_id") == batch_id)
            if not page.get("has_more") or not items:
                break
            cursor = int(items[-1]["item_id"])
        return found

    def _wait(
        self, item_ids: list[int], steps: int, progress: ProgressFn, deadline: float
    ) -> list[dict[str, Any]]:
        """Poll each unfinished item until all completed; the finished items in `item_ids` order."""
        finished: dict[int, dict[str, Any]] = {}
        total = len(item_ids) * steps
        try:
            progress(0, total)
            while True:
                for item_id in item_ids:
                    if item_id not in finished:
                        item = self._get_item(item_id)
                        if item.get("status") in TERMINAL:
                            finished[item_id] = item
                for item_id in item_ids:
                    status = finished.get(item_id, {}).get("status")
                    if status == "failed":
                        raise item_failure(item_id, finished[item_id])
                    if status == "canceled":
                        raise EngineError(
                            f"queue item {item_id} was canceled on the {ENGINE_LABEL} server, "
                            "not by this job",
                            remediation=["Submit the request again if you still want the image."],
                            detail={"item_id": item_id},
                        )
                done = sum(1 for item in finished.values() if item.get("status") == "completed")
                progress(done * steps, total)
                if done == len(item_ids):
                    return [finished[item_id] for item_id in item_ids]
                if time.monotonic() >= deadline:
                    raise EngineTimeout(
                        f"{ENGINE_LABEL} did not finish {len(item_ids) - done} of {len(item_ids)} images "
                        f"within {self.settings.job_timeout_s}s",
                        detail={"item_ids": item_ids},
                    )
                time.sleep(self.settings.engine_poll_interval_s)
        except (JobCanceled, EngineError, EngineTimeout):
            # Nothing will collect the rest of the batch: stop InvokeAI spending the GPU on it.
            self._cancel([i for i in item_ids if i not in finished])
            raise

    def _get_item(self, item_id: int) -> dict[str, Any]:
        response = self._client.get(f"/api/v1/queue/{QUEUE_ID}/i/{item_id}")
        if response.status_code == 404:
            raise EngineError(
                f"queue item {item_id} is gone from {ENGINE_LABEL} (deleted, or the queue was cleared)",
                remediation=["Submit the request again."],
            )
        response.raise_for_status()
        return dict(response.json())

    def _cancel(self, item_ids: list[int]) -> None:
        """Best effort: the job is ending either way, so a failed cancel is only logged."""
        for item_id in item_ids:
            try:
                self._client.put(f"/api/v1/queue/{QUEUE_ID}/i/{item_id}/cancel").raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("could not cancel InvokeAI queue item %s: %s", item_id, exc)

    def _fetch(self, item: dict[str, Any], node_id: str, seed: int) -> RenderedImage:
        image_name = output_image_name(item, node_id)
        if image_name is None:
            raise EngineError(
                f"{ENGINE_LABEL} finished queue item {item.get('item_id')} but its session holds no "
                "image (servers before 4.2 do not store finished sessions in the queue)",
                remediation=["Upgrade InvokeAI to 4.2 or later."],
            )
        response = self._client.get(f"/api/v1/images/i/{image_name}/full")
        response.raise_for_status()
        data = response.content
        return RenderedImage(
            image=decode_image(data), seed=seed, text_chunks=png_text_chunks(data, OUTPUT_CHUNKS)
        )
