"""The one place where exceptions become HTTP: `{"error": {code, message, remediation, detail}}`.
No stack trace ever reaches a client; unexpected errors are logged with the request path."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import error_response
from services.contracts import ErrorCode, ErrorInfo

from ..audit import audit_refusal
from ..errors import KittyError, QueueUnavailable

log = logging.getLogger("kitty.images.api")

_HTTP_CODES = {401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND, 429: ErrorCode.RATE_LIMITED}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        fields.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid")})
    return fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KittyError)
    async def _kitty(request: Request, exc: KittyError) -> JSONResponse:
        if exc.status >= 500:
            log.warning(
                "request failed",
                extra={"path": request.url.path, "code": exc.code.value, "error": exc.message},
            )
        await audit_refusal(request, exc.code)
        return error_response(exc.status, exc.to_info(), exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        info = ErrorInfo(
            code=ErrorCode.VALIDATION_ERROR,
            message=f"invalid request: {summary}",
            remediation=[
                "Fix the fields listed in detail (each names the field and what it accepts); the README's "
                "API section describes every request."
            ],
            detail=fields,
        )
        await audit_refusal(request, info.code, exc.body)
        return error_response(400, info)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        message = (
            str(exc.detail) if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        )
        await audit_refusal(request, code)
        return error_response(
            exc.status_code, ErrorInfo(code=code, message=message), getattr(exc, "headers", None)
        )

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        err = QueueUnavailable(f"the job queue (Redis) is not reachable: {exc}")
        await audit_refusal(request, err.code)
        return error_response(err.status, err.to_info())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        info = ErrorInfo(
            code=ErrorCode.INTERNAL_ERROR,
            message="the images-service hit an unexpected error",
            remediation=["Retry; if it persists, check the images-service log."],
        )
        await audit_refusal(request, info.code)
        return error_response(500, info)
