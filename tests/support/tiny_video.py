"""The `tiny_video_models` fixture: the tiny random-weight video pipelines of
`services.images_service.video.tiny`, saved as diffusers folders once per session."""

from __future__ import annotations

import os

import pytest

# Set before diffusers/huggingface_hub are first imported: they read it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.images_service.video.tiny import (  # noqa: E402
    TinyVideoModels,
    build_tiny_animatediff,
    build_tiny_svd,
    build_tiny_video_models,
)

__all__ = ["TinyVideoModels", "build_tiny_animatediff", "build_tiny_svd", "tiny_video_models"]


@pytest.fixture(scope="session")
def tiny_video_models(tmp_path_factory: pytest.TempPathFactory) -> TinyVideoModels:
    """Folders of the tiny SVD model, SD1.5 model and motion adapter (~2 s to build)."""
    return build_tiny_video_models(tmp_path_factory.mktemp("tiny_video"))
