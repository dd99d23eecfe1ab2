"""The InvokeAI engine: renders a `RenderSpec` on an InvokeAI 4+ server through its session queue.

Owns the version gate, the checks InvokeAI's nodes would fail late (refiner, cfg, scheduler, a hires
upscaler), and the render's course: the model (and ControlNet models) chosen, the inputs and control
maps uploaded, the batch enqueued (`graph`), its queue items polled and, when the job ends early,
canceled, and the finished PNGs fetched (`client`).

Progress is coarse: a queue item shows no step progress until it is finished (InvokeAI reports
steps only on its socket.io stream), so progress advances one whole image at a time, in units of
steps (image i of n done = ``i * steps`` of ``n * steps``).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import httpx
from PIL import Image, ImageOps

from services.contracts import RenderSpec

from ...errors import EngineError, EngineTimeout, ValidationFailed
from ...settings import Settings
from ..base import EngineHealth, JobCanceled, ProgressFn, RenderResult
from ..server_base import JobClock, ServerEngine, read_control_maps, uploaded_inputs
from .client import MIN_MAJOR_VERSION, TERMINAL, TOO_OLD_MESSAGE, InvokeAIClient, item_failure, parse_version
from .graph import (
    ENGINE_LABEL,
    ControlImage,
    InvokeModel,
    build_graph,
    choose_controlnets,
    choose_model,
    image_seeds,
    invoke_scheduler,
    item_seed,
    make_batch,
    output_node,
)

MIN_CFG = 1.0
"""``denoise_latents`` refuses a cfg_scale below 1."""


class InvokeAIEngine(ServerEngine[InvokeAIClient]):
    """An HTTP adapter for one InvokeAI server (``INVOKE_HOST``:``INVOKE_PORT``).

    With ``spec.image`` the graph starts from that picture (and ``spec.mask``): both are read from
    our store, resized here to the job's size and uploaded to InvokeAI's image store before the
    batch is queued (see `build_graph`), and deleted again once the job has ended, however it ended
    (``DELETE /api/v1/images/i/{name}``): the next job uploads its own. The mask goes up inverted,
    in InvokeAI's polarity (white keeps).

    Each of ``spec.controls`` becomes a control map here (`control_maps.control_map`), uploaded the
    same way (category "control") and deleted with them; its ``model`` names one of the server's
    ControlNet models (``GET /api/v2/models/?model_type=controlnet``: key or name), of the main
    model's base. ``spec.hires`` adds the graph's second pass (Lanczos only: an `upscaler` is refused).

    Its `_version` is the last one that passed the gate; a refused one is asked again next time, so
    an upgraded server is picked up without restarting the worker.
    """

    name = "invokeai"

    client_class = InvokeAIClient

    @classmethod
    def server_url(cls, settings: Settings) -> str:
        return settings.invokeai_url

    @property
    def url(self) -> str:
        """The server's URL (``INVOKE_HOST``:``INVOKE_PORT``), as its messages name it."""
        return self.base_url

    # --- the Engine protocol ----------------------------------------------------------------------
    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        clock = JobClock.start(self.settings)
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
        if spec.hires is not None and spec.hires.upscaler is not None:
            raise ValidationFailed(
                "the invokeai engine's hires fix resizes with Lanczos; it takes no upscaler model",
                remediation=["Send `hires` without `upscaler`, or use the comfyui or a1111 engine."],
            )
        scheduler = invoke_scheduler(spec.scheduler)
        with self.api.speaking():
            version = self._checked_version()
            model = choose_model(self.api.main_models(), spec.model, self.url)
            controlnets = self._controlnets(spec, model)
            inputs = self._job_inputs(spec)
            if inputs.mask is not None:
                inputs = replace(inputs, mask=ImageOps.invert(inputs.mask))
            maps = self._control_maps(spec)
            with (
                uploaded_inputs(inputs, self.api.upload, self.api.delete_image) as (image, mask),
                ExitStack() as uploads,
            ):
                controls = []
                for picture, controlnet in zip(maps, controlnets, strict=True):
                    name = self.api.upload(picture, "control")
                    uploads.callback(self.api.delete_image, name)
                    controls.append(ControlImage(name, controlnet))
                graph = build_graph(spec, model, scheduler, image=image, mask=mask, controls=controls)
                batch_id, item_ids = self.api.enqueue(make_batch(spec, graph))
                if len(item_ids) != spec.num_images:
                    self.api.cancel(item_ids)
                    raise EngineError(
                        f"InvokeAI enqueued {len(item_ids)} of the {spec.num_images} images asked for",
                        remediation=["The InvokeAI queue may be full: clear or prune it, then retry."],
                        detail={"batch_id": batch_id, "item_ids": item_ids},
                    )
                items = self._wait(item_ids, spec.steps, progress, clock)
                render_s = clock.elapsed_s()
                fallback_seeds = image_seeds(spec)
                images = [
                    self.api.fetch(item, output_node(spec, mask), item_seed(item, fallback_seeds[index]))
                    for index, item in enumerate(items)
                ]
        engine_info: dict[str, Any] = {
            "server": "invokeai",
            "version": version,
            "model": {"name": model.name, "base": model.base, "key": model.key},
            "scheduler": scheduler,
            "item_ids": item_ids,
            "batch_id": batch_id,
        }
        if image is not None or controls:
            # Their names in InvokeAI's image store while the job ran (deleted afterwards).
            engine_info["inputs"] = {"image": image, "mask": mask}
        if controls:
            engine_info["inputs"]["controls"] = [control.image for control in controls]
            engine_info["controlnets"] = [{"name": c.model.name, "key": c.model.key} for c in controls]
        return RenderResult(
            images=images,
            device=self.url,
            engine_info=engine_info,
            timings={"render_s": round(render_s, 4)},
        )

    def health(self) -> EngineHealth:
        try:
            version = str(self.api.app_version(quick=True)["version"])
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

    # --- steps of a render --------------------------------------------------------------------------
    def _controlnets(self, spec: RenderSpec, model: InvokeModel) -> list[InvokeModel]:
        """The server's ControlNet model for each control; the server is asked only when there are."""
        if not spec.controls:
            return []
        wanted = [control.model for control in spec.controls]
        return choose_controlnets(self.api.models("controlnet"), wanted, model, self.url)

    def _control_maps(self, spec: RenderSpec) -> list[Image.Image]:
        return read_control_maps(self._image_loader, spec, self.name)

    def _checked_version(self) -> str:
        if self._version is not None:
            return self._version
        version = str(self.api.app_version().get("version", ""))
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

    def _wait(
        self, item_ids: list[int], steps: int, progress: ProgressFn, clock: JobClock
    ) -> list[dict[str, Any]]:
        """Poll each unfinished item until all completed; the finished items in `item_ids` order."""
        finished: dict[int, dict[str, Any]] = {}
        total = len(item_ids) * steps
        try:
            progress(0, total)
            while True:
                for item_id in item_ids:
                    if item_id not in finished:
                        item = self.api.item(item_id)
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
                if clock.is_over():
                    raise EngineTimeout(
                        f"{ENGINE_LABEL} did not finish {len(item_ids) - done} of {len(item_ids)} images "
                        f"within {self.settings.job_timeout_s}s",
                        detail={"item_ids": item_ids},
                    )
                clock.wait()
        except (JobCanceled, EngineError, EngineTimeout):
            # Nothing will collect the rest of the batch: stop InvokeAI spending the GPU on it.
            self.api.cancel([i for i in item_ids if i not in finished])
            raise
