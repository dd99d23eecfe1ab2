"""ComfyUI's API over HTTP and its event socket: ``/system_stats``, ``/object_info``,
``/upload/image``, ``/prompt`` and its refusals, ``/queue`` and ``/interrupt`` (stopping one
prompt), ``/history``, ``/view``, the ``/ws`` events, and what a failed prompt's messages say."""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import ExitStack
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from PIL import Image
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from ...errors import EngineError, KittyError, ValidationFailed
from ..remote import HEALTH_TIMEOUT_S, png_bytes
from ..server_base import InputRole, ServerClient
from .graph import (
    INPUT_NODES,
    OUTPUT_PREFIX,
    combo_options,
    describe_problems,
    failure_remediation,
    node_problems,
)

log = logging.getLogger("kitty.images.engines.comfyui")

SERVER = "ComfyUI"
START_HINT = "python main.py --listen 127.0.0.1 --port 8188"
"""How to start ComfyUI where this service expects it (COMFYUI_URL's default)."""

WS_MAX_MESSAGE_BYTES = 64 * 2**20
"""Previews are small JPEGs, but custom nodes may stream bigger frames; a larger one closes the
socket, and the render goes on by polling ``/history``."""

FAILED_EVENTS = ("execution_error", "execution_interrupted")
"""The events (and ``/history`` status messages) of a prompt that ended badly."""


class PromptFailed(EngineError):
    """The prompt ended badly on the server: there is nothing left to stop there."""


def prompt_failure(kind: str, data: dict[str, Any]) -> PromptFailed:
    """An ``execution_error`` or ``execution_interrupted`` event as the job's error."""
    node = f"node {data.get('node_id')} ({data.get('node_type')})"
    if kind == "execution_interrupted":
        # We never wait for our own interrupt (JobCanceled is raised at once): someone else's.
        return PromptFailed(
            f"{SERVER} interrupted the prompt at {node}: it was canceled on the server",
            remediation=["Submit the request again; ComfyUI's Cancel (or another client) stopped it."],
            detail={"node_id": data.get("node_id"), "node_type": data.get("node_type")},
        )
    # The traceback stays in ComfyUI's console: no stack trace reaches a client.
    return PromptFailed(
        f"{SERVER} failed in {node}: {data.get('exception_type')}: {data.get('exception_message')}",
        remediation=failure_remediation(data),
        detail={
            "node_id": data.get("node_id"),
            "node_type": data.get("node_type"),
            "exception_type": data.get("exception_type"),
        },
    )


def history_failure(prompt_id: str, entry: dict[str, Any]) -> PromptFailed | None:
    """Why a ``/history`` entry says its prompt failed, or None when it did not."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    for kind, data in status.get("messages") or []:
        if kind in FAILED_EVENTS:
            return prompt_failure(kind, data)
    return PromptFailed(f"{SERVER} reports prompt {prompt_id} failed")


def read_event(message: str | bytes, prompt_id: str) -> tuple[str, dict[str, Any]] | None:
    """A socket message's event type and data when it is about `prompt_id`; None for anything else
    (a preview, a frame we cannot read, another prompt's event)."""
    if isinstance(message, bytes):
        return None  # a preview: 4-byte event type, 4-byte image format, then the image
    try:
        event = json.loads(message)
        kind, data = event["type"], event["data"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
        return None
    return str(kind), data


def _in_queue(items: Any, prompt_id: str) -> bool:
    """Whether a ``/queue`` list (``[[number, prompt_id, prompt, extra_data, outputs], ...]``) holds it."""
    return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items or [])


class ComfyUIClient(ServerClient):
    """One ComfyUI server (``COMFYUI_URL``). Its methods raise httpx's errors, which `speaking`
    maps onto the service's; `stop` and `open_socket` swallow theirs."""

    label = SERVER
    start_hint = START_HINT
    url_setting = "COMFYUI_URL"

    def get_json(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def system_stats(self, *, quick: bool = False) -> Any:
        """``GET /system_stats``'s body; `quick` for a health check."""
        response = self.http.get(
            "/system_stats", timeout=HEALTH_TIMEOUT_S if quick else httpx.USE_CLIENT_DEFAULT
        )
        response.raise_for_status()
        return response.json()

    def version(self) -> str:
        """ComfyUI's version, ``unknown`` when its answer names none."""
        stats = self.system_stats()
        system = stats.get("system") if isinstance(stats, dict) else None
        return str((system or {}).get("comfyui_version") or "unknown")

    def checkpoints(self) -> list[str]:
        """The checkpoint names CheckpointLoaderSimple offers (its ``ckpt_name`` combo)."""
        return self.model_files("CheckpointLoaderSimple", "ckpt_name")

    def model_files(self, node_class: str, input_name: str) -> list[str]:
        """The files a loader node offers in its combo `input_name` (``ControlNetLoader``'s
        ``control_net_name``: ComfyUI's models/controlnet); empty when the server lacks the node."""
        info = self.get_json(f"/object_info/{node_class}")
        node = info.get(node_class) if isinstance(info, dict) else None
        required = ((node or {}).get("input") or {}).get("required") or {}
        return combo_options(required.get(input_name))

    def upload(self, picture: Image.Image, role: InputRole | Literal["control"]) -> str:
        """``POST /upload/image`` into ComfyUI's input folder, under a name of our own that is new
        each time (``overwrite``: ComfyUI keeps it as sent); answers the name LoadImage reads it by."""
        filename = f"{OUTPUT_PREFIX}_{role}_{uuid.uuid4().hex}.png"
        response = self.http.post(
            "/upload/image",
            files={"image": (filename, png_bytes(picture), "image/png")},
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

    def submit(
        self,
        graph: dict[str, Any],
        prompt_id: str,
        client_id: str,
        pnginfo: dict[str, Any] | None,
        is_template: bool,
    ) -> str:
        """``POST /prompt`` as `client_id` (whose socket gets the events); answers the id the prompt
        is queued under."""
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        if pnginfo is not None:
            body["extra_data"] = {"extra_pnginfo": pnginfo}
        response = self.http.post("/prompt", json=body)
        if response.status_code == 400:
            raise self._refusal(response, is_template)
        response.raise_for_status()
        answer = response.json()
        # Servers older than client-chosen ids make their own: follow whichever it runs.
        queued = str(answer.get("prompt_id") or prompt_id) if isinstance(answer, dict) else prompt_id
        log.info("comfyui prompt queued", extra={"prompt_id": queued, "comfyui_url": self.base_url})
        problems = node_problems(answer.get("node_errors") if isinstance(answer, dict) else None)
        if problems:
            # A graph with an invalid output beside a valid one is queued (200) with node_errors,
            # and ComfyUI runs only the valid outputs ("Output will be ignored"). We fail the job
            # instead of finishing it with part of what was asked: "done" would hide the missing
            # outputs, and the wire has no field for a warning. What was queued is stopped, so it
            # renders nothing for nobody.
            self.stop(queued)
            raise _partial_refusal(problems)
        return queued

    def _refusal(self, response: httpx.Response, is_template: bool) -> KittyError:
        """``POST /prompt``'s 400 as a validation error naming each failing node and input; an
        engine error when what fails is the template's LoadImage of the input we just uploaded."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": str(error or response.text)}
        problems = node_problems(body.get("node_errors") if isinstance(body, dict) else None)
        if problems:
            what = describe_problems(problems)
        else:
            what = str(error.get("message") or "the prompt was refused")
            if error.get("details"):
                what += f" ({error['details']})"
        detail = {"error_type": error.get("type"), "node_errors": problems}
        if is_template and any(p["node_id"] in INPUT_NODES for p in problems):
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

    def stop(self, prompt_id: str) -> None:
        """Delete the prompt from the queue if still pending, else interrupt it if it is running.
        Never interrupts blindly: an old server's /interrupt stops whatever runs, maybe not ours.
        Best effort: a failure is logged, never raised over the job's own outcome."""
        try:
            queue = self.http.get("/queue", timeout=HEALTH_TIMEOUT_S).json()
            if _in_queue(queue.get("queue_pending"), prompt_id):
                self.http.post("/queue", json={"delete": [prompt_id]}, timeout=HEALTH_TIMEOUT_S)
                # It may have started between the two requests.
                queue = self.http.get("/queue", timeout=HEALTH_TIMEOUT_S).json()
            if _in_queue(queue.get("queue_running"), prompt_id):
                self.http.post("/interrupt", json={"prompt_id": prompt_id}, timeout=HEALTH_TIMEOUT_S)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not stop a comfyui prompt", extra={"prompt_id": prompt_id, "error": str(exc)})

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's ``/history`` entry, or None until the server has written it."""
        history = self.get_json(f"/history/{prompt_id}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        return entry if isinstance(entry, dict) else None

    def view(self, ref: dict[str, Any]) -> bytes:
        """The file a ``/history`` output names (``filename``, ``subfolder``, ``type``)."""
        response = self.http.get(
            "/view",
            params={
                "filename": ref.get("filename", ""),
                "subfolder": ref.get("subfolder", ""),
                "type": ref.get("type", "output"),
            },
        )
        response.raise_for_status()
        return response.content

    def socket_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", urlencode({"clientId": client_id}), ""))

    def open_socket(self, stack: ExitStack, client_id: str, timeout_s: float) -> ClientConnection | None:
        """ComfyUI's event stream for `client_id`, closed with `stack`, or None (then ``/history``
        is polled). No Origin header is sent: ComfyUI refuses a foreign one."""
        try:
            return stack.enter_context(  # type: ignore[no-any-return]
                connect(
                    self.socket_url(client_id),
                    open_timeout=timeout_s,
                    max_size=WS_MAX_MESSAGE_BYTES,
                    close_timeout=timeout_s,
                    proxy=None,  # like the HTTP client: a proxy meant for the internet never applies
                )
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("comfyui websocket unavailable; polling history", extra={"error": str(exc)})
            return None


def _partial_refusal(problems: list[dict[str, Any]]) -> ValidationFailed:
    """A prompt queued with ``node_errors``: ComfyUI would run only its valid outputs."""
    nodes = sorted({p["node_id"] for p in problems}, key=lambda node_id: (len(node_id), node_id))
    return ValidationFailed(
        f"{SERVER} would run only part of the workflow: {describe_problems(problems)}",
        remediation=[
            f"Fix or remove node {', '.join(nodes)}: ComfyUI ignores every output that depends on "
            "an invalid node, and the job renders all of its outputs or none.",
        ],
        detail={"error_type": "outputs_ignored", "node_errors": problems},
    )
