"""The tests run against the locked versions, and the lock agrees with pyproject.toml's ranges.

A green suite on whatever pip resolved that day once hid a worker that rendered every long job
again and again under the rq a fresh install got. `make install` installs with requirements.lock as
constraints; these tests fail when the environment drifts from it or the lock from pyproject."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict[str, Version]:
    """Pins of requirements.lock that apply to this interpreter and platform."""
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not an exact pin: {line}"
        pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(dep) for dep in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(dep) for dep in extra]
    return found


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = locked()
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]} outside pyproject's {requirement}: run `make lock`"
        )


def test_the_installed_versions_are_the_locked_ones() -> None:
    pins = locked()
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    for name in ("rq", "redis", "fastapi", "starlette", "httpx", "uvicorn", "pydantic", "boto3"):
        assert name in installed, f"{name} is not installed"
    drifted = {
        name: (installed[name], str(version))
        for name, version in pins.items()
        # A local build label (torch 2.13.0+cpu) is the same release as the pin.
        if name in installed and Version(installed[name]).public != version.public
    }
    assert not drifted, f"installed ≠ locked (name: (installed, locked)): {drifted}; run `make install`"


def test_markers_in_the_lock_are_valid() -> None:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        code = line.split("#", 1)[0]
        if ";" in code:
            Marker(code.split(";", 1)[1].strip())


def test_the_comfyui_peer_is_locked_too() -> None:
    """The real ComfyUI's venv (bench/peers/comfyui.py) installs with these as
    constraints: exact pins, and never a torch of its own (ours is pinned beside them)."""
    lines = (ROOT / "bench/peers/comfyui-requirements.lock").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert len(pins) > 20
    for requirement in pins:
        assert [spec.operator for spec in requirement.specifier] == ["=="], requirement
        assert canonicalize_name(requirement.name) not in {"torch", "torchvision", "torchaudio"}
