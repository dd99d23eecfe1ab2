"""Shared fixtures: real Redis and S3 servers (processes), tiny diffusers models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.support.servers",
    "tests.support.tiny_models",
    "tests.support.tiny_video",
    "tests.support.harness",
]
