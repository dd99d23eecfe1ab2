"""What every server engine's package builds on: the engine's one connection and its lifetime
(`ServerEngine`), the API client's base that maps a server's failures onto the service's errors
(`ServerClient`), a job's input pictures at the job's size (`JobInputs`, `uploaded_inputs`) and the
job's clock (`JobClock`: deadline and poll interval).

The AUTOMATIC1111, InvokeAI and ComfyUI packages use it (ComfyUI calls `uploaded_inputs` with no
``delete``: it cannot delete an input).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import httpx
from PIL import Image

from services.contracts import RenderSpec

from ..settings import Settings
from .base import ImageLoader
from .remote import job_input, make_client, speaking_to

InputRole = Literal["image", "mask"]
"""Which of a job's inputs a picture is: the picture to start from, or the mask (white repaints)."""


@dataclass(frozen=True)
class JobInputs:
    """A job's picture ("RGB") and mask ("L"), both at the job's size, or None where it has none."""

    image: Image.Image | None = None
    mask: Image.Image | None = None


def read_control_maps(loader: ImageLoader | None, spec: RenderSpec, engine: str) -> list[Image.Image]:
    """The map each of the spec's controls steers with, at the first pass's size, made on our side
    (`control_maps.control_map`: canny edges, or the picture as the ready map); none without controls."""
    if not spec.controls:
        return []
    from ..control_maps import control_map  # OpenCV: imported only for a job with controls

    size = (spec.width, spec.height)
    return [control_map(job_input(loader, c.image, "RGB", size, engine), c, size) for c in spec.controls]


def read_job_inputs(loader: ImageLoader | None, spec: RenderSpec, engine: str) -> JobInputs:
    """Both inputs are read before anything is sent, so a missing mask never strands an upload."""
    if spec.image is None:
        return JobInputs()
    size = (spec.width, spec.height)
    image = job_input(loader, spec.image, "RGB", size, engine)
    mask = None if spec.mask is None else job_input(loader, spec.mask, "L", size, engine)
    return JobInputs(image, mask)


@contextmanager
def uploaded_inputs(
    inputs: JobInputs,
    upload: Callable[[Image.Image, InputRole], str],
    delete: Callable[[str], None] | None = None,
) -> Iterator[tuple[str | None, str | None]]:
    """The names the server gave our uploads of `inputs` (None for what the job lacks), deleted
    again by `delete` when the block ends, however it ends (also when the mask's upload fails).
    `delete` must not raise: the job's own outcome is what the caller sees."""
    uploaded: list[str] = []

    def send(picture: Image.Image | None, role: InputRole) -> str | None:
        if picture is None:
            return None
        uploaded.append(upload(picture, role))
        return uploaded[-1]

    try:
        yield send(inputs.image, "image"), send(inputs.mask, "mask")
    finally:
        if delete is not None:
            for name in uploaded:
                delete(name)


@contextmanager
def best_effort(log: logging.Logger, message: str, **extra: Any) -> Iterator[None]:
    """A request whose failure must not change the job's outcome (a cancel, an interrupt, a
    cleanup): an HTTP failure is logged as `message` and swallowed."""
    try:
        yield
    except httpx.HTTPError as exc:
        log.warning(message, extra={**extra, "error": repr(exc)})


@dataclass(frozen=True)
class JobClock:
    """One render's time: its deadline (IMAGES_JOB_TIMEOUT from `started`) and how often the
    server is polled (IMAGES_ENGINE_POLL_INTERVAL), which is also how often progress is reported
    and so how soon a cancel is seen."""

    started: float
    timeout_s: float
    poll_interval_s: float

    @classmethod
    def start(cls, settings: Settings) -> JobClock:
        return cls(time.monotonic(), settings.job_timeout_s, settings.engine_poll_interval_s)

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def is_over(self) -> bool:
        return time.monotonic() >= self.deadline

    def wait(self, done: threading.Event | None = None) -> bool:
        """Sleep one poll interval, or less when `done` is set meanwhile; whether it is set."""
        if done is None:
            time.sleep(self.poll_interval_s)
            return False
        return done.wait(self.poll_interval_s)


class ServerClient:
    """Base of one server's API client: the connection it speaks over and how what goes wrong on
    the way (unreachable, too slow, an HTTP error) becomes the service's errors, worded with the
    server's name, how to start it and the setting that points at it."""

    label: ClassVar[str]
    """The server's name in messages: ``AUTOMATIC1111``."""
    start_hint: ClassVar[str]
    """How to start the server, named when it cannot be reached."""
    url_setting: ClassVar[str]
    """The setting(s) that point at it: ``A1111_BASE_URL``."""

    def __init__(self, http: httpx.Client, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    def speaking(self) -> AbstractContextManager[None]:
        return speaking_to(self.label, self.base_url, self.start_hint, self.url_setting)


ClientT = TypeVar("ClientT", bound=ServerClient)


class ServerEngine(Generic[ClientT]):
    """Base of a server engine: its settings, its reader of job inputs, its one pooled connection
    (``_client``, closed by `close`) and its API client (`api`, a `client_class` over that
    connection). A subclass says where its server is (`server_url`) and, where the server wants
    them, which credentials to send (`server_auth`)."""

    name: str
    client_class: type[ClientT]

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        image_loader: ImageLoader | None = None,
    ) -> None:
        """`image_loader` reads a job's input image and mask from our store (image-to-image)."""
        self.settings = settings
        self.base_url = self.server_url(settings).rstrip("/")
        self._image_loader = image_loader
        self._client = make_client(
            self.base_url,
            connect_timeout_s=settings.engine_connect_timeout_s,
            auth=self.server_auth(settings),
            transport=transport,
        )
        self.api = self.client_class(self._client, self.base_url)
        self.is_transport_injected = transport is not None
        """Whether requests go through a transport handed in (a test's), which carries HTTP only."""
        self._version: str | None = None
        """The server's version as last seen (by a render or a health check)."""

    @classmethod
    def server_url(cls, settings: Settings) -> str:
        raise NotImplementedError

    @classmethod
    def server_auth(cls, settings: Settings) -> tuple[str, str] | None:
        """HTTP Basic credentials for every request; None sends none."""
        return None

    def close(self) -> None:
        self._client.close()

    def _job_inputs(self, spec: RenderSpec) -> JobInputs:
        return read_job_inputs(self._image_loader, spec, self.name)
