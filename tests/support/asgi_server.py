"""Serve an ASGI app (a fake peer server) for real on a loopback port, in a background thread.

Adapters are tested against these over real HTTP and websockets: their own HTTP calls are never
patched."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.support.servers import free_port

STARTUP_TIMEOUT_S = 10.0


@contextmanager
def serve_asgi(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) while `app` is served; stop it afterwards."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"asgi-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
