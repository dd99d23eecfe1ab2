"""A models.yaml with the KITTY guide's model names (`sdxl_base` with its `sdxl_refiner`,
`sd15_base`), all pointing at one empty folder: for fake engines, which load nothing, so the guide's
requests can be sent with the names they use."""

from __future__ import annotations

from pathlib import Path

import yaml

GUIDE_MODELS = {
    "sdxl_base": {"refiner": "sdxl_refiner", "defaults": {"width": 1024, "height": 1024, "steps": 30}},
    "sdxl_refiner": {"defaults": {"width": 1024, "height": 1024}},
    "sd15_base": {"defaults": {"width": 512, "height": 512, "scheduler": "euler_a"}},
}
"""The guide's MODELS_YAML names (SEEDS.md §1, Environment) with SDXL's 1024² and SD 1.5's 512²."""


def write_guide_models(tmp_path: Path) -> Path:
    """The first entry, `sdxl_base`, is the default model (as in the guide)."""
    folder = tmp_path / "guide-model"
    folder.mkdir(exist_ok=True)
    models = {name: {"path": str(folder), **entry} for name, entry in GUIDE_MODELS.items()}
    path = tmp_path / "guide-models.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path
