"""How the gateway and the images-service run under uvicorn: the same hardened options for both."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

from .limits import MAX_HEADER_BYTES

HTTP_IMPLEMENTATION = "h11"
"""uvicorn's default parser (httptools) puts no bound on a request's headers: measured here, a 10 MB
header was accepted and proxied. h11 stops at MAX_HEADER_BYTES while parsing and answers 400, before
more memory is spent; its lower speed is nothing next to a render's seconds."""


def server_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON logging, configured once by the caller
        # No access log: URLs can carry secrets (the event stream's ?api_key=, download signatures).
        access_log=False,
        http=HTTP_IMPLEMENTATION,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def serve_http(app: ASGIApp, host: str, port: int) -> None:
    uvicorn.Server(server_config(app, host, port)).run()
