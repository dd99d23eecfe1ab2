"""The `tiny_models` fixture: the tiny random-weight pipelines, built once per test session.

Import it where it is used (``from tests.support.tiny_models import tiny_models``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before diffusers/huggingface_hub are first imported: they read it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a models.yaml registering tiny-sd15, tiny-sdxl, tiny-sdxl-refiner, tiny-sd3 and
    tiny-flux, the tiny LoRA,
    ControlNets (tiny-canny, tiny-depth, tiny-sdxl-canny) and IP-Adapter (tiny-ip) (~5 s to build)."""
    from services.images_service.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    models_yaml = root / "models.yaml"
    build_tiny_models(root / "models", models_yaml)
    return models_yaml
