"""The ComfyUI engine against a fake ComfyUI served for real (HTTP + websocket on loopback): what a
user sees from a render, a refusal, a failure, a cancel, a lost event stream, an absent server —
and the whole queue path from submit to a stored PNG that ComfyUI can load back, for text-to-image,
image-to-image and inpainting; ControlNet maps and the hires fix."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.contracts import ControlInput, HiresFix, RenderSpec
from services.images_service.app import create_app
from services.images_service.control_maps import control_map
from services.images_service.engines import JobCanceled, make_engine
from services.images_service.engines.comfyui import (
    ComfyUIEngine,
    ControlFiles,
    failure_remediation,
    graph_settings,
    template_graph,
)
from services.images_service.errors import EngineError, KittyError
from services.images_service.metadata import read_png_text
from services.images_service.models import ModelRegistry
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.asgi_server import serve_asgi
from tests.support.fakes import Recorder
from tests.support.harness import Harness, make_settings
from tests.support.peers.comfyui import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_CONTROLNETS,
    DEFAULT_UPSCALE_MODELS,
    DEVICE_NAME,
    VERSION,
    FakeComfyUI,
)
from tests.support.pictures import (
    kept_pixels,
    left_half,
    png_of,
    run_img2img_pair,
    two_tone,
    upload_picture,
)
from tests.support.servers import free_port

POLL_S = 0.05
"""Poll/heartbeat interval in these tests: short, so cancels and fallbacks are quick."""

SOLID_RED = 0xFF0000


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    yield FakeComfyUI()


@pytest.fixture
def url(fake: FakeComfyUI) -> Iterator[str]:
    with serve_asgi(fake.app) as base_url:
        yield base_url


def comfyui_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "comfyui_url": base_url,
        "engine_poll_interval_s": POLL_S,
        "engine_connect_timeout_s": 2.0,
        "job_timeout_s": 20,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def engine_factory(url: str) -> Iterator[Callable[..., ComfyUIEngine]]:
    engines: list[ComfyUIEngine] = []

    def build(base_url: str | None = None, **overrides: object) -> ComfyUIEngine:
        engines.append(ComfyUIEngine(comfyui_settings(base_url or url, **overrides)))
        return engines[-1]

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(engine_factory: Callable[..., ComfyUIEngine]) -> ComfyUIEngine:
    return engine_factory()


def make_spec(**fields: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "model": None,
        "width": 64,
        "height": 48,
        "steps": 5,
        "cfg": 6.5,
        "seed": 42,
        "scheduler": "dpmpp_2m_karras",
        "num_images": 1,
        "engine": "comfyui",
    }
    values.update(fields)
    return RenderSpec.model_validate(values)


def solid_image_graph(**inputs: object) -> dict[str, object]:
    """A graph that needs no model: EmptyImage → SaveImage (as in PEERS.md)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": SOLID_RED, **inputs},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "raw"}},
    }


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_template_render_streams_progress_and_keeps_comfyui_chunks(
    engine: ComfyUIEngine, fake: FakeComfyUI, url: str
) -> None:
    progress = Recorder()
    result = engine.render(make_spec(num_images=2), progress)

    steps = [step for step, _ in progress.calls]
    assert steps == sorted(steps), progress.calls
    assert {total for _, total in progress.calls} == {5}
    assert progress.calls[-1] == (5, 5)
    assert {1, 2, 3, 4} <= set(steps), "each sampler step is reported from the event stream"
    assert fake.socket_clients == [engine.client_id]

    assert [image.image.size for image in result.images] == [(64, 48), (64, 48)]
    assert [image.seed for image in result.images] == [42, 42]
    assert result.device == url
    info = result.engine_info
    assert (info["server"], info["version"], info["workflow"]) == ("comfyui", VERSION, "template")
    assert info["checkpoint"] == DEFAULT_CHECKPOINTS[0]
    assert info["prompt_id"] == fake.submitted[-1]["prompt_id"]

    graph = json.loads(result.images[0].text_chunks["prompt"])
    sampler = next(node["inputs"] for node in graph.values() if node["class_type"] == "KSampler")
    assert (sampler["sampler_name"], sampler["scheduler"], sampler["seed"], sampler["steps"]) == (
        "dpmpp_2m",
        "karras",
        42,
        5,
    )
    workflow = json.loads(result.images[0].text_chunks["workflow"])
    ksampler = next(node for node in workflow["nodes"] if node["type"] == "KSampler")
    assert ksampler["widgets_values"] == [42, "fixed", 5, 6.5, "dpmpp_2m", "karras", 1.0]
    assert len(workflow["links"]) == 9 and workflow["version"] == 0.4
    assert fake.submitted[-1]["client_id"] == engine.client_id


def test_identical_resubmission_is_served_from_cache(engine: ComfyUIEngine) -> None:
    first = engine.render(make_spec(), Recorder())
    progress = Recorder()
    second = engine.render(make_spec(), progress)
    assert progress.calls[-1] == (5, 5)
    assert second.images[0].image.tobytes() == first.images[0].image.tobytes()


def test_named_checkpoint_is_found_by_stem_and_unknown_one_is_model_not_found(
    engine: ComfyUIEngine,
) -> None:
    result = engine.render(make_spec(model="sd_xl_base_1.0"), Recorder())
    assert result.engine_info["checkpoint"] == "SDXL/sd_xl_base_1.0.safetensors"

    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(model="flux-dev"), Recorder())
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert "flux-dev" in caught.value.message
    assert any("v1-5-pruned-emaonly.safetensors" in hint for hint in caught.value.remediation)


def test_no_checkpoint_on_the_server_says_where_to_put_one(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    fake.checkpoints = []
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(), Recorder())
    assert caught.value.code == "ENGINE_OFFLINE"
    assert any("models/checkpoints" in hint for hint in caught.value.remediation)
    assert fake.submitted == []


def test_raw_workflow_runs_as_sent(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    """As sent, but for SaveImage's filename_prefix: ours (kitty/<prompt id>), whatever it said."""
    graph: dict[str, Any] = solid_image_graph()
    sent = json.loads(json.dumps(graph))
    progress = Recorder()
    result = engine.render(make_spec(workflow=graph, seed=7), progress)

    prefix = f"kitty/{result.engine_info['prompt_id']}"
    assert result.engine_info["output_prefix"] == prefix and result.engine_info["prefixed_nodes"] == ["2"]
    assert graph == sent, "the job's own workflow is left as it was"
    graph["2"]["inputs"]["filename_prefix"] = prefix
    assert fake.submitted[-1]["prompt"] == graph
    assert {name for kind, _, name in fake.files if kind == "output"} == {
        f"{prefix}_{n:05}_.png" for n in (1, 2)
    }
    assert [image.image.size for image in result.images] == [(32, 24), (32, 24)]
    assert result.images[0].image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    # No sampler in the graph: no seed or sampler settings to record (the request's seed 7 was unused).
    assert [image.seed for image in result.images] == [None, None]
    assert result.settings_used == {"steps": None, "cfg": None, "sampler": None, "scheduler": None}
    assert json.loads(result.images[0].text_chunks["prompt"]) == graph
    assert result.engine_info["workflow"] == "raw"
    assert progress.calls[-1] == (1, 1)


def test_raw_workflow_with_two_samplers_reports_steps_monotonically(engine: ComfyUIEngine) -> None:
    """A second, hires-fix style pass adds its steps to the total instead of restarting at 1."""
    graph = template_graph(make_spec(steps=4), DEFAULT_CHECKPOINTS[0])
    second = {**graph["3"]["inputs"], "steps": 3, "denoise": 0.5, "latent_image": ["3", 0]}
    graph["10"] = {"class_type": "KSampler", "inputs": second}
    graph["8"]["inputs"]["samples"] = ["10", 0]
    progress = Recorder()
    engine.render(make_spec(workflow=graph), progress)
    steps = [step for step, _ in progress.calls]
    assert steps == sorted(steps) and progress.calls[-1] == (7, 7)
    assert (4, 4) in progress.calls and (5, 7) in progress.calls


def test_execution_error_is_engine_error_with_the_servers_words(
    engine: ComfyUIEngine, fake: FakeComfyUI
) -> None:
    fake.fail_node_type = "KSampler"
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(), Recorder())
    error = caught.value
    assert error.code == "ENGINE_ERROR"
    assert "KSampler" in error.message and "torch.OutOfMemoryError" in error.message
    assert "Allocation on device" in error.message
    assert "Traceback" not in json.dumps(error.to_info().model_dump()) and "execution.py" not in str(
        error.detail
    )
    assert fake.interrupts == [] and fake.deleted == []
    assert any("Out of memory" in step for step in error.remediation)


@pytest.mark.parametrize(
    ("node_type", "exception", "says", "never"),
    [
        ("KSampler", ("torch.OutOfMemoryError", "CUDA out of memory"), "Out of memory", "model file"),
        ("CheckpointLoaderSimple", ("RuntimeError", "Could not detect model type"), "model file", "memory"),
        ("VAEDecode", ("ValueError", "bad shape"), "console", "memory"),
    ],
)
def test_remediation_matches_the_failure(
    node_type: str, exception: tuple[str, str], says: str, never: str
) -> None:
    data = {"node_type": node_type, "exception_type": exception[0], "exception_message": exception[1]}
    steps = " ".join(failure_remediation(data))
    assert says in steps and never not in steps


def test_cancel_while_running_interrupts_our_prompt(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    fake.step_delay_s = 0.05
    progress = Recorder(cancel_when=lambda calls: calls[-1][0] >= 2)
    with pytest.raises(JobCanceled):
        engine.render(make_spec(steps=10), progress)
    prompt_id = fake.submitted[-1]["prompt_id"]
    assert fake.interrupts == [{"prompt_id": prompt_id}]
    assert fake.deleted == []
    # ComfyUI stops at the next node boundary: the prompt ends interrupted, not rendered.
    wait_until(lambda: prompt_id in fake.history)
    status = fake.history[prompt_id]["status"]
    assert status["status_str"] == "error"
    assert [kind for kind, _ in status["messages"]][-1] == "execution_interrupted"


def test_cancel_while_pending_deletes_it_from_the_queue(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    fake.paused = True  # another client's prompt holds the GPU
    progress = Recorder(cancel_when=lambda calls: len(calls) >= 2)  # the first heartbeat after queuing
    started = time.monotonic()
    with pytest.raises(JobCanceled):
        engine.render(make_spec(), progress)
    assert time.monotonic() - started < 2.0
    prompt_id = fake.submitted[-1]["prompt_id"]
    assert fake.deleted == [prompt_id]
    assert fake.interrupts == []
    assert fake.pending == []


def test_without_websocket_history_polling_completes(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    fake.websocket_enabled = False
    fake.step_delay_s = 0.04
    progress = Recorder()
    result = engine.render(make_spec(), progress)
    assert fake.socket_clients == []
    assert [image.image.size for image in result.images] == [(64, 48)]
    assert len(progress.calls) >= 3, "heartbeats while polling let a cancel be seen"
    assert progress.calls[-1] == (5, 5)


def test_interrupt_from_someone_else_is_an_engine_error(
    engine: ComfyUIEngine, fake: FakeComfyUI, url: str
) -> None:
    fake.step_delay_s = 0.03

    def interrupt_from_comfyui_ui(calls: list[tuple[int, int]]) -> bool:
        if calls[-1][0] == 2:
            httpx.post(f"{url}/api/interrupt", json={})
        return False

    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(steps=10), Recorder(cancel_when=interrupt_from_comfyui_ui))
    assert caught.value.code == "ENGINE_ERROR"
    assert "interrupted" in caught.value.message


def test_job_timeout_is_engine_timeout_and_stops_the_prompt(
    engine_factory: Callable[..., ComfyUIEngine], fake: FakeComfyUI
) -> None:
    fake.step_delay_s = 0.2
    engine = engine_factory(job_timeout_s=1)
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(steps=50), Recorder())
    assert caught.value.code == "ENGINE_TIMEOUT"
    assert fake.interrupts == [{"prompt_id": fake.submitted[-1]["prompt_id"]}]


def test_unreachable_server_is_engine_offline_quickly(engine_factory: Callable[..., ComfyUIEngine]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    engine = engine_factory(closed)
    started = time.monotonic()
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(), Recorder())
    assert time.monotonic() - started < 2.0
    assert caught.value.code == "ENGINE_OFFLINE"
    assert closed in caught.value.message
    assert any("python main.py --listen 127.0.0.1 --port 8188" in hint for hint in caught.value.remediation)

    health = engine.health()
    assert health.status == "offline" and closed in health.detail


def test_health_ready_names_version_and_device(engine: ComfyUIEngine) -> None:
    health = engine.health()
    assert health.status == "ready"
    assert health.version == VERSION
    assert DEVICE_NAME in health.detail


def test_fake_refuses_foreign_origin_and_answers_under_api(url: str) -> None:
    """The fake's fidelity: what the adapter relies on not sending, and the /api aliases."""
    assert httpx.get(f"{url}/system_stats", headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.get(f"{url}/api/system_stats").json()["system"]["comfyui_version"] == VERSION
    missing = httpx.get(f"{url}/view", params={"filename": "nope.png", "type": "output"})
    assert missing.status_code == 404 and missing.content == b""
    assert httpx.get(f"{url}/history/unknown").json() == {}


def test_queue_path_stores_comfyui_image_with_all_chunks(tmp_path: Path, redis_url: str, url: str) -> None:
    settings = make_settings(
        tmp_path, redis_url, comfyui_url=url, engine_poll_interval_s=POLL_S, image_engine="comfyui"
    )
    store = make_store(settings)
    engine = ComfyUIEngine(settings)
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"comfyui": engine})
        job_id = harness.generate(engine="comfyui", seed=99, width=64, height=64, steps=3)
        harness.work("comfyui")
        view = harness.job(job_id)
        assert view["status"] == "done", view
        assert view["progress"] == {"step": 3, "total": 3}
        png_key = view["result"]["png_key"]

        latest = client.get("/api/images/latest").json()["items"]
        assert latest[0]["key"] == png_key
        ref = client.post("/api/images/select", json={"key": png_key}).json()["imageRef"]
        assert ref["storageUri"].endswith(png_key)
        stored = store.get(png_key)
        assert client.get(ref["downloadUrl"]).content == stored

    engine.close()
    assert Image.open(io.BytesIO(stored)).size == (64, 64)
    chunks = read_png_text(stored)
    assert {"prompt", "workflow", "parameters", "kitty"} <= set(chunks)
    assert json.loads(chunks["prompt"])["3"]["inputs"]["seed"] == 99
    assert "Seed: 99" in chunks["parameters"]
    sidecar = json.loads(store.get(view["result"]["meta_key"]))
    assert sidecar["engine"] == "comfyui" and sidecar["device"] == url
    assert sidecar["engine_info"]["server"] == "comfyui"
    assert sidecar["versions"]["comfyui"] == VERSION
    assert json.loads(chunks["kitty"])["job_id"] == job_id


# --- image-to-image and inpainting ------------------------------------------------------------
def nodes_by_type(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["class_type"]: node["inputs"] for node in graph.values()}


def input_file(fake: FakeComfyUI, name: str) -> Image.Image:
    return Image.open(io.BytesIO(fake.files[("input", "", name)]))


def test_img2img_and_inpainting_through_the_queue(
    fake: FakeComfyUI, url: str, tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(tmp_path, redis_url, comfyui_url=url, engine_poll_interval_s=POLL_S)
    size = (96, 64)
    # What ComfyUI must receive: the uploads at the job's size, resized on our side.
    picture = two_tone().resize(size, Image.Resampling.LANCZOS)
    mask = left_half().resize(size, Image.Resampling.LANCZOS)
    run = run_img2img_pair(settings, "comfyui")
    views, whole_png, masked_pngs, sidecar = run.views, run.whole_png, run.masked_pngs, run.sidecar
    image_key, mask_key = run.image_key, run.mask_key
    assert views[0]["progress"] == {"step": 4, "total": 4}

    sent_whole, sent_masked = (body["prompt"] for body in fake.submitted[-2:])
    nodes = nodes_by_type(sent_whole)
    assert set(nodes) == {
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "LoadImage",
        "VAEEncode",
        "KSampler",
        "VAEDecode",
        "SaveImage",
    }
    assert nodes["KSampler"]["denoise"] == 0.6
    assert sent_whole[nodes["KSampler"]["latent_image"][0]]["class_type"] == "VAEEncode"
    sent_picture = input_file(fake, nodes["LoadImage"]["image"])
    assert (sent_picture.size, sent_picture.tobytes()) == (size, picture.tobytes())

    nodes = nodes_by_type(sent_masked)
    assert nodes["KSampler"]["denoise"] == 0.75  # the default strength
    assert (nodes["RepeatLatentBatch"]["amount"], nodes["RepeatImageBatch"]["amount"]) == (2, 2)
    assert nodes["LoadImageMask"]["channel"] == "red"
    assert sent_masked[nodes["KSampler"]["latent_image"][0]]["class_type"] == "SetLatentNoiseMask"
    composite = nodes["ImageCompositeMasked"]
    assert (composite["x"], composite["y"], composite["resize_source"]) == (0, 0, False)
    assert sent_masked[nodes["SaveImage"]["images"][0]]["class_type"] == "ImageCompositeMasked"
    sent_mask = input_file(fake, nodes["LoadImageMask"]["image"])
    assert (sent_mask.mode, sent_mask.tobytes()) == ("L", mask.tobytes())

    repainted = Image.open(io.BytesIO(whole_png)).convert("RGB")
    assert repainted.size == size and repainted.getpixel((40, 5)) != picture.getpixel((40, 5))
    assert len(masked_pngs) == 2
    results = [Image.open(io.BytesIO(data)).convert("RGB") for data in masked_pngs]
    kept = kept_pixels(picture, mask)
    assert len(kept) > size[0] * size[1] // 3
    for result in results:
        # Outside the mask the input comes back exactly (the fake's VAE alone would shift it).
        assert kept_pixels(result, mask) == kept
        assert result.getpixel((5, 5)) != picture.getpixel((5, 5))
    assert results[0].getpixel((5, 5)) != results[1].getpixel((5, 5)), "each image of a batch differs"

    assert sidecar["request"]["image"] == image_key and sidecar["request"]["mask"] == mask_key
    assert sidecar["engine_info"]["inputs"] == {
        "image": nodes["LoadImage"]["image"],
        "mask": nodes["LoadImageMask"]["image"],
    }
    workflow = json.loads(read_png_text(masked_pngs[0])["workflow"])
    assert len(workflow["nodes"]) == len(sent_masked)
    loaders = {node["type"]: node["widgets_values"] for node in workflow["nodes"]}
    assert loaders["LoadImage"] == [nodes["LoadImage"]["image"], "image"]
    assert loaders["LoadImageMask"] == [nodes["LoadImageMask"]["image"], "red", "image"]


def test_image_with_a_raw_workflow_is_refused_at_submit(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url)
    store = make_store(settings)
    with TestClient(create_app(settings, store=store)) as client:
        key = client.post(
            "/api/images/uploads", content=png_of(two_tone()), headers={"content-type": "image/png"}
        ).json()["key"]
        body = {"prompt": "a fox", "engine": "comfyui", "image": key, "workflow": solid_image_graph()}
        response = client.post("/api/images/generate", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert "`image` and `workflow` do not go together" in error["message"]
    assert error["remediation"]


def test_img2img_without_a_store_to_read_from_says_so(engine: ComfyUIEngine, fake: FakeComfyUI) -> None:
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(image="uploads/20260101_000000_deadbeef.png", strength=0.5), Recorder())
    assert "no store" in caught.value.message
    assert fake.submitted == [] and not [key for key in fake.files if key[0] == "input"]


def test_input_gone_from_comfyui_is_an_engine_error(fake: FakeComfyUI, url: str) -> None:
    fake.forget_uploads = True  # e.g. a second ComfyUI behind the same URL took the upload
    inputs = {"uploads/in.png": two_tone(), "uploads/mask.png": left_half()}
    engine = ComfyUIEngine(comfyui_settings(url), image_loader=inputs.__getitem__)
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(image="uploads/in.png", mask="uploads/mask.png", strength=0.5), Recorder())
    engine.close()
    error = caught.value
    assert error.code == "ENGINE_ERROR"
    assert "no longer has the input" in error.message and "Invalid image file: kitty_image_" in error.message
    assert "Invalid image file: kitty_mask_" in error.message
    assert any("Submit the request again" in hint for hint in error.remediation)
    assert fake.history == {}


def test_fake_upload_route_answers_like_comfyui(url: str) -> None:
    """The fake's fidelity: ComfyUI keeps an identical file once, renames a different one unless
    told to overwrite, and serves inputs from /view."""
    first, second = png_of(Image.new("RGB", (8, 8), (1, 2, 3))), png_of(Image.new("RGB", (8, 8), 9))

    def upload(data: bytes, **fields: str) -> Any:
        files = {"image": ("in.png", data, "image/png")}
        return httpx.post(f"{url}/api/upload/image", files=files, data=fields).json()

    assert upload(first) == {"name": "in.png", "subfolder": "", "type": "input"}
    assert upload(first)["name"] == "in.png"
    assert upload(second)["name"] == "in (1).png"
    assert upload(second, overwrite="true")["name"] == "in.png"
    assert httpx.get(f"{url}/view", params={"filename": "in.png", "type": "input"}).content == second
    assert httpx.post(f"{url}/upload/image", data={"type": "input"}).status_code == 400


def test_a_raw_graph_records_its_own_sampler_settings_not_the_requests(
    tmp_path: Path, redis_url: str, url: str
) -> None:
    """The request's seed, steps and CFG (defaults, or sent alongside) did not drive a raw graph: the
    sidecar and infotext record its KSampler's values, and leave out what it does not state."""
    settings = make_settings(tmp_path, redis_url, comfyui_url=url, engine_poll_interval_s=POLL_S)
    store = make_store(settings)
    engine = ComfyUIEngine(settings)
    spec = make_spec(seed=1, width=64, height=64, steps=3)
    graph = template_graph(spec, DEFAULT_CHECKPOINTS[0])
    sampler = next(node for node in graph.values() if node["class_type"] == "KSampler")
    sampler["inputs"].update(seed=4242, steps=2, cfg=5.5, sampler_name="dpmpp_2m", scheduler="karras")
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"comfyui": engine})
        job_id = harness.generate(engine="comfyui", workflow=graph, seed=7, steps=30)
        harness.work("comfyui")
        views = [harness.job(job_id)]
    engine.close()
    assert views[0]["status"] == "done", views

    sidecar = json.loads(store.get(views[0]["result"]["meta_key"]))
    assert sidecar["seed"] == 4242 and views[0]["result"]["images"][0]["seed"] == 4242
    assert sidecar["settings_used"] == {"steps": 2, "cfg": 5.5, "sampler": "dpmpp_2m", "scheduler": "karras"}
    parameters = read_png_text(store.get(views[0]["result"]["png_key"]))["parameters"]
    # By A1111's names (what its PNG Info and other readers know), not ComfyUI's.
    assert "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 4242" in parameters
    assert "Steps: 30" not in parameters and "Seed: 7" not in parameters


def test_graph_settings_reads_one_sampler_and_leaves_out_what_it_cannot_know() -> None:
    graph = {
        "1": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "steps": 8, "cfg": 4}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    assert graph_settings(graph) == (5, {"steps": 8, "cfg": 4, "sampler": None, "scheduler": None})
    graph["1"]["inputs"]["noise_seed"] = ["3", 0]  # wired from another node: unknown here
    assert graph_settings(graph)[0] is None
    graph["4"] = {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 3.0}}
    assert graph_settings(graph) == (None, dict.fromkeys(("steps", "cfg", "sampler", "scheduler")))
    assert graph_settings({}) == (None, dict.fromkeys(("steps", "cfg", "sampler", "scheduler")))


# --- guidance: ControlNets and the hires fix -------------------------------------------------------
def guided_engine(url: str, pictures: dict[str, Image.Image]) -> ComfyUIEngine:
    return ComfyUIEngine(comfyui_settings(url), image_loader=pictures.__getitem__)


def white_square() -> Image.Image:
    """A photo with clear edges: a white square on black, 128×96."""
    picture = Image.new("RGB", (128, 96), (0, 0, 0))
    picture.paste((255, 255, 255), (40, 24, 88, 72))
    return picture


def test_controls_upload_their_maps_and_steer_the_render(fake: FakeComfyUI, url: str) -> None:
    depth_map = Image.new("RGB", (64, 48), (90, 90, 90))
    pictures = {"uploads/photo.png": white_square(), "uploads/depth.png": depth_map}
    canny = ControlInput(
        image="uploads/photo.png", type="canny", model="control_v11p_sd15_canny", weight=0.8, start=0.2
    )
    depth = ControlInput(image="uploads/depth.png", type="depth", model="controlnet-depth-sdxl-1.0", end=0.6)
    engine = guided_engine(url, pictures)
    result = engine.render(make_spec(controls=[canny, depth]), Recorder())
    engine.close()

    graph = fake.submitted[-1]["prompt"]
    applied = [node["inputs"] for node in graph.values() if node["class_type"] == "ControlNetApplyAdvanced"]
    assert [(a["strength"], a["start_percent"], a["end_percent"]) for a in applied] == [
        (0.8, 0.2, 1.0),
        (1.0, 0.0, 0.6),
    ]
    loaders = [node["inputs"] for node in graph.values() if node["class_type"] == "ControlNetLoader"]
    assert [loader["control_net_name"] for loader in loaders] == list(DEFAULT_CONTROLNETS), "found by stem"

    edges = control_map(white_square(), canny, (64, 48))
    uploaded = result.engine_info["inputs"]["controls"]
    sent = [Image.open(io.BytesIO(fake.files[("input", "", name)])).convert("RGB") for name in uploaded]
    assert sent[0].tobytes() == edges.tobytes(), "the Canny edges computed on our side went up"
    assert sent[1].tobytes() == depth_map.tobytes(), "a depth map goes up as given"
    assert result.engine_info["controlnets"] == list(DEFAULT_CONTROLNETS)

    # The fake paints each hint's edges white: the picture's colour boundary shows in the render.
    (image,) = result.images
    rendered = list(image.image.convert("L").getdata())
    edge_columns = {x for x in range(64) if edges.getpixel((x, 24)) == (255, 255, 255)}
    assert edge_columns, "the square has edges"
    assert all(rendered[24 * 64 + x] > 200 for x in edge_columns)
    assert rendered[24 * 64 + 5] < 200, "away from the edges: the seed's colour"


def test_hires_fix_renders_at_the_output_size_and_counts_both_passes(
    engine: ComfyUIEngine, fake: FakeComfyUI
) -> None:
    spec = make_spec(steps=5, hires=HiresFix(scale=2.0, strength=0.4, steps=3, upscaler="RealESRGAN_x4plus"))
    progress = Recorder()
    result = engine.render(spec, progress)

    assert [image.image.size for image in result.images] == [spec.output_size] == [(128, 96)]
    assert progress.calls[-1] == (8, 8) and {total for _, total in progress.calls} == {8}
    steps = [step for step, _ in progress.calls]
    assert steps == sorted(steps) and {6, 7} <= set(steps), "the second pass's steps add on"
    graph = fake.submitted[-1]["prompt"]
    samplers = [node["inputs"] for node in graph.values() if node["class_type"] == "KSampler"]
    assert [(s["steps"], s["denoise"]) for s in samplers] == [(5, 1.0), (3, 0.4)]
    assert result.engine_info["upscaler"] == DEFAULT_UPSCALE_MODELS[0]
    workflow = json.loads(result.images[0].text_chunks["workflow"])
    assert {node["type"] for node in workflow["nodes"]} >= {"UpscaleModelLoader", "ImageScale"}


def test_a_controlnet_the_server_lacks_is_model_not_found_before_anything_is_sent(
    fake: FakeComfyUI, url: str
) -> None:
    engine = guided_engine(url, {"uploads/photo.png": two_tone()})
    control = ControlInput(image="uploads/photo.png", type="canny", model="no_such_controlnet")
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(controls=[control]), Recorder())
    engine.close()
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert "models/controlnet" in caught.value.message
    assert any("control_v11p_sd15_canny.pth" in hint for hint in caught.value.remediation)
    assert fake.submitted == [] and not [key for key in fake.files if key[0] == "input"]


def test_a_control_map_gone_from_comfyui_is_an_engine_error(fake: FakeComfyUI, url: str) -> None:
    fake.forget_uploads = True
    engine = guided_engine(url, {"uploads/depth.png": two_tone()})
    control = ControlInput(image="uploads/depth.png", type="depth", model="control_v11p_sd15_canny")
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(controls=[control]), Recorder())
    engine.close()
    assert "no longer has the input" in caught.value.message and "kitty_control_" in caught.value.message


def test_fake_validates_the_guidance_nodes_like_comfyui(fake: FakeComfyUI, url: str) -> None:
    spec = make_spec(controls=[ControlInput(image="uploads/a.png", type="depth", model="x")])
    graph = template_graph(spec, DEFAULT_CHECKPOINTS[0], controls=[ControlFiles("missing.png", "nope.pth")])
    apply = next(node for node in graph.values() if node["class_type"] == "ControlNetApplyAdvanced")
    del apply["inputs"]["end_percent"]
    apply["inputs"]["strength"] = 11.0
    response = httpx.post(f"{url}/prompt", json={"prompt": graph})
    assert response.status_code == 400
    problems = {
        (entry["class_type"], error["type"], error["extra_info"].get("input_name"))
        for entry in response.json()["node_errors"].values()
        for error in entry["errors"]
    }
    assert problems == {
        ("LoadImage", "custom_validation_failed", "image"),
        ("ControlNetLoader", "value_not_in_list", "control_net_name"),
        ("ControlNetApplyAdvanced", "required_input_missing", "end_percent"),
        ("ControlNetApplyAdvanced", "value_bigger_than_max", "strength"),
    }


def test_a_guided_job_through_the_queue(fake: FakeComfyUI, url: str, tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, redis_url, comfyui_url=url, engine_poll_interval_s=POLL_S)
    store = make_store(settings)
    engine = make_engine("comfyui", settings, ModelRegistry(settings.models_yaml), store)
    try:
        with TestClient(create_app(settings, store=store)) as client:
            harness = Harness(client, settings, store, {"comfyui": engine})
            photo = upload_picture(client, white_square())
            control = {"image": photo, "type": "canny", "model": "control_v11p_sd15_canny", "weight": 0.7}
            hires = {"scale": 1.5, "strength": 0.3, "steps": 2}
            job_id = harness.generate(
                engine="comfyui", width=96, height=64, steps=3, controls=[control], hires=hires
            )
            harness.work("comfyui")
            view = harness.job(job_id)
            assert view["status"] == "done", view
            assert view["progress"] == {"step": 5, "total": 5}, "both passes"
            png = store.get(view["result"]["png_key"])
            sidecar = json.loads(store.get(view["result"]["meta_key"]))
    finally:
        engine.close()
    assert Image.open(io.BytesIO(png)).size == (144, 96)
    assert sidecar["request"]["controls"][0]["image"] == photo
    assert sidecar["request"]["hires"]["scale"] == 1.5
    graph = json.loads(read_png_text(png)["prompt"])
    (apply,) = [node["inputs"] for node in graph.values() if node["class_type"] == "ControlNetApplyAdvanced"]
    assert apply["strength"] == 0.7
