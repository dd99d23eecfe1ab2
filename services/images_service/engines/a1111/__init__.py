"""The AUTOMATIC1111 engine: `payload` builds the render's body (pure), `client` speaks the API
(routes, error bodies, progress, interrupt, the answer), `engine` glues them into an `Engine`."""

from __future__ import annotations

from .client import A1111Client, a1111_message, new_task_id, parse_api_auth
from .engine import A1111Engine
from .payload import IMG2IMG, TXT2IMG, render_request

__all__ = [
    "IMG2IMG",
    "TXT2IMG",
    "A1111Client",
    "A1111Engine",
    "a1111_message",
    "new_task_id",
    "parse_api_auth",
    "render_request",
]
