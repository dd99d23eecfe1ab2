"""Request size limits of the gateway and the images-service: bodies of at most 1 MB (refused from
``Content-Length`` before the app runs, and counted while streaming, so a chunked body cannot slip
past) and request heads of at most 32 KB.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which buffers and breaks streaming); the answers
are 413 and 431 in the wire's error shape. `services.common.server` bounds the head already while
uvicorn parses it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.contracts import ErrorBody, ErrorCode, ErrorInfo

MAX_BODY_BYTES = 1024 * 1024
"""The largest request body accepted. A generate request with HIP-35's largest raw workflow (1 MB of
JSON as the schema measures it, with spaces) fits when sent compact; nothing else comes close."""

TOO_LARGE_MESSAGE = "request body larger than 1 MB"

MAX_HEADER_BYTES = 32 * 1024
"""The largest request head (request line and headers) accepted; real ones are well under 4 KB."""


class BodyTooLarge(HTTPException):
    """Raised into the app from ``receive`` when a streamed body passes the limit. An HTTPException,
    so frameworks pass it on rather than reporting a parse error or an unexpected failure; whatever
    the app answers then, the middleware replaces it with its own 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE_MESSAGE)


def too_large_response() -> JSONResponse:
    info = ErrorInfo(
        code=ErrorCode.VALIDATION_ERROR,
        message=TOO_LARGE_MESSAGE,
        remediation=[
            "Send a smaller body: a prompt is at most 10,000 characters, a raw workflow 1 MB of JSON.",
        ],
    )
    # The rest of the body is never read, so the connection cannot carry another request.
    return JSONResponse(
        ErrorBody(error=info).model_dump(mode="json"), status_code=413, headers={"Connection": "close"}
    )


def headers_too_large_response() -> JSONResponse:
    info = ErrorInfo(
        code=ErrorCode.VALIDATION_ERROR,
        message="request headers larger than 32 KB",
        remediation=["Send fewer or shorter headers."],
    )
    return JSONResponse(
        ErrorBody(error=info).model_dump(mode="json"), status_code=431, headers={"Connection": "close"}
    )


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
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Behind a server without a head limit of its own (SERVER_LIMITS sets one for uvicorn).
        if head_size(scope) > self.max_header_bytes:
            await headers_too_large_response()(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await too_large_response()(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
            await too_large_response()(scope, receive, send)
