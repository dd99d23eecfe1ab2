"""The AUTOMATIC1111 adapter: ``POST /sdapi/v1/txt2img`` (or ``/sdapi/v1/img2img`` when the job has
an input image), which answers only once every image is done, runs in a background thread while
this one polls the task's progress and checks for cancels.

Image-to-image sends the input (and mask) as base64 PNG, read upright from our store. Inpainting
asks for what our diffusers engine does: white repaints, the masked area starts from the original
pixels (``inpainting_fill`` 1) at the whole picture's resolution, and A1111 pastes the original back
outside the mask.

Cancel uses ``POST /sdapi/v1/interrupt``, which stops whatever the server is running: it is sent only
while the server says our own task (``force_task_id``) is the one running.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from PIL import UnidentifiedImageError

from services.contracts import A1111_SAMPLERS, RenderSpec

from ..errors import EngineError, EngineTimeout, ModelNotFound, Unauthorized
from ..metadata import PARAMETERS_CHUNK
from ..settings import Settings
from .base import EngineHealth, ImageLoader, JobCanceled, ProgressFn, RenderedImage, RenderResult
from .remote import (
    HEALTH_TIMEOUT_S,
    SERVER_MESSAGE_CHARS,
    decode_image,
    job_input,
    make_client,
    png_bytes,
    png_text_chunks,
    server_message,
    speaking_to,
)

log = logging.getLogger("kitty.images.engines.a1111")

SERVER_LABEL = "AUTOMATIC1111"
START_HINT = "./webui.sh --api --listen (or --nowebui), bound to 127.0.0.1"

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
TASK_PROGRESS = "/internal/progress"
"""Per-task progress; served only with the web UI (absent with ``--nowebui``) and not behind --api-auth."""
GLOBAL_PROGRESS = "/sdapi/v1/progress"
INTERRUPT = "/sdapi/v1/interrupt"
SD_MODELS = "/sdapi/v1/sd-models"

INPAINTING_FILL_ORIGINAL = 1
"""A1111's ``inpainting_fill``: 0 fill, 1 original, 2 latent noise, 3 latent nothing."""

RESIZE_JUST_RESIZE = 0
"""A1111's ``resize_mode``: the input is scaled to the job's size (which we derive from the input's
own aspect ratio when the request gives none)."""

A1111_CHUNK = "a1111_parameters"
"""The server's own infotext is kept under this name: ``parameters`` is rewritten by the store path."""

POLL_TIMEOUT_S = 5.0
"""One progress or interrupt request. A slow poll is skipped; it never fails the render."""

CANCEL_GRACE_S = 30.0
"""After a cancel: how long to wait for our task to start (when queued) so it can be interrupted,
and then for the server to answer. Past it the job ends canceled and the server's answer is dropped."""

TXT2IMG_TIMEOUT_SLACK_S = 5.0
"""txt2img's read timeout is the job timeout plus this, so our own deadline (a clearer error) fires first."""

TASK_ID_HEX_CHARS = 16
"""Our ``force_task_id`` is ``task(<hex>)``, the shape of the web UI's own ids."""

TaskState = Literal["active", "waiting", "finished", "unknown"]
"""Where our task is on the server: running; queued or not yet arrived; done; or not knowable
(``--nowebui`` servers whose ``/sdapi/v1/progress`` does not name the running task, as in v1.10)."""


@dataclass
class TaskStatus:
    state: TaskState
    step: int | None = None


@dataclass
class _Task:
    """One render on the server, and what this render learned about the server's progress routes."""

    id: str
    steps: int
    has_task_progress: bool = True


class _RenderCall:
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


class A1111Engine:
    """Renders with an AUTOMATIC1111 server started with ``--api`` (v1.6 or later)."""

    name = "a1111"

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
        self.base_url = settings.a1111_base_url.rstrip("/")
        self._auth_problem: str | None = None
        try:
            auth = parse_api_auth(settings.a1111_api_auth)
        except ValueError as exc:
            auth, self._auth_problem = None, str(exc)
        self._client = make_client(
            self.base_url,
            connect_timeout_s=settings.engine_connect_timeout_s,
            auth=auth,
            transport=transport,
        )
        self._version: str | None = None
        """The server's version as its last render reported it (health has no cheap source)."""

    # --- the Engine protocol ----------------------------------------------------------------
    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if self._auth_problem:
            raise Unauthorized(self._auth_problem, remediation=self._auth_remediation())
        started = time.monotonic()
        deadline = started + self.settings.job_timeout_s
        task = _Task(new_task_id(), spec.steps)
        with speaking_to(SERVER_LABEL, self.base_url, START_HINT, "A1111_BASE_URL"):
            checkpoint = self._checkpoint_title(spec.model) if spec.model else None
            route, payload = self._request(spec, task.id, checkpoint)
            progress(0, spec.steps)
            call = _RenderCall(
                self._client,
                route,
                payload,
                httpx.Timeout(
                    self.settings.job_timeout_s + TXT2IMG_TIMEOUT_SLACK_S,
                    connect=self.settings.engine_connect_timeout_s,
                ),
            )
            call.start()
            try:
                self._follow(call, task, progress, deadline)
            except JobCanceled:
                self._stop(call, task, until=min(deadline, time.monotonic() + CANCEL_GRACE_S))
                raise
            except BaseException:
                # Our deadline, RQ's job timeout, a worker shutting down: free the server's GPU if
                # our task holds it, without waiting for the answer.
                self._stop(call, task, until=None)
                raise
            response = call.result()
            render_s = time.monotonic() - started
            self._raise_for_status(response)
            result = self._result(response, spec, task, render_s)
        progress(spec.steps, spec.steps)
        return result

    def health(self) -> EngineHealth:
        if self._auth_problem:
            return EngineHealth("misconfigured", self._auth_problem, self._version)
        try:
            response = self._client.get(SD_MODELS, timeout=httpx.Timeout(HEALTH_TIMEOUT_S))
        except httpx.HTTPError as exc:
            return EngineHealth("offline", f"not reachable at {self.base_url}: {exc}")
        if response.status_code in (401, 403):
            return EngineHealth(
                "misconfigured", f"refused the credentials ({a1111_message(response)}): check A1111_API_AUTH"
            )
        if response.status_code == 404:
            return EngineHealth("misconfigured", "answers but serves no API: start it with --api")
        if not response.is_success:
            return EngineHealth(
                "misconfigured", f"answered HTTP {response.status_code}: {a1111_message(response)}"
            )
        try:
            models = response.json()
        except ValueError:
            models = None
        if not isinstance(models, list):
            return EngineHealth("misconfigured", f"{self.base_url} does not answer like AUTOMATIC1111")
        if not models:
            return EngineHealth("misconfigured", "no checkpoints: put one in models/Stable-diffusion")
        return EngineHealth("ready", f"{len(models)} checkpoints", self._version)

    def close(self) -> None:
        self._client.close()

    # --- request ------------------------------------------------------------------------------
    def _payload(self, spec: RenderSpec, task_id: str, checkpoint: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt,
            "seed": spec.seed,
            "steps": spec.steps,
            "cfg_scale": spec.cfg,
            "width": spec.width,
            "height": spec.height,
            "batch_size": spec.num_images,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
            "force_task_id": task_id,
        }
        if spec.scheduler:
            # A name outside the table is passed as is: the server answers "Sampler not found".
            sampler, schedule = A1111_SAMPLERS.get(spec.scheduler, (spec.scheduler, None))
            payload["sampler_name"] = sampler
            if schedule:
                payload["scheduler"] = schedule
        if checkpoint:
            payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
            # The server's checkpoint stays what its own user chose.
            payload["override_settings_restore_afterwards"] = True
        return payload

    def _request(self, spec: RenderSpec, task_id: str, checkpoint: str | None) -> tuple[str, dict[str, Any]]:
        """The route and body of the render: txt2img, or img2img with the input (and mask)."""
        payload = self._payload(spec, task_id, checkpoint)
        if spec.image is None:
            return TXT2IMG, payload
        payload.update(
            init_images=[self._input_png(spec, spec.image, "RGB")],
            denoising_strength=spec.strength,
            resize_mode=RESIZE_JUST_RESIZE,
            include_init_images=False,
        )
        if spec.mask is not None:
            payload.update(
                mask=self._input_png(spec, spec.mask, "L"),
                inpainting_fill=INPAINTING_FILL_ORIGINAL,
                inpaint_full_res=False,
                inpainting_mask_invert=0,  # white repaints, as in the request
            )
        return IMG2IMG, payload

    def _input_png(self, spec: RenderSpec, key: str, mode: str) -> str:
        picture = job_input(self._image_loader, key, mode, (spec.width, spec.height), self.name)
        return base64.b64encode(png_bytes(picture)).decode("ascii")

    def _checkpoint_title(self, model: str) -> str:
        """The exact title of the checkpoint `model` names. A1111 silently renders with another
        checkpoint when the named one is unknown, so the name is checked first."""
        response = self._client.get(SD_MODELS)
        self._raise_for_status(response)
        try:
            models = response.json()
        except ValueError as exc:
            raise EngineError(f"{self.base_url} does not answer like {SERVER_LABEL} ({SD_MODELS})") from exc
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

    # --- following the task -------------------------------------------------------------------
    def _follow(self, call: _RenderCall, task: _Task, progress: ProgressFn, deadline: float) -> None:
        """Report progress every poll interval (the callback is also where cancels surface) until
        the render's answer arrives."""
        reported = 0
        while not call.done.wait(self.settings.engine_poll_interval_s):
            if time.monotonic() > deadline:
                raise EngineTimeout(
                    f"{SERVER_LABEL} did not finish within the job timeout ({self.settings.job_timeout_s}s)",
                )
            status = self._status(task)
            if status.step is not None:
                reported = max(reported, min(status.step, task.steps))
            progress(reported, task.steps)

    def _status(self, task: _Task) -> TaskStatus:
        """Where our task is. Never raises: a failed poll is `unknown`, and the render goes on."""
        try:
            if task.has_task_progress:
                response = self._client.post(
                    TASK_PROGRESS, json={"id_task": task.id, "id_live_preview": -1}, timeout=POLL_TIMEOUT_S
                )
                if response.status_code == 200:
                    return _task_progress_status(response.json(), task.steps)
                if response.status_code not in (401, 403, 404, 405):
                    return TaskStatus("unknown")
                # --nowebui (404), or a web UI behind its own login: the API's global view it is.
                task.has_task_progress = False
            response = self._client.get(
                GLOBAL_PROGRESS, params={"skip_current_image": "true"}, timeout=POLL_TIMEOUT_S
            )
            if response.status_code != 200:
                return TaskStatus("unknown")
            return _global_progress_status(response.json(), task)
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            log.debug("progress poll failed", extra={"task_id": task.id, "error": str(exc)})
            return TaskStatus("unknown")

    def _stop(self, call: _RenderCall, task: _Task, *, until: float | None) -> None:
        """Interrupt the server only while our task is the one running: the interrupt is global.

        A1111 has no per-task cancel, so a task still queued behind another client's is watched
        until it starts, then interrupted; then its answer is awaited (and dropped) until `until`.
        With `until` None: one look, an interrupt if ours runs, no waiting. A server that cannot
        say which task runs (``unknown``) is never interrupted: its answer is awaited instead.
        A sliver of a race remains: our task may end between the look and the interrupt, which
        then lands on whatever starts next.
        """
        while not call.done.is_set():
            status = self._status(task)
            if status.state == "active":
                self._interrupt(task)
                break
            if status.state == "finished" or until is None or time.monotonic() >= until:
                break
            call.done.wait(self.settings.engine_poll_interval_s)
        if until is None:
            return
        if not call.done.wait(max(0.0, until - time.monotonic())):
            log.warning(
                "gave up waiting for a canceled task; the server may still render it",
                extra={"task_id": task.id, "server": self.base_url},
            )

    def _interrupt(self, task: _Task) -> None:
        try:
            self._client.post(INTERRUPT, timeout=POLL_TIMEOUT_S)
            log.info("interrupted our task", extra={"task_id": task.id, "server": self.base_url})
        except httpx.HTTPError as exc:
            log.warning("interrupt failed", extra={"task_id": task.id, "error": str(exc)})

    # --- answer -------------------------------------------------------------------------------
    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        status, message = response.status_code, a1111_message(response)
        if status in (401, 403):
            raise Unauthorized(
                f"{SERVER_LABEL} at {self.base_url} refused the credentials: {message}",
                remediation=self._auth_remediation(),
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

    def _auth_remediation(self) -> list[str]:
        return [
            "Set A1111_API_AUTH to one user:password pair of the server's --api-auth "
            "(or start the server without --api-auth)."
        ]

    def _result(
        self, response: httpx.Response, spec: RenderSpec, task: _Task, render_s: float
    ) -> RenderResult:
        try:
            body = response.json()
            encoded = list(body.get("images") or [])
        except (ValueError, AttributeError, TypeError) as exc:
            raise EngineError(f"{SERVER_LABEL} answered the render with something other than JSON") from exc
        info = _parse_info(body.get("info"))
        # A grid (when the server returns one) comes first; scripts may append extra images last.
        first = _int(info.get("index_of_first_image"), 0)
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
            seed = _int(seeds[index], spec.seed + index) if index < len(seeds) else spec.seed + index
            images.append(RenderedImage(image=image, seed=seed, text_chunks=chunks))
        if not images:
            raise EngineError(
                f"{SERVER_LABEL} finished task {task.id} without images",
                remediation=["Check the server's console: an extension may have replaced the output."],
            )
        version = info.get("version")
        if isinstance(version, str) and version:
            self._version = version
        engine_info: dict[str, Any] = {
            "server": self.name,
            "version": version,
            "sd_model_name": info.get("sd_model_name"),
            "sd_model_hash": info.get("sd_model_hash"),
            "info": info,
            "task_id": task.id,
        }
        if self._version:
            engine_info["versions"] = {"automatic1111": self._version}
        return RenderResult(
            images=images, device=self.base_url, engine_info=engine_info, timings={"render_s": render_s}
        )


def _task_progress_status(body: Any, steps: int) -> TaskStatus:
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


def _global_progress_status(body: Any, task: _Task) -> TaskStatus:
    """``/sdapi/v1/progress``: the server's one running job, named by ``current_task`` where the
    server fills it in (v1.10 leaves it null: its API module binds the name before any task runs)."""
    if not isinstance(body, dict):
        return TaskStatus("unknown")
    raw_state = body.get("state")
    state: dict[str, Any] = raw_state if isinstance(raw_state, dict) else {}
    current = body.get("current_task")
    if current == task.id:
        sampling_steps = _int(state.get("sampling_steps"), 0)
        if sampling_steps > 0:
            step = round(_int(state.get("sampling_step"), 0) * task.steps / sampling_steps)
        else:
            step = None
        return TaskStatus("active", step)
    if current:
        return TaskStatus("waiting")
    if _int(state.get("job_count"), 0) == 0:
        return TaskStatus("waiting")  # idle: our request is on its way in
    return TaskStatus("unknown")  # something runs and the server does not say what


def _parse_info(raw: Any) -> dict[str, Any]:
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


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


__all__ = ["A1111Engine", "a1111_message", "new_task_id", "parse_api_auth"]
