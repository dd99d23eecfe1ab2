"""The ComfyUI engine against the real ComfyUI 0.3.64 (CPU, no checkpoint) and, scenario for
scenario, against the fake the rest of the suite trusts: raw graphs of EmptyImage, LoadImage,
ImageScale, ImageInvert and SaveImage; a job through the whole queue; an upload; progress; a cancel
while running and while queued; refusals; a graph only partly valid; the event stream itself.
Where the fake answers differently from the real server these fail, and the fake is what gets fixed.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops
from websockets.sync.client import connect

from services.contracts import RenderSpec
from services.images_service.engines import JobCanceled
from services.images_service.engines.comfyui import ComfyUIEngine
from services.images_service.engines.comfyui.graph import raw_output_prefix
from services.images_service.errors import KittyError
from services.images_service.metadata import read_png_text
from services.images_service.settings import Settings
from tests.support.asgi_server import serve_asgi
from tests.support.fakes import Recorder
from tests.support.harness import Harness
from tests.support.peers.comfyui import FakeComfyUI
from tests.support.peers.real_comfyui import (
    BUILD_TIMEOUT_S,
    START_TIMEOUT_S,
    RealComfyUI,
    real_comfyui_fixture,  # noqa: F401 (the session fixture `real_comfyui`, for this module alone)
)
from tests.support.pictures import two_tone

POLL_S = 0.05
"""Heartbeat interval: short, so a cancel is seen at once."""

REAL_TEST_TIMEOUT_S = int(BUILD_TIMEOUT_S + START_TIMEOUT_S + 300)
"""The first test against the real server builds its venv (cold: minutes) inside its own time."""

SLOW_NODES = 6
"""ImageScale nodes in the slow graph: each a node boundary where an interrupt lands."""

SLOW_SIDE = 2048
"""The slow graph's image side: a lanczos ImageScale of it takes ~1 s on two busy cores."""

FAKE_NODE_DELAY_S = 0.3
"""The fake's stand-in for a slow node's run time."""

STOP_WITHIN_S = 30.0
"""How long a stopped prompt may take to leave the queue on a busy two-core machine."""

REAL = pytest.param("real", marks=[pytest.mark.peer, pytest.mark.timeout(REAL_TEST_TIMEOUT_S)], id="real")


@dataclass
class Peer:
    """One ComfyUI under test: the fake (`fake` set) or the real one (`output_dir` set)."""

    name: str
    url: str
    fake: FakeComfyUI | None = None
    output_dir: Path | None = None

    def make_nodes_slow(self) -> None:
        """The slow graph is slow on the real server by itself; the fake's nodes are told to be."""
        if self.fake is not None:
            self.fake.node_delay_s = FAKE_NODE_DELAY_S

    def queue(self) -> dict[str, list[str]]:
        queue = httpx.get(f"{self.url}/queue", timeout=10).json()
        return {kind: [item[1] for item in queue[kind]] for kind in ("queue_running", "queue_pending")}

    def history(self, prompt_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = httpx.get(f"{self.url}/history/{prompt_id}", timeout=10).json()
        return entry.get(prompt_id) or {}

    def saved(self, prefix: str) -> list[str]:
        """Files SaveImage wrote under `prefix`."""
        if self.fake is not None:
            return [name for kind, _, name in self.fake.files if kind == "output" and name.startswith(prefix)]
        assert self.output_dir is not None
        return [path.name for path in self.output_dir.glob(f"{prefix}*")]

    def wait_until_gone(self, prompt_id: str) -> None:
        deadline = time.monotonic() + STOP_WITHIN_S
        while prompt_id in sum(self.queue().values(), []):
            assert time.monotonic() < deadline, f"prompt {prompt_id} still queued on the {self.name} server"
            time.sleep(0.1)

    def submit(self, graph: dict[str, Any], client_id: str = "someone-else") -> str:
        """Another client's prompt, queued by hand."""
        response = httpx.post(
            f"{self.url}/prompt", json={"prompt": graph, "client_id": client_id}, timeout=10
        )
        assert response.status_code == 200, response.text
        return str(response.json()["prompt_id"])


@pytest.fixture(params=["fake", REAL])
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    if request.param == "fake":
        fake = FakeComfyUI()
        with serve_asgi(fake.app) as url:
            yield Peer("fake", url, fake=fake)
    else:
        real: RealComfyUI = request.getfixturevalue("real_comfyui")
        yield Peer("real", real.url, output_dir=real.output_dir)
        # Nothing of this test may still run into the next one.
        queue = Peer("real", real.url).queue()
        for prompt_id in queue["queue_pending"]:
            httpx.post(f"{real.url}/queue", json={"delete": [prompt_id]}, timeout=10)
        for prompt_id in queue["queue_running"]:
            httpx.post(f"{real.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "comfyui_url": url,
        "engine_poll_interval_s": POLL_S,
        "engine_connect_timeout_s": 5.0,
        "job_timeout_s": 120,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def engine(peer: Peer) -> Iterator[ComfyUIEngine]:
    engine = ComfyUIEngine(settings_for(peer.url))
    yield engine
    engine.close()


def fresh_color() -> int:
    """A colour no other run used: ComfyUI serves an identical graph from its cache."""
    return random.randrange(0x1000000)


def unique_prefix(name: str) -> str:
    return f"kitty_{name}_{random.randrange(10**9)}"


def rgb(color: int) -> tuple[int, int, int]:
    return (color >> 16) & 255, (color >> 8) & 255, color & 255


def make_spec(**fields: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "prompt": "raw",
        "negative_prompt": "",
        "model": None,
        "width": 64,
        "height": 64,
        "steps": 1,
        "cfg": 7.0,
        "seed": 7,
        "scheduler": None,
        "num_images": 1,
        "engine": "comfyui",
    }
    values.update(fields)
    return RenderSpec.model_validate(values)


def is_inverted(pixel: tuple[int, ...], original: tuple[int, ...]) -> bool:
    """ComfyUI inverts in float32 and cuts to 8 bits: 255 - v, or one less."""
    return all(255 - value - got in (0, 1) for got, value in zip(pixel, original, strict=True))


def raw_spec(graph: dict[str, Any]) -> RenderSpec:
    return make_spec(workflow=graph)


def scaled_inverted_graph(color: int, prefix: str = "kitty_real", batch: int = 2) -> dict[str, Any]:
    """EmptyImage 40×30 → ImageScale to 80 wide (height kept in ratio) → ImageInvert → SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 40, "height": 30, "batch_size": batch, "color": color},
        },
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 80,
                "height": 0,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def slow_graph(color: int, prefix: str = "kitty_slow") -> dict[str, Any]:
    """A large EmptyImage through a chain of lanczos ImageScale nodes (~1 s each on the real one)."""
    graph: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": SLOW_SIDE, "height": SLOW_SIDE, "batch_size": 1, "color": color},
        }
    }
    source = "1"
    for index in range(SLOW_NODES):
        node, side = str(10 + index), SLOW_SIDE + index % 2
        graph[node] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": [source, 0],
                "upscale_method": "lanczos",
                "width": side,
                "height": side,
                "crop": "disabled",
            },
        }
        source = node
    graph["2"] = {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}
    return graph


def with_prefix(graph: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`graph` as the engine sends it: each SaveImage writing under `prefix` (ours, not the graph's)."""
    return {
        node_id: (
            {**node, "inputs": {**node["inputs"], "filename_prefix": prefix}}
            if node["class_type"] == "SaveImage"
            else node
        )
        for node_id, node in graph.items()
    }


def wait_until_idle(peer: Peer, why: str = "the peer's queue did not empty") -> None:
    """Until nothing runs or waits on `peer` (within `STOP_WITHIN_S`)."""
    deadline = time.monotonic() + STOP_WITHIN_S
    while sum(peer.queue().values(), []):
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def with_invalid_branch(graph: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`graph` plus a second output whose ImageScale lacks its height: valid and invalid side by side."""
    return {
        **graph,
        "5": {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 8, "crop": "disabled"},
        },
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }


# --- renders --------------------------------------------------------------------------------------
def test_raw_graph_renders_scaled_and_inverted_with_its_prompt_chunk(
    peer: Peer, engine: ComfyUIEngine
) -> None:
    color = fresh_color()
    graph = scaled_inverted_graph(color)
    progress = Recorder()
    result = engine.render(raw_spec(graph), progress)

    assert [image.image.size for image in result.images] == [(80, 60), (80, 60)]
    for image in result.images:
        assert is_inverted(image.image.convert("RGB").getpixel((40, 30)), rgb(color))
    prefix = result.engine_info["output_prefix"]
    assert prefix == raw_output_prefix(result.engine_info["prompt_id"]), "ours, not the graph's kitty_real"
    assert json.loads(result.images[0].text_chunks["prompt"]) == with_prefix(graph, prefix)
    assert len(peer.saved(prefix)) == 2 and peer.saved("kitty_real") == []
    assert "workflow" not in result.images[0].text_chunks, "no extra_pnginfo is sent with a raw graph"
    assert result.engine_info["workflow"] == "raw"
    # No node of this graph reports steps: the user sees the start, heartbeats, then done.
    assert progress.calls[0] == (0, 0) and progress.calls[-1] == (1, 1)
    assert [step for step, _ in progress.calls] == sorted(step for step, _ in progress.calls)


def test_uploaded_picture_reaches_loadimage_as_sent(peer: Peer) -> None:
    """The upload image-to-image uses (resized here, then ``POST /upload/image``), read back by
    LoadImage in a graph that needs no checkpoint."""
    picture = two_tone()
    engine = ComfyUIEngine(settings_for(peer.url), image_loader={"uploads/in.png": picture}.__getitem__)
    spec = make_spec(width=48, height=32, image="uploads/in.png")
    try:
        name, mask = engine._upload_inputs(spec)
        assert mask is None and name is not None and name.startswith("kitty_image_")
        graph = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "kitty_loaded"},
            },
        }
        (image,) = engine.render(raw_spec(graph), Recorder()).images
    finally:
        engine.close()
    sent = picture.convert("RGB").resize((48, 32), Image.Resampling.LANCZOS)
    back = image.image.convert("RGB")
    assert back.size == (48, 32)
    expected = sent.point(lambda value: 255 - value)
    extrema = ImageChops.subtract(expected, back).getextrema()  # ComfyUI's float32 round trip
    assert all(low >= 0 and high <= 1 for low, high in extrema), extrema
    assert ImageChops.subtract(back, expected).getbbox() is None


# --- cancel ---------------------------------------------------------------------------------------
def test_cancel_while_running_interrupts_at_the_next_node(peer: Peer, engine: ComfyUIEngine) -> None:
    peer.make_nodes_slow()
    prefix = unique_prefix("interrupted")
    running: list[str] = []

    def once_running(calls: list[tuple[int, int]]) -> bool:
        running[:] = peer.queue()["queue_running"]
        return bool(running)

    started = time.monotonic()
    with pytest.raises(JobCanceled):
        engine.render(raw_spec(slow_graph(fresh_color(), prefix)), Recorder(cancel_when=once_running))
    (prompt_id,) = running
    peer.wait_until_gone(prompt_id)
    status = peer.history(prompt_id)["status"]
    assert status["status_str"] == "error"
    kind, data = status["messages"][-1]
    assert kind == "execution_interrupted"
    assert data["node_id"] != "2" and "2" not in data["executed"], "stopped before SaveImage"
    assert peer.saved(raw_output_prefix(prompt_id)) == []
    assert time.monotonic() - started < STOP_WITHIN_S


def test_cancel_while_queued_deletes_it_before_it_runs(peer: Peer, engine: ComfyUIEngine) -> None:
    peer.make_nodes_slow()
    blocker = peer.submit(slow_graph(fresh_color(), unique_prefix("blocker")))  # holds the one executor
    prefix = unique_prefix("never")
    pending: list[str] = []

    def once_queued_behind(calls: list[tuple[int, int]]) -> bool:
        pending[:] = [prompt_id for prompt_id in peer.queue()["queue_pending"] if prompt_id != blocker]
        return bool(pending)

    with pytest.raises(JobCanceled):
        engine.render(
            raw_spec(scaled_inverted_graph(fresh_color(), prefix)), Recorder(cancel_when=once_queued_behind)
        )
    (prompt_id,) = pending
    assert prompt_id not in sum(peer.queue().values(), [])
    assert blocker in peer.queue()["queue_running"], "the other client's prompt is left alone"
    peer.wait_until_gone(blocker)
    assert peer.history(blocker)["status"]["status_str"] == "success"
    assert peer.history(prompt_id) == {} and peer.saved(raw_output_prefix(prompt_id)) == []


# --- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        (
            {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            },
            "node 1 (EmptyImage): Required input is missing: color",
        ),
        (
            {"1": {"class_type": "NoSuchNode", "inputs": {}}},
            "Cannot execute because node NoSuchNode does not exist.",
        ),
        (
            {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
                }
            },
            "Prompt has no outputs",
        ),
    ],
    ids=["missing-input", "unknown-node", "no-outputs"],
)
def test_refused_graph_is_a_validation_error_in_the_servers_words(
    peer: Peer, engine: ComfyUIEngine, graph: dict[str, Any], expected: str
) -> None:
    with pytest.raises(KittyError) as caught:
        engine.render(raw_spec(graph), Recorder())
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.message.startswith("ComfyUI refused the workflow: ")
    assert expected in caught.value.message


def test_partly_invalid_graph_fails_naming_the_node_and_runs_nothing(
    peer: Peer, engine: ComfyUIEngine
) -> None:
    """ComfyUI queues the valid output of such a graph (200 with node_errors) and ignores the other:
    the job fails instead, naming the invalid node, and what was queued is stopped."""
    peer.make_nodes_slow()
    valid, invalid = unique_prefix("valid"), unique_prefix("invalid")
    graph = with_invalid_branch(slow_graph(fresh_color(), valid), invalid)
    # An earlier test's stopped prompt may still be leaving the queue (and saving): count what is
    # saved only once the server is idle, so only this graph's outputs can change it.
    wait_until_idle(peer)
    saved_before = peer.saved(raw_output_prefix(""))  # both outputs would save under kitty/<prompt id>
    with pytest.raises(KittyError) as caught:
        engine.render(raw_spec(graph), Recorder())
    error = caught.value
    assert error.code == "VALIDATION_ERROR"
    assert "node 5 (ImageScale): Required input is missing: height" in error.message
    assert any(hint.startswith("Fix or remove node 5") for hint in error.remediation)
    assert [problem["node_id"] for problem in error.detail["node_errors"]] == ["5"]
    wait_until_idle(peer, "the valid part was left running")
    assert peer.saved(raw_output_prefix("")) == saved_before


# --- the whole queue ------------------------------------------------------------------------------
def test_raw_graph_job_through_the_queue_stores_the_png(
    peer: Peer, harness_with: Callable[..., Harness]
) -> None:
    harness = harness_with(comfyui_url=peer.url, engine_poll_interval_s=POLL_S)
    engine = harness.engines["comfyui"] = ComfyUIEngine(harness.settings)
    color = fresh_color()
    graph = scaled_inverted_graph(color, unique_prefix("queued"), batch=1)
    try:
        job_id = harness.generate(engine="comfyui", workflow=graph, seed=5, width=64, height=64, steps=1)
        bad_job_id = harness.generate(
            engine="comfyui", workflow=with_invalid_branch(graph, unique_prefix("bad")), seed=6, steps=1
        )
        harness.work("comfyui")
        view, bad = harness.job(job_id), harness.job(bad_job_id)
    finally:
        engine.close()

    assert view["status"] == "done", view
    assert view["progress"] == {"step": 1, "total": 1}
    stored = harness.store.get(view["result"]["png_key"])
    picture = Image.open(io.BytesIO(stored)).convert("RGB")
    assert picture.size == (80, 60)
    assert is_inverted(picture.getpixel((10, 10)), rgb(color))
    chunks = read_png_text(stored)
    sidecar = json.loads(harness.store.get(view["result"]["meta_key"]))
    info = sidecar["engine_info"]
    assert info["output_prefix"] == raw_output_prefix(info["prompt_id"]) and info["prefixed_nodes"] == ["4"]
    assert json.loads(chunks["prompt"]) == with_prefix(graph, info["output_prefix"])
    assert "workflow" not in chunks
    assert json.loads(chunks["kitty"])["job_id"] == job_id
    assert sidecar["engine"] == "comfyui" and info["workflow"] == "raw"

    assert bad["status"] == "error", bad
    assert bad["error"]["code"] == "VALIDATION_ERROR"
    assert "node 5 (ImageScale): Required input is missing: height" in bad["error"]["message"]


# --- the wire itself ------------------------------------------------------------------------------
@pytest.mark.peer
@pytest.mark.timeout(REAL_TEST_TIMEOUT_S)
def test_fake_sends_the_real_servers_events_in_its_order(real_comfyui: RealComfyUI) -> None:
    """One prompt's websocket events, then the same prompt again (served from the cache)."""
    graph = scaled_inverted_graph(fresh_color(), unique_prefix("events"))
    fake = FakeComfyUI()
    seen: dict[str, list[list[tuple[str, Any]]]] = {}
    with serve_asgi(fake.app) as fake_url:
        for name, url in (("fake", fake_url), ("real", real_comfyui.url)):
            seen[name] = [prompt_events(url, graph), prompt_events(url, graph)]
    assert seen["fake"][0] == seen["real"][0]
    assert seen["fake"][1] == seen["real"][1]


def prompt_events(url: str, graph: dict[str, Any]) -> list[tuple[str, Any]]:
    """(type, what it is about) of each frame about our prompt, until ``executing`` with node null."""
    client_id = f"kitty-contract-{random.randrange(10**9)}"
    socket_url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    events: list[tuple[str, Any]] = []
    with connect(socket_url, proxy=None, open_timeout=10) as socket:
        prompt_id = Peer("", url).submit(graph, client_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = socket.recv(timeout=deadline - time.monotonic())
            if isinstance(message, bytes):
                events.append(("preview", None))
                continue
            kind, data = json.loads(message).values()
            if data.get("prompt_id") != prompt_id:
                continue
            about: Any = data.get("node")
            if kind == "progress_state":
                about = sorted(
                    (node, state["state"], state["value"], state["max"])
                    for node, state in data["nodes"].items()
                )
            elif kind == "execution_cached":
                about = sorted(data["nodes"])
            elif kind == "executed":
                about = (data["node"], sorted(data["output"] or {}))
            events.append((kind, about))
            if kind == "executing" and data.get("node") is None:
                return events
    raise AssertionError(f"no end of prompt {prompt_id} from {url}: {events}")
