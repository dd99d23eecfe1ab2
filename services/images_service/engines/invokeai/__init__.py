"""The InvokeAI engine: `graph` builds the batch (pure), `client` speaks InvokeAI's API (version,
models, uploads, queue, images), `engine` glues them into an `Engine`."""

from __future__ import annotations

from .client import InvokeAIClient, parse_version
from .engine import InvokeAIEngine
from .graph import (
    ControlImage,
    InvokeModel,
    build_graph,
    choose_controlnets,
    choose_model,
    invoke_scheduler,
    make_batch,
    seed_data,
)

__all__ = [
    "ControlImage",
    "InvokeAIClient",
    "InvokeAIEngine",
    "InvokeModel",
    "build_graph",
    "choose_controlnets",
    "choose_model",
    "invoke_scheduler",
    "make_batch",
    "parse_version",
    "seed_data",
]
