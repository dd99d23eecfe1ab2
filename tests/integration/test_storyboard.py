"""Storyboards through the images-service against a real Redis and a real worker: one shot per beat
with one seed, each shot through the preset's steps, a contact sheet after them all; one id, one
view, every image stored and selectable; refusals, retry of a failed shot alone, cancel and retry."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.common.api_keys import key_id_of
from services.contracts import RenderSpec
from services.images_service.engines import ProgressFn, RenderedImage, RenderResult
from services.images_service.storyboard import sheet_layout
from tests.support.fakes import FakeEngine
from tests.support.harness import MODEL, Harness

BEATS = ["she waits at the stop", "the bus arrives", "doors open on a stranger", "she steps back"]
ALICE = "alice-6f1e0c3b9d2a4e77"
AS_ALICE = {"X-API-Key": ALICE}


def colour_of(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


@dataclass
class BeatColourEngine(FakeEngine):
    """The fake engine painting each render a flat colour of its prompt (so each shot is its own
    colour and the sheet's cells can be told apart), failing the first render of a prompt that
    contains `fail_beat` `failures` times."""

    fail_beat: str = ""
    failures: int = 0

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        self.calls.append(spec)
        progress(spec.steps, spec.steps)
        if self.fail_beat and self.fail_beat in spec.prompt and self.failures > 0:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory")
        image = Image.new("RGB", spec.output_size, colour_of(spec.prompt))
        return RenderResult(images=[RenderedImage(image, spec.seed)], device="fake")


@pytest.fixture
def harness(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(BeatColourEngine())


def storyboard(harness: Harness, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    body = {
        "prompt": "two strangers at a bus stop at night",
        "beats": BEATS,
        "preset": "storyboard",
        "model": MODEL,
        "width": 128,
        "height": 72,
        **fields,
    }
    return harness.client.post("/api/images/generate", json=body, headers=headers or {})


def submitted(harness: Harness, **fields: Any) -> str:
    response = storyboard(harness, **fields)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def sidecar(harness: Harness, meta_key: str) -> dict[str, Any]:
    return dict(json.loads(harness.store.get(meta_key)))


def pixels(harness: Harness, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(harness.store.get(key))).convert("RGB"))


def test_four_beats_make_four_shots_with_one_seed_and_a_contact_sheet_of_them(harness: Harness) -> None:
    job_id = submitted(harness)
    queued = harness.job(job_id)
    assert [s["kind"] for s in queued["steps"]] == ["shot"] * 4 + ["contact_sheet"]
    assert [s["after"] for s in queued["steps"]] == [[], [], [], [], [0, 1, 2, 3]]

    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    shots = [sidecar(harness, s["result"]["meta_key"]) for s in view["steps"][:4]]
    # Each shot: its beat first, the shared prompt, through the storyboard preset; one seed for all.
    for beat, shot in zip(BEATS, shots, strict=True):
        assert shot["request"]["prompt"].startswith(f"storyboard panel, {beat}, two strangers at a bus stop")
        assert shot["request"]["preset"] == "storyboard" and shot["request"]["quality"] == "low"
    assert len({shot["seed"] for shot in shots}) == 1
    assert [spec.prompt for spec in harness.engine.calls] == [shot["request"]["prompt"] for shot in shots]

    # The result: the four shots in beat order, then the sheet, which is the headline image.
    images = view["result"]["images"]
    assert [image["key"] for image in images[:4]] == [shot["png_key"] for shot in shots]
    sheet = sidecar(harness, images[4]["meta_key"])
    assert view["result"]["png_key"] == images[4]["key"] == sheet["png_key"]
    assert sheet["sources"] == [shot["png_key"] for shot in shots]
    assert sheet["request"]["contact_sheet"]["captions"] == BEATS
    assert sheet["pipeline"] == {"id": job_id, "step": 4, "kind": "contact_sheet"}
    layout = sheet_layout(4, (128, 72))
    assert (layout.columns, layout.rows) == (2, 2)
    drawn = pixels(harness, sheet["png_key"])
    assert drawn.shape[1::-1] == layout.size == (sheet["width"], sheet["height"])
    # Each cell holds its shot, in reading order (its centre is the shot's flat colour).
    cell_w, cell_h = layout.cell
    for number, shot in enumerate(shots):
        row, column = divmod(number, layout.columns)
        x = layout.margin + column * (cell_w + layout.margin) + cell_w // 2
        y = layout.margin + row * (cell_h + layout.caption + layout.margin) + cell_h // 2
        expected = pixels(harness, shot["png_key"])[0, 0]
        assert np.abs(drawn[y, x].astype(int) - expected.astype(int)).max() <= 2, number
    # and its caption band has ink in it (the beat, written under the shot).
    band = drawn[layout.margin + cell_h + 1 : layout.margin + cell_h + layout.caption, layout.margin : cell_w]
    assert band.min() < 128

    # Every image is in the gallery and selectable as an imageRef.
    latest = {item["key"] for item in harness.client.get("/api/images/latest?limit=20").json()["items"]}
    assert {image["key"] for image in images} <= latest
    for image in images:
        selected = harness.client.post("/api/images/select", json={"key": image["key"]})
        assert selected.status_code == 200, selected.text
        assert selected.json()["imageRef"]["storageUri"].endswith(image["key"])


def test_a_storyboard_with_a_presets_steps_runs_them_on_every_shot_before_the_sheet(harness: Harness) -> None:
    job_id = submitted(harness, preset="cinematic", beats=BEATS[:2])
    harness.work()
    view = harness.job(job_id)
    assert view["status"] == "done", view
    kinds = [s["kind"] for s in view["steps"]]
    assert kinds == ["shot", "postprocess", "shot", "postprocess", "contact_sheet"]
    assert [s["after"] for s in view["steps"]] == [[], [0], [], [2], [1, 3]]
    finals = [view["steps"][1]["result"]["png_key"], view["steps"][3]["result"]["png_key"]]
    assert [image["key"] for image in view["result"]["images"][:2]] == finals
    sheet = sidecar(harness, view["result"]["meta_key"])
    assert sheet["sources"] == finals
    flat = pixels(harness, view["steps"][0]["result"]["png_key"])
    graded = pixels(harness, finals[0])
    assert flat.reshape(-1, 3).std(axis=0).max() == 0 and graded.reshape(-1, 3).std(axis=0).min() > 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"beats": ["only one"]}, "beats"),
        ({"beats": [f"beat {i}" for i in range(11)]}, "beats"),
        ({"beats": ["a", "   "]}, "whitespace"),
        ({"beats": ["a", "b"], "num_images": 2}, "num_images"),
        ({"beats": None}, "`beats`"),
    ],
)
def test_what_cannot_be_a_storyboard_is_refused_with_what_to_send(
    harness: Harness, fields: dict[str, Any], words: str
) -> None:
    response = storyboard(harness, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and words in json.dumps(error), error
    assert harness.client.get("/api/images/jobs").json()["jobs"] == []


def test_a_blocked_word_in_a_beat_refuses_the_storyboard(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(BeatColourEngine(), prompt_blocklist="gore")
    response = storyboard(harness, beats=["she waits", "gore everywhere"])
    assert response.status_code == 400 and response.json()["error"]["code"] == "SAFETY_FILTER"


def test_a_storyboard_counts_every_shot_and_the_sheet_against_the_day(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with(BeatColourEngine(), api_keys=f"{ALICE}:pro")
    assert storyboard(harness, headers=AS_ALICE).status_code == 202
    assert harness.client.app.state.quotas.used(key_id_of(ALICE)) == 5
    assert storyboard(harness, headers=AS_ALICE, preset="cinematic").status_code == 202
    assert harness.client.app.state.quotas.used(key_id_of(ALICE)) == 5 + 4 * 2 + 1


def test_a_failed_shot_is_retried_alone_then_the_sheet_is_made(harness_with: Callable[..., Harness]) -> None:
    engine = BeatColourEngine(fail_beat=BEATS[2], failures=1)
    harness = harness_with(engine)
    job_id = submitted(harness)
    harness.work()

    failed = harness.job(job_id)
    assert failed["status"] == "error", failed
    assert [s["status"] for s in failed["steps"]] == ["done", "done", "error", "done", "queued"]
    assert len(engine.calls) == 4

    retried = harness.client.post(f"/api/images/jobs/{job_id}/retry", json={})
    assert retried.status_code == 202, retried.text
    harness.work()
    done = harness.job(job_id)
    assert done["status"] == "done", done
    assert [s["job_id"] for s in done["steps"]] == [s["job_id"] for s in failed["steps"]]
    assert len(engine.calls) == 5 and BEATS[2] in engine.calls[-1].prompt  # only the failed shot again
    assert len(done["result"]["images"]) == 5


def test_a_canceled_storyboard_retried_makes_new_jobs_for_what_did_not_finish(harness: Harness) -> None:
    job_id = submitted(harness, beats=BEATS[:3])
    canceled = harness.client.post(f"/api/images/jobs/{job_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    harness.work()
    view = harness.job(job_id)
    assert view["status"] == "canceled" and {s["status"] for s in view["steps"]} == {"canceled"}
    assert harness.engine.calls == []

    assert harness.client.post(f"/api/images/jobs/{job_id}/retry", json={}).status_code == 202
    harness.work()
    done = harness.job(job_id)
    assert done["status"] == "done", done
    assert not {s["job_id"] for s in done["steps"]} & {s["job_id"] for s in view["steps"]}
    assert done["steps"][-1]["after"] == [0, 1, 2]
    sheet = sidecar(harness, done["result"]["meta_key"])
    assert sheet["sources"] == [s["result"]["png_key"] for s in done["steps"][:3]]


def test_history_shows_a_storyboard_once_with_its_beats(harness: Harness) -> None:
    job_id = submitted(harness, beats=BEATS[:2])
    harness.work()
    jobs = harness.client.get("/api/images/jobs").json()["jobs"]
    assert [job["job_id"] for job in jobs] == [job_id]
    assert jobs[0]["request"]["beats"] == BEATS[:2] and jobs[0]["request"]["pipeline"] == []
