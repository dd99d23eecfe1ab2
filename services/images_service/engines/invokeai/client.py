"""The InvokeAI API over HTTP (v4 and later): the version, the main models, our uploads into its
image store and their deletion, ``enqueue_batch``, the queue items (polled, listed, canceled), the
finished PNGs with their ``invokeai_*`` text chunks, and what a failed item's error fields say.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

import httpx
from PIL import Image

from ...errors import EngineError
from ..base import RenderedImage
from ..remote import HEALTH_TIMEOUT_S, decode_image, png_bytes, png_text_chunks
from ..server_base import InputRole, ServerClient, best_effort
from .graph import ENGINE_LABEL, InvokeModel, output_image_name

logger = logging.getLogger("kitty.images.engines.invokeai")

START_HINT = "invokeai-web (host 127.0.0.1, port 9091 in invokeai.yaml)"

QUEUE_ID = "default"
"""InvokeAI serves one queue, named ``default``."""

VERSION_ROUTE = "/api/v1/app/version"
MODELS_ROUTE = "/api/v2/models/"
QUEUE_ROUTE = f"/api/v1/queue/{QUEUE_ID}"
IMAGES_ROUTE = "/api/v1/images/i"

MIN_MAJOR_VERSION = 4
"""v4.0 moved models to ``/api/v2/models`` and dropped ``enqueue_graph``; 3.x speaks another API."""

TOO_OLD_MESSAGE = "InvokeAI 3.x has no enqueue_batch in this form; upgrade to 4 or later"

OUTPUT_CHUNKS = ("invokeai_metadata", "invokeai_graph", "invokeai_workflow")
"""The PNG text chunks InvokeAI writes; kept so its own gallery can recall the settings."""


TERMINAL = frozenset({"completed", "failed", "canceled"})
"""Queue item statuses that never change again (``pending``, ``in_progress``, ``waiting`` do)."""

LIST_PAGE = 100
"""Queue items per page when an older server (no ``item_ids`` in the enqueue answer) is searched."""

LIST_MAX_PAGES = 200
"""Stop searching an older server's queue after this many pages (its queue holds at most 10,000)."""

UPLOAD_ROUTE = "/api/v1/images/upload"
IMAGE_CATEGORY, MASK_CATEGORY, CONTROL_CATEGORY = "user", "mask", "control"
"""``image_category`` of our uploads (InvokeAI's ``ImageCategory``). All go up as intermediates:
like the inputs InvokeAI's own canvas uploads, they stay out of its gallery until "Clear
Intermediates" deletes them."""

IMAGE_NOT_FOUND = "ImageFileNotFoundException"
"""What a node raises when the image it names is not in InvokeAI's store. Our graphs name no image
but the inputs we uploaded, so it means one was deleted before the item ran."""


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


def parse_version(text: str) -> tuple[int, ...]:
    """``"5.6.0rc1"`` → ``(5, 6, 0)``; the numeric release parts only."""
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.groups() if part is not None)


class InvokeAIClient(ServerClient):
    """One InvokeAI server (``INVOKE_HOST``:``INVOKE_PORT``). Its methods raise httpx's errors,
    which `speaking` maps onto the service's."""

    label = ENGINE_LABEL
    start_hint = START_HINT
    url_setting = "INVOKE_HOST/INVOKE_PORT"

    def app_version(self, *, quick: bool = False) -> Any:
        """``GET /api/v1/app/version``'s body; `quick` for a health check."""
        response = self.http.get(
            VERSION_ROUTE, timeout=HEALTH_TIMEOUT_S if quick else httpx.USE_CLIENT_DEFAULT
        )
        response.raise_for_status()
        return response.json()

    def main_models(self) -> list[InvokeModel]:
        return self.models("main")

    def models(self, model_type: str) -> list[InvokeModel]:
        """The installed models of `model_type` (``main``, ``controlnet``)."""
        response = self.http.get(MODELS_ROUTE, params={"model_type": model_type})
        response.raise_for_status()
        return [
            InvokeModel.from_record(record)
            for record in response.json().get("models", [])
            if record.get("type", model_type) == model_type
        ]

    def upload(self, picture: Image.Image, role: InputRole | Literal["control"]) -> str:
        """``POST /api/v1/images/upload`` as a PNG; answers the name InvokeAI gave it (its own, new
        each time: the file name sent is not kept)."""
        category = {"image": IMAGE_CATEGORY, "mask": MASK_CATEGORY, "control": CONTROL_CATEGORY}[role]
        response = self.http.post(
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
                f"{self.base_url}{UPLOAD_ROUTE} did not answer with the uploaded image's name",
                remediation=["Check that INVOKE_HOST and INVOKE_PORT point at InvokeAI itself, not a proxy."],
            )
        return name

    def delete_image(self, name: str) -> None:
        """Remove one of our uploads from InvokeAI's image store. Best effort: a failure is logged,
        never raised over the job's own outcome (what is left is an intermediate "Clear
        Intermediates" also removes)."""
        with best_effort(logger, "input not deleted from InvokeAI", image_name=name):
            self.http.delete(f"{IMAGES_ROUTE}/{name}", timeout=HEALTH_TIMEOUT_S).raise_for_status()

    def enqueue(self, batch: dict[str, Any]) -> tuple[str, list[int]]:
        """The batch id and the queue items, in order, of `batch` appended to the queue."""
        response = self.http.post(f"{QUEUE_ROUTE}/enqueue_batch", json={"batch": batch, "prepend": False})
        response.raise_for_status()
        enqueued = response.json()
        batch_id = str(enqueued.get("batch", {}).get("batch_id", ""))
        return batch_id, sorted(int(i) for i in enqueued.get("item_ids") or self.find_item_ids(batch_id))

    def find_item_ids(self, batch_id: str) -> list[int]:
        """Our queue items on servers whose enqueue answer has no ``item_ids`` (before ~5.10): page
        through the queue list for the batch id (items never move between batches)."""
        found: list[int] = []
        cursor: int | None = None
        for _ in range(LIST_MAX_PAGES):
            params: dict[str, int] = {"limit": LIST_PAGE, "priority": 0}
            if cursor is not None:
                params["cursor"] = cursor
            response = self.http.get(f"{QUEUE_ROUTE}/list", params=params)
            response.raise_for_status()
            page = response.json()
            items = page.get("items") or []
            found.extend(int(i["item_id"]) for i in items if i.get("batch_id") == batch_id)
            if not page.get("has_more") or not items:
                break
            cursor = int(items[-1]["item_id"])
        return found

    def item(self, item_id: int) -> dict[str, Any]:
        response = self.http.get(f"{QUEUE_ROUTE}/i/{item_id}")
        if response.status_code == 404:
            raise EngineError(
                f"queue item {item_id} is gone from {ENGINE_LABEL} (deleted, or the queue was cleared)",
                remediation=["Submit the request again."],
            )
        response.raise_for_status()
        return dict(response.json())

    def cancel(self, item_ids: list[int]) -> None:
        """Best effort: the job is ending either way, so a failed cancel is only logged."""
        for item_id in item_ids:
            with best_effort(logger, "could not cancel an InvokeAI queue item", item_id=item_id):
                self.http.put(f"{QUEUE_ROUTE}/i/{item_id}/cancel").raise_for_status()

    def fetch(self, item: dict[str, Any], node_id: str, seed: int) -> RenderedImage:
        """The PNG our output node `node_id` saved in the finished `item`, with InvokeAI's chunks."""
        image_name = output_image_name(item, node_id)
        if image_name is None:
            raise EngineError(
                f"{ENGINE_LABEL} finished queue item {item.get('item_id')} but its session holds no "
                "image (servers before 4.2 do not store finished sessions in the queue)",
                remediation=["Upgrade InvokeAI to 4.2 or later."],
            )
        response = self.http.get(f"{IMAGES_ROUTE}/{image_name}/full")
        response.raise_for_status()
        data = response.content
        return RenderedImage(
            image=decode_image(data), seed=seed, text_chunks=png_text_chunks(data, OUTPUT_CHUNKS)
        )
