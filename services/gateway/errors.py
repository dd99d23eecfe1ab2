"""The gateway's own exceptions and the one place that turns any failure into the wire's error shape.

Every error a client meets here is ``{"error": {"code", "message", "remediation", "detail"}}``; no stack
trace ever leaves the process (it goes to the log instead).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import error_response as plain_error_response
from services.common.request_id import REQUEST_ID_HEADER, request_id_of
from services.contracts import ErrorCode, ErrorInfo

log = logging.getLogger("kitty.gateway")


class GatewayError(Exception):
    """A failure the gateway answers itself, with a wire code, an HTTP status and what to do next."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        remediation: list[str] | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(code=code, message=message, remediation=remediation or [], detail=detail)


def upstream_unavailable(base: str, why: str, *, status: int = 502) -> GatewayError:
    return GatewayError(
        status,
        ErrorCode.UPSTREAM_UNAVAILABLE,
        f"images-service at {base} is not reachable ({why})",
        remediation=[
            "Start it with `make run` (the whole stack) or `images-service` (the API alone).",
            f"Check IMAGES_BASE (now {base}) points at the images-service's host and port.",
        ],
    )


def upstream_timeout(base: str, why: str, *, status: int = 504) -> GatewayError:
    return GatewayError(
        status,
        ErrorCode.UPSTREAM_TIMEOUT,
        f"images-service at {base} did not answer in time ({why})",
        remediation=[
            "Check the images-service's log; it may be blocked on Redis or storage.",
            "Raise GATEWAY_UPSTREAM_TIMEOUT if the service is merely slow.",
        ],
    )


def route_not_found(method: str, path: str) -> GatewayError:
    return GatewayError(
        404,
        ErrorCode.NOT_FOUND,
        f"no such route on the gateway: {method} {path}",
        remediation=["The images API lives under /api/images/; the gallery under /vision."],
    )


def error_response(
    request: Request, status: int, info: ErrorInfo, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    all_headers = dict(headers or {})
    # The 500 handler runs outside the request-id middleware, so the header is set here too.
    request_id = request_id_of(request.scope)
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return plain_error_response(status, info, all_headers)


_STATUS_CODES: dict[int, ErrorCode] = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.NOT_FOUND,
    413: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.RATE_LIMITED,
}
"""Framework-raised HTTP errors (unknown route, wrong method) mapped onto wire codes."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(request, exc.status, exc.info)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(request, 404, route_not_found(request.method, request.url.path).info)
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.INTERNAL_ERROR)
        info = ErrorInfo(code=code, message=str(exc.detail))
        return error_response(request, exc.status_code, info, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        info = ErrorInfo(
            code=ErrorCode.VALIDATION_ERROR, message="invalid request", detail=jsonable_errors(exc)
        )
        return error_response(request, 400, info)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": request_id_of(request.scope)})
        info = ErrorInfo(
            code=ErrorCode.INTERNAL_ERROR,
            message="the gateway failed to handle this request",
            remediation=[f"Report it with this response's {REQUEST_ID_HEADER}; the gateway log has details."],
        )
        return error_response(request, 500, info)


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
