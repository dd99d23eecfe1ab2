"""The engine table: every engine the wire names has one complete descriptor, and admission, the
stack and the doctor follow what a descriptor declares rather than an engine's name."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from services.contracts import ENGINE_NAMES, GenerateRequest, HiresFix
from services.contracts.schema import EngineName
from services.images_service.engines import make_engine
from services.images_service.engines.descriptors import (
    DEFAULT_ENGINE,
    DESCRIPTORS,
    ENGINES,
    Capabilities,
    EngineDescriptor,
    EngineKind,
    construct_local_engine,
    construct_server_engine,
    engines_with,
    env_name,
    server_engines,
    worker_command,
)
from services.images_service.errors import ValidationFailed
from services.images_service.models import ModelRegistry
from services.images_service.settings import Settings
from services.images_service.spec import resolve_spec
from services.images_service.stack import configured_engines

UPLOADED = "uploads/19990101_000000_deadbeef.png"
"""A well-formed upload key (only its shape is checked without a store)."""

WORKFLOW = {"1": {"class_type": "KSampler", "inputs": {}}}


def make_settings(**env: Any) -> Settings:
    """Settings from `env` alone: neither the process environment nor a .env lends a value."""
    return Settings(_env_file=None, **env)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for descriptor in server_engines():
        for field in (*descriptor.server_settings, *descriptor.auth_settings):
            monkeypatch.delenv(env_name(field), raising=False)
    monkeypatch.delenv("IMAGE_ENGINE", raising=False)


def with_capability(monkeypatch: pytest.MonkeyPatch, engine: str, **capabilities: bool) -> None:
    """Give `engine` other capabilities for this test, in the table every caller reads."""
    descriptor = ENGINES[engine]
    changed = dataclasses.replace(descriptor.capabilities, **capabilities)
    monkeypatch.setitem(ENGINES, engine, dataclasses.replace(descriptor, capabilities=changed))


def test_the_wire_and_the_table_name_the_same_engines() -> None:
    assert tuple(ENGINES) == ENGINE_NAMES == get_args(EngineName)
    assert [descriptor.name for descriptor in DESCRIPTORS] == list(ENGINES)


def test_a_descriptor_cannot_leave_out_a_field_or_a_capability() -> None:
    all_but_video = {f.name: False for f in dataclasses.fields(Capabilities) if f.name != "video"}
    with pytest.raises(TypeError, match="video"):
        Capabilities(**all_but_video)
    a1111 = dataclasses.asdict(ENGINES["a1111"]) | {"capabilities": ENGINES["a1111"].capabilities}
    del a1111["construct"]
    with pytest.raises(TypeError, match="construct"):
        EngineDescriptor(**a1111)


def defined_classes(module_name: str) -> set[str]:
    """Classes a module defines, read from its source so that torch is not imported here."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None, f"no module {module_name}"
    tree = ast.parse(Path(spec.origin).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


@pytest.mark.parametrize("descriptor", DESCRIPTORS, ids=lambda d: d.name)
def test_every_descriptor_is_complete(descriptor: EngineDescriptor) -> None:
    module_name, _, class_name = descriptor.class_path.partition(":")
    assert class_name in defined_classes(module_name)
    assert descriptor.kind in get_args(EngineKind)
    for capability in dataclasses.fields(Capabilities):
        assert type(getattr(descriptor.capabilities, capability.name)) is bool, capability.name
    for field in (*descriptor.server_settings, *descriptor.auth_settings):
        assert Settings.model_fields[field].alias, f"{field} has no environment variable"
    if descriptor.is_local:
        assert descriptor.construct is construct_local_engine
        assert not descriptor.server_settings, "a local engine has no server to locate"
    else:
        assert descriptor.construct is construct_server_engine
        assert descriptor.server_settings, f"{descriptor.name}: which settings say where its server is?"


@pytest.mark.parametrize("descriptor", DESCRIPTORS, ids=lambda d: d.name)
def test_make_engine_builds_the_class_each_descriptor_names(
    descriptor: EngineDescriptor, tmp_path: Path
) -> None:
    engine = make_engine(descriptor.name, make_settings(), ModelRegistry(tmp_path / "models.yaml"))
    try:
        assert isinstance(engine, descriptor.load_class())
        assert engine.name == descriptor.name
    finally:
        engine.close()


def test_the_engine_table_imports_no_engine_module() -> None:
    probe = (
        "import sys, services.images_service.engines, services.images_service.spec\n"
        "engines = 'services.images_service.engines.'\n"
        "print(sorted(m for m in sys.modules if m.startswith(engines) or m == 'torch'))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == str(
        ["services.images_service.engines.base", "services.images_service.engines.descriptors"]
    )


def test_an_unknown_engine_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="engine 'dalle' is not available") as caught:
        make_engine("dalle", make_settings(), ModelRegistry(tmp_path / "models.yaml"))
    assert caught.value.remediation[0] == f"Use one of: {', '.join(ENGINE_NAMES)}"


def test_a_raw_workflow_goes_to_the_engines_that_declare_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry, settings = ModelRegistry(tmp_path / "models.yaml"), make_settings()
    request = GenerateRequest(prompt="a cat", engine="a1111", workflow=WORKFLOW)
    with pytest.raises(ValidationFailed, match="runs only on the comfyui engine"):
        resolve_spec(request, registry, settings)
    with_capability(monkeypatch, "a1111", raw_workflow=True)
    assert resolve_spec(request, registry, settings).workflow == WORKFLOW


def test_an_input_image_goes_to_the_engines_that_declare_img2img(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry, settings = ModelRegistry(tmp_path / "models.yaml"), make_settings()
    request = GenerateRequest(prompt="a cat", engine="invokeai", image=UPLOADED, width=64, height=64)
    assert resolve_spec(request, registry, settings).image == UPLOADED
    with_capability(monkeypatch, "invokeai", img2img=False)
    with pytest.raises(ValidationFailed, match="`image`: engine 'invokeai' does not take it") as caught:
        resolve_spec(request, registry, settings)
    assert "engines that do: a1111, comfyui, diffusers" in str(caught.value)


def test_guided_generation_is_declared_engine_by_engine() -> None:
    declared = {
        name: {c: getattr(d.capabilities, c) for c in ("control", "reference", "upscale", "hires")}
        for name, d in ENGINES.items()
    }
    server = {"control": True, "reference": False, "upscale": False, "hires": True}
    assert declared == {
        "diffusers": {"control": True, "reference": True, "upscale": True, "hires": True},
        "comfyui": server,
        "a1111": server,
        "invokeai": server,
    }


def test_a_hires_fix_goes_to_the_engines_that_declare_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registry, settings = ModelRegistry(tmp_path / "models.yaml"), make_settings()
    request = GenerateRequest(
        prompt="a cat", engine="invokeai", width=64, height=64, hires=HiresFix(scale=2.0)
    )
    assert resolve_spec(request, registry, settings).output_size == (128, 128)
    with_capability(monkeypatch, "invokeai", hires=False)
    with pytest.raises(ValidationFailed, match="`hires`: engine 'invokeai' does not take it"):
        resolve_spec(request, registry, settings)


def test_the_stack_starts_workers_for_local_selected_and_located_engines(clean_env: None) -> None:
    assert configured_engines(make_settings()) == ["diffusers"]
    assert configured_engines(make_settings(IMAGE_ENGINE="a1111")) == ["diffusers", "a1111"]
    assert configured_engines(make_settings(INVOKE_PORT=9999)) == ["diffusers", "invokeai"]
    assert configured_engines(make_settings(COMFYUI_URL="http://127.0.0.1:1")) == ["diffusers", "comfyui"]
    # Credentials alone do not say where a server is.
    assert configured_engines(make_settings(A1111_API_AUTH="user:pass")) == ["diffusers"]


def test_remediation_names_the_settings_that_locate_each_server() -> None:
    assert {d.name: d.settings_hint() for d in server_engines()} == {
        "comfyui": "COMFYUI_URL",
        "a1111": "A1111_BASE_URL (and A1111_API_AUTH)",
        "invokeai": "INVOKE_HOST and INVOKE_PORT",
    }


def test_a_plain_worker_serves_the_default_engine() -> None:
    assert Settings.model_fields["image_engine"].default == DEFAULT_ENGINE
    assert worker_command(DEFAULT_ENGINE) == "images-worker"
    assert ENGINES["comfyui"].worker_command == "images-worker --engine comfyui"
    # A plain `images-worker` serves IMAGE_ENGINE: with IMAGE_ENGINE=comfyui, diffusers needs the flag.
    assert worker_command("diffusers", "comfyui") == "images-worker --engine diffusers"
    assert worker_command("comfyui", "comfyui") == "images-worker"


def test_asking_for_an_unknown_capability_is_a_bug_not_an_empty_list() -> None:
    assert engines_with("lora") == ["diffusers"]
    with pytest.raises(ValueError, match="unknown capability 'loras'"):
        engines_with("loras")
