"""The AUTOMATIC1111 API over HTTP: its routes, its error bodies, its two progress views, its
global interrupt, the ControlNet extension's models, and the render's answer (base64 PNGs and an
``info`` JSON string).

The render request (``POST /sdapi/v1/txt2img`` or ``img2img``) answers only once every image is
done, so it runs in a background thread (`RenderCall`) while the caller polls the task's progress.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from PIL import UnidentifiedImageError

from services.contracts import RenderSpec

from ...errors import EngineError, ModelNotFound, Unauthorized, ValidationFailed
from ...metadata import PARAMETERS_CHUNK
from ..base import RenderedImage
from ..remote import HEALTH_TIMEOUT_S, SERVER_MESSAGE_CHARS, decode_image, png_text_chunks, server_message
from ..server_base import ServerClient, best_effort

log = logging.getLogger("kitty.images.engines.a1111")

SERVER_LABEL = "AUTOMATIC1111"
START_HINT = "./webui.sh --api --listen (or --nowebui), bound to 127.0.0.1"

TASK_PROGRESS = "/internal/progress"
"""Per-task progress; served only with the web UI (absent with ``--nowebui``) and not behind --api-auth."""
GLOBAL_PROGRESS = "/sdapi/v1/progress"
INTERRUPT = "/sdapi/v1/interrupt"
SD_MODELS = "/sdapi/v1/sd-models"
CONTROLNET_VERSION = "/controlnet/version"
CONTROLNET_MODELS = "/controlnet/model_list"
"""Routes of the sd-webui-controlnet extension (its ``scripts/api.py``); absent (404) without it."""

CONTROLNET_INSTALL = (
    "Install the sd-webui-controlnet extension on the AUTOMATIC1111 server (Extensions → Available, "
    "or git clone https://github.com/Mikubill/sd-webui-controlnet into its extensions folder), put "
    "the ControlNet models in models/ControlNet, and restart it."
)

A1111_CHUNK = "a1111_parameters"
"""The server's own infotext is kept under this name: ``parameters`` is rewritten by the store path."""

POLL_TIMEOUT_S = 5.0
"""One progress or interrupt request. A slow poll is skipped; it never fails the render."""

TASK_ID_HEX_CHARS = 16
"""Our ``force_task_id`` is ``task(<hex>)``, the shape of the web UI's own ids."""

AUTH_REMEDIATION = (
    "Set A1111_API_AUTH to one user:password pair of the server's --api-auth "
    "(or start the server without --api-auth)."
)

TaskState = Literal["active", "waiting", "finished", "unknown"]
"""Where our task is on the server: running; queued or not yet arrived; done; or not knowable
(``--nowebui`` servers whose ``/sdapi/v1/progress`` does not name the running task, as in v1.10)."""


@dataclass
class TaskStatus:
    state: TaskState
    step: int | None = None


@dataclass
class Task:
    """One render on the server, and what this render learned about the server's progress routes."""

    id: str
    steps: int
    has_task_progress: bool = True


@dataclass
class RenderAnswer:
    images: list[RenderedImage]
    info: dict[str, Any]
    """The server's ``info``, parsed: ``version``, ``sd_model_name``, ``all_seeds``, ..."""


class RenderCall:
    """The blocking txt2img or img2img request, in a daemon thread so the caller can poll and cancel
    meanwhile (and a worker that stops never waits for it)."""

    def __init__(
        self, client: httpx.Client, route: str, payload: dict[str, Any], timeout: httpx.Timeout
    ) -> None:
        self.done = threading.Event()
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(client, route, payload, timeout), name="a1111-render", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self, client: httpx.Client, route: str, payload: dict[str, Any], timeout: httpx.Timeout) -> None:
        try:
            self.response = client.post(route, json=payload, timeout=timeout)
        except BaseException as exc:  # handed to the caller's thread, which maps it
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> httpx.Response:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def new_task_id() -> str:
    return f"task({secrets.token_hex(TASK_ID_HEX_CHARS // 2)})"


def parse_api_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` → a Basic-auth pair. A1111's ``--api-auth`` takes ``u:p,u2:p2`` and splits
    on ``,`` then ``:``, so neither can occur in its credentials: the first pair is used."""
    if not value:
        return None
    user, sep, password = value.split(",")[0].partition(":")
    if not sep or not user:
        raise ValueError("A1111_API_AUTH must be user:password")
    return user, password


def a1111_message(response: httpx.Response) -> str:
    """The server's own words for an error. A1111 answers ``{"error": <exception type>, "detail",
    "body", "errors": <str(exception)>}``; request validation answers FastAPI's ``{"detail": [...]}``."""
    try:
        body: Any = response.json()
    except ValueError:
        return server_message(response)
    if not isinstance(body, dict):
        return server_message(response)
    detail = body.get("detail")
    if isinstance(detail, list):
        problems = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(part) for part in item.get("loc", []) if part != "body"]
                problems.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', item)}")
            else:
                problems.append(str(item))
        return "; ".join(problems)[:SERVER_MESSAGE_CHARS]
    error = body.get("error")
    text = str(detail or body.get("errors") or "")
    if isinstance(error, str) and error and error != "HTTPException":
        # The exception's type is the useful half of e.g. "OutOfMemoryError: CUDA out of memory".
        text = f"{error}: {text}" if text else error
    return (text or server_message(response))[:SERVER_MESSAGE_CHARS]


def checkpoint_title(models: Any, model: str) -> str | None:
    """The exact title of the checkpoint `model` names in ``/sdapi/v1/sd-models``: by title (with
    or without its ``[hash]``), model name, file name (with or without extension) or hash."""
    for item in models if isinstance(models, list) else []:
        if not isinstance(item, dict):
            continue
        filename = str(item.get("filename") or "").replace("\\", "/").rsplit("/", 1)[-1]
        title = str(item.get("title") or "")
        names = {
            title,
            title.split(" [", 1)[0],
            str(item.get("model_name") or ""),
            filename,
            filename.rsplit(".", 1)[0],
            str(item.get("hash") or ""),
            str(item.get("sha256") or ""),
        }
        if model in names - {""}:
            return title or model
    return None


def controlnet_name(names: list[str], model: str) -> str | None:
    """The listed name (``control_v11p_sd15_canny [d14c016b]``) `model` names: exactly, or by its
    name without the hash, in any case (the extension's own lookup is case-blind)."""
    if model in names:
        return model
    found = [name for name in names if name.split(" [", 1)[0].lower() == model.lower()]
    return found[0] if len(found) == 1 else None


class A1111Client(ServerClient):
    """One AUTOMATIC1111 server started with ``--api`` (v1.6 or later)."""

    label = SERVER_LABEL
    start_hint = START_HINT
    url_setting = "A1111_BASE_URL"

    def probe(self) -> httpx.Response:
        """The health check's one quick request: the checkpoint list."""
        return self.http.get(SD_MODELS, timeout=httpx.Timeout(HEALTH_TIMEOUT_S))

    def checkpoint_title(self, model: str) -> str:
        """The exact title of the checkpoint `model` names. A1111 silently renders with another
        checkpoint when the named one is unknown, so the name is checked first."""
        response = self.http.get(SD_MODELS)
        self.raise_for_status(response)
        try:
            models = response.json()
        except ValueError as exc:
            raise EngineError(f"{self.base_url} does not answer like {SERVER_LABEL} ({SD_MODELS})") from exc
        title = checkpoint_title(models, model)
        if title is not None:
            return title
        listed = models if isinstance(models, list) else []
        known = [str(m.get("model_name")) for m in listed if isinstance(m, dict)][:10]
        raise ModelNotFound(
            f"{SERVER_LABEL} at {self.base_url} has no checkpoint '{model}'",
            remediation=[
                f"Use one of: {', '.join(known)}" if known else "The server lists no checkpoints.",
                "Put the checkpoint in the server's models/Stable-diffusion folder and "
                "POST /sdapi/v1/refresh-checkpoints.",
                "Or send no model to use the server's current checkpoint.",
            ],
        )

    def controlnet_models(self, wanted: list[str | None]) -> list[str]:
        """The ControlNet extension's exact name for each model in `wanted`
        (``/controlnet/model_list``). The extension is asked first: without it A1111 refuses the
        whole render, and with an unknown model the extension skips the unit and renders unguided."""
        if any(model is None for model in wanted):
            raise ValidationFailed(
                f"a control on {SERVER_LABEL} must name the ControlNet extension's model in `model`",
                remediation=["Send `model` with each control: the server's GET /controlnet/model_list."],
            )
        version = self.http.get(CONTROLNET_VERSION)
        if version.status_code == 404:
            raise EngineError(
                f"{SERVER_LABEL} at {self.base_url} has no ControlNet extension ({CONTROLNET_VERSION}: "
                "404), so it cannot render `controls`",
                remediation=[
                    CONTROLNET_INSTALL,
                    "Or send the request without `controls`, or to another engine.",
                ],
            )
        self.raise_for_status(version)
        response = self.http.get(CONTROLNET_MODELS, params={"update": "true"})
        self.raise_for_status(response)
        try:
            listed = response.json().get("model_list")
        except (ValueError, AttributeError):
            listed = None
        names = [str(name) for name in listed] if isinstance(listed, list) else []
        found = [controlnet_name(names, str(model)) for model in wanted]
        for model, name in zip(wanted, found, strict=True):
            if name is None:
                raise ModelNotFound(
                    f"{SERVER_LABEL} at {self.base_url} has no ControlNet model '{model}'",
                    remediation=[
                        f"Use one of: {', '.join(names[:20])}" if names else "The extension lists no models.",
                        "Put the model in the server's models/ControlNet folder (no restart needed).",
                    ],
                )
        return [name for name in found if name is not None]

    def start_render(self, route: str, payload: dict[str, Any], timeout: httpx.Timeout) -> RenderCall:
        call = RenderCall(self.http, route, payload, timeout)
        call.start()
        return call

    def status(self, task: Task) -> TaskStatus:
        """Where our task is. Never raises: a failed poll is `unknown`, and the render goes on."""
        try:
            if task.has_task_progress:
                response = self.http.post(
                    TASK_PROGRESS, json={"id_task": task.id, "id_live_preview": -1}, timeout=POLL_TIMEOUT_S
                )
                if response.status_code == 200:
                    return task_progress_status(response.json(), task.steps)
                if response.status_code not in (401, 403, 404, 405):
                    return TaskStatus("unknown")
                # --nowebui (404), or a web UI behind its own login: the API's global view it is.
                task.has_task_progress = False
            response = self.http.get(
                GLOBAL_PROGRESS, params={"skip_current_image": "true"}, timeout=POLL_TIMEOUT_S
            )
            if response.status_code != 200:
                return TaskStatus("unknown")
            return global_progress_status(response.json(), task)
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            log.debug("progress poll failed", extra={"task_id": task.id, "error": str(exc)})
            return TaskStatus("unknown")

    def interrupt(self, task: Task) -> None:
        """Stops whatever the server runs: send it only while `task` is the one running."""
        with best_effort(log, "interrupt failed", task_id=task.id):
            self.http.post(INTERRUPT, timeout=POLL_TIMEOUT_S)
            log.info("interrupted our task", extra={"task_id": task.id, "server": self.base_url})

    def raise_for_status(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        status, message = response.status_code, a1111_message(response)
        if status in (401, 403):
            raise Unauthorized(
                f"{SERVER_LABEL} at {self.base_url} refused the credentials: {message}",
                remediation=[AUTH_REMEDIATION],
            )
        if status == 404 and response.request.url.path.startswith("/sdapi/"):
            raise EngineError(
                f"{SERVER_LABEL} at {self.base_url} serves no API ({response.request.url.path}: 404)",
                remediation=[f"Start it with the API enabled: {START_HINT}"],
            )
        raise EngineError(
            f"{SERVER_LABEL} answered HTTP {status}: {message}",
            remediation=[
                f"Check {SERVER_LABEL}'s console for this request.",
                "Retry, or try other settings.",
            ],
        )


def read_answer(response: httpx.Response, spec: RenderSpec, task: Task) -> RenderAnswer:
    """The images of a successful render, each with the seed the server reports for it and the
    server's own infotext, and the parsed ``info``."""
    try:
        body = response.json()
        encoded = list(body.get("images") or [])
    except (ValueError, AttributeError, TypeError) as exc:
        raise EngineError(f"{SERVER_LABEL} answered the render with something other than JSON") from exc
    info = parse_info(body.get("info"))
    # A grid (when the server returns one) comes first; scripts may append extra images last.
    first = to_int(info.get("index_of_first_image"), 0)
    all_seeds = info.get("all_seeds")
    seeds: list[Any] = all_seeds if isinstance(all_seeds, list) else []
    images: list[RenderedImage] = []
    for index, item in enumerate(encoded[first : first + spec.num_images]):
        try:
            data = base64.b64decode(str(item), validate=True)
            image = decode_image(data)
            server_chunks = png_text_chunks(data, (PARAMETERS_CHUNK,))
        except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
            raise EngineError(f"{SERVER_LABEL} sent an image that could not be decoded: {exc}") from exc
        chunks = {A1111_CHUNK: server_chunks[PARAMETERS_CHUNK]} if server_chunks else {}
        seed = to_int(seeds[index], spec.seed + index) if index < len(seeds) else spec.seed + index
        images.append(RenderedImage(image=image, seed=seed, text_chunks=chunks))
    if not images:
        raise EngineError(
            f"{SERVER_LABEL} finished task {task.id} without images",
            remediation=["Check the server's console: an extension may have replaced the output."],
        )
    return RenderAnswer(images, info)


def task_progress_status(body: Any, steps: int) -> TaskStatus:
    """``/internal/progress``: ``{active, queued, completed, progress 0..1, ...}`` for our id."""
    if not isinstance(body, dict):
        return TaskStatus("unknown")
    if body.get("active"):
        fraction = body.get("progress")
        step = round(float(fraction) * steps) if isinstance(fraction, int | float) else None
        return TaskStatus("active", step)
    if body.get("completed"):
        return TaskStatus("finished")
    # Queued, or our request has not reached the server's queue yet ("Waiting...").
    return TaskStatus("waiting")


def global_progress_status(body: Any, task: Task) -> TaskStatus:
    """``/sdapi/v1/progress``: the server's one running job, named by ``current_task`` where the
    server fills it in (v1.10 leaves it null: its API module binds the name before any task runs)."""
    if not isinstance(body, dict):
        return TaskStatus("unknown")
    raw_state = body.get("state")
    state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
    current = body.get("current_task")
    if current == task.id:
        sampling_steps = to_int(state.get("sampling_steps"), 0)
        if sampling_steps > 0:
            step = round(to_int(state.get("sampling_step"), 0) * task.steps / sampling_steps)
        else:
            step = None
        return TaskStatus("active", step)
    if current:
        return TaskStatus("waiting")
    if to_int(state.get("job_count"), 0) == 0:
        return TaskStatus("waiting")  # idle: our request is on its way in
    return TaskStatus("unknown")  # something runs and the server does not say what


def parse_info(raw: Any) -> dict[str, Any]:
    """``info`` is a JSON string inside the JSON answer."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {"raw": raw[:SERVER_MESSAGE_CHARS]}
        return parsed if isinstance(parsed, dict) else {"raw": parsed}
    return {}


def to_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
