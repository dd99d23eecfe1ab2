"""How the gateway and the images-service run under uvicorn: the same hardened options for both,
and the one clear line an operator gets when a port cannot be had (the worker's /metrics too)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from .limits import MAX_HEADER_BYTES

HTTP_IMPLEMENTATION = "h11"
"""uvicorn's default parser (httptools) puts no bound on a request's headers: measured here, a 10 MB
header was accepted and proxied. h11 stops at MAX_HEADER_BYTES while parsing and answers 400, before
more memory is spent; its lower speed is nothing next to a render's seconds."""


class PortUnavailable(Exception):
    """A port this process was told to listen on cannot be had: in use, or not allowed."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host, self.port, self.error = host, port, error
        super().__init__(f"cannot listen on {host}:{port}: {error.strerror or error}")

    @property
    def is_in_use(self) -> bool:
        return self.error.errno == errno.EADDRINUSE

    def explain(self, setting: str) -> str:
        """One line for the operator: which port, why, and the setting that moves it."""
        if self.is_in_use:
            return f"port {self.port} on {self.host} is already in use; set {setting} to a free port"
        return f"{self}; set {setting} to another port"


@contextmanager
def binding(host: str, port: int) -> Iterator[None]:
    """Turn the `OSError` of a bind to `host`:`port` inside the block into `PortUnavailable`."""
    try:
        yield
    except OSError as exc:
        raise PortUnavailable(host, port, exc) from None


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` the way uvicorn binds one (SO_REUSEADDR, so a port left in
    TIME_WAIT by a restart is taken again); raises `PortUnavailable`."""
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and
    # accepted sockets inherit this one's. With proto 0, Nagle and delayed ACKs added ~40 ms to
    # every small answer (submission p50 6 → 50 ms in `make bench`).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        with binding(host, port):
            sock.bind((host, port))
    except PortUnavailable:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise `PortUnavailable` when `host`:`port` cannot be listened on right now."""
    listen_socket(host, port).close()


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
    """Serve `app` until SIGINT/SIGTERM. The socket is bound here, before the app starts, so a busy
    port raises `PortUnavailable` for the caller to explain (uvicorn would log it and exit 1 after
    running the app's startup and shutdown)."""
    sock = listen_socket(host, port)
    try:
        uvicorn.Server(server_config(app, host, port)).run(sockets=[sock])
    finally:
        sock.close()
