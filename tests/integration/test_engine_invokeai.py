"""The InvokeAI adapter against a fake InvokeAI served over real HTTP (its own HTTP is never patched):
what a user sees for success, several images, model choice, failures, cancel, old servers, an
unreachable server, health, the whole queue path from submit to imageRef, image-to-image and
inpainting from uploads, ControlNet maps and the hires fix."""

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
from PIL import Image, ImageOps

from services.contracts import ControlInput, HiresFix, RenderSpec
from services.images_service.app import create_app
from services.images_service.control_maps import control_map
from services.images_service.engines import JobCanceled
from services.images_service.engines.invokeai import InvokeAIEngine
from services.images_service.errors import EngineError, EngineOffline, EngineTimeout, KittyError
from services.images_service.metadata import read_png_text
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.asgi_server import serve_asgi
from tests.support.fakes import Recorder
from tests.support.harness import Harness, make_settings
from tests.support.peers.invokeai import FakeInvokeAI
from tests.support.pictures import kept_pixels, left_half, png_of, run_img2img_pair, two_tone
from tests.support.servers import free_port

POLL_S = 0.01
"""Poll interval for tests: the fake finishes an item in 50 ms."""


def engine_settings(url: str, **overrides: object) -> Settings:
    port = int(url.rsplit(":", 1)[1])
    values: dict[str, object] = {
        "invoke_host": "127.0.0.1",
        "invoke_port": port,
        "engine_poll_interval_s": POLL_S,
        "engine_connect_timeout_s": 1.0,
        "job_timeout_s": 20,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg,arg-type]


def make_spec(**overrides: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "model": None,
        "width": 64,
        "height": 48,
        "steps": 4,
        "cfg": 6.5,
        "seed": 1234,
        "scheduler": "dpmpp_2m_karras",
        "engine": "invokeai",
    }
    values.update(overrides)
    return RenderSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeInvokeAI:
    return FakeInvokeAI()


@pytest.fixture
def served(fake: FakeInvokeAI) -> Iterator[str]:
    with serve_asgi(fake.app()) as url:
        yield url


@pytest.fixture
def engine(served: str) -> Iterator[InvokeAIEngine]:
    adapter = InvokeAIEngine(engine_settings(served))
    yield adapter
    adapter.close()


def sent_graph(fake: FakeInvokeAI, index: int = -1) -> dict:
    return fake.batches[index]["batch"]["graph"]  # type: ignore[no-any-return]


def test_renders_at_requested_size_keeping_invokeai_chunks(
    fake: FakeInvokeAI, engine: InvokeAIEngine
) -> None:
    progress = Recorder()
    result = engine.render(make_spec(), progress)

    assert len(result.images) == 1
    rendered = result.images[0]
    assert rendered.image.size == (64, 48)
    assert rendered.seed == 1234
    metadata = json.loads(rendered.text_chunks["invokeai_metadata"])
    assert metadata["seed"] == 1234 and metadata["positive_prompt"] == "a red fox in snow"
    assert json.loads(rendered.text_chunks["invokeai_graph"])["nodes"]["noise"]["seed"] == 1234

    steps = [step for step, _ in progress.calls]
    assert steps == sorted(steps), "progress never goes back"
    assert progress.calls[0] == (0, 4) and progress.calls[-1] == (4, 4)

    assert result.device == engine.url
    assert result.engine_info["server"] == "invokeai" and result.engine_info["version"] == "5.6.0"
    assert result.engine_info["model"]["name"] == "stable-diffusion-v1-5"
    assert result.engine_info["item_ids"] == sorted(fake.items)
    graph = sent_graph(fake)
    types = {node["type"] for node in graph["nodes"].values()}
    assert {"main_model_loader", "compel", "noise", "denoise_latents", "l2i"} <= types
    denoise = graph["nodes"]["denoise"]
    assert (denoise["steps"], denoise["cfg_scale"], denoise["scheduler"]) == (4, 6.5, "dpmpp_2m_k")
    outputs = [n for n in graph["nodes"].values() if not n["is_intermediate"]]
    assert [n["type"] for n in outputs] == ["l2i"]


def test_two_images_come_back_with_their_own_seeds(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    progress = Recorder()
    result = engine.render(make_spec(num_images=2, seed=41), progress)

    assert [image.seed for image in result.images] == [41, 42]
    assert len(fake.items) == 2, "one queue item per image, not runs × seeds"
    assert {item.graph["nodes"]["noise"]["seed"] for item in fake.items.values()} == {41, 42}
    first, second = (image.image.getpixel((0, 0)) for image in result.images)
    assert first != second
    assert progress.calls[-1] == (8, 8)


def test_model_is_chosen_by_name_and_sdxl_gets_its_graph(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    # Requests allow only [A-Za-z0-9._-]: an InvokeAI name with spaces is named with dashes.
    result = engine.render(make_spec(model="Juggernaut-XL-v9"), Recorder())

    assert result.engine_info["model"] == {
        "name": "Juggernaut XL v9",
        "base": "sdxl",
        "key": "9e0f3e55-2f4b-4c61-b0a7-0ab2a5d7c302",
    }
    nodes = sent_graph(fake)["nodes"]
    assert nodes["model_loader"]["type"] == "sdxl_model_loader"
    assert nodes["positive_prompt"]["type"] == "sdxl_compel_prompt"
    assert nodes["positive_prompt"]["target_width"] == 64

    by_key = engine.render(make_spec(model="5a4bb1c1-8c6e-4b8e-9c41-6d0c1d2f0a01"), Recorder())
    assert by_key.engine_info["model"]["name"] == "stable-diffusion-v1-5"


def test_unknown_model_is_model_not_found_and_nothing_is_queued(
    fake: FakeInvokeAI, engine: InvokeAIEngine
) -> None:
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(model="no-such-model"), Recorder())
    info = caught.value.to_info()
    assert info.code == "MODEL_NOT_FOUND"
    assert "stable-diffusion-v1-5" in info.message, "the message lists what is installed"
    assert any("model manager" in step for step in info.remediation)
    assert fake.batches == []


def test_no_usable_model_is_model_not_found(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    fake.models = [m for m in fake.models if m["type"] != "main"]
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(), Recorder())
    assert caught.value.to_info().code == "MODEL_NOT_FOUND"


def test_failed_item_is_engine_error_with_message_not_traceback(
    fake: FakeInvokeAI, engine: InvokeAIEngine
) -> None:
    fake.fail_next = ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(), Recorder())
    info = caught.value.to_info()
    assert info.code == "ENGINE_ERROR"
    assert "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in info.message
    assert "Traceback" not in json.dumps(info.model_dump(mode="json"))
    assert "session_processor" not in json.dumps(info.model_dump(mode="json"))


def test_cancel_sends_put_cancel_and_propagates(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    fake.run_s = 5.0
    calls = 0

    def cancel_on_second_poll(step: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise JobCanceled("job-1")

    started = time.monotonic()
    with pytest.raises(JobCanceled):
        engine.render(make_spec(num_images=2), cancel_on_second_poll)
    assert time.monotonic() - started < 2.0
    assert sorted(fake.cancel_requests) == sorted(fake.items)
    assert set(fake.statuses().values()) == {"canceled"}


def test_item_canceled_on_the_server_is_engine_error(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    fake.run_s = 5.0

    def someone_clears_the_queue(step: int, total: int) -> None:
        fake.cancel_all()

    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(), someone_clears_the_queue)
    assert "canceled on the InvokeAI server" in caught.value.message


def test_deadline_is_engine_timeout_and_cancels(fake: FakeInvokeAI, served: str) -> None:
    fake.run_s = 10.0
    engine = InvokeAIEngine(engine_settings(served, job_timeout_s=1))
    try:
        with pytest.raises(EngineTimeout):
            engine.render(make_spec(), Recorder())
    finally:
        engine.close()
    assert fake.cancel_requests == sorted(fake.items)


def test_servers_without_item_ids_are_found_through_the_queue_list(
    fake: FakeInvokeAI, engine: InvokeAIEngine
) -> None:
    fake.item_ids_in_enqueue = False
    # Someone else's finished items already sit in the queue.
    engine.render(make_spec(seed=1), Recorder())
    result = engine.render(make_spec(num_images=2, seed=7), Recorder())
    assert [image.seed for image in result.images] == [7, 8]
    assert result.engine_info["item_ids"] == [2, 3]


def test_invokeai_3_is_refused_clearly(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    fake.version = "3.1.0"
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(), Recorder())
    assert "InvokeAI 3.x has no enqueue_batch in this form; upgrade to 4 or later" in caught.value.message
    assert fake.batches == []


def test_unreachable_server_is_offline_fast() -> None:
    engine = InvokeAIEngine(engine_settings(f"http://127.0.0.1:{free_port()}"))
    started = time.monotonic()
    try:
        with pytest.raises(EngineOffline) as caught:
            engine.render(make_spec(), Recorder())
    finally:
        engine.close()
    assert time.monotonic() - started < 2.0
    assert caught.value.to_info().code == "ENGINE_OFFLINE"
    assert any("invokeai-web" in step for step in caught.value.remediation)


def test_health_ready_misconfigured_offline(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    ready = engine.health()
    assert (ready.status, ready.version) == ("ready", "5.6.0")

    fake.version = "3.1.0"
    old = engine.health()
    assert old.status == "misconfigured" and "upgrade to 4 or later" in old.detail

    offline_engine = InvokeAIEngine(engine_settings(f"http://127.0.0.1:{free_port()}"))
    try:
        assert offline_engine.health().status == "offline"
    finally:
        offline_engine.close()


@pytest.mark.parametrize(
    ("mutate", "complaint"),
    [
        (lambda g: g["nodes"]["noise"].update(type="no_such_node"), "unknown type"),
        (
            lambda g: g["edges"].append(
                {
                    "source": {"node_id": "ghost", "field": "latents"},
                    "destination": {"node_id": "l2i", "field": "latents"},
                }
            ),
            "not in graph",
        ),
        (lambda g: g["nodes"]["denoise"].update(cfg_scale=0.5), "cfg_scale"),
    ],
)
def test_fake_refuses_bad_graphs_like_fastapi(
    fake: FakeInvokeAI, engine: InvokeAIEngine, served: str, mutate: Callable[[dict], None], complaint: str
) -> None:
    """The fake is strict, so a graph it accepts is a graph of real node types and fields."""
    engine.render(make_spec(), Recorder())
    body = json.loads(json.dumps(fake.batches[-1]))
    mutate(body["batch"]["graph"])
    response = httpx.post(f"{served}/api/v1/queue/default/enqueue_batch", json=body)
    assert response.status_code == 422
    assert complaint in json.dumps(response.json()["detail"])


# --- through the queue ----------------------------------------------------------------------------
@pytest.fixture
def queue_harness(tmp_path: Path, redis_url: str, served: str) -> Iterator[Harness]:
    port = int(served.rsplit(":", 1)[1])
    settings = make_settings(
        tmp_path, redis_url, invoke_port=port, engine_poll_interval_s=POLL_S, engine_connect_timeout_s=1.0
    )
    store = make_store(settings)
    client = TestClient(create_app(settings, store=store))
    with client:
        engine = InvokeAIEngine(settings)
        yield Harness(client, settings, store, {"invokeai": engine})
        engine.close()


def test_queue_job_with_invokeai_ends_as_image_ref(fake: FakeInvokeAI, queue_harness: Harness) -> None:
    job_id = queue_harness.generate(engine="invokeai", seed=99, width=64, height=64, steps=3)
    queue_harness.work("invokeai")

    view = queue_harness.job(job_id)
    assert view["status"] == "done", view
    assert view["progress"] == {"step": 3, "total": 3}
    png_key = view["result"]["png_key"]
    latest = queue_harness.client.get("/api/images/latest").json()["items"]
    assert png_key in [item["key"] for item in latest]

    ref = queue_harness.client.post("/api/images/select", json={"key": png_key}).json()["imageRef"]
    stored = queue_harness.store.get(png_key)
    assert queue_harness.client.get(ref["downloadUrl"]).content == stored
    assert Image.open(io.BytesIO(stored)).size == (64, 64)
    chunks = read_png_text(stored)
    assert "invokeai_graph" in chunks and "Seed: 99" in chunks["parameters"]

    sidecar = json.loads(queue_harness.store.get(view["result"]["meta_key"]))
    assert sidecar["engine"] == "invokeai" and sidecar["seed"] == 99
    assert len(fake.batches) == 1


# --- image-to-image and inpainting ------------------------------------------------------------
SIZE = (96, 64)
"""The jobs' size: the inputs are uploaded at it, resized from 192×128."""


def at_job_size(image: Image.Image) -> Image.Image:
    return image.resize(SIZE, Image.Resampling.LANCZOS)


def by_type(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["type"]: node for node in graph["nodes"].values()}


def source_type(graph: dict[str, Any], node: dict[str, Any], field: str) -> str:
    """The type of the node whose output an edge brings to `node`'s `field`."""
    (source,) = [
        edge["source"]["node_id"]
        for edge in graph["edges"]
        if edge["destination"] == {"node_id": node["id"], "field": field}
    ]
    return str(graph["nodes"][source]["type"])


def uploaded(fake: FakeInvokeAI, field: dict[str, Any]) -> Image.Image:
    """The upload a node's ImageField names, as InvokeAI received it."""
    return Image.open(io.BytesIO(fake.uploaded_bytes[field["image_name"]]))


def test_img2img_and_inpainting_through_the_queue(
    fake: FakeInvokeAI, served: str, tmp_path: Path, redis_url: str
) -> None:
    port = int(served.rsplit(":", 1)[1])
    settings = make_settings(tmp_path, redis_url, invoke_port=port, engine_poll_interval_s=POLL_S)
    # What InvokeAI must receive: the inputs at the job's size, resized on our side.
    picture, mask = at_job_size(two_tone()), at_job_size(left_half())
    run = run_img2img_pair(settings, "invokeai")
    views, whole_png, masked_pngs, sidecar = run.views, run.whole_png, run.masked_pngs, run.sidecar
    image_key, mask_key = run.image_key, run.mask_key
    assert views[0]["progress"] == {"step": 4, "total": 4}

    assert [(dto["image_category"], dto["is_intermediate"]) for dto in fake.uploads] == [
        ("user", True),
        ("user", True),
        ("mask", True),
    ]
    # Each job deleted its own inputs once it ended: nothing of ours is left in InvokeAI's store.
    names = [dto["image_name"] for dto in fake.uploads]
    assert fake.deleted == names
    assert not set(names) & set(fake.images)
    sent_whole, sent_masked = (body["batch"]["graph"] for body in fake.batches)
    nodes = by_type(sent_whole)
    assert set(nodes) == {
        "main_model_loader",
        "compel",
        "noise",
        "i2l",
        "denoise_latents",
        "core_metadata",
        "l2i",
    }
    denoise = nodes["denoise_latents"]
    assert source_type(sent_whole, denoise, "latents") == "i2l"
    assert source_type(sent_whole, denoise, "noise") == "noise"
    assert source_type(sent_whole, nodes["i2l"], "vae") == "main_model_loader"
    assert denoise["denoising_start"] == pytest.approx(0.4)  # 1 - strength
    sent_picture = uploaded(fake, nodes["i2l"]["image"])
    assert (sent_picture.size, sent_picture.convert("RGB").tobytes()) == (SIZE, picture.tobytes())
    assert [node["type"] for node in nodes.values() if not node["is_intermediate"]] == ["l2i"]
    metadata = nodes["core_metadata"]
    assert (metadata["generation_mode"], metadata["strength"]) == ("img2img", 0.6)
    assert metadata["init_image"] == nodes["i2l"]["image"]["image_name"]

    nodes = by_type(sent_masked)
    assert nodes["denoise_latents"]["denoising_start"] == pytest.approx(0.25)  # the default strength
    assert source_type(sent_masked, nodes["denoise_latents"], "denoise_mask") == "create_denoise_mask"
    create_mask, paste = nodes["create_denoise_mask"], nodes["img_paste"]
    assert create_mask["image"] == paste["base_image"] == nodes["i2l"]["image"]
    assert create_mask["mask"] == paste["mask"]
    assert source_type(sent_masked, create_mask, "vae") == "main_model_loader"
    assert source_type(sent_masked, paste, "image") == "l2i"
    assert [node["type"] for node in nodes.values() if not node["is_intermediate"]] == ["img_paste"]
    # InvokeAI's masks keep white and repaint black: ours goes up inverted.
    sent_mask = uploaded(fake, create_mask["mask"])
    assert (sent_mask.mode, sent_mask.tobytes()) == ("L", ImageOps.invert(mask).tobytes())
    assert nodes["core_metadata"]["generation_mode"] == "inpaint"

    repainted = Image.open(io.BytesIO(whole_png)).convert("RGB")
    assert repainted.size == SIZE and repainted.getpixel((40, 5)) != picture.getpixel((40, 5))
    assert len(masked_pngs) == 2
    results = [Image.open(io.BytesIO(data)).convert("RGB") for data in masked_pngs]
    kept = kept_pixels(picture, mask)
    assert len(kept) > SIZE[0] * SIZE[1] // 3
    for result in results:
        # Outside the mask the input comes back exactly (the fake's VAE alone would shift it).
        assert kept_pixels(result, mask) == kept
        assert result.getpixel((5, 5)) != picture.getpixel((5, 5))
    assert results[0].getpixel((5, 5)) != results[1].getpixel((5, 5)), "each image has its own seed"
    chunks = read_png_text(masked_pngs[0])
    assert json.loads(chunks["invokeai_metadata"])["generation_mode"] == "inpaint"

    assert sidecar["request"]["image"] == image_key and sidecar["request"]["mask"] == mask_key
    assert sidecar["engine_info"]["inputs"] == {
        "image": create_mask["image"]["image_name"],
        "mask": create_mask["mask"]["image_name"],
    }


def inputs_loader() -> Callable[[str], Image.Image]:
    """A store holding two inputs, read as a worker's store is."""
    return {"uploads/in.png": two_tone(), "uploads/mask.png": left_half()}.__getitem__


def test_sdxl_inpainting_takes_everything_from_the_sdxl_loader(fake: FakeInvokeAI, served: str) -> None:
    engine = InvokeAIEngine(engine_settings(served), image_loader=inputs_loader())
    spec = make_spec(
        model="Juggernaut-XL-v9", image="uploads/in.png", mask="uploads/mask.png", width=96, height=64
    )
    result = engine.render(spec, Recorder())
    engine.close()

    graph = sent_graph(fake)
    nodes = by_type(graph)
    for node_type in ("i2l", "create_denoise_mask", "l2i"):
        assert source_type(graph, nodes[node_type], "vae") == "sdxl_model_loader"
    assert nodes["sdxl_compel_prompt"]["target_width"] == 96
    assert nodes["core_metadata"]["generation_mode"] == "sdxl_inpaint"
    picture, mask = at_job_size(two_tone()), at_job_size(left_half())
    inpainted = result.images[0].image.convert("RGB")
    assert kept_pixels(inpainted, mask) == kept_pixels(picture, mask)
    assert inpainted.getpixel((5, 5)) != picture.getpixel((5, 5))


def test_img2img_without_a_store_to_read_from_says_so(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    with pytest.raises(EngineError) as caught:
        engine.render(make_spec(image="uploads/20260101_000000_deadbeef.png", strength=0.5), Recorder())
    assert "no store" in caught.value.message
    assert fake.batches == [] and fake.uploads == []


def test_input_gone_from_invokeai_is_an_engine_error(fake: FakeInvokeAI, served: str) -> None:
    engine = InvokeAIEngine(engine_settings(served), image_loader=inputs_loader())

    def someone_clears_intermediates(step: int, total: int) -> None:
        # InvokeAI's Settings → "Clear Intermediates", pressed while our item waits in its queue.
        httpx.delete(f"{served}/api/v1/images/intermediates").raise_for_status()

    with pytest.raises(EngineError) as caught:
        engine.render(
            make_spec(image="uploads/in.png", mask="uploads/mask.png", width=96, height=64),
            someone_clears_intermediates,
        )
    engine.close()
    error = caught.value
    assert error.code == "ENGINE_ERROR"
    assert "no longer has the input uploaded for this job" in error.message
    assert "ImageFileNotFoundException: Image file not found" in error.message
    assert any("Submit the request again" in hint for hint in error.remediation)
    assert [item.status for item in fake.items.values()] == ["failed"]
    # A failed job cleans up too (here nothing was left: the real route answers 200 all the same).
    assert fake.deleted == [dto["image_name"] for dto in fake.uploads]


def test_a_failed_delete_never_hides_the_jobs_outcome(
    fake: FakeInvokeAI, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = InvokeAIEngine(engine_settings(served), image_loader=inputs_loader())

    def connection_lost(url: str, **kwargs: Any) -> httpx.Response:
        raise httpx.ConnectError(f"connection lost deleting {url}")

    monkeypatch.setattr(engine._client, "delete", connection_lost)
    result = engine.render(make_spec(image="uploads/in.png", width=96, height=64), lambda step, total: None)
    engine.close()
    assert len(result.images) == 1 and fake.deleted == []


def test_fake_upload_route_answers_like_invokeai(fake: FakeInvokeAI, served: str) -> None:
    """The fake's fidelity: an ImageDTO for a picture, 415 for what is not one, 422 for a request
    without its required query."""
    route = f"{served}/api/v1/images/upload"
    query = {"image_category": "user", "is_intermediate": "true"}

    def post(data: bytes, content_type: str, params: dict[str, str] = query) -> httpx.Response:
        return httpx.post(route, params=params, files={"file": ("in.png", data, content_type)})

    accepted = post(png_of(Image.new("RGB", (8, 16), 9)), "image/png")
    assert accepted.status_code == 201
    dto = accepted.json()
    assert (dto["width"], dto["height"], dto["image_category"], dto["is_intermediate"]) == (
        8,
        16,
        "user",
        True,
    )
    assert dto["image_origin"] == "external" and accepted.headers["location"] == dto["image_url"]
    full = httpx.get(f"{served}/api/v1/images/i/{dto['image_name']}/full")
    assert Image.open(io.BytesIO(full.content)).size == (8, 16)

    assert post(b"hello", "text/plain").status_code == 415
    assert post(b"not a png", "image/png").status_code == 415
    assert post(png_of(Image.new("L", (8, 8))), "image/png", {"is_intermediate": "true"}).status_code == 422
    assert (
        post(png_of(Image.new("L", (8, 8))), "image/png", {**query, "image_category": "nope"}).status_code
        == 422
    )
    assert len(fake.uploads) == 1


# --- guidance: ControlNets and the hires fix -------------------------------------------------------
def white_square() -> Image.Image:
    """A photo with clear edges: a white square on black, at the job's size."""
    picture = Image.new("RGB", (64, 48), (0, 0, 0))
    picture.paste((255, 255, 255), (20, 12, 44, 36))
    return picture


CANNY = ControlInput(image="uploads/photo.png", type="canny", model="canny", weight=0.9, start=0.0, end=0.75)


def guided_engine(served: str) -> InvokeAIEngine:
    depth_map = Image.new("RGB", (64, 48), (60, 60, 60))
    pictures = {"uploads/photo.png": white_square(), "uploads/depth.png": depth_map}
    return InvokeAIEngine(engine_settings(served), image_loader=pictures.__getitem__)


def test_controls_upload_their_maps_steer_the_render_and_are_deleted(fake: FakeInvokeAI, served: str) -> None:
    engine = guided_engine(served)
    depth = ControlInput(image="uploads/depth.png", type="depth", model="canny", weight=0.3)
    result = engine.render(make_spec(controls=[CANNY, depth]), Recorder())
    engine.close()

    graph = sent_graph(fake)
    controls = [node for node in graph["nodes"].values() if node["type"] == "controlnet"]
    assert [(c["control_weight"], c["begin_step_percent"], c["end_step_percent"]) for c in controls] == [
        (0.9, 0.0, 0.75),
        (0.3, 0.0, 1.0),
    ]
    assert {c["control_model"]["name"] for c in controls} == {"canny"}
    maps = result.engine_info["inputs"]["controls"]
    assert [dto["image_category"] for dto in fake.uploads] == ["control", "control"]
    edges = control_map(white_square(), CANNY, (64, 48))
    sent = Image.open(io.BytesIO(fake.uploaded_bytes[maps[0]])).convert("RGB")
    assert sent.tobytes() == edges.tobytes(), "the edge map made here, not the photo"
    assert sorted(fake.deleted) == sorted(maps), "the maps leave InvokeAI's store with the job"
    rendered = list(result.images[0].image.convert("L").getdata())
    edge_pixels = [i for i, pixel in enumerate(edges.convert("L").getdata()) if pixel == 255]
    assert edge_pixels and all(rendered[i] > 200 for i in edge_pixels)


def test_a_controlnet_the_server_lacks_or_of_another_base_is_refused_before_queueing(
    fake: FakeInvokeAI, served: str
) -> None:
    engine = guided_engine(served)
    with pytest.raises(KittyError) as missing:
        engine.render(make_spec(controls=[CANNY.model_copy(update={"model": "lineart"})]), Recorder())
    with pytest.raises(KittyError) as other_base:
        engine.render(make_spec(controls=[CANNY.model_copy(update={"model": "depth-sdxl"})]), Recorder())
    engine.close()
    assert missing.value.code == "MODEL_NOT_FOUND" and "canny (sd-1)" in missing.value.message
    assert other_base.value.code == "VALIDATION_ERROR" and "sdxl" in other_base.value.message
    assert fake.batches == [] and fake.uploads == []


def test_hires_fix_renders_the_second_pass_at_the_output_size(
    fake: FakeInvokeAI, engine: InvokeAIEngine
) -> None:
    spec = make_spec(num_images=2, hires=HiresFix(scale=2.0, strength=0.5))
    result = engine.render(spec, Recorder())
    assert [image.image.size for image in result.images] == [spec.output_size] * 2 == [(128, 96)] * 2
    assert [image.seed for image in result.images] == [1234, 1235]
    noises = [d for d in fake.batches[-1]["batch"]["data"][0] if d["field_name"] == "seed"]
    assert {d["node_path"]: d["items"] for d in noises} == {
        "noise": [1234, 1235],
        "hires_noise": [1234, 1235],
        "core_metadata": [1234, 1235],
    }, "each image's second pass is noised from its own seed"
    metadata = json.loads(result.images[0].text_chunks["invokeai_metadata"])
    assert metadata["hrf_enabled"] is True


def test_hires_fix_with_an_upscaler_is_refused(fake: FakeInvokeAI, engine: InvokeAIEngine) -> None:
    with pytest.raises(KittyError) as caught:
        engine.render(make_spec(hires=HiresFix(upscaler="RealESRGAN_x4plus")), Recorder())
    assert caught.value.code == "VALIDATION_ERROR" and "upscaler" in caught.value.message
    assert fake.batches == []
