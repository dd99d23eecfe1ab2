"""A fake AUTOMATIC1111 (v1.10 API) to test the adapter against over real HTTP: the real routes,
bodies and error shapes, one render at a time behind a queue lock (so "queued" and "active" are
observable), solid-colour PNGs carrying a ``parameters`` infotext, and a global interrupt.

Behaviour reproduced from the real server, on purpose:
- ``/internal/progress`` exists only with the web UI (``nowebui=True`` answers 404) and is not behind
  ``--api-auth``; ``/sdapi/v1/*`` are.
- ``/sdapi/v1/progress`` answers ``current_task: null`` (v1.10's API module binds that name once, at
  import); ``reports_current_task=True`` plays a server that fills it in.
- An interrupt stops whatever runs at its next step, and txt2img still answers 200 with the
  partial images; an interrupt sent while idle is forgotten when the next render begins.
- An unknown ``sd_model_checkpoint`` override silently falls back to the first checkpoint.
- A failing render leaves ``current_task`` set (its ``finish_task`` is skipped).
- The hires fix (``enable_hr``) makes ``int(side * hr_scale)`` images, or ``hr_resize_x``×``hr_resize_y``
  when given, after a second sampling pass that doubles the job count.
- The sd-webui-controlnet extension (``controlnet_models=None``: not installed) serves
  ``/controlnet/version`` and ``/model_list``; without it ``alwayson_scripts.controlnet`` is refused
  (422 "always on script controlnet not found"). A unit naming a model it lacks is skipped (the
  extension's error is only logged) and the render goes on unguided. A unit's map steers the
  fake's render: its bright pixels are painted white by the unit's weight.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

VERSION = "v1.10.1"

STEP_S = 0.02
"""Seconds one sampling step takes."""

CHECKPOINT_FILES = (
    "dreamshaper_8.safetensors",
    "sd_xl_base_1.0.safetensors",
    "v1-5-pruned-emaonly.safetensors",
)
"""Checkpoints in the fake's models/Stable-diffusion; the first is loaded at start."""

CONTROLNET_MODELS = ("control_v11p_sd15_canny [d14c016b]", "control_v11f1p_sd15_depth [cfd03158]")
"""The extension's ``/controlnet/model_list``: ``name [hash]`` of the files in models/ControlNet."""

CONTROLNET_API_VERSION = 3
"""``external_code.get_api_version()``."""

CONTROLNET_MODULES = ("none", "canny", "depth_midas", "openpose", "scribble_hed")
"""Preprocessors the fake knows (``module``); the real extension has dozens."""

SAMPLERS: dict[str, list[str]] = {
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "LMS": ["k_lms"],
    "Heun": ["k_heun"],
    "DDIM": ["ddim"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
}
"""Sampler name → aliases (v1.10's names for the samplers KITTY maps to)."""

SCHEDULERS: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
}
"""Scheduler name → label; requests may use either."""


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which is what a real server most often reports."""


class Txt2ImgRequest(BaseModel):
    """``StableDiffusionTxt2ImgProcessingAPI``: generated from the processing class, every field
    optional, unknown fields ignored."""

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    enable_hr: bool | None = False
    denoising_strength: float | None = None
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    force_task_id: str | None = None
    sampler_index: str | None = "Euler"
    script_name: str | None = None
    script_args: list[Any] | None = []
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = {}
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    """``StableDiffusionImg2ImgProcessingAPI``: the processing fields plus the input's."""

    init_images: list[Any] | None = None
    resize_mode: int | None = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    include_init_images: bool | None = False


@dataclass
class ControlHint:
    """One enabled ControlNet unit the fake applies: its decoded map and weight."""

    image: Image.Image
    weight: float

    def paint(self, picture: Image.Image) -> Image.Image:
        bright = self.image.convert("L").resize(picture.size, Image.Resampling.BILINEAR)
        share = min(self.weight, 1.0)
        white = Image.new("RGB", picture.size, (255, 255, 255))
        return Image.composite(white, picture, bright.point([int(v * share) for v in range(256)]))


@dataclass
class Inputs:
    """An img2img request's decoded input and mask (white repaints unless inverted)."""

    image: Image.Image
    mask: Image.Image | None
    strength: float

    @classmethod
    def of(cls, request: Img2ImgRequest) -> Inputs:
        if not request.init_images:
            raise HTTPException(status_code=404, detail="Init image not found")
        image = _decode_base64_image(request.init_images[0]).convert("RGB")
        mask = _decode_base64_image(request.mask).convert("L") if request.mask else None
        if mask is not None and request.inpainting_mask_invert:
            mask = mask.point(lambda v: 255 - v)
        strength = 0.75 if request.denoising_strength is None else request.denoising_strength
        return cls(image, mask, strength)

    def render(self, width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
        """The input moved towards `color` by the strength; outside the mask, the input as it was
        (A1111 pastes the original back over unmasked pixels)."""
        base = self.image.resize((width, height))
        out = Image.blend(base, Image.new("RGB", (width, height), color), self.strength)
        if self.mask is None:
            return out
        mask = self.mask.resize((width, height)).point(lambda v: 255 if v >= 128 else 0)
        return Image.composite(out, base, mask)


class InternalProgressRequest(BaseModel):
    id_task: str | None = None
    id_live_preview: int = -1


@dataclass
class Checkpoint:
    filename: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.filename.encode()).hexdigest()

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def model_name(self) -> str:
        return self.filename.rsplit(".", 1)[0]

    @property
    def title(self) -> str:
        return f"{self.filename} [{self.shorthash}]"

    def item(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": f"/opt/webui/models/Stable-diffusion/{self.filename}",
            "config": None,
        }


@dataclass
class SharedState:
    """``shared.state``: the one job the server is running."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    time_start: float = 0.0

    def begin(self, job: str) -> None:
        self.job, self.job_count, self.job_no = job, -1, 0
        self.sampling_step = self.sampling_steps = 0
        self.interrupted = self.skipped = False
        self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        self.time_start = time.time()

    def end(self) -> None:
        self.job, self.job_count = "", 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": False,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


@dataclass
class Outcome:
    """How one task ended, for tests to check."""

    steps_done: int
    interrupted: bool


@dataclass
class FakeA1111:
    api_auth: str | None = None
    """``--api-auth user:pass[,user2:pass2]``: HTTP Basic on every /sdapi route."""
    nowebui: bool = False
    """``--nowebui``: no ``/internal/progress``."""
    reports_current_task: bool = False
    step_s: float = STEP_S
    fail_with: Exception | None = None
    """Raised inside txt2img: the server answers 500 with its error body."""

    checkpoints: list[Checkpoint] = field(default_factory=lambda: [Checkpoint(f) for f in CHECKPOINT_FILES])
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every txt2img and img2img body as sent."""
    interrupted_tasks: list[str | None] = field(default_factory=list)
    """The task each ``POST /sdapi/v1/interrupt`` hit (None: nothing was running)."""
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    controlnet_models: list[str] | None = field(default_factory=lambda: list(CONTROLNET_MODELS))
    """None: the ControlNet extension is not installed."""
    skipped_units: list[str] = field(default_factory=list)
    """Models of units the extension skipped (not in its list), as its console would report them."""

    def __post_init__(self) -> None:
        self.queue_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.state = SharedState()
        self.current_task: str | None = None
        self.pending: dict[str, float] = {}
        self.finished: list[str] = []
        self.loaded = self.checkpoints[0]
        self.app = self._build_app()

    # --- what the routes do -------------------------------------------------------------------
    def txt2img(self, request: Txt2ImgRequest, inputs: Inputs | None = None) -> dict[str, Any]:
        """Also img2img's, with `inputs`."""
        task_id = request.force_task_id or f"task({secrets.token_hex(4)})"
        sampler, scheduler = self._sampler_and_scheduler(request)
        hints = self._control_hints(request.alwayson_scripts or {})
        with self.state_lock:
            self.pending[task_id] = time.time()
        with self.queue_lock:
            with self.state_lock:
                self.state.begin("scripts_img2img" if inputs else "scripts_txt2img")
                self.current_task = task_id
                self.pending.pop(task_id, None)
            try:
                result = self._process(request, task_id, sampler, scheduler, inputs, hints)
                with self.state_lock:
                    if self.current_task == task_id:
                        self.current_task = None
                    self.finished = [*self.finished, task_id][-16:]
            finally:
                with self.state_lock:
                    self.state.end()
        return result

    def _process(
        self,
        request: Txt2ImgRequest,
        task_id: str,
        sampler: str,
        scheduler: str | None,
        inputs: Inputs | None,
        hints: list[ControlHint],
    ) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        previous = self.loaded
        override = (request.override_settings or {}).get("sd_model_checkpoint")
        if override:
            self.loaded = self._checkpoint(str(override)) or self.checkpoints[0]
        model = self.loaded
        if request.override_settings_restore_afterwards is not False:
            self.loaded = previous
        steps, n_iter, batch = request.steps or 50, request.n_iter or 1, request.batch_size or 1
        # img2img samples only the part of the schedule the denoising strength asks for.
        sampled = int(steps * min(inputs.strength, 0.999)) + 1 if inputs else steps
        seed = request.seed if request.seed is not None and request.seed != -1 else random.randrange(2**32)
        hires = bool(request.enable_hr) and inputs is None  # img2img has no hires fix
        passes = [sampled]
        if hires:
            second = request.hr_second_pass_steps or steps
            passes.append(int(second * min(request.denoising_strength or 0.0, 0.999)) + 1)
        with self.state_lock:
            self.state.job_count = n_iter * len(passes)
        done = 0
        for job_no in range(n_iter * len(passes)):
            pass_steps = passes[job_no % len(passes)]
            with self.state_lock:
                self.state.job_no, self.state.sampling_steps = job_no, pass_steps
            for step in range(1, pass_steps + 1):
                if self.state.interrupted:
                    break
                time.sleep(self.step_s)
                with self.state_lock:
                    self.state.sampling_step = step
                done += 1
            if self.state.interrupted:
                break
        self.outcomes[task_id] = Outcome(steps_done=done, interrupted=self.state.interrupted)

        width, height = request.width or 512, request.height or 512
        if hires:
            width, height = self._hires_size(request, width, height)
        seeds = [seed + i for i in range(batch * n_iter)]
        infotexts = [
            self._infotext(request, sampler, scheduler, s, model, width, height, steps) for s in seeds
        ]
        images = [
            _png(width, height, s, text, inputs, hints) for s, text in zip(seeds, infotexts, strict=True)
        ]
        prompt, negative = request.prompt or "", request.negative_prompt or ""
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * len(seeds),
            "negative_prompt": negative,
            "all_negative_prompts": [negative] * len(seeds),
            "seed": seed,
            "all_seeds": seeds,
            "subseed": seed + 1,
            "all_subseeds": [s + 1 for s in seeds],
            "subseed_strength": request.subseed_strength or 0,
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "cfg_scale": request.cfg_scale,
            "steps": steps,
            "batch_size": batch,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model.model_name,
            "sd_model_hash": model.shorthash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": inputs.strength if inputs else None,
            "extra_generation_params": {"Schedule type": scheduler} if scheduler else {},
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": request.styles or [],
            "job_timestamp": self.state.job_timestamp,
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": VERSION,
        }
        return {
            "images": images if request.send_images is not False else [],
            "parameters": request.model_dump(),
            "info": json.dumps(info),
        }

    @staticmethod
    def _hires_size(request: Txt2ImgRequest, width: int, height: int) -> tuple[int, int]:
        """processing.py's ``calculate_target_resolution``: the scale, or the resize when given
        (both sides given: scaled to cover, then cropped to it)."""
        resize_x, resize_y = request.hr_resize_x or 0, request.hr_resize_y or 0
        if resize_x == 0 and resize_y == 0:
            scale = request.hr_scale or 2.0
            return int(width * scale), int(height * scale)
        if resize_y == 0:
            return resize_x, resize_x * height // width
        if resize_x == 0:
            return resize_y * width // height, resize_y
        return resize_x, resize_y

    def _control_hints(self, scripts: dict[str, Any]) -> list[ControlHint]:
        """The ControlNet units of ``alwayson_scripts``, as the extension takes them: a script the
        server lacks is a 422 (modules/api/api.py), a unit naming a model it lacks is skipped."""
        hints: list[ControlHint] = []
        for name, value in scripts.items():
            if name.lower() != "controlnet" or self.controlnet_models is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            for unit in (value or {}).get("args") or []:
                if not isinstance(unit, dict) or not unit.get("enabled", False):
                    continue
                module = unit.get("module", "none")
                if module not in CONTROLNET_MODULES:
                    raise ValueError(f"module({module}) not found in supported modules.")
                weight = float(unit.get("weight", 1.0))
                start, end = float(unit.get("guidance_start", 0.0)), float(unit.get("guidance_end", 1.0))
                if not (0 <= weight <= 2 and 0 <= start <= end <= 1):
                    raise ValueError(f"invalid unit: weight {weight}, guidance {start}..{end}")
                model = str(unit.get("model", "None"))
                if model not in self.controlnet_models:
                    self.skipped_units.append(model)
                    continue
                hints.append(ControlHint(_decode_base64_image(unit["image"]), weight))
        return hints

    def interrupt(self) -> None:
        with self.state_lock:
            self.interrupted_tasks.append(self.current_task if self.state.job_count != 0 else None)
            self.state.interrupted = True

    def task_progress(self, request: InternalProgressRequest) -> dict[str, Any]:
        with self.state_lock:
            active = request.id_task == self.current_task
            queued = request.id_task in self.pending
            completed = request.id_task in self.finished
            if not active:
                textinfo = "Waiting..."
                if queued and request.id_task is not None:
                    order = sorted(self.pending, key=self.pending.__getitem__)
                    textinfo = f"In queue: {order.index(request.id_task) + 1}/{len(order)}"
                return {
                    "active": False,
                    "queued": queued,
                    "completed": completed,
                    "progress": None,
                    "eta": None,
                    "live_preview": None,
                    "id_live_preview": -1,
                    "textinfo": textinfo,
                }
            progress = self._fraction(offset=0.0)
            elapsed = time.time() - self.state.time_start
            return {
                "active": True,
                "queued": queued,
                "completed": completed,
                "progress": progress,
                "eta": elapsed / progress - elapsed if progress > 0 else None,
                "live_preview": None,
                "id_live_preview": request.id_live_preview,
                "textinfo": None,
            }

    def global_progress(self) -> dict[str, Any]:
        with self.state_lock:
            current = self.current_task if self.reports_current_task else None
            if self.state.job_count == 0:
                return {
                    "progress": 0,
                    "eta_relative": 0,
                    "state": self.state.as_dict(),
                    "current_image": None,
                    "textinfo": None,
                    "current_task": current,
                }
            # The real one adds 0.01 "to avoid dividing by zero".
            progress = min(self._fraction(offset=0.01), 1.0)
            elapsed = time.time() - self.state.time_start
            return {
                "progress": progress,
                "eta_relative": elapsed / progress - elapsed,
                "state": self.state.as_dict(),
                "current_image": None,
                "textinfo": None,
                "current_task": current,
            }

    def _fraction(self, *, offset: float) -> float:
        state, progress = self.state, offset
        if state.job_count > 0:
            progress += state.job_no / state.job_count
            if state.sampling_steps > 0:
                progress += state.sampling_step / state.sampling_steps / state.job_count
        return min(progress, 1.0)

    def _sampler_and_scheduler(self, request: Txt2ImgRequest) -> tuple[str, str | None]:
        wanted = request.sampler_name or request.sampler_index or "Euler"
        scheduler = request.scheduler
        for label in SCHEDULERS.values():
            # Pre-1.9 names such as "DPM++ 2M Karras" still work: sampler plus schedule type.
            if wanted.endswith(f" {label}") and wanted[: -len(label) - 1] in SAMPLERS:
                wanted, scheduler = wanted[: -len(label) - 1], scheduler or label
        name = next((n for n, aliases in SAMPLERS.items() if wanted == n or wanted in aliases), None)
        if name is None:
            raise HTTPException(status_code=400, detail="Sampler not found")
        schedule = SCHEDULERS.get(scheduler or "", scheduler)
        if schedule not in SCHEDULERS.values() or schedule == "Automatic":
            return name, None
        return name, schedule

    def _checkpoint(self, name: str) -> Checkpoint | None:
        for checkpoint in self.checkpoints:
            if name in (
                checkpoint.title,
                checkpoint.filename,
                checkpoint.model_name,
                checkpoint.shorthash,
                checkpoint.sha256,
            ):
                return checkpoint
        return None

    @staticmethod
    def _infotext(
        request: Txt2ImgRequest,
        sampler: str,
        scheduler: str | None,
        seed: int,
        model: Checkpoint,
        width: int,
        height: int,
        steps: int,
    ) -> str:
        fields = {
            "Steps": steps,
            "Sampler": sampler,
            "Schedule type": scheduler,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{width}x{height}",
            "Model hash": model.shorthash,
            "Model": model.model_name,
            "Version": VERSION,
        }
        line = ", ".join(f"{key}: {value}" for key, value in fields.items() if value not in (None, ""))
        negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
        return f"{request.prompt or ''}{negative}\n{line}"

    # --- the app ------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="fake AUTOMATIC1111")

        def error_body(exc: Exception) -> dict[str, Any]:
            # modules/api/api.py's handle_exception
            return {
                "error": type(exc).__name__,
                "detail": getattr(exc, "detail", ""),
                "body": getattr(exc, "body", ""),
                "errors": str(exc),
            }

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
            return JSONResponse(status_code=exc.status_code, content=error_body(exc))

        @app.middleware("http")
        async def exception_handling(request: Request, call_next: Any) -> Any:
            try:
                return await call_next(request)
            except Exception as exc:
                return JSONResponse(status_code=500, content=error_body(exc))

        dependencies = [Depends(self._auth_dependency())] if self.api_auth else []
        api = APIRouter(prefix="/sdapi/v1", dependencies=dependencies)

        @api.post("/txt2img")
        def txt2img(body: Txt2ImgRequest) -> dict[str, Any]:
            self.requests.append(body.model_dump(exclude_unset=True))
            return self.txt2img(body)

        @api.post("/img2img")
        def img2img(body: Img2ImgRequest) -> dict[str, Any]:
            self.requests.append(body.model_dump(exclude_unset=True))
            return self.txt2img(body, Inputs.of(body))

        @api.get("/progress")
        def progress(skip_current_image: bool = False) -> dict[str, Any]:
            return self.global_progress()

        @api.post("/interrupt")
        def interrupt() -> dict[str, Any]:
            self.interrupt()
            return {}

        @api.get("/sd-models")
        def sd_models() -> list[dict[str, Any]]:
            return [c.item() for c in self.checkpoints]

        @api.get("/samplers")
        def samplers() -> list[dict[str, Any]]:
            return [{"name": n, "aliases": a, "options": {}} for n, a in SAMPLERS.items()]

        @api.get("/schedulers")
        def schedulers() -> list[dict[str, Any]]:
            return [
                {"name": n, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for n, label in SCHEDULERS.items()
            ]

        @api.get("/options")
        def options() -> dict[str, Any]:
            return {
                "sd_model_checkpoint": self.loaded.title,
                "sd_checkpoint_hash": self.loaded.sha256,
                "samples_format": "png",
                "live_previews_enable": True,
            }

        app.include_router(api)

        @app.get("/controlnet/version")
        def controlnet_version() -> dict[str, Any]:
            if self.controlnet_models is None:
                raise HTTPException(status_code=404, detail="Not Found")
            return {"version": CONTROLNET_API_VERSION}

        @app.get("/controlnet/model_list")
        def controlnet_model_list(update: bool = True) -> dict[str, Any]:
            if self.controlnet_models is None:
                raise HTTPException(status_code=404, detail="Not Found")
            return {"model_list": list(self.controlnet_models)}

        if not self.nowebui:

            @app.post("/internal/progress")
            def internal_progress(body: InternalProgressRequest) -> dict[str, Any]:
                return self.task_progress(body)

        return app

    def _auth_dependency(self) -> Any:
        credentials: dict[str, str] = {}
        for pair in (self.api_auth or "").split(","):
            user, _, password = pair.partition(":")
            credentials[user] = password

        def auth(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:  # noqa: B008
            expected = credentials.get(given.username)
            if expected is not None and secrets.compare_digest(given.password, expected):
                return True
            raise HTTPException(
                status_code=401,
                detail="Incorrect username or password",
                headers={"WWW-Authenticate": "Basic"},
            )

        return auth


def _png(
    width: int,
    height: int,
    seed: int,
    parameters: str,
    inputs: Inputs | None = None,
    hints: list[ControlHint] | None = None,
) -> str:
    """An image coloured by its seed (from the input, for img2img), steered by `hints`, with the
    infotext chunk, base64 like the real answer."""
    color = (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
    image = inputs.render(width, height, color) if inputs else Image.new("RGB", (width, height), color)
    for hint in hints or []:
        image = hint.paint(image)
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_base64_image(encoded: Any) -> Image.Image:
    """modules/api/api.py's decode_base64_to_image: a data URL or bare base64 (URLs are off by
    default); an undecodable one is a 500 with its error."""
    text = str(encoded)
    if text.startswith("data:image/"):
        text = text.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text)))
        image.load()
    except Exception as exc:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from exc
    return image
