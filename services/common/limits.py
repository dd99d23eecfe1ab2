"""Request size limits of the gateway and the images-service: bodies of at most 1 MB (refused from
``Content-Length`` before the app runs, and counted while streaming, so a chunked body cannot slip
past), 20 MB on the one route that takes an image upload, and request heads of at most 32 KB.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which buffers and breaks streaming); the answers
are 413 and 431 in the wire's error shape. `services.common.server` bounds the head already while
uvicorn parses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.contracts import ErrorCode, ErrorInfo

from .errors import error_response

MAX_BODY_BYTES = 1024 * 1024
"""The largest request body accepted. A generate request with HIP-35's largest raw workflow (1 MB of
JSON as the schema measures it, with spaces) fits when sent compact; nothing else comes close."""

TOO_LARGE_MESSAGE = "request body larger than 1 MB"

UPLOAD_ROUTE = "/api/images/uploads"
"""The route whose body is an image (``POST``): the same path on the gateway and the service."""

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""HIP-35's upload limit: 20 MB of PNG, JPEG or WebP."""


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    remediation: str
    """What the 413 tells the caller to do."""


DEFAULT_BODY_LIMIT = BodyLimit(
    MAX_BODY_BYTES, "Send a smaller body: a prompt is at most 10,000 characters, a raw workflow 1 MB of JSON."
)

ROUTE_BODY_LIMITS: dict[tuple[str, str], BodyLimit] = {
    ("POST", UPLOAD_ROUTE): BodyLimit(
        MAX_UPLOAD_BYTES,
        "Upload a smaller image: at most 20 MB of PNG, JPEG or WebP (JPEG and WebP compress photos best).",
    )
}
"""(method, exact path) → its limit instead of `DEFAULT_BODY_LIMIT`; every other route keeps 1 MB."""

MAX_HEADER_BYTES = 32 * 1024
"""The largest request head (request line and headers) accepted; real ones are well under 4 KB."""


class BodyTooLarge(HTTPException):
    """Raised into the app from ``receive`` when a streamed body passes the limit. An HTTPException,
    so frameworks pass it on rather than reporting a parse error or an unexpected failure; whatever
    the app answers then, the middleware replaces it with its own 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE_MESSAGE)


def too_large_response(limit: BodyLimit = DEFAULT_BODY_LIMIT) -> JSONResponse:
    info = ErrorInfo(
        code=ErrorCode.VALIDATION_ERROR,
        message=f"request body larger than {limit.max_bytes / 2**20:g} MB",
        remediation=[limit.remediation],
    )
    # The rest of the body is never read, so the connection cannot carry another request.
    return error_response(413, info, {"Connection": "close"})


def headers_too_large_response() -> JSONResponse:
    info = ErrorInfo(
        code=ErrorCode.VALIDATION_ERROR,
        message="request headers larger than 32 KB",
        remediation=["Send fewer or shorter headers."],
    )
    return error_response(431, info, {"Connection": "close"})


def head_size(scope: Scope) -> int:
    """Bytes of the request's target and headers, about as sent (": " and CRLF per header)."""
    return (
        sum(len(key) + len(value) + 4 for key, value in scope.get("headers", []))
        + len(scope.get("raw_path") or b"")
        + len(scope.get("query_string", b""))
    )


def declared_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
        route_limits: dict[tuple[str, str], BodyLimit] | None = None,
    ) -> None:
        """`route_limits` (default `ROUTE_BODY_LIMITS`) replaces `max_bytes` for exact (method, path)s."""
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.route_limits = ROUTE_BODY_LIMITS if route_limits is None else route_limits
        self._default = BodyLimit(max_bytes, DEFAULT_BODY_LIMIT.remediation)

    def body_limit(self, scope: Scope) -> BodyLimit:
        return self.route_limits.get((scope.get("method", ""), scope.get("path", "")), self._default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Behind a server without a head limit of its own (SERVER_LIMITS sets one for uvicorn).
        if head_size(scope) > self.max_header_bytes:
            await headers_too_large_response()(scope, receive, send)
            return
        limit = self.body_limit(scope)
        declared = declared_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await too_large_response(limit)(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers now, the 413 below goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await too_large_response(limit)(scope, receive, send)
