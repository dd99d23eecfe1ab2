"""Pipelines through the images-service against a real Redis and a real worker: a generate followed by
refine, upscale and postprocess steps, each its own RQ job on the image of the step before; one id,
one view with every step, per-step retries, retry of the failed step alone, cancel, visibility."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.common.api_keys import key_id_of
from services.contracts import RenderSpec
from services.images_service.engines import ProgressFn, RenderResult
from services.images_service.errors import EngineTimeout
from tests.support.fakes import FakeEngine
from tests.support.harness import MODEL, Harness
from tests.support.workers import idle_worker

ALICE, BOB = "alice-6f1e0c3b9d2a4e77", "bob-3c8a1f5e7b0d4a22"
API_KEYS = f"{ALICE}:pro, {BOB}:pro"
AS_ALICE, AS_BOB = {"X-API-Key": ALICE}, {"X-API-Key": BOB}


@dataclass
class FlakyRefineEngine(FakeEngine):
    """The fake engine, failing its first `refine_failures` image-to-image renders (a refine step)
    as an engine does when it runs out of memory."""

    refine_failures: int = 0
    generate_failures: int = 0
    cancel_refines_via: TestClient | None = None
    """When set, a refine cancels its own pipeline through this API after its first step."""
    pipeline_id: str = ""
    cancel_answers: list[str] = field(default_factory=list)

    def render(self, spec: RenderSpec, progress: ProgressFn) -> RenderResult:
        if spec.image is None and self.generate_failures > 0:
            self.generate_failures -= 1
            self.calls.append(spec)
            raise RuntimeError("CUDA out of memory")
        if spec.image is not None and self.refine_failures > 0:
            self.refine_failures -= 1
            self.calls.append(spec)
            raise RuntimeError("CUDA out of memory")
        if spec.image is not None and self.cancel_refines_via is not None:
            api = self.cancel_refines_via

            def cancel_after_first_step(step: int, total: int) -> None:
                if step == 1:
                    answer = api.post(f"/api/images/jobs/{self.pipeline_id}/cancel").json()
                    self.cancel_answers.append(answer["status"])
                progress(step, total)

            return super().render(spec, cancel_after_first_step)
        return super().render(spec, progress)


@pytest.fixture
def harness(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with(FlakyRefineEngine())


def submit(harness: Harness, pipeline: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Any:
    body = {"prompt": "a red fox", "model": MODEL, "seed": 4242, "pipeline": pipeline}
    return harness.client.post("/api/images/generate", json=body, headers=headers or {})


def pipeline_of(harness: Harness, pipeline: list[dict[str, Any]], **kwargs: Any) -> str:
    response = submit(harness, pipeline, **kwargs)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return str(response.json()["job_id"])


def sidecar(harness: Harness, meta_key: str) -> dict[str, Any]:
    return dict(json.loads(harness.store.get(meta_key)))


def size_of(harness: Harness, key: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(harness.store.get(key))) as image:
        return image.size


def test_generate_upscale_postprocess_is_one_job_of_three_steps_each_on_the_last_image(
    harness: Harness,
) -> None:
    pipeline_id = pipeline_of(
        harness, [{"kind": "upscale", "scale": 2}, {"kind": "postprocess", "ops": [{"op": "film_grain"}]}]
    )
    queued = harness.job(pipeline_id)
    assert queued["status"] == "queued" and [s["status"] for s in queued["steps"]] == ["queued"] * 3
    assert [s["kind"] for s in queued["steps"]] == ["generate", "upscale", "postprocess"]

    harness.work()

    view = harness.job(pipeline_id)
    assert view["job_id"] == pipeline_id and view["status"] == "done", view
    steps = view["steps"]
    assert [s["status"] for s in steps] == ["done"] * 3
    assert [s["index"] for s in steps] == [0, 1, 2]
    assert len({s["job_id"] for s in steps} | {pipeline_id}) == 4
    # Progress counts across the steps: 4 denoising steps, one upscale pass, one postprocess pass.
    assert view["progress"] == {"step": 6, "total": 6}
    assert view["result"] == steps[-1]["result"]
    records = [sidecar(harness, s["result"]["meta_key"]) for s in steps]
    generated, upscaled, finished = records
    kinds = ["generate", "upscale", "postprocess"]
    assert [r["pipeline"] for r in records] == [
        {"id": pipeline_id, "step": i, "kind": kind} for i, kind in enumerate(kinds)
    ]
    assert [s["after"] for s in steps] == [[], [0], [1]]
    assert "source" not in generated
    assert upscaled["source"] == generated["png_key"]
    assert finished["source"] == upscaled["png_key"]
    assert (finished["width"], finished["height"]) == (128, 96)
    assert size_of(harness, view["result"]["png_key"]) == (128, 96)
    assert size_of(harness, generated["png_key"]) == (64, 48)
    # The postprocess records the ops as they ran: defaults and the job's seed filled in.
    assert finished["request"]["postprocess"]["ops"] == [
        {"op": "film_grain", "strength": 0.3, "size": 1.0, "seed": 4242}
    ]
    grainy = np.asarray(Image.open(io.BytesIO(harness.store.get(finished["png_key"]))).convert("RGB"))
    assert grainy.std() > 0  # the flat colour of the fake engine now has grain
    assert len(harness.engine.calls) == 1  # only the generate step rendered
    # The event stream of a pipeline ends with its terminal view.
    events = harness.client.get(f"/api/images/jobs/{pipeline_id}/events").text
    assert events.count("event: job") == 1 and '"status":"done"' in events


def test_a_failing_step_is_retried_then_the_pipeline_fails_and_a_retry_reruns_only_that_step(
    harness: Harness,
) -> None:
    engine: FlakyRefineEngine = harness.engine
    engine.refine_failures = 3  # the first try and both retries
    pipeline_id = pipeline_of(
        harness,
        [
            {"kind": "refine", "strength": 0.4, "retries": 2},
            {"kind": "postprocess", "ops": [{"op": "denoise"}]},
        ],
    )

    harness.work()

    failed = harness.job(pipeline_id)
    assert failed["status"] == "error", failed
    assert failed["error"]["code"] == "ENGINE_ERROR" and "out of memory" in failed["error"]["message"]
    assert [s["status"] for s in failed["steps"]] == ["done", "error", "queued"]
    assert failed["steps"][1]["error"]["code"] == "ENGINE_ERROR"
    refines = [spec for spec in engine.calls if spec.image is not None]
    assert len(engine.calls) == 4 and len(refines) == 3  # one generate, three tries of the refine
    generated_key = failed["steps"][0]["result"]["png_key"]
    assert {spec.image for spec in refines} == {generated_key}
    assert {(spec.strength, spec.seed) for spec in refines} == {(0.4, 4242)}
    job_ids = [s["job_id"] for s in failed["steps"]]

    retried = harness.client.post(f"/api/images/jobs/{pipeline_id}/retry", json={})
    assert retried.status_code == 202, retried.text
    assert retried.json()["job_id"] == pipeline_id
    harness.work()

    view = harness.job(pipeline_id)
    assert view["status"] == "done", view
    assert [s["job_id"] for s in view["steps"]] == job_ids
    assert view["steps"][0]["result"]["png_key"] == generated_key  # not rendered again
    assert len(engine.calls) == 5 and engine.calls[-1].image == generated_key
    refined, finished = (sidecar(harness, s["result"]["meta_key"]) for s in view["steps"][1:])
    assert refined["source"] == generated_key and refined["request"]["strength"] == 0.4
    assert finished["source"] == refined["png_key"]

    again = harness.client.post(f"/api/images/jobs/{pipeline_id}/retry", json={})
    assert (
        again.status_code == 400 and "only a failed or canceled pipeline" in again.json()["error"]["message"]
    )


def test_a_failed_generate_fails_the_pipeline_and_a_retry_runs_it_all(harness: Harness) -> None:
    engine: FlakyRefineEngine = harness.engine
    engine.generate_failures = 1
    pipeline_id = pipeline_of(harness, [{"kind": "upscale"}])
    harness.work()
    failed = harness.job(pipeline_id)
    assert failed["status"] == "error" and [s["status"] for s in failed["steps"]] == ["error", "queued"]
    assert len(engine.calls) == 1  # the generate has no retries of its own

    assert harness.client.post(f"/api/images/jobs/{pipeline_id}/retry", json={}).status_code == 202
    harness.work()
    view = harness.job(pipeline_id)
    assert view["status"] == "done" and [s["job_id"] for s in view["steps"]] == [
        s["job_id"] for s in failed["steps"]
    ]
    assert size_of(harness, view["result"]["png_key"]) == (128, 96)
    changed = harness.client.post(f"/api/images/jobs/{pipeline_id}/retry", json={"steps": 8})
    assert changed.status_code == 400


def test_a_step_without_retries_fails_at_once(harness: Harness) -> None:
    engine: FlakyRefineEngine = harness.engine
    engine.refine_failures = 5
    pipeline_id = pipeline_of(harness, [{"kind": "refine", "retries": 0}])
    harness.work()
    assert harness.job(pipeline_id)["status"] == "error"
    assert len(engine.calls) == 2


def test_cancel_while_a_step_runs_cancels_it_and_every_later_step(harness: Harness) -> None:
    engine: FlakyRefineEngine = harness.engine
    pipeline_id = pipeline_of(
        harness,
        [{"kind": "refine"}, {"kind": "upscale"}, {"kind": "postprocess", "ops": [{"op": "sharpen"}]}],
    )
    engine.cancel_refines_via, engine.pipeline_id = harness.client, pipeline_id

    harness.work()

    assert engine.cancel_answers == ["started"]
    view = harness.job(pipeline_id)
    assert view["status"] == "canceled" and view["error"]["code"] == "CANCELED", view
    assert [s["status"] for s in view["steps"]] == ["done", "canceled", "canceled", "canceled"]
    items = harness.client.get("/api/images/latest").json()["items"]
    assert [item["key"] for item in items] == [view["steps"][0]["result"]["png_key"]]
    assert len(engine.calls) == 2

    # A retry runs the canceled steps as new jobs on the image the generate made.
    engine.cancel_refines_via = None
    retried = harness.client.post(f"/api/images/jobs/{pipeline_id}/retry", json={})
    assert retried.status_code == 202, retried.text
    harness.work()
    done = harness.job(pipeline_id)
    assert done["status"] == "done", done
    assert done["steps"][0]["job_id"] == view["steps"][0]["job_id"]
    assert not {s["job_id"] for s in done["steps"][1:]} & {s["job_id"] for s in view["steps"]}
    assert len(engine.calls) == 3 and engine.calls[-1].image == view["steps"][0]["result"]["png_key"]
    assert size_of(harness, done["result"]["png_key"]) == (128, 96)


def test_another_key_cannot_see_retry_or_cancel_a_pipeline(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(FlakyRefineEngine(), api_keys=API_KEYS)
    pipeline_id = pipeline_of(harness, [{"kind": "upscale"}], headers=AS_ALICE)
    unknown = harness.client.get("/api/images/jobs/0123456789abcdef0123456789abcdef", headers=AS_BOB)
    for method, path in (
        ("GET", ""),
        ("GET", "/events"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
    ):
        response = harness.client.request(
            method,
            f"/api/images/jobs/{pipeline_id}{path}",
            headers=AS_BOB,
            json={} if method == "POST" else None,
        )
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["message"].replace(pipeline_id, "X") == unknown.json()["error"][
            "message"
        ].replace("0123456789abcdef0123456789abcdef", "X")
    harness.work()
    view = harness.client.get(f"/api/images/jobs/{pipeline_id}", headers=AS_ALICE).json()
    assert view["status"] == "done"
    owners = {sidecar(harness, s["result"]["meta_key"]).get("owner") for s in view["steps"]}
    assert len(owners) == 1 and None not in owners


def test_history_lists_a_pipeline_once_with_its_steps(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(FlakyRefineEngine(), api_keys=API_KEYS)
    single = harness.client.post(
        "/api/images/generate", json={"prompt": "a cat", "model": MODEL}, headers=AS_ALICE
    )
    pipeline_id = pipeline_of(harness, [{"kind": "upscale"}, {"kind": "refine"}], headers=AS_ALICE)
    harness.work()

    jobs = harness.client.get("/api/images/jobs", headers=AS_ALICE).json()["jobs"]
    assert [job["job_id"] for job in jobs] == [pipeline_id, single.json()["job_id"]]
    listed = jobs[0]
    assert listed["status"] == "done" and [s["kind"] for s in listed["steps"]] == [
        "generate",
        "upscale",
        "refine",
    ]
    assert listed["request"]["prompt"] == "a red fox" and listed["request"]["pipeline"] == [
        "upscale",
        "refine",
    ]
    done = harness.client.get("/api/images/jobs?status=done", headers=AS_ALICE).json()["jobs"]
    assert [job["job_id"] for job in done].count(pipeline_id) == 1
    assert harness.client.get("/api/images/jobs", headers=AS_BOB).json()["jobs"] == []
    # Every step stores an image: the pipeline counted three against the day, the single job one.
    assert harness.client.app.state.quotas.used(key_id_of(ALICE)) == 4


def test_what_no_pipeline_could_run_is_refused_at_submit(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(FlakyRefineEngine(), max_side=128)

    bad_op = submit(harness, [{"kind": "upscale"}, {"kind": "postprocess", "ops": [{"op": "sepia"}]}])
    assert bad_op.status_code == 400 and "pipeline step 2 (postprocess)" in bad_op.json()["error"]["message"]
    no_ops = submit(harness, [{"kind": "postprocess"}])
    assert no_ops.status_code == 400

    # 64×48 upscaled ×2 fits IMAGES_MAX_SIDE=128; ×4 (256) does not, nor ×2 twice.
    for too_big in ([{"kind": "upscale", "scale": 4}], [{"kind": "upscale"}, {"kind": "upscale"}]):
        refused = submit(harness, too_big)
        assert refused.status_code == 400 and refused.json()["error"]["detail"]["limit"] == "size", (
            refused.text
        )
    assert submit(harness, [{"kind": "upscale"}]).status_code == 202

    unknown_kind = submit(harness, [{"kind": "animate"}])
    assert unknown_kind.status_code in (400, 422)
    harness.work()


def test_every_image_of_a_batch_goes_through_every_step(harness: Harness) -> None:
    """num_images 3: each step runs on each image of the step before, in one job; every image is
    stored with its own source, progress counts them all, and the quota counted 3 × 3 images."""
    body = {"prompt": "a fox", "model": MODEL, "seed": 10, "num_images": 3}
    steps = [{"kind": "refine", "strength": 0.5}, {"kind": "postprocess", "ops": [{"op": "film_grain"}]}]
    response = harness.client.post("/api/images/generate", json={**body, "pipeline": steps})
    assert response.status_code == 202, response.text
    pipeline_id = response.json()["job_id"]

    harness.work()

    view = harness.job(pipeline_id)
    assert view["status"] == "done", view
    generated, refined, finished = (step["result"]["images"] for step in view["steps"])
    assert len(generated) == len(refined) == len(finished) == 3
    sources = [sidecar(harness, image["meta_key"])["source"] for image in refined]
    assert sources == [image["key"] for image in generated]
    sources = [sidecar(harness, image["meta_key"])["source"] for image in finished]
    assert sources == [image["key"] for image in refined]
    assert view["result"]["images"] == finished
    assert view["steps"][1]["progress"]["step"] == view["steps"][1]["progress"]["total"] > 0
    # One generate render of three images, then three refine renders (one per image).
    assert [spec.num_images for spec in harness.engine.calls] == [3, 1, 1, 1]


# --- presets bring their pipelines, engine preference and failure advice -------------------------
def test_a_preset_with_steps_runs_them_on_the_pixels(harness: Harness) -> None:
    """cinematic tone-maps, grades and grains the render itself; the job view shows both steps."""
    body = {"prompt": "a harbour at dusk", "model": MODEL, "seed": 7, "preset": "cinematic", "width": 64}
    response = harness.client.post("/api/images/generate", json={**body, "height": 64})
    assert response.status_code == 202, response.text
    pipeline_id = response.json()["job_id"]

    harness.work()

    view = harness.job(pipeline_id)
    assert view["status"] == "done", view
    assert [step["kind"] for step in view["steps"]] == ["generate", "postprocess"]
    rendered, finished = (sidecar(harness, step["result"]["meta_key"]) for step in view["steps"])
    assert [op["op"] for op in finished["request"]["postprocess"]["ops"]] == ["tone_map", "lut", "film_grain"]
    assert finished["request"]["postprocess"]["ops"][-1]["seed"] == 7  # the job's seed, recorded
    before = np.asarray(Image.open(io.BytesIO(harness.store.get(rendered["png_key"]))).convert("RGB"))
    after = np.asarray(Image.open(io.BytesIO(harness.store.get(finished["png_key"]))).convert("RGB"))
    flat = before.reshape(-1, 3).std(axis=0)
    assert flat.max() == 0 and after.reshape(-1, 3).std(axis=0).min() > 0  # flat colour, now grainy
    assert not np.array_equal(before.mean(axis=(0, 1)), after.mean(axis=(0, 1)))  # and a new grade


def test_a_presets_engine_preference_falls_back_to_an_engine_that_can_run(
    harness_with: Callable[..., Harness], tmp_path: Any
) -> None:
    """A preset preferring comfyui, then diffusers: with no ComfyUI worker or server its job goes to
    diffusers; with a live ComfyUI worker, to comfyui."""
    presets = tmp_path / "presets.yaml"
    presets.write_text(
        "sketchy:\n  title: Sketchy\n  goal: a sketch\n  prompt_template: 'sketch of {prompt}'\n"
        "  size: [64, 64]\n  engines: [comfyui, diffusers]\n"
    )
    # Each harness is its own service: its count of live workers is its own (it is cached a while).
    with_comfyui = harness_with(presets_file=presets)
    with idle_worker(with_comfyui.settings, "comfyui"):
        first = with_comfyui.generate(prompt="a heron", preset="sketchy")
        assert with_comfyui.job(first)["engine"] == "comfyui"
    without = harness_with(presets_file=presets)
    second = without.generate(prompt="a heron", preset="sketchy", model=MODEL)
    assert without.job(second)["engine"] == "diffusers"


def test_a_failed_job_of_a_preset_leads_with_the_presets_advice(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(FakeEngine(fail_with=EngineTimeout("the render took longer than 600 s")))
    job_id = harness.generate(prompt="a harbour", preset="cinematic", model=MODEL, width=64, height=64)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "error" and view["error"]["code"] == "ENGINE_TIMEOUT"
    assert view["error"]["remediation"][0].startswith("Use quality low for drafts")


def test_rerunning_a_postprocessed_image_repeats_its_grain_unless_the_seed_changes(harness: Harness) -> None:
    pipeline_id = pipeline_of(
        harness, [{"kind": "postprocess", "ops": [{"op": "film_grain", "strength": 1}]}]
    )
    harness.work()
    key = harness.job(pipeline_id)["result"]["png_key"]

    pixels = []
    for body in ({}, {"new_seed": True}):
        response = harness.client.post("/api/images/rerun", json={"key": key, **body})
        assert response.status_code == 202, response.text
        harness.work()
        view = harness.job(response.json()["job_id"])
        assert view["status"] == "done", view
        pixels.append(harness.store.get(view["result"]["png_key"]))
    original = np.asarray(Image.open(io.BytesIO(harness.store.get(key))))
    same, reseeded = (np.asarray(Image.open(io.BytesIO(png))) for png in pixels)
    assert np.array_equal(original, same)
    assert not np.array_equal(original, reseeded)
