"""The content gate and the prompt blocklist: policies (off | blur | block, per tier), a stand-in
checker that flags a known marker run through the real worker path, the model's own diffusers
safety checker on a tiny pipeline, NudeNet's real detector on a generated picture, and prompts
refused at submit."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from services.contracts import RenderSpec
from services.images_service.content import finish_render, sidecar_fields
from services.images_service.engines import RenderedImage, RenderResult
from services.images_service.gallery import thumb_key_for
from services.images_service.metadata import read_png_text
from services.images_service.models import ModelRegistry, register_model
from services.images_service.safety import (
    NudeNetChecker,
    PipelineSafetyChecker,
    SafetyFiltered,
    Verdict,
    blur,
    gate,
    model_has_safety_checker,
    parse_blocklist,
    policy_for,
    set_checker,
)
from services.images_service.settings import Settings
from tests.support.harness import Harness
from tests.support.scenes import (
    FLAG_WORD,
    MARKER,
    MarkerChecker,
    SceneEngine,
    high_frequency,
    scene,
    with_marker,
)

FREE_KEY = "free-safety-1a2b3c4d5e"
PRO_KEY = "pro-safety-6f7a8b9c0d"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def stand_in() -> Iterator[MarkerChecker]:
    """Every job's checker is the stand-in for the test's duration."""
    checker = MarkerChecker()
    set_checker(checker)
    yield checker
    set_checker(None)


def stored_keys(harness: Harness) -> list[str]:
    return sorted(info.key for info in harness.store.objects(harness.settings.s3_prefix))


def picture_at(harness: Harness, key: str) -> Image.Image:
    return Image.open(io.BytesIO(harness.store.get(key))).convert("RGB")


# --- policies ------------------------------------------------------------------------------------
def test_the_default_policy_follows_whether_keys_are_on() -> None:
    assert policy_for(settings(), None) == "off"
    assert policy_for(settings(api_keys=f"{FREE_KEY}:free"), "free") == "block"
    assert policy_for(settings(safety_policy="BLUR"), None) == "blur"
    assert policy_for(settings(api_keys=f"{FREE_KEY}:free", safety_policy="off"), "free") == "off"


def test_a_tier_policy_overrides_the_deployment_one() -> None:
    configured = settings(safety_policy="off", safety_policy_by_tier="free:block, pro:blur")
    assert policy_for(configured, "free") == "block"
    assert policy_for(configured, "pro") == "blur"
    assert policy_for(configured, "enterprise") == "off"
    assert policy_for(configured, None) == "off"
    one_key = settings(safety_policy_by_tier="free:block,0123456789ab:off")
    assert policy_for(one_key, "free", "0123456789ab") == "off"  # a key's own policy beats its tier's
    assert policy_for(one_key, "free", "ba9876543210") == "block"


@pytest.mark.parametrize(
    "values",
    [
        {"safety_policy": "maybe"},
        {"safety_policy_by_tier": "gold:block"},
        {"safety_policy_by_tier": "free=block"},
        {"safety_policy_by_tier": "free:sometimes"},
        {"prompt_blocklist": "fine, /unclosed(/"},
    ],
)
def test_bad_content_settings_fail_at_startup(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        settings(**values)


def test_block_refuses_the_whole_job_before_anything_is_kept() -> None:
    images = [scene(64, 64, 1), with_marker(scene(64, 64, 2))]
    with pytest.raises(SafetyFiltered) as caught:
        gate(images, MarkerChecker(), "block")
    error = caught.value.to_info()
    assert error.code == "SAFETY_FILTER" and error.remediation
    assert error.detail == {"checker": "stand-in", "label": "marker", "flagged": 1}


def test_blur_replaces_only_the_flagged_image() -> None:
    clean, flagged = scene(128, 128, 1), with_marker(scene(128, 128, 2))
    outcomes = gate([clean, flagged], MarkerChecker(), "blur")
    assert outcomes[0].image is clean
    assert outcomes[0].record == {
        "flagged": False,
        "checker": "stand-in",
        "score": 1.0,
        "action": "none",
        "policy": "blur",
    }
    assert outcomes[1].record["flagged"] is True and outcomes[1].record["action"] == "blur"
    assert outcomes[1].image.size == flagged.size
    assert high_frequency(outcomes[1].image) < high_frequency(flagged) / 5


def test_blur_is_strong() -> None:
    picture = scene(512, 512, 3)
    assert high_frequency(blur(picture)) < 1.0 < high_frequency(picture) / 5


# --- through the worker: block, blur, per tier ---------------------------------------------------
def test_a_blocked_job_ends_safety_filter_and_stores_nothing(
    harness_with: Callable[..., Harness], stand_in: MarkerChecker
) -> None:
    harness = harness_with(SceneEngine(), safety_policy="block")
    job_id = harness.generate(prompt=f"a red fox {FLAG_WORD}", width=256, height=256)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "error"
    assert view["error"]["code"] == "SAFETY_FILTER"
    assert view["error"]["remediation"]
    assert view["result"] is None
    assert stand_in.seen == 1
    # Nothing under the gallery prefix (no PNG, sidecar or thumbnail), nothing spooled, nothing listed.
    assert stored_keys(harness) == []
    assert not any(path.is_file() for path in (harness.settings.data_dir / "spool").rglob("*"))
    assert harness.client.get("/api/images/latest").json()["items"] == []


def test_a_clean_image_passes_the_gate_and_says_so(
    harness_with: Callable[..., Harness], stand_in: MarkerChecker
) -> None:
    harness = harness_with(SceneEngine(), safety_policy="block")
    job_id = harness.generate(prompt="a red fox", width=256, height=256)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    sidecar = json.loads(harness.store.get(view["result"]["meta_key"]))
    assert sidecar["safety"] == {
        "flagged": False,
        "checker": "stand-in",
        "score": 1.0,
        "action": "none",
        "policy": "block",
    }
    assert "safety_s" in sidecar["timings"]


def test_a_blurred_job_stores_the_blurred_image_flagged(
    harness_with: Callable[..., Harness], stand_in: MarkerChecker
) -> None:
    engine = SceneEngine()
    harness = harness_with(engine, safety_policy="blur")
    job_id = harness.generate(prompt=f"a red fox {FLAG_WORD}", width=256, height=256)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    png_key, meta_key = view["result"]["png_key"], view["result"]["meta_key"]
    stored = picture_at(harness, png_key)
    (rendered,) = engine.rendered
    assert stored.size == rendered.size
    assert stored.getpixel((0, 0)) != MARKER
    assert high_frequency(stored) < high_frequency(rendered) / 5
    sidecar = json.loads(harness.store.get(meta_key))
    expected = {"flagged": True, "checker": "stand-in", "label": "marker", "score": 1.0}
    assert sidecar["safety"] == {**expected, "action": "blur", "policy": "blur"}
    # The record inside the PNG says the same, and the gallery's thumbnail is blurred too.
    embedded = json.loads(read_png_text(harness.store.get(png_key))["kitty"])
    assert embedded["safety"] == sidecar["safety"]
    thumbnail = picture_at(harness, sidecar["thumb_key"])
    assert thumbnail.getpixel((0, 0)) != MARKER


def test_each_tier_gets_its_own_policy(harness_with: Callable[..., Harness], stand_in: MarkerChecker) -> None:
    harness = harness_with(
        SceneEngine(),
        api_keys=f"{FREE_KEY}:free,{PRO_KEY}:pro",
        safety_policy_by_tier="free:block,pro:blur",
    )
    body = {"prompt": f"a red fox {FLAG_WORD}", "width": 256, "height": 256}
    jobs = {}
    for key in (FREE_KEY, PRO_KEY):
        response = harness.client.post("/api/images/generate", json=body, headers={"X-API-Key": key})
        assert response.status_code == 202, response.text
        jobs[key] = response.json()["job_id"]
    harness.work()

    def view(key: str) -> dict[str, Any]:
        return dict(harness.client.get(f"/api/images/jobs/{jobs[key]}", headers={"X-API-Key": key}).json())

    assert view(FREE_KEY)["error"]["code"] == "SAFETY_FILTER"
    pro = view(PRO_KEY)
    assert pro["status"] == "done"
    png_key = pro["result"]["png_key"]
    assert stored_keys(harness) == sorted([png_key, pro["result"]["meta_key"], thumb_key_for(png_key)])
    assert json.loads(harness.store.get(pro["result"]["meta_key"]))["safety"]["action"] == "blur"


# --- the prompt blocklist, at submit -------------------------------------------------------------
def test_blocklist_entries_match_whole_words_or_regexes() -> None:
    patterns = parse_blocklist("Forbidden, two words, /ba+d\\w*/")
    hits = [
        text
        for text in (
            "a FORBIDDEN fruit",
            "forbiddenness",
            "two   Words here",
            "twowords",
            "so baaadly",
            "a bd",
        )
        if any(p.search(text) for p in patterns)
    ]
    assert hits == ["a FORBIDDEN fruit", "two   Words here", "so baaadly"]
    assert parse_blocklist("") == () and parse_blocklist(None) == ()


def test_a_blocklisted_prompt_is_refused_at_submit(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(prompt_blocklist="forbidden, /secret\\d+/")

    for prompt in ("a Forbidden fruit", "code SECRET42 please"):
        response = harness.client.post("/api/images/generate", json={"prompt": prompt})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "SAFETY_FILTER"
        assert error["remediation"] and error["detail"]["field"] == "prompt"

    assert harness.engine.calls == []
    harness.work()
    assert harness.engine.calls == []  # nothing was queued
    # Not whole words, or only in the negative prompt: accepted.
    harness.generate(prompt="forbiddenness")
    harness.generate(prompt="a fruit", negative_prompt="forbidden")


def test_a_blocklisted_word_inside_a_raw_workflow_is_refused(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(prompt_blocklist="forbidden")
    workflow = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a forbidden fruit", "clip": ["2", 0]}}
    }
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a fruit", "engine": "comfyui", "workflow": workflow}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["detail"] == {"field": "workflow", "matched": "forbidden"}


# --- the checkers themselves ---------------------------------------------------------------------
class FakeDetector:
    def __init__(self, detections: list[dict[str, Any]]) -> None:
        self.detections = detections
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, image: Any) -> list[dict[str, Any]]:
        self.shapes.append(image.shape)
        return self.detections


@pytest.mark.parametrize(
    ("detections", "flagged", "label"),
    [
        ([], False, None),
        ([{"class": "FACE_FEMALE", "score": 0.9}], False, "FACE_FEMALE"),
        ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.3}], False, "FEMALE_BREAST_EXPOSED"),
        (
            [{"class": "FACE_MALE", "score": 0.95}, {"class": "BUTTOCKS_EXPOSED", "score": 0.7}],
            True,
            "BUTTOCKS_EXPOSED",
        ),
    ],
)
def test_nudenet_flags_exposed_classes_over_the_threshold(
    detections: list[dict[str, Any]], flagged: bool, label: str | None
) -> None:
    detector = FakeDetector(detections)
    verdict = NudeNetChecker(0.5, detector=detector).check(scene(96, 64))
    assert (verdict.flagged, verdict.label, verdict.checker) == (flagged, label, "nudenet")
    assert detector.shapes == [(64, 96, 3)]  # BGR, height × width × 3, as OpenCV reads it


def test_the_real_nudenet_classifier_runs_on_a_generated_picture() -> None:
    pytest.importorskip("nudenet")
    verdict = NudeNetChecker(0.5).check(scene(512, 512, 7))
    assert isinstance(verdict, Verdict) and verdict.checker == "nudenet"
    assert verdict.score is not None and 0.0 <= verdict.score <= 1.0
    # A landscape of gradients and noise holds no body: no exposed class at all.
    assert verdict.flagged is False


def test_the_pipeline_checker_reads_the_blanked_image() -> None:
    checker = PipelineSafetyChecker()
    assert checker.check(Image.new("RGB", (64, 64))).flagged is True
    assert checker.check(scene(64, 64)).flagged is False
    almost_black = Image.new("RGB", (64, 64))
    almost_black.putpixel((3, 3), (0, 0, 1))
    assert checker.check(almost_black).flagged is False


def _with_safety_checker(source: Path, target: Path, *, flags_everything: bool) -> None:
    """A copy of the tiny SD 1.5 at `source` with a tiny random safety checker whose concept
    thresholds flag every image (or none): what an SD 1.5 folder with its checker looks like."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "image_size": 32,
        "patch_size": 8,
    }
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision, projection_dim=16))
    with torch.no_grad():
        # A concept flags when cosine similarity − its threshold > 0; similarity is within [-1, 1].
        checker.concept_embeds_weights.fill_(-2.0 if flags_everything else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    base = StableDiffusionPipeline.from_pretrained(source, local_files_only=True)
    components = {**base.components, "safety_checker": checker, "feature_extractor": extractor}
    StableDiffusionPipeline(**components, requires_safety_checker=True).save_pretrained(target)


@pytest.mark.parametrize("flags_everything", [True, False], ids=["flagging", "clean"])
def test_the_models_own_diffusers_checker_decides(
    tiny_models: Path, tmp_path: Path, flags_everything: bool
) -> None:
    from services.images_service.engines.diffusers_engine import DiffusersEngine

    tiny = ModelRegistry(tiny_models).get("tiny-sd15")
    models_yaml = tmp_path / "models.yaml"
    _with_safety_checker(Path(tiny.source), tmp_path / "checked", flags_everything=flags_everything)
    register_model(models_yaml, "checked", {"path": str(tmp_path / "checked")})
    register_model(models_yaml, "unchecked", {"path": tiny.source})
    registry = ModelRegistry(models_yaml)
    assert model_has_safety_checker(registry, "checked")
    assert not model_has_safety_checker(registry, "unchecked")

    spec = RenderSpec(prompt="a red fox", model="checked", width=64, height=64, steps=2, cfg=7.0, seed=3)
    engine = DiffusersEngine(registry, device="cpu")
    try:
        result = engine.render(spec, lambda step, total: None)
    finally:
        engine.close()
    blocking = settings(safety_policy="block")
    if flags_everything:
        with pytest.raises(SafetyFiltered) as caught:
            finish_render(blocking, registry, spec, result, tier=None)
        assert caught.value.detail["checker"] == "diffusers-safety-checker"
        # Under blur the pipeline's black image is kept, flagged: the original was never ours to blur.
        blurred = finish_render(settings(safety_policy="blur"), registry, spec, result, tier=None)
        assert sidecar_fields(blurred.images[0])["safety"]["flagged"] is True
    else:
        finished = finish_render(blocking, registry, spec, result, tier=None)
        record = sidecar_fields(finished.images[0])["safety"]
        assert record["checker"] == "diffusers-safety-checker" and record["flagged"] is False


def test_with_the_gate_off_and_no_watermark_nothing_changes() -> None:
    result = RenderResult(images=[RenderedImage(scene(64, 64), 1)], device="fake")
    spec = RenderSpec(prompt="x", model="m", width=64, height=64, steps=1, cfg=1.0, seed=1)
    assert finish_render(settings(), ModelRegistry(Path("missing.yaml")), spec, result, tier=None) is result


def test_without_a_checker_the_gate_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from services.images_service import safety

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(safety, "_nudenet", None)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nudenet" else real_find_spec(name, *a)
    )
    result = RenderResult(images=[RenderedImage(scene(64, 64), 1)], device="fake")
    spec = RenderSpec(prompt="x", model="m", width=64, height=64, steps=1, cfg=1.0, seed=1, engine="comfyui")
    with pytest.raises(safety.SafetyUnavailable) as caught:
        finish_render(
            settings(safety_policy="blur"), ModelRegistry(Path("missing.yaml")), spec, result, tier=None
        )
    assert caught.value.to_info().code == "ENGINE_ERROR" and caught.value.remediation
