"""The models check: models.yaml reads, and every model it registers is on this machine (a diffusers
folder, or a hub id in the Hugging Face cache), since workers never download during a job."""

from __future__ import annotations

import os
from pathlib import Path

from ..engines.descriptors import is_local_engine
from ..settings import Settings
from .result import CheckResult, Status


def hf_hub_cache(settings: Settings) -> Path:
    """Where huggingface_hub keeps downloads, resolved as it does (HF_HOME from settings first,
    because the worker exports it before the hub library is imported)."""
    if settings.hf_home is not None:
        return Path(settings.hf_home).expanduser() / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def is_cached_on_hub(cache: Path, repo_id: str) -> bool:
    snapshots = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any((snap / "model_index.json").is_file() for snap in snapshots.iterdir())


def check_models(settings: Settings) -> list[CheckResult]:
    from ..models import ModelRegistry

    path = settings.models_yaml
    uses_diffusers = is_local_engine(settings.image_engine)
    missing: Status = "fail" if uses_diffusers else "warn"
    try:
        entries = ModelRegistry(path).entries()
    except Exception as exc:  # KittyError for a bad shape, yaml.YAMLError for bad YAML, OSError
        return [
            CheckResult(
                "models",
                "fail",
                f"{path} cannot be read: {exc}",
                ["Fix the YAML (see models.example.yaml), or point MODELS_YAML at a valid file."],
            )
        ]
    if not entries:
        return [
            CheckResult(
                "models",
                "warn" if uses_diffusers else "info",
                f"no models registered in {path}",
                [
                    "Build small demo models: kitty-images models tiny",
                    "Or fetch one: kitty-images models pull sdxl_base",
                ]
                if uses_diffusers
                else [],
            )
        ]
    cache = hf_hub_cache(settings)
    results = []
    for name, entry in entries.items():
        check = f"model {name}"
        if entry.is_local:
            folder = Path(entry.source)
            if (folder / "model_index.json").is_file():
                results.append(CheckResult(check, "ok", f"{folder} holds a diffusers model"))
            elif folder.is_file():  # a single-file checkpoint: loads with a family folder's configs
                results.append(CheckResult(check, "ok", f"{folder} is a single-file checkpoint"))
            elif folder.is_dir():
                results.append(
                    CheckResult(
                        check,
                        missing,
                        f"{folder} exists but has no model_index.json: it is not a diffusers model folder",
                        [f"Fetch it again: {entry.fetch_hint()}", "Or fix its path in models.yaml."],
                    )
                )
            else:
                results.append(
                    CheckResult(
                        check,
                        missing,
                        f"{folder} does not exist on this machine",
                        [f"Fetch it: {entry.fetch_hint()}", f"Or fix its path in {path}."],
                    )
                )
        elif is_cached_on_hub(cache, entry.source):
            results.append(CheckResult(check, "ok", f"hub model {entry.source} is in the cache {cache}"))
        else:
            results.append(
                CheckResult(
                    check,
                    missing,
                    f"hub model {entry.source} is not in this machine's Hugging Face cache ({cache});"
                    " workers never download during a job",
                    [f"Fetch it: kitty-images models pull {name}", "Or point HF_HOME at the cache it is in."],
                )
            )
    return results
