"""The AUTOMATIC1111 adapter against a fake A1111 served over real HTTP: what a render sends and
gets back, progress, cancel (never interrupting another client's task), auth, server errors, an
absent server, health, a job through the real queue to an imageRef, ControlNet units (and a server
without the extension) and the hires fix."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.contracts import ControlInput, HiresFix, RenderSpec
from services.images_service import engines
from services.images_service.app import create_app
from services.images_service.control_maps import control_map
from services.images_service.engines import ImageLoader, JobCanceled
from services.images_service.engines.a1111 import TXT2IMG, A1111Engine, a1111_message
from services.images_service.errors import (
    EngineError,
    EngineOffline,
    EngineTimeout,
    ModelNotFound,
    Unauthorized,
)
from services.images_service.metadata import read_png_text
from services.images_service.models import ModelRegistry
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.asgi_server import serve_asgi
from tests.support.harness import Harness, make_settings
from tests.support.peers.a1111 import CONTROLNET_MODELS, VERSION, FakeA1111, OutOfMemoryError
from tests.support.pictures import upload_picture
from tests.support.servers import free_port

POLL_S = 0.03
"""The adapter's poll interval here: several polls per render of 20 ms steps."""

WAIT_S = 10.0
"""Upper bound of any wait on the fake; the tests finish far sooner."""

FOREIGN_TASK = "task(foreign)"


class Progress:
    """A progress callback that records calls and cancels at a given step or call."""

    def __init__(self, *, cancel_at_step: int | None = None, cancel_at_call: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cancel_at_step = cancel_at_step
        self.cancel_at_call = cancel_at_call

    def __call__(self, step: int, total: int) -> None:
        self.calls.append((step, total))
        if self.cancel_at_step is not None and step >= self.cancel_at_step:
            raise JobCanceled("job-1")
        if self.cancel_at_call is not None and len(self.calls) >= self.cancel_at_call:
            raise JobCanceled("job-1")

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.calls]


def make_spec(**fields: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "model": None,
        "width": 64,
        "height": 48,
        "steps": 10,
        "cfg": 7.0,
        "seed": 42,
        "engine": "a1111",
    }
    values.update(fields)
    return RenderSpec(**values)  # type: ignore[arg-type]


def make_engine(url: str, *, image_loader: ImageLoader | None = None, **overrides: object) -> A1111Engine:
    values: dict[str, Any] = {
        "a1111_base_url": url,
        "a1111_api_auth": None,
        "engine_poll_interval_s": POLL_S,
        "job_timeout_s": 20,
    }
    values.update(overrides)
    return A1111Engine(Settings(_env_file=None, **values), image_loader=image_loader)  # type: ignore[call-arg]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextmanager
def served(fake: FakeA1111) -> Iterator[str]:
    with serve_asgi(fake.app) as url:
        try:
            yield url
        finally:
            # Let any render still on the fake end before its server stops.
            wait_until(lambda: not fake.queue_lock.locked(), "the fake to go idle")


@contextmanager
def foreign_task(fake: FakeA1111, url: str, steps: int) -> Iterator[None]:
    """Another client's render, running on the server before ours is sent."""
    body = {
        "prompt": "someone else's",
        "steps": steps,
        "width": 64,
        "height": 64,
        "force_task_id": FOREIGN_TASK,
    }
    thread = threading.Thread(
        target=lambda: httpx.post(url + TXT2IMG, json=body, timeout=WAIT_S), daemon=True
    )
    thread.start()
    wait_until(lambda: fake.current_task == FOREIGN_TASK, "the foreign task to start")
    yield
    thread.join(WAIT_S)


SERVER_MODES = {
    "webui": {},
    "api-only": {"nowebui": True, "reports_current_task": True},
}
"""The web UI's per-task progress route, or only the API's global one naming the running task."""


@pytest.fixture(params=list(SERVER_MODES))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[FakeA1111, str]]:
    fake = FakeA1111(**SERVER_MODES[request.param])  # type: ignore[arg-type]
    with served(fake) as url:
        yield fake, url


@pytest.fixture
def webui() -> Iterator[tuple[FakeA1111, str]]:
    fake = FakeA1111()
    with served(fake) as url:
        yield fake, url


# --- rendering --------------------------------------------------------------------------------
def test_render_sends_the_request_and_keeps_what_the_server_says(server: tuple[FakeA1111, str]) -> None:
    fake, url = server
    engine = make_engine(url)
    progress = Progress()

    result = engine.render(make_spec(steps=20, num_images=2, scheduler="dpmpp_2m_karras"), progress)

    sent = fake.requests[-1]
    task_id = sent.pop("force_task_id")
    assert re.fullmatch(r"task\([0-9a-f]{16}\)", task_id)
    assert sent == {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": 42,
        "steps": 20,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 48,
        "batch_size": 2,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
    }
    assert progress.steps == sorted(progress.steps), "progress went backwards"
    assert progress.calls[-1] == (20, 20)
    assert any(0 < step < 20 for step in progress.steps), progress.calls
    assert [image.image.size for image in result.images] == [(64, 48), (64, 48)]
    assert [image.seed for image in result.images] == [42, 43]
    assert "Seed: 43" in result.images[1].text_chunks["a1111_parameters"]
    assert "Schedule type: Karras" in result.images[1].text_chunks["a1111_parameters"]
    assert "parameters" not in result.images[0].text_chunks
    assert result.device == url
    info = result.engine_info
    assert info["server"] == "a1111" and info["version"] == VERSION and info["task_id"] == task_id
    assert info["sd_model_name"] == "dreamshaper_8"
    assert info["info"]["all_seeds"] == [42, 43] and info["info"]["sampler_name"] == "DPM++ 2M"
    assert result.timings["render_s"] > 0


def test_named_checkpoint_is_overridden_for_this_render_only(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    engine = make_engine(url)
    result = engine.render(make_spec(model="sd_xl_base_1.0", scheduler="euler_a"), Progress())

    sent = fake.requests[-1]
    xl = fake.checkpoints[1]
    assert sent["override_settings"] == {"sd_model_checkpoint": xl.title}
    assert sent["override_settings_restore_afterwards"] is True
    assert (sent["sampler_name"], "scheduler" in sent) == ("Euler a", False)
    assert result.engine_info["sd_model_name"] == "sd_xl_base_1.0"
    assert result.engine_info["sd_model_hash"] == xl.shorthash
    options = httpx.get(url + "/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == fake.checkpoints[0].title


def test_no_model_and_no_scheduler_leave_the_server_defaults(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    result = make_engine(url).render(make_spec(), Progress())
    sent = fake.requests[-1]
    assert not {"override_settings", "sampler_name", "scheduler"} & set(sent)
    assert result.engine_info["sd_model_name"] == "dreamshaper_8"


def test_unknown_checkpoint_is_model_not_found_before_rendering(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    with pytest.raises(ModelNotFound) as caught:
        make_engine(url).render(make_spec(model="no-such-model"), Progress())
    assert caught.value.code == "MODEL_NOT_FOUND" and "no-such-model" in caught.value.message
    assert any("dreamshaper_8" in hint for hint in caught.value.remediation)
    assert fake.requests == []


# --- cancel -----------------------------------------------------------------------------------
def test_cancel_while_running_interrupts_our_task(server: tuple[FakeA1111, str]) -> None:
    fake, url = server
    started = time.monotonic()
    with pytest.raises(JobCanceled):
        make_engine(url).render(make_spec(steps=200), Progress(cancel_at_step=2))
    ours = fake.requests[-1]["force_task_id"]
    assert fake.interrupted_tasks == [ours]
    assert fake.outcomes[ours].interrupted and fake.outcomes[ours].steps_done < 200
    assert time.monotonic() - started < 200 * fake.step_s / 2


def test_cancel_while_queued_never_interrupts_another_clients_task(server: tuple[FakeA1111, str]) -> None:
    fake, url = server
    with foreign_task(fake, url, steps=25):
        with pytest.raises(JobCanceled):
            # The first poll finds ours queued behind the foreign task: cancel then.
            make_engine(url).render(make_spec(steps=200), Progress(cancel_at_call=2))
    ours = fake.requests[-1]["force_task_id"]
    assert fake.outcomes[FOREIGN_TASK].interrupted is False
    assert fake.outcomes[FOREIGN_TASK].steps_done == 25
    # Ours was interrupted as soon as it started, before rendering much.
    assert fake.interrupted_tasks == [ours]
    assert fake.outcomes[ours].interrupted and fake.outcomes[ours].steps_done < 10


def test_server_that_cannot_name_the_running_task_is_never_interrupted() -> None:
    # v1.10 with --nowebui: no per-task progress, and /sdapi/v1/progress says current_task null.
    fake = FakeA1111(nowebui=True)
    with served(fake) as url:
        with foreign_task(fake, url, steps=10):
            with pytest.raises(JobCanceled):
                make_engine(url).render(make_spec(steps=10), Progress(cancel_at_call=2))
        ours = fake.requests[-1]["force_task_id"]
        assert fake.interrupted_tasks == []
        assert fake.outcomes[FOREIGN_TASK].steps_done == 10 and fake.outcomes[ours].steps_done == 10


def test_job_timeout_is_engine_timeout_and_stops_our_task(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    started = time.monotonic()
    with pytest.raises(EngineTimeout) as caught:
        make_engine(url, job_timeout_s=1).render(make_spec(steps=150), Progress())
    assert caught.value.code == "ENGINE_TIMEOUT"
    assert time.monotonic() - started < 2.5
    ours = fake.requests[-1]["force_task_id"]
    assert fake.interrupted_tasks == [ours]
    wait_until(lambda: ours in fake.outcomes, "the interrupted render to end")
    assert fake.outcomes[ours].interrupted


# --- auth, errors, absence ----------------------------------------------------------------------
def test_api_auth() -> None:
    fake = FakeA1111(api_auth="kitty:s3cret,other:pw")
    with served(fake) as url:
        good = make_engine(url, a1111_api_auth="kitty:s3cret")
        result = good.render(make_spec(), Progress())
        assert len(result.images) == 1
        assert good.health().status == "ready"

        for auth in ("kitty:wrong", None):
            engine = make_engine(url, a1111_api_auth=auth)
            with pytest.raises(Unauthorized) as caught:
                engine.render(make_spec(), Progress())
            assert caught.value.code == "UNAUTHORIZED"
            assert any("A1111_API_AUTH" in hint for hint in caught.value.remediation)
            health = engine.health()
            assert health.status == "misconfigured" and "A1111_API_AUTH" in health.detail

        malformed = make_engine(url, a1111_api_auth="just-a-user")
        with pytest.raises(Unauthorized):
            malformed.render(make_spec(), Progress())
        assert malformed.health().status == "misconfigured"
        assert len(fake.requests) == 1


def test_server_error_is_engine_error_with_the_servers_words(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    fake.fail_with = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(EngineError) as caught:
        make_engine(url).render(make_spec(), Progress())
    assert caught.value.code == "ENGINE_ERROR"
    assert "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in caught.value.message


def test_unknown_sampler_is_engine_error(webui: tuple[FakeA1111, str]) -> None:
    _, url = webui
    with pytest.raises(EngineError) as caught:
        make_engine(url).render(make_spec(scheduler="warp_drive"), Progress())
    assert "Sampler not found" in caught.value.message and "HTTPException" not in caught.value.message


def test_request_validation_errors_are_named_by_field(webui: tuple[FakeA1111, str]) -> None:
    _, url = webui
    response = httpx.post(url + TXT2IMG, json={"prompt": "x", "steps": "many"})
    assert response.status_code == 422
    assert a1111_message(response).startswith("steps: ")


def test_unreachable_server_is_engine_offline_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    engine = make_engine(url)
    started = time.monotonic()
    with pytest.raises(EngineOffline) as caught:
        engine.render(make_spec(), Progress())
    assert time.monotonic() - started < 2
    assert caught.value.code == "ENGINE_OFFLINE" and url in caught.value.message
    assert any("--api" in hint for hint in caught.value.remediation)
    assert engine.health().status == "offline"


def test_health_counts_checkpoints_and_learns_the_version(webui: tuple[FakeA1111, str]) -> None:
    _, url = webui
    engine = make_engine(url)
    health = engine.health()
    assert (health.status, health.detail, health.version) == ("ready", "3 checkpoints", None)
    engine.render(make_spec(), Progress())
    assert engine.health().version == VERSION


# --- through the queue ----------------------------------------------------------------------------
def test_job_through_the_queue_to_an_image_ref(
    webui: tuple[FakeA1111, str], tmp_path: Path, redis_url: str
) -> None:
    fake, url = webui
    settings = make_settings(tmp_path, redis_url, a1111_base_url=url, engine_poll_interval_s=POLL_S)
    store = make_store(settings)
    engine = A1111Engine(settings)
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"a1111": engine})
        job_id = harness.generate(engine="a1111", width=64, height=64, steps=5, seed=9, scheduler="euler_a")
        harness.work("a1111")

        view = harness.job(job_id)
        assert view["status"] == "done", view
        assert view["progress"] == {"step": 5, "total": 5}
        png_key = view["result"]["png_key"]
        latest = client.get("/api/images/latest").json()["items"]
        assert [item["key"] for item in latest] == [png_key]
        ref = client.post("/api/images/select", json={"key": png_key}).json()["imageRef"]
        assert ref["storageUri"].endswith(png_key)
        stored = store.get(png_key)
        assert client.get(ref["downloadUrl"]).content == stored

        sidecar = json.loads(store.get(view["result"]["meta_key"]))
        assert sidecar["engine"] == "a1111" and sidecar["model"] is None and sidecar["seed"] == 9
        assert sidecar["device"] == url
        assert sidecar["engine_info"]["task_id"] == fake.requests[-1]["force_task_id"]
        assert sidecar["engine_info"]["info"]["all_seeds"] == [9]
        assert sidecar["versions"]["automatic1111"] == VERSION
        chunks = read_png_text(stored)
        assert "Seed: 9" in chunks["parameters"] and "Sampler: Euler a" in chunks["parameters"]
        assert "Model: dreamshaper_8" in chunks["a1111_parameters"]
        assert Image.open(io.BytesIO(stored)).size == (64, 64)
    engine.close()


def test_img2img_and_inpainting_through_the_queue(
    webui: tuple[FakeA1111, str], tmp_path: Path, redis_url: str
) -> None:
    fake, url = webui
    settings = make_settings(tmp_path, redis_url, a1111_base_url=url, engine_poll_interval_s=POLL_S)
    store = make_store(settings)
    # Built as a worker builds it: with the store to read inputs from.
    engine = engines.make_engine("a1111", settings, ModelRegistry(settings.models_yaml), store)
    picture = Image.new("RGB", (96, 64), (10, 120, 200))
    left_half = Image.new("L", (96, 64), 0)
    left_half.paste(255, (0, 0, 48, 64))
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"a1111": engine})

        image_key, mask_key = upload_picture(client, picture), upload_picture(client, left_half)
        whole = harness.generate(engine="a1111", image=image_key, strength=0.6, steps=10, seed=5)
        masked = harness.generate(engine="a1111", image=image_key, mask=mask_key, steps=10, seed=6)
        harness.work("a1111")

        sent_whole, sent_masked = fake.requests[-2:]
        assert decoded(sent_whole["init_images"][0]).tobytes() == picture.tobytes()
        assert (sent_whole["denoising_strength"], sent_whole["width"], sent_whole["height"]) == (0.6, 96, 64)
        assert "mask" not in sent_whole
        assert decoded(sent_masked["mask"]).tobytes() == left_half.tobytes()
        assert sent_masked["denoising_strength"] == 0.75  # the default strength
        assert (sent_masked["inpainting_fill"], sent_masked["inpaint_full_res"]) == (1, False)
        assert sent_masked["inpainting_mask_invert"] == 0

        views = [harness.job(whole), harness.job(masked)]
        assert [v["status"] for v in views] == ["done", "done"], views
        assert views[0]["progress"] == {"step": 10, "total": 10}
        sidecar = json.loads(store.get(views[1]["result"]["meta_key"]))
        assert sidecar["request"]["image"] == image_key and sidecar["request"]["mask"] == mask_key
        assert sidecar["engine_info"]["info"]["denoising_strength"] == 0.75
        result = Image.open(io.BytesIO(store.get(views[1]["result"]["png_key"]))).convert("RGB")
        assert result.size == (96, 64)
        # Outside the mask the input comes back as it was; inside it, repainted.
        assert result.crop((48, 0, 96, 64)).tobytes() == picture.crop((48, 0, 96, 64)).tobytes()
        assert result.getpixel((5, 5)) != picture.getpixel((5, 5))
    engine.close()


def decoded(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_img2img_without_a_store_to_read_from_says_so(webui: tuple[FakeA1111, str]) -> None:
    _, url = webui
    engine = make_engine(url)
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(image="uploads/20260101_000000_deadbeef.png", strength=0.5), Progress())
    assert "no store" in caught.value.message


# --- guidance: ControlNet and the hires fix ------------------------------------------------------
def white_square() -> Image.Image:
    """A photo with clear edges: a white square on black, at the job's size."""
    picture = Image.new("RGB", (64, 48), (0, 0, 0))
    picture.paste((255, 255, 255), (20, 12, 44, 36))
    return picture


def guided_engine(url: str, pictures: dict[str, Image.Image]) -> A1111Engine:
    return make_engine(url, image_loader=pictures.__getitem__)


CANNY = ControlInput(
    image="uploads/photo.png", type="canny", model="control_v11p_sd15_canny", weight=0.9, end=0.7
)


def test_controls_go_to_the_controlnet_extension_as_units_and_steer_the_render(
    webui: tuple[FakeA1111, str],
) -> None:
    fake, url = webui
    engine = guided_engine(url, {"uploads/photo.png": white_square()})
    result = engine.render(make_spec(controls=[CANNY]), Progress())
    engine.close()

    (unit,) = fake.requests[-1]["alwayson_scripts"]["controlnet"]["args"]
    assert (unit["model"], unit["module"], unit["weight"], unit["guidance_start"], unit["guidance_end"]) == (
        CONTROLNET_MODELS[0],
        "none",
        0.9,
        0.0,
        0.7,
    )
    edges = control_map(white_square(), CANNY, (64, 48))
    sent = Image.open(io.BytesIO(base64.b64decode(unit["image"]))).convert("RGB")
    assert sent.tobytes() == edges.tobytes(), "the edge map made here, not the photo"
    assert fake.skipped_units == []
    assert result.engine_info["controlnets"] == [CONTROLNET_MODELS[0]]
    # The fake paints the map's edges white: the square's outline shows in the render.
    rendered = list(result.images[0].image.convert("L").getdata())
    edge_pixels = [i for i, pixel in enumerate(edges.convert("L").getdata()) if pixel == 255]
    assert edge_pixels and all(rendered[i] > 200 for i in edge_pixels)


def test_controls_without_the_controlnet_extension_are_a_clear_error(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    fake.controlnet_models = None
    engine = guided_engine(url, {"uploads/photo.png": white_square()})
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(controls=[CANNY]), Progress())
    engine.close()
    assert "no ControlNet extension" in caught.value.message
    assert any("sd-webui-controlnet" in hint for hint in caught.value.remediation)
    assert fake.requests == [], "nothing was rendered"
    # What A1111 itself answers when the script is named anyway:
    body = {"prompt": "x", "steps": 1, "alwayson_scripts": {"controlnet": {"args": []}}}
    response = httpx.post(url + TXT2IMG, json=body)
    assert response.status_code == 422 and "controlnet not found" in a1111_message(response)


def test_a_controlnet_model_the_extension_lacks_is_model_not_found(webui: tuple[FakeA1111, str]) -> None:
    fake, url = webui
    engine = guided_engine(url, {"uploads/photo.png": white_square()})
    control = CANNY.model_copy(update={"model": "control_v11p_sd15_lineart"})
    with pytest.raises(ModelNotFound) as caught:
        engine.render(make_spec(controls=[control]), Progress())
    engine.close()
    assert "control_v11p_sd15_lineart" in caught.value.message
    assert any(CONTROLNET_MODELS[0] in hint for hint in caught.value.remediation)
    assert fake.requests == [], "the extension would have skipped the unit and rendered unguided"


def test_hires_fix_renders_at_the_output_size_with_both_passes_in_progress(
    webui: tuple[FakeA1111, str],
) -> None:
    fake, url = webui
    engine = make_engine(url)
    progress = Progress()
    spec = make_spec(width=64, height=48, steps=6, hires=HiresFix(scale=1.5, strength=0.5, steps=4))
    result = engine.render(spec, progress)
    engine.close()

    assert [image.image.size for image in result.images] == [spec.output_size] == [(96, 72)]
    sent = fake.requests[-1]
    assert (sent["enable_hr"], sent["hr_scale"], sent["hr_upscaler"], sent["denoising_strength"]) == (
        True,
        1.5,
        "Lanczos",
        0.5,
    )
    assert sent["hr_second_pass_steps"] == 4
    assert progress.calls[-1] == (10, 10) and {total for _, total in progress.calls} == {10}
    assert progress.steps == sorted(progress.steps)
