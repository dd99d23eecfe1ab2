"""The ComfyUI engine: the render's course — the checkpoint (and ControlNet and upscaler files)
chosen, the inputs and control maps uploaded, the graph built (`graph`) and queued, the prompt
followed on the event socket (``/history`` polled when it is unavailable) with progress reported,
stopped when the job ends early, and its images fetched (`client`)."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from services.contracts import RenderSpec

from ...errors import EngineError, EngineOffline, EngineTimeout, ModelNotFound, ValidationFailed
from ...settings import Settings
from ..base import EngineHealth, ProgressFn, RenderedImage, RenderResult
from ..remote import decode_image, png_text_chunks
from ..server_base import JobClock, ServerEngine, read_control_maps, uploaded_inputs
from .client import (
    FAILED_EVENTS,
    SERVER,
    START_HINT,
    ComfyUIClient,
    PromptFailed,
    history_failure,
    prompt_failure,
    read_event,
)
from .graph import (
    KEPT_CHUNKS,
    SAVE_NODE,
    ControlFiles,
    force_output_prefix,
    graph_settings,
    hires_steps,
    match_checkpoint,
    raw_output_prefix,
    template_graph,
    template_steps,
    ui_workflow,
)

CONTROLNET_FOLDER, UPSCALER_FOLDER = "models/controlnet", "models/upscale_models"
"""Where ComfyUI reads the files ControlNetLoader and UpscaleModelLoader offer."""

log = logging.getLogger("kitty.images.engines.comfyui")


@dataclass
class _Run:
    """One prompt being followed: its clock and the progress reported so far.

    Steps are reported monotonically: a raw graph with several samplers adds each pass's steps to
    the total instead of starting again from 1.
    """

    prompt_id: str
    report_to: ProgressFn
    clock: JobClock
    samplers: dict[str, int] | None
    """The template's sampler nodes and the steps that run before each (the hires fix's pass comes
    after the first): only theirs count (a tiled VAE decode sends progress too). None: a raw graph."""
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
        if time.monotonic() - self.reported_at >= self.clock.poll_interval_s:
            self.report()

    def wait_s(self) -> float:
        """How long to wait for the next event; raises `EngineTimeout` past the deadline."""
        remaining = self.clock.remaining_s()
        if remaining <= 0:
            raise EngineTimeout(
                f"{SERVER} did not finish prompt {self.prompt_id} in time (IMAGES_JOB_TIMEOUT)"
            )
        return min(self.clock.poll_interval_s, remaining)

    def advance(self, data: dict[str, Any]) -> None:
        node = None if data.get("node") is None else str(data["node"])
        value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
        if self.samplers is not None:
            if node is not None and node not in self.samplers:
                return
            before = self.samplers.get(node or "", 0)
            step, total = before + value, max(before + maximum, self.total)
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


class ComfyUIEngine(ServerEngine[ComfyUIClient]):
    """Renders on a ComfyUI server (``COMFYUI_URL``).

    Without ``spec.workflow`` the built-in template runs (checkpoint `spec.model`, or the server's
    first checkpoint when None) and all ``num_images`` come from one batch: ComfyUI draws a batch's
    noise from a single seed, so every image of it records ``spec.seed`` (its ``index`` in the
    sidecar tells them apart; re-running the same request reproduces the whole batch). A raw
    ``spec.workflow`` is sent as is (admitted at submit: `workflow_admission`), but for where it
    saves: every SaveImage writes under ``kitty/<prompt id>`` (`force_output_prefix`; the prefix is
    ``engine_info["output_prefix"]``, the nodes changed ``"prefixed_nodes"``). Its images record the
    seed and sampler settings of its sampler node (`graph_settings`), not the request's, which it
    did not use.

    With ``spec.image`` the template starts from that picture (and ``spec.mask``): both are read
    from our store, resized here to the job's size and uploaded to ComfyUI's input folder
    (``POST /upload/image``) before the prompt is queued (see `template_graph`). ComfyUI offers no
    route to delete an input, so the uploads stay in that folder.

    Each of ``spec.controls`` becomes a control map here (`control_maps.control_map`: Canny edges
    computed on our side, other types sent as given), uploaded the same way; its ``model`` names a
    file of the server's models/controlnet folder (by file name or stem, as checkpoints). With
    ``spec.hires`` the template adds the second pass; ``hires.upscaler`` then names a file of its
    models/upscale_models (absent: Lanczos). ComfyUI reports each pass's steps: progress counts both.

    Canceling (the progress callback raising `JobCanceled`) or running out of time deletes the
    prompt from ComfyUI's queue when it is still pending, or interrupts it when it is running.
    """

    name = "comfyui"

    client_class = ComfyUIClient

    @cached_property
    def client_id(self) -> str:
        """Our websocket session: ComfyUI sends a prompt's events only to the client that queued it."""
        return uuid.uuid4().hex

    @classmethod
    def server_url(cls, settings: Settings) -> str:
        return settings.comfyui_url

    # --- the protocol ---------------------------------------------------------------------------
    def health(self) -> EngineHealth:
        try:
            stats = self.api.system_stats(quick=True)
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
        clock = JobClock.start(self.settings)
        is_template = spec.workflow is None
        prompt_id = str(uuid.uuid4())
        with self.api.speaking():
            # Asked first, so an unreachable server fails fast as ENGINE_OFFLINE.
            version = self.api.version()
            engine_info: dict[str, Any] = {
                "server": "comfyui",
                "version": version,
                "versions": {"comfyui": version},
            }
            if is_template:
                checkpoint = self._checkpoint(spec.model)
                model_files = [self._model_file(c.model, "ControlNetLoader") for c in spec.controls]
                upscaler = spec.hires.upscaler if spec.hires is not None else None
                if upscaler is not None:
                    upscaler = self._model_file(upscaler, "UpscaleModelLoader")
                image, mask = self._upload_inputs(spec)
                maps = [self.api.upload(picture, "control") for picture in self._control_maps(spec)]
                controls = [ControlFiles(name, file) for name, file in zip(maps, model_files, strict=True)]
                graph = template_graph(
                    spec, checkpoint, image=image, mask=mask, controls=controls, upscale_model=upscaler
                )
                pnginfo: dict[str, Any] | None = {"workflow": ui_workflow(graph)}
                engine_info["checkpoint"] = checkpoint
                if image is not None or maps:
                    # Their names in ComfyUI's input folder, where they stay (see the class docstring).
                    engine_info["inputs"] = {"image": image, "mask": mask}
                if maps:
                    engine_info["inputs"]["controls"] = maps
                    engine_info["controlnets"] = model_files
                if upscaler is not None:
                    engine_info["upscaler"] = upscaler
            else:
                # Saved under our own prefix, whatever the graph says (see `force_output_prefix`).
                prefix = raw_output_prefix(prompt_id)
                graph, forced = force_output_prefix(spec.workflow or {}, prefix)
                engine_info.update(output_prefix=prefix, prefixed_nodes=forced)
                # A UI workflow cannot be rebuilt from an API graph without the node definitions;
                # without one ComfyUI loads a dropped image from its `prompt` chunk, the exact graph.
                pnginfo = None
            run = _Run(
                prompt_id=prompt_id,
                report_to=progress,
                clock=clock,
                samplers=template_steps(spec) if is_template else None,
                total=spec.steps + hires_steps(spec) if is_template else 0,
            )
            run.report()
            with ExitStack() as stack:
                # Connected before the prompt is queued, or its first events would be missed.
                socket = self._open_socket(stack)
                run.prompt_id = self.api.submit(graph, run.prompt_id, self.client_id, pnginfo, is_template)
                try:
                    if socket is not None:
                        self._follow_events(socket, run)
                    entry = self._wait_for_history(run)
                except PromptFailed:
                    raise
                except BaseException:
                    self.api.stop(run.prompt_id)
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
            timings={"render_s": clock.elapsed_s()},
            settings_used=settings_used,
        )

    # --- steps of a render ----------------------------------------------------------------------
    def _checkpoint(self, model: str | None) -> str:
        available = self.api.checkpoints()
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

    def _model_file(self, model: str | None, loader: str) -> str:
        """The file `model` names among those `loader` (ControlNetLoader, UpscaleModelLoader)
        offers: a server engine's ControlNet or upscaler is the server's own file."""
        if model is None:
            raise ValidationFailed(
                f"a control on the {self.name} engine must name {SERVER}'s ControlNet file in `model`",
                remediation=[f"Send `model` with each control: a file of ComfyUI's {CONTROLNET_FOLDER}."],
            )
        input_name, folder = {
            "ControlNetLoader": ("control_net_name", CONTROLNET_FOLDER),
            "UpscaleModelLoader": ("model_name", UPSCALER_FOLDER),
        }[loader]
        available = self.api.model_files(loader, input_name)
        found = match_checkpoint(model, available)
        if found is None:
            listed = f"Use one of: {', '.join(available[:20])}" if available else f"It has none in {folder}."
            raise ModelNotFound(
                f"{SERVER} has no {folder} file named '{model}'",
                remediation=[listed, f"Or put '{model}' in ComfyUI's {folder} folder."],
            )
        return found

    def _control_maps(self, spec: RenderSpec) -> list[Image.Image]:
        return read_control_maps(self._image_loader, spec, self.name)

    def _upload_inputs(self, spec: RenderSpec) -> tuple[str | None, str | None]:
        """The names ComfyUI gave the job's picture and mask (None, None for txt2img), uploaded at
        the job's size: resized here, so the graph needs no scaling node and the mask covers the
        picture pixel for pixel. ComfyUI cannot delete an input: they stay."""
        with uploaded_inputs(self._job_inputs(spec), self.api.upload) as names:
            return names

    def _open_socket(self, stack: ExitStack) -> ClientConnection | None:
        if self.is_transport_injected:
            return None  # it carries HTTP only; the event stream cannot go through it
        return self.api.open_socket(stack, self.client_id, self.settings.engine_connect_timeout_s)

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
            event = read_event(message, run.prompt_id)
            if event is None:
                continue
            kind, data = event
            if kind == "progress":
                run.advance(data)
            elif kind == "executing" and data.get("node") is None:
                return
            elif kind == "execution_success":
                succeeded = True
            elif kind in FAILED_EVENTS:
                raise prompt_failure(kind, data)

    def _wait_for_history(self, run: _Run) -> dict[str, Any]:
        """The prompt's ``/history`` entry, polled until the server has written it."""
        while True:
            entry = self.api.history(run.prompt_id)
            if entry is not None:
                failure = history_failure(run.prompt_id, entry)
                if failure is not None:
                    raise failure
                return entry
            time.sleep(run.wait_s())
            run.heartbeat()

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
        return [self.api.view(ref) for ref in refs]
