"""Video jobs through the real queue: `kind: "video"` on POST /api/images/generate, a real Redis, a
real worker rendering tiny random-weight AnimateDiff and SVD models with the diffusers engine, into
the filesystem store and into S3 (moto's server); the MP4, its poster and sidecar read back; select
gives a `videoRef` that downloads; requests a video model cannot render are 400s with a code."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from services.common.api_keys import ApiKey
from services.contracts import RenderSpec, VideoSettings
from services.images_service.catalog import folder_digests, verify_entry
from services.images_service.engines.diffusers.engine import DiffusersEngine
from services.images_service.errors import ValidationFailed
from services.images_service.models import ModelRegistry
from services.images_service.quotas import VIDEO_BUDGET_FRAMES, check_ceilings
from services.images_service.storage import Store
from services.images_service.uploads import read_image
from services.images_service.video.encode import decode_frames, probe
from tests.support.harness import MODEL, Harness
from tests.support.tiny_video import TinyVideoModels

FRAMES, FPS, WIDTH, HEIGHT, STEPS = 8, 8, 64, 48, 3
"""The clips asked for: not square, so a swapped width and height shows; 64 is the wire's least side."""

ANIMATEDIFF, SVD = "tiny-animatediff", "tiny-svd"
START_KEY = "images/20260101_120000_0a1b2c3d.png"
"""A stored image (as a render would have stored it) that SVD animates."""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """On a shared two-core machine torch's spinning threads make a tiny render ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def video_models_yaml(tiny_video_models: TinyVideoModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.yaml with the tiny video models (family, license, digests as `models add` records
    them) and the harness's fake image model."""
    root = tmp_path_factory.mktemp("video_models")
    (root / MODEL).mkdir()
    clip = {"width": WIDTH, "height": HEIGHT, "steps": STEPS}
    entries = {
        "models": {
            ANIMATEDIFF: {
                "path": str(tiny_video_models.sd15),
                "family": "animatediff",
                "motion_adapter": str(tiny_video_models.motion_adapter),
                "license": "creativeml-openrail-m",
                "sha256": folder_digests(tiny_video_models.sd15),
                "motion_adapter_sha256": folder_digests(tiny_video_models.motion_adapter),
                "defaults": {**clip, "cfg": 7.0},
            },
            SVD: {
                "path": str(tiny_video_models.svd),
                "family": "svd",
                "license": "stable-video-diffusion-community",
                "sha256": folder_digests(tiny_video_models.svd),
                "defaults": {**clip, "cfg": 2.5, "frames": FRAMES, "fps": 6},
            },
            MODEL: {"path": str(root / MODEL)},
        }
    }
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture
def video_harness(harness_factory: Callable[..., Harness], video_models_yaml: Path) -> Harness:
    """The service and a worker with the real diffusers engine, on the filesystem store and on S3;
    the engine reads SVD's start image from the service's store, as a worker does."""
    stores: list[Store] = []
    engine = DiffusersEngine(
        ModelRegistry(video_models_yaml), device="cpu", image_loader=lambda key: read_image(stores[0], key)
    )
    harness = harness_factory(engine, models_yaml=video_models_yaml)
    stores.append(harness.store)
    return harness


def start_image(store: Store) -> str:
    """A gradient of another size than the clip's (SVD resizes it), stored as a PNG image."""
    ramp = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))
    picture = Image.fromarray(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 90)], axis=-1))
    data = BytesIO()
    picture.save(data, format="PNG")
    store.put(START_KEY, data.getvalue(), "image/png")
    return START_KEY


def submit(harness: Harness, **body: Any) -> str:
    response = harness.client.post("/api/images/generate", json={"kind": "video", **body})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def download(harness: Harness, url: str) -> bytes:
    """A downloadUrl as any HTTP client fetches it (the filesystem store's are served by the app)."""
    response = httpx.get(url) if harness.settings.s3_bucket else harness.client.get(url)
    assert response.status_code == 200, response.text
    return response.content


def finished_clip(harness: Harness, job_id: str) -> dict[str, Any]:
    view = harness.job(job_id)
    assert view["status"] == "done", view
    assert view["progress"] == {"step": STEPS, "total": STEPS}
    result = view["result"]
    assert result["images"] == [] and len(result["videos"]) == 1
    clip = result["videos"][0]
    assert result["png_key"] == clip["key"] and result["meta_key"] == clip["meta_key"]
    return dict(clip)


def check_stored_clip(harness: Harness, clip: dict[str, Any], fps: int) -> dict[str, Any]:
    """The MP4, poster and sidecar in the store are what the job result says; returns the sidecar."""
    assert clip["key"].startswith(harness.settings.s3_prefix) and clip["key"].endswith(".mp4")
    assert clip["poster_key"] == clip["key"].removesuffix(".mp4") + ".poster.webp"
    assert clip["meta_key"] == clip["key"].removesuffix(".mp4") + ".json"
    assert (clip["frames"], clip["fps"], clip["width"], clip["height"]) == (FRAMES, fps, WIDTH, HEIGHT)
    info = probe(harness.store.get(clip["key"]))
    assert (info.codec, info.frames, info.fps, info.width, info.height) == (
        "h264",
        FRAMES,
        fps,
        WIDTH,
        HEIGHT,
    )
    poster = Image.open(BytesIO(harness.store.get(clip["poster_key"])))
    assert (poster.format, poster.size) == ("WEBP", (WIDTH, HEIGHT))
    sidecar = json.loads(harness.store.get(clip["meta_key"]))
    assert sidecar["kind"] == "video" and sidecar["video_key"] == clip["key"] and "png_key" not in sidecar
    assert sidecar["poster_key"] == clip["poster_key"]
    assert sidecar["video"]["frames"] == FRAMES and sidecar["video"]["fps"] == fps
    assert sidecar["video"]["codec"] == "h264"
    assert sidecar["video"]["duration_s"] == pytest.approx(FRAMES / fps, abs=1e-3)
    assert sidecar["seed"] == clip["seed"] and (sidecar["width"], sidecar["height"]) == (WIDTH, HEIGHT)
    assert sidecar["settings"]["frames"] == FRAMES and sidecar["settings"]["steps"] == STEPS
    return dict(sidecar)


def assert_same_clip(harness: Harness, clip: dict[str, Any], repeat: dict[str, Any]) -> None:
    """Two jobs of one seed rendered the same frames (the digest of the pixels before encoding is
    exact), and their MP4s decode to them: x264 here now and then codes a frame of the same input a
    few levels differently (see `video.storing.frames_digest`), so the decoded pixels are compared
    within that."""
    sidecars = [json.loads(harness.store.get(one["meta_key"])) for one in (clip, repeat)]
    digests = {sidecar["video"]["frames_sha256"] for sidecar in sidecars}
    assert len(digests) == 1 and len(digests.pop()) == 64
    first, second = (decode_frames(harness.store.get(one["key"])).astype(int) for one in (clip, repeat))
    assert first.std() > 0
    assert np.abs(first - second).mean() < 0.5, np.abs(first - second).mean()


def check_video_ref(harness: Harness, clip: dict[str, Any]) -> None:
    answer = harness.client.post("/api/images/select", json={"key": clip["key"]})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"videoRef"}
    ref = answer.json()["videoRef"]
    store_kind = "s3" if harness.settings.s3_bucket else "file"
    assert ref["storageUri"].startswith(f"{store_kind}://") and ref["storageUri"].endswith(clip["key"])
    mp4 = download(harness, ref["downloadUrl"])
    assert mp4 == harness.store.get(clip["key"])
    assert probe(mp4).frames == FRAMES
    poster = Image.open(BytesIO(download(harness, ref["posterUrl"])))
    assert (poster.format, poster.size) == ("WEBP", (WIDTH, HEIGHT))


def test_a_prompt_becomes_an_animatediff_clip_stored_selectable_and_repeatable(
    video_harness: Harness,
) -> None:
    harness = video_harness
    body = {"model": ANIMATEDIFF, "prompt": "a cat on a boat", "frames": FRAMES, "fps": FPS, "seed": 7}
    first, again = submit(harness, **body), submit(harness, **body)
    harness.work()

    clip, repeat = finished_clip(harness, first), finished_clip(harness, again)
    sidecar = check_stored_clip(harness, clip, FPS)
    assert sidecar["model"] == ANIMATEDIFF and sidecar["request"]["prompt"] == "a cat on a boat"
    assert sidecar["engine_info"]["pipeline_class"] == "AnimateDiffPipeline"
    assert sidecar["settings"]["motion_bucket_id"] is None
    assert clip["seed"] == repeat["seed"] == 7 and clip["key"] != repeat["key"]
    assert_same_clip(harness, clip, repeat)
    # the second job found the pipeline resident: nothing loaded
    assert json.loads(harness.store.get(repeat["meta_key"]))["timings"]["load_s"] == 0
    check_video_ref(harness, clip)
    # clips stay out of the gallery's image listing
    assert harness.client.get("/api/images/latest").json()["items"] == []


def test_a_stored_image_becomes_an_svd_clip(video_harness: Harness) -> None:
    harness = video_harness
    key = start_image(harness.store)
    body = {"model": SVD, "image": key, "seed": 3, "motion_bucket_id": 100, "noise_aug_strength": 0.05}
    job_id, again = submit(harness, **body), submit(harness, **body)
    harness.work()

    clip, repeat = finished_clip(harness, job_id), finished_clip(harness, again)
    assert_same_clip(harness, clip, repeat)
    sidecar = check_stored_clip(harness, clip, 6)  # the model's default fps
    assert sidecar["request"]["image"] == key
    assert sidecar["engine_info"]["pipeline_class"] == "StableVideoDiffusionPipeline"
    assert (sidecar["settings"]["motion_bucket_id"], sidecar["settings"]["noise_aug_strength"]) == (100, 0.05)
    check_video_ref(harness, clip)


@pytest.fixture
def refusing(harness_with: Callable[..., Harness], video_models_yaml: Path) -> Harness:
    """No worker runs: what is refused never reaches the queue. IMAGES_MAX_SIDE 256 makes the video
    budget small enough to exceed within the wire's limits."""
    return harness_with(models_yaml=video_models_yaml, max_side=256)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": SVD, "image": START_KEY, "frames": 0},
            "frames: Input should be greater than or equal to 2",
        ),
        (
            {"model": SVD, "image": START_KEY, "frames": 65},
            "frames: Input should be less than or equal to 64",
        ),
        ({"model": SVD, "image": START_KEY, "fps": 0}, "fps: Input should be greater than or equal to 1"),
        ({"model": SVD}, "animates a start image; none was given"),
        ({"model": SVD, "image": START_KEY, "prompt": "a cat"}, "Stable Video Diffusion takes no prompt"),
        ({"model": SVD, "image": START_KEY, "width": 68}, "width: Input should be a multiple of 8"),
        ({"model": ANIMATEDIFF, "prompt": "a cat", "height": 50}, "height: Input should be a multiple of 8"),
        ({"model": ANIMATEDIFF, "prompt": "a cat", "image": START_KEY}, "a start image is not supported"),
        ({"model": ANIMATEDIFF}, "AnimateDiff renders from a prompt; none was given"),
        ({"model": ANIMATEDIFF, "prompt": "a cat", "frames": 33}, "animates at most 32 frames"),
        (
            {"model": ANIMATEDIFF, "prompt": "a cat", "motion_bucket_id": 9},
            "motion_bucket_id are Stable Video",
        ),
        (
            {"model": ANIMATEDIFF, "prompt": "a cat", "num_images": 2},
            "a video job takes none of `num_images`",
        ),
        ({"model": ANIMATEDIFF, "prompt": "a cat", "loras": [{"name": "x"}]}, "takes none of `loras`"),
        ({"model": MODEL, "prompt": "a cat"}, f"model '{MODEL}' renders images, not video"),
        (
            {"model": ANIMATEDIFF, "prompt": "a cat", "engine": "comfyui"},
            "engine 'comfyui' does not render video",
        ),
        (
            {
                "model": ANIMATEDIFF,
                "prompt": "a cat",
                "frames": 32,
                "width": 256,
                "height": 256,
                "steps": 150,
            },
            f"video jobs of at most {256 * 256 * 150 * VIDEO_BUDGET_FRAMES:,} frames × pixels × steps",
        ),
        (
            {"kind": "image", "model": ANIMATEDIFF, "prompt": "a cat"},
            f"model '{ANIMATEDIFF}' (animatediff) renders video",
        ),
        ({"kind": "image", "prompt": "a cat", "frames": 8}, '`frames` need `kind: "video"`'),
        ({"kind": "image"}, "prompt: Field required"),
    ],
)
def test_what_a_video_model_cannot_render_is_a_400_with_a_code_and_a_remedy(
    refusing: Harness, body: dict[str, Any], message: str
) -> None:
    start_image(refusing.store)
    response = refusing.client.post("/api/images/generate", json={"kind": "video", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert message in error["message"], error["message"]
    assert error["remediation"]


def test_a_clip_within_the_budget_is_admitted(refusing: Harness) -> None:
    """The same shape as the refused one, with a budget's worth of frames: admitted (queued)."""
    frames = 256 * 256 * 150 * VIDEO_BUDGET_FRAMES // (256 * 256 * 150)
    body = {
        "model": ANIMATEDIFF,
        "prompt": "a cat",
        "frames": frames,
        "width": 256,
        "height": 256,
        "steps": 150,
    }
    response = refusing.client.post("/api/images/generate", json={"kind": "video", **body})
    assert response.status_code == 202, response.text


def test_models_say_which_render_video(refusing: Harness) -> None:
    models = {model["name"]: model for model in refusing.client.get("/api/images/models").json()["models"]}
    assert (models[ANIMATEDIFF]["kind"], models[ANIMATEDIFF]["family"]) == ("video", "animatediff")
    assert (models[SVD]["kind"], models[SVD]["family"]) == ("video", "svd")
    assert models[MODEL]["kind"] == "image"
    assert models[SVD]["license"] == "stable-video-diffusion-community"
    assert "unet/diffusion_pytorch_model.safetensors" in models[SVD]["sha256"]


def test_an_image_still_selects_as_an_imageref_alone(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    job_id = harness.generate()
    harness.work()
    key = harness.job(job_id)["result"]["png_key"]
    answer = harness.client.post("/api/images/select", json={"key": key}).json()
    assert set(answer) == {"imageRef"}
    missing = harness.client.post("/api/images/select", json={"key": key.removesuffix(".png") + ".mp4"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "KEY_NOT_FOUND"
    webm = harness.client.post("/api/images/select", json={"key": key.removesuffix(".png") + ".webm"})
    assert webm.status_code == 400 and webm.json()["error"]["code"] == "VALIDATION_ERROR"


def test_the_watermark_marks_every_frame_of_a_clip(
    harness_with: Callable[..., Harness], video_models_yaml: Path
) -> None:
    """Frames go through the content gate and the watermark as images do: with IMAGES_WATERMARK
    set, the same seed's clip comes out different, in every frame."""
    clips = []
    for watermark in ("", "kitty-video"):
        engine = DiffusersEngine(ModelRegistry(video_models_yaml), device="cpu")
        harness = harness_with(engine, models_yaml=video_models_yaml, watermark=watermark, job_timeout_s=300)
        # 256×256: the least picture the watermark marks (`watermark.MIN_PIXELS`); one step keeps it cheap
        job_id = submit(
            harness, model=ANIMATEDIFF, prompt="a cat", frames=2, width=256, height=256, steps=1, seed=7
        )
        harness.work()
        view = harness.job(job_id)
        assert view["status"] == "done", view
        clips.append(decode_frames(harness.store.get(view["result"]["videos"][0]["key"])))
    plain, marked = clips
    assert plain.shape == (2, 256, 256, 3)
    assert all(not np.array_equal(plain[index], marked[index]) for index in range(2))


def test_models_verify_checks_the_motion_adapter_too(video_models_yaml: Path) -> None:
    entry = ModelRegistry(video_models_yaml).get(ANIMATEDIFF)
    assert verify_entry(entry) == []
    tampered = replace(entry, motion_adapter_sha256={"config.json": "0" * 64})
    assert [problem for problem in verify_entry(tampered) if problem.startswith("motion adapter:")]


def test_a_video_model_preloads_resident(video_models_yaml: Path) -> None:
    """`images-worker --preload` of a video model holds it in the model cache, as an image model."""
    engine = DiffusersEngine(ModelRegistry(video_models_yaml), device="cpu")
    engine.preload(SVD)
    assert engine.resident_models() == [SVD]


@pytest.mark.parametrize(
    ("tier", "frames", "admitted"),
    [("free", 14, True), ("free", 64, False), ("pro", 64, True), ("enterprise", 64, True)],
)
def test_a_tier_holds_a_clip_to_its_budget(tier: str, frames: int, admitted: bool) -> None:
    """At free's largest size and most steps (1024², 30) its budget is 16 frames: 14 fit, 64 do not
    (2.01 G > 0.50 G frames × pixels × steps); pro's budget (2048² × 50 × 16) takes 64."""
    spec = RenderSpec(
        prompt="",
        model=SVD,
        width=1024,
        height=1024,
        steps=30,
        cfg=2.5,
        seed=1,
        image=START_KEY,
        video=VideoSettings(family="svd", frames=frames, fps=7),
    )
    caller = ApiKey.of("secret-key", tier)
    if admitted:
        check_ceilings(spec, caller)
        return
    with pytest.raises(ValidationFailed) as refused:
        check_ceilings(spec, caller)
    assert refused.value.detail["limit"] == "video" and refused.value.detail["tier"] == tier
    assert "at most 16 at this size and steps" in refused.value.remediation[0]
