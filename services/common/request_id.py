"""Request ids (gateway and images-service): keep the caller's ``X-Request-ID`` when it is sane,
else make one; echo it on every response; tag the request's log lines with it.

A pure ASGI middleware (not ``BaseHTTPMiddleware``) so streamed bodies and server-sent events pass
through it untouched.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""Ids a caller may choose; anything else is replaced, so logs and headers cannot be injected into."""

_STATE_KEY = "request_id"


def make_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(scope: MutableMapping[str, Any]) -> str | None:
    state = scope.get("state") or {}
    value = state.get(_STATE_KEY)
    return value if isinstance(value, str) else None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and REQUEST_ID_PATTERN.match(incoming) else make_request_id()
        scope.setdefault("state", {})[_STATE_KEY] = request_id
        raw_id = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw_id))
                message["headers"] = headers
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
