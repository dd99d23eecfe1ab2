"""Submit-time resolution of guided inputs (guidance.py): which registered ControlNet or IP-Adapter
renders a request, and the refusals a user meets before anything is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.contracts import GenerateRequest
from services.images_service.errors import ConsentMissing, ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_addon, register_model
from services.images_service.settings import Settings
from services.images_service.spec import resolve_spec

UPLOAD = "uploads/2026/12/07/0123456789abcdef0123456789abcdef.png"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    path = tmp_path / "models.yaml"
    register_model(path, "sd15", {"path": str(tmp_path / "sd15"), "family": "sd15"})
    register_model(path, "sdxl", {"path": str(tmp_path / "sdxl"), "family": "sdxl"})
    register_addon(path, "controlnets", "depth-15", {"path": "cn/depth", "base": "sd15", "type": "depth"})
    register_addon(path, "controlnets", "canny-xl", {"path": "cn/canny-xl", "base": "sdxl", "type": "canny"})
    register_addon(path, "controlnets", "canny-15", {"path": "cn/canny", "base": "sd15", "type": "canny"})
    register_addon(
        path, "ip_adapters", "ip-15", {"path": "ip/ip.safetensors", "base": "sd15", "image_encoder": "ip/enc"}
    )
    register_addon(path, "upscalers", "esr-x2", {"path": "up/x2.safetensors", "scale": 2})
    return ModelRegistry(path)


def resolve(registry: ModelRegistry, **body: Any):  # noqa: ANN201 - a RenderSpec
    request = GenerateRequest.model_validate({"prompt": "a fox", **body})
    return resolve_spec(request, registry, Settings(), None)


def control(**fields: Any) -> dict[str, Any]:
    return {"image": UPLOAD, "type": "canny", **fields}


def test_a_control_gets_the_controlnet_of_its_type_and_the_models_family(registry: ModelRegistry) -> None:
    spec = resolve(registry, model="sd15", controls=[control(), control(type="depth", weight=0.5)])
    assert [(c.model, c.type, c.weight) for c in spec.controls] == [
        ("canny-15", "canny", 1.0),
        ("depth-15", "depth", 0.5),
    ]
    assert resolve(registry, model="sdxl", controls=[control()]).controls[0].model == "canny-xl"


def test_a_named_controlnet_of_another_family_or_type_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(ValidationFailed, match="is for sdxl models"):
        resolve(registry, model="sd15", controls=[control(model="canny-xl")])
    with pytest.raises(ValidationFailed, match="reads depth maps, not canny"):
        resolve(registry, model="sd15", controls=[control(model="depth-15")])
    with pytest.raises(ModelNotFound, match="no depth controlnet is registered for sdxl") as caught:
        resolve(registry, model="sdxl", controls=[control(type="depth")])
    assert any("controlnets:" in step for step in caught.value.remediation)


def test_a_reference_gets_the_ip_adapter_of_the_family(registry: ModelRegistry) -> None:
    spec = resolve(registry, model="sd15", reference_image=UPLOAD, reference_weight=0.8)
    assert (spec.reference_image, spec.reference_model, spec.reference_weight) == (UPLOAD, "ip-15", 0.8)
    with pytest.raises(ModelNotFound, match="ip-adapter"):
        resolve(registry, model="sdxl", reference_image=UPLOAD)


def test_identity_lock_needs_a_reference_and_consent(registry: ModelRegistry) -> None:
    with pytest.raises(ValidationFailed, match="needs `reference_image`"):
        resolve(registry, model="sd15", preset="identity_lock")
    with pytest.raises(ConsentMissing) as caught:
        resolve(registry, model="sd15", preset="identity_lock", reference_image=UPLOAD)
    assert caught.value.to_info().code == "CONSENT_MISSING"
    assert any('"consent": true' in step for step in caught.value.remediation)
    spec = resolve(registry, model="sd15", preset="identity_lock", reference_image=UPLOAD, consent=True)
    assert spec.consent and spec.reference_model == "ip-15"


def test_hires_keeps_the_first_pass_size_and_counts_the_scaled_one(registry: ModelRegistry) -> None:
    spec = resolve(registry, model="sd15", width=512, height=384, hires={"scale": 1.5, "upscaler": "esr-x2"})
    assert (spec.width, spec.height, spec.output_size) == (512, 384, (768, 576))
    with pytest.raises(ModelNotFound, match="upscaler 'nope'"):
        resolve(registry, model="sd15", hires={"upscaler": "nope"})
    with pytest.raises(ValidationFailed, match="does not go with `image`"):
        resolve(registry, model="sd15", image=UPLOAD, hires={})


def test_a_server_engine_control_names_the_servers_own_model(registry: ModelRegistry) -> None:
    with pytest.raises(ValidationFailed, match="uses its own ControlNet models"):
        resolve(registry, engine="comfyui", controls=[control()])
    spec = resolve(registry, engine="comfyui", controls=[control(model="control_v11p_sd15_canny.pth")])
    assert spec.controls[0].model == "control_v11p_sd15_canny.pth"


def test_a_control_range_must_start_before_it_ends() -> None:
    with pytest.raises(ValueError, match="must be below `end`"):
        GenerateRequest(prompt="a fox", controls=[control(start=0.6, end=0.4)])
