"""What the server engines (ComfyUI, AUTOMATIC1111, InvokeAI) share: one pooled httpx client per
engine, and one mapping from transport failures and HTTP errors to the service's error codes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from PIL import Image

from ..errors import EngineError, EngineOffline, EngineTimeout, KittyError, Unauthorized
from .base import ImageLoader

READ_TIMEOUT_S = 60.0
"""Longest wait for one HTTP answer from a server engine (A1111's txt2img answers only when done)."""

HEALTH_TIMEOUT_S = 2.0
"""Health checks must be quick: the engines matrix calls every engine."""

SERVER_MESSAGE_CHARS = 500
"""How much of a server's error text is passed on to the user."""


def make_client(
    base_url: str,
    *,
    connect_timeout_s: float,
    read_timeout_s: float = READ_TIMEOUT_S,
    auth: httpx.Auth | tuple[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        auth=auth,
        transport=transport,
        trust_env=False,  # a proxy meant for the internet must never catch a loopback engine
    )


def server_message(response: httpx.Response) -> str:
    """The server's own words for an error, from a JSON body when there is one."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:SERVER_MESSAGE_CHARS] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        for key in ("error", "detail", "message", "errors"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("detail") or value
            if value:
                return str(value)[:SERVER_MESSAGE_CHARS]
    return str(body)[:SERVER_MESSAGE_CHARS]


@contextmanager
def speaking_to(
    engine: str, base_url: str, start_hint: str, url_setting: str | None = None
) -> Iterator[None]:
    """Map what can go wrong talking to a server engine onto the service's errors.

    `start_hint` says how to start the server, e.g. ``"python main.py --listen 127.0.0.1"``;
    `url_setting` names the setting that points at it (``COMFYUI_URL``).
    """
    where = f"set {url_setting}" if url_setting else f"the {engine} URL setting"
    try:
        yield
    except KittyError:
        raise
    except httpx.TimeoutException as exc:
        raise EngineTimeout(
            f"{engine} at {base_url} did not answer in time ({type(exc).__name__})",
            remediation=[f"Check that {engine} is not stuck or overloaded.", "Raise IMAGES_JOB_TIMEOUT."],
        ) from exc
    except httpx.TransportError as exc:
        raise EngineOffline(
            f"{engine} is not reachable at {base_url}: {exc}",
            remediation=[
                f"Start {engine}: {start_hint}",
                f"Or point the service at a running one: {where}.",
            ],
        ) from exc
    except httpx.HTTPStatusError as exc:
        response = exc.response
        message = f"{engine} answered HTTP {response.status_code}: {server_message(response)}"
        if response.status_code in (401, 403):
            raise Unauthorized(
                message,
                remediation=[f"Set the credentials {engine} expects (see the README's engines section)."],
            ) from exc
        raise EngineError(message, remediation=[f"Check {engine}'s own log for this request."]) from exc


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_text_chunks(data: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """The named PNG text chunks a server wrote, to keep them in the stored PNG."""
    info = Image.open(io.BytesIO(data)).info
    return {name: str(info[name]) for name in names if name in info}


def job_input(
    loader: ImageLoader | None, key: str, mode: str, size: tuple[int, int], engine: str
) -> Image.Image:
    """A job's input picture (``mode`` "RGB") or mask ("L") as a server engine sends it: read from
    our store and resized here to the job's size, so the server scales nothing and a mask covers its
    picture pixel for pixel."""
    if loader is None:
        raise EngineError(
            "this worker has no store to read the job's input image from",
            remediation=[f"Run these jobs on `images-worker --engine {engine}`, which opens the store."],
        )
    return loader(key).convert(mode).resize(size, Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
