"""The InvokeAI adapter against a fake InvokeAI served over real HTTP (its own HTTP is never patched):
what a user sees for success, several images, model choice, failures, cancel, old servers, an
unreachable server, health, and the whole queue path from submit to imageRef."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.contracts import RenderSpec
from services.images_service.app import create_app
from services.images_service.engines import JobCanceled
from services.images_service.engines.invokeai import InvokeAIEngine
from services.images_service.errors import EngineError, EngineOffline, EngineTimeout, KittyError
from services.images_service.metadata import read_png_text
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.asgi_server import serve_asgi
from tests.support.harness import Harness, make_settings
from tests.support.peers.invokeai import FakeInvokeAI
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


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, step: int, total: int) -> None:
        self.calls.append((step, total))


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
