"""The one JSON error response of every process (`services.contracts.error_body` as its body), for
the exception handlers and the middlewares that answer before any route runs."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from services.contracts import ErrorInfo, error_body


def error_response(status: int, info: ErrorInfo, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(info), status_code=status, headers=headers)
