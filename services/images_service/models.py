"""The model registry: `models.yaml` maps a name to a local diffusers folder or a hub id.

Read by the API (to validate and resolve defaults) and by workers (to load); no torch here.
Both shapes are accepted: the seed's flat ``name: /path/or/hub-id`` and the richer

    models:
      sdxl_base:
        repo: stabilityai/stable-diffusion-xl-base-1.0   # or path: /models/sdxl
        refiner: sdxl_refiner
        defaults: {width: 1024, height: 1024, steps: 30, cfg: 7.0}
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ModelNotFound, ValidationFailed

CATALOG: dict[str, dict[str, Any]] = {
    "sdxl_base": {"repo": "stabilityai/stable-diffusion-xl-base-1.0", "refiner": "sdxl_refiner"},
    "sdxl_refiner": {"repo": "stabilityai/stable-diffusion-xl-refiner-1.0"},
    "sd15_base": {
        "repo": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "defaults": {"width": 512, "height": 512, "steps": 30, "cfg": 7.0, "scheduler": "euler_a"},
    },
    "sd35_medium": {"repo": "stabilityai/stable-diffusion-3.5-medium", "defaults": {"steps": 28, "cfg": 4.5}},
    "flux_schnell": {"repo": "black-forest-labs/FLUX.1-schnell", "defaults": {"steps": 4, "cfg": 0.0}},
}
"""Names `kitty-images models pull NAME` knows without being told a repo id."""

FALLBACK_DEFAULTS: dict[str, Any] = {
    "width": 1024,
    "height": 1024,
    "steps": 30,
    "cfg": 7.0,
    "scheduler": None,
}
"""The seed's SDXL defaults, used for anything an entry does not set."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    """An absolute local folder, or a hub repo id."""
    is_local: bool
    refiner: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def default(self, key: str) -> Any:
        return self.defaults.get(key, FALLBACK_DEFAULTS.get(key))

    def fetch_hint(self) -> str:
        if self.is_local:
            return (
                f"kitty-images models pull {self.name}  (or build the demo models: kitty-images models tiny)"
            )
        return f"kitty-images models pull {self.name}"


def not_found(name: str, known: list[str]) -> ModelNotFound:
    hints = [f"Fetch it: kitty-images models pull {name}"]
    if known:
        hints.append(f"Or use one of: {', '.join(known)} (kitty-images models list)")
    else:
        hints.append("Or build small demo models with: kitty-images models tiny")
    return ModelNotFound(f"model '{name}' is not registered in models.yaml", remediation=hints)


def _parse_entry(name: str, raw: Any, base_dir: Path) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"source": raw}
    if not isinstance(raw, dict):
        raise ValidationFailed(f"models.yaml entry '{name}' must be a path, a hub id or a mapping")
    raw = dict(raw)
    path = raw.pop("path", None)
    repo = raw.pop("repo", None)
    source = raw.pop("source", None) or path or repo
    if not source:
        raise ValidationFailed(f"models.yaml entry '{name}' needs 'path' or 'repo'")
    source = str(source)
    candidate = Path(os.path.expanduser(source))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    # A hub id looks like "org/name"; anything that exists on disk, or was given as `path`, is local.
    is_local = path is not None or candidate.exists() or source.startswith((".", "/", "~"))
    return ModelEntry(
        name=name,
        source=str(candidate.resolve()) if is_local else source,
        is_local=is_local,
        refiner=raw.pop("refiner", None),
        defaults=dict(raw.pop("defaults", {}) or {}),
        extra=raw,
    )


def parse_models_yaml(text: str, base_dir: Path) -> dict[str, ModelEntry]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValidationFailed("models.yaml must be a mapping of model names")
    models = data.get("models", data) if isinstance(data.get("models"), dict) else data
    return {str(name): _parse_entry(str(name), raw, base_dir) for name, raw in models.items()}


class ModelRegistry:
    """models.yaml, re-read when the file changes (so `models tiny` needs no restart)."""

    def __init__(self, path: Path, default_model: str | None = None) -> None:
        self.path = Path(path)
        self.default_model = default_model
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._entries: dict[str, ModelEntry] = {}

    def entries(self) -> dict[str, ModelEntry]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._entries = parse_models_yaml(self.path.read_text(), self.path.parent)
                self._stamp = stamp
            return self._entries

    def names(self) -> list[str]:
        return list(self.entries())

    def get(self, name: str) -> ModelEntry:
        entries = self.entries()
        if name not in entries:
            raise not_found(name, list(entries))
        return entries[name]

    def default_name(self) -> str:
        if self.default_model:
            return self.default_model
        names = self.names()
        if not names:
            raise ModelNotFound(
                f"no models are registered (looked in {self.path})",
                remediation=[
                    "Build small demo models: kitty-images models tiny",
                    "Or fetch a real one: kitty-images models pull sdxl_base",
                    "Or point MODELS_YAML at your models.yaml",
                ],
            )
        return names[0]


def register_model(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Add or replace `name` in the models.yaml at `path`, keeping the other entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    models = data.setdefault("models", {}) if "models" in data or not data else data
    models[name] = entry
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
