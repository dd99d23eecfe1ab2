"""The AUTOMATIC1111 engine: checks the checkpoint (and the ControlNet extension's models, for a job
with controls, whose maps are made here), sends the render built by `payload`, follows
the task's progress while the render's request runs (the progress callback is where cancels
surface) and turns the answer into a `RenderResult`.

Cancel uses ``POST /sdapi/v1/interrupt``, which stops whatever the server is running: it is sent only
while the server says our own task (``force_task_id``) is the one running.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from services.contracts import RenderSpec

from ...errors import EngineTimeout, Unauthorized
from ...settings import Settings
from ..base import EngineHealth, JobCanceled, ProgressFn, RenderResult
from ..server_base import JobClock, ServerEngine, read_control_maps
from .client import (
    AUTH_REMEDIATION,
    SERVER_LABEL,
    A1111Client,
    RenderAnswer,
    RenderCall,
    Task,
    a1111_message,
    new_task_id,
    parse_api_auth,
    read_answer,
)
from .payload import ControlUnit, render_request

log = logging.getLogger("kitty.images.engines.a1111")

CANCEL_GRACE_S = 30.0
"""After a cancel: how long to wait for our task to start (when queued) so it can be interrupted,
and then for the server to answer. Past it the job ends canceled and the server's answer is dropped."""

TXT2IMG_TIMEOUT_SLACK_S = 5.0
"""txt2img's read timeout is the job timeout plus this, so our own deadline (a clearer error) fires first."""


class A1111Engine(ServerEngine[A1111Client]):
    """Renders with an AUTOMATIC1111 server started with ``--api`` (v1.6 or later). Its `_version`
    is the one its last render reported (health has no cheap source)."""

    name = "a1111"

    client_class = A1111Client

    @classmethod
    def server_url(cls, settings: Settings) -> str:
        return settings.a1111_base_url

    @classmethod
    def server_auth(cls, settings: Settings) -> tuple[str, str] | None:
        try:
            return parse_api_auth(settings.a1111_api_auth)
        except ValueError:
            return None  # `_auth_problem` refuses every render

    @property
    def _auth_problem(self) -> str | None:
        """Why A1111_API_AUTH cannot be used, or None."""
        try:
            parse_api_auth(self.settings.a1111_api_auth)
        except ValueError as exc:
            return str(exc)
        return None

    # --- the Engine protocol ----------------------------------------------------------------
    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if self._auth_problem:
            raise Unauthorized(self._auth_problem, remediation=[AUTH_REMEDIATION])
        clock = JobClock.start(self.settings)
        # The server's progress covers the hires fix's second pass too (its job count doubles).
        second_pass = (spec.hires.steps or spec.steps) if spec.hires is not None else 0
        task = Task(new_task_id(), spec.steps + second_pass)
        with self.api.speaking():
            checkpoint = self.api.checkpoint_title(spec.model) if spec.model else None
            units = self._control_units(spec)
            route, payload = render_request(spec, task.id, checkpoint, self._job_inputs(spec), units)
            progress(0, task.steps)
            call = self.api.start_render(
                route,
                payload,
                httpx.Timeout(
                    self.settings.job_timeout_s + TXT2IMG_TIMEOUT_SLACK_S,
                    connect=self.settings.engine_connect_timeout_s,
                ),
            )
            try:
                self._follow(call, task, progress, clock)
            except JobCanceled:
                self._stop(call, task, clock, until=min(clock.deadline, time.monotonic() + CANCEL_GRACE_S))
                raise
            except BaseException:
                # Our deadline, RQ's job timeout, a worker shutting down: free the server's GPU if
                # our task holds it, without waiting for the answer.
                self._stop(call, task, clock, until=None)
                raise
            response = call.result()
            render_s = clock.elapsed_s()
            self.api.raise_for_status(response)
            result = self._result(read_answer(response, spec, task), task, render_s)
        if units:
            result.engine_info["controlnets"] = [unit.model for unit in units]
        progress(task.steps, task.steps)
        return result

    def _control_units(self, spec: RenderSpec) -> list[ControlUnit]:
        """Each control's map (made here: `control_maps.control_map`) and the extension's name of
        its model; none without controls, and then the extension is not asked for."""
        if not spec.controls:
            return []
        models = self.api.controlnet_models([control.model for control in spec.controls])
        maps = read_control_maps(self._image_loader, spec, self.name)
        return [
            ControlUnit(control, picture, model)
            for control, picture, model in zip(spec.controls, maps, models, strict=True)
        ]

    def health(self) -> EngineHealth:
        if self._auth_problem:
            return EngineHealth("misconfigured", self._auth_problem, self._version)
        try:
            response = self.api.probe()
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

    # --- following the task -------------------------------------------------------------------
    def _follow(self, call: RenderCall, task: Task, progress: ProgressFn, clock: JobClock) -> None:
        """Report progress every poll interval (the callback is also where cancels surface) until
        the render's answer arrives."""
        reported = 0
        while not clock.wait(call.done):
            if clock.is_over():
                raise EngineTimeout(
                    f"{SERVER_LABEL} did not finish within the job timeout ({self.settings.job_timeout_s}s)",
                )
            status = self.api.status(task)
            if status.step is not None:
                reported = max(reported, min(status.step, task.steps))
            progress(reported, task.steps)

    def _stop(self, call: RenderCall, task: Task, clock: JobClock, *, until: float | None) -> None:
        """Interrupt the server only while our task is the one running: the interrupt is global.

        A1111 has no per-task cancel, so a task still queued behind another client's is watched
        until it starts, then interrupted; then its answer is awaited (and dropped) until `until`.
        With `until` None: one look, an interrupt if ours runs, no waiting. A server that cannot
        say which task runs (``unknown``) is never interrupted: its answer is awaited instead.
        A sliver of a race remains: our task may end between the look and the interrupt, which
        then lands on whatever starts next.
        """
        while not call.done.is_set():
            status = self.api.status(task)
            if status.state == "active":
                self.api.interrupt(task)
                break
            if status.state == "finished" or until is None or time.monotonic() >= until:
                break
            clock.wait(call.done)
        if until is None:
            return
        if not call.done.wait(max(0.0, until - time.monotonic())):
            log.warning(
                "gave up waiting for a canceled task; the server may still render it",
                extra={"task_id": task.id, "server": self.base_url},
            )

    # --- answer -------------------------------------------------------------------------------
    def _result(self, answer: RenderAnswer, task: Task, render_s: float) -> RenderResult:
        info = answer.info
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
            images=answer.images,
            device=self.base_url,
            engine_info=engine_info,
            timings={"render_s": render_s},
        )
