"""A typed client for the images API, spoken through the gateway or to the images-service directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .schema import (
    EnginesView,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    GenerateView,
    JobsView,
    JobView,
    LatestView,
    ModelsView,
    PresetsView,
    QueueView,
    SelectView,
    UploadView,
    UpscaleRequest,
)

DEFAULT_TIMEOUT_S = 30.0
"""Per-request timeout; generation itself is asynchronous, so no call should take long."""

POLL_INTERVAL_S = 0.25
"""How often `wait` asks for a job's view while it runs, when the service has no event stream."""

EVENTS_READ_TIMEOUT_S = 60.0
"""Longest silence tolerated on a job's event stream. The service sends a keep-alive comment every
15 s, so only a stream that is really dead goes this long without a byte."""

JOB_EVENT = "job"
"""The server-sent event type that carries a `JobView`."""

STREAM_UNAVAILABLE_STATUSES = frozenset({404, 405, 501, 502, 503, 504})
"""Answers to ``/events`` after which `watch` polls instead: no such route (an older service or a
proxy that does not know it), or a transport failure. Polling then shows the real error, if any."""


class ApiError(Exception):
    """An error answered by the API (or a transport failure shaped like one)."""

    def __init__(self, status: int, info: ErrorInfo) -> None:
        super().__init__(f"{info.code.value}: {info.message}")
        self.status = status
        self.info = info


def _error_from_response(response: httpx.Response) -> ApiError:
    try:
        info = ErrorInfo.model_validate(response.json()["error"])
    except Exception:
        info = ErrorInfo(
            code=ErrorCode.INTERNAL_ERROR,
            message=f"HTTP {response.status_code} from {response.request.url}",
            remediation=["Check that the URL points at a KITTY gateway or images-service."],
        )
    return ApiError(response.status_code, info)


def _unreachable(base_url: str, exc: httpx.HTTPError) -> ApiError:
    """A transport failure (no answer, a dropped connection) as the API error a caller handles."""
    if isinstance(exc, httpx.TimeoutException):
        return ApiError(
            504,
            ErrorInfo(
                code=ErrorCode.UPSTREAM_TIMEOUT,
                message=f"{base_url} did not answer in time",
                remediation=["Check that the service is running and not overloaded."],
            ),
        )
    return ApiError(
        502,
        ErrorInfo(
            code=ErrorCode.UPSTREAM_UNAVAILABLE,
            message=f"cannot reach {base_url}: {exc}",
            remediation=[
                "Start the stack with `make run`, or set KITTY_GATEWAY_URL to a running gateway.",
            ],
        ),
    )


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event of a ``text/event-stream``; ``event`` is ``"message"`` when unnamed."""

    event: str
    data: str
    id: str | None = None


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent | None]:
    """Parse ``text/event-stream`` lines (without their line endings) as the HTML spec says.

    Yields each event when its blank line arrives, and ``None`` for each comment line (keep-alives),
    so a consumer can notice the stream is alive. An event cut off by the stream's end is dropped.
    """
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        # `retry` and unknown fields are ignored: a consumer that reconnects polls instead.


class ImagesClient:
    """Sync client; pass ``transport`` to drive it against an in-process app or a mock."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._api_headers = headers
        self._timeout = timeout
        self._transport = transport
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImagesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                502,
                ErrorInfo(
                    code=ErrorCode.INTERNAL_ERROR,
                    message=f"expected JSON from {response.request.url}, "
                    f"got {response.headers.get('content-type') or 'no content type'}",
                    remediation=["Check that the URL points at a KITTY gateway or images-service."],
                ),
            ) from exc

    def generate(self, request: GenerateRequest | dict[str, Any]) -> GenerateView:
        # Only the fields the caller set: an absent field lets the service apply its own default.
        if isinstance(request, GenerateRequest):
            body = request.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        else:
            body = request
        return GenerateView.model_validate(self._call("POST", "/api/images/generate", json=body))

    def upscale(self, key: str, scale: int = 2, model: str | None = None) -> GenerateView:
        """Queue stored image `key` made `scale` (2 or 4) times larger as a new image
        (``POST /api/images/upscale``), with upscaler `model` (the service's choice when None)."""
        request = UpscaleRequest(key=key, scale=scale, model=model)
        body = request.model_dump(mode="json", exclude_none=True)
        return GenerateView.model_validate(self._call("POST", "/api/images/upscale", json=body))

    def rerun(self, key: str, *, seed: int | None = None, new_seed: bool = False) -> GenerateView:
        """Enqueue the request stored with image `key` again: its own seed (the same pixels), `seed`,
        or a fresh random one with `new_seed`."""
        body: dict[str, Any] = {"key": key}
        if seed is not None:
            body["seed"] = seed
        if new_seed:
            body["new_seed"] = True
        return GenerateView.model_validate(self._call("POST", "/api/images/rerun", json=body))

    def job(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/api/images/jobs/{job_id}"))

    def preview(self, job_id: str) -> bytes:
        """The job's latest live preview, a small WebP (``GET /api/images/jobs/{id}/preview``); an
        `ApiError` 404 ``NOT_FOUND`` while it has none (see `JobView.preview_step`)."""
        try:
            response = self._http.get(f"/api/images/jobs/{quote(job_id, safe='')}/preview")
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.content

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("POST", f"/api/images/jobs/{job_id}/cancel"))

    def to_front(self, job_id: str) -> JobView:
        """Move a queued job before the caller's other queued jobs (``POST /api/images/jobs/{id}/front``)."""
        return JobView.model_validate(self._call("POST", f"/api/images/jobs/{quote(job_id, safe='')}/front"))

    def queue(self) -> QueueView:
        """Whether the caller's queue is paused (``GET /api/images/queue``)."""
        return QueueView.model_validate(self._call("GET", "/api/images/queue"))

    def pause(self, *, everyone: bool = False) -> QueueView:
        """Hold the caller's queued jobs (`everyone`, admin keys: the whole queue)."""
        params = {"scope": "all" if everyone else "mine"}
        return QueueView.model_validate(self._call("POST", "/api/images/queue/pause", params=params))

    def resume(self, *, everyone: bool = False) -> QueueView:
        """Start the caller's held jobs again, in their order (`everyone`: the whole queue)."""
        params = {"scope": "all" if everyone else "mine"}
        return QueueView.model_validate(self._call("POST", "/api/images/queue/resume", params=params))

    def jobs(self, status: str | None = None, limit: int = 36, cursor: str | None = None) -> JobsView:
        """The caller's jobs newest first (``GET /api/images/jobs``), `status` only when given."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        return JobsView.model_validate(self._call("GET", "/api/images/jobs", params=params))

    def retry(self, job_id: str, **changes: Any) -> GenerateView:
        """A failed or canceled job again, as a new job (``POST /api/images/jobs/{id}/retry``)."""
        body = {name: value for name, value in changes.items() if value is not None}
        return GenerateView.model_validate(self._call("POST", f"/api/images/jobs/{job_id}/retry", json=body))

    def events(self, job_id: str) -> Iterator[JobView]:
        """The job's views from its event stream (``GET /api/images/jobs/{id}/events``): one per
        change, the last one terminal. Raises `ApiError` when the stream cannot be opened or breaks."""
        for view in self._stream_views(job_id):
            if view is not None:
                yield view

    def _stream_views(self, job_id: str) -> Iterator[JobView | None]:
        """`events`, plus ``None`` for each keep-alive so a waiter can check its deadline."""
        timeout = httpx.Timeout(self._timeout, read=max(self._timeout, EVENTS_READ_TIMEOUT_S))
        path = f"/api/images/jobs/{quote(job_id, safe='')}/events"
        try:
            with self._http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    # Something answered 200 that is not the stream (a catch-all page): no route here.
                    raise ApiError(
                        404,
                        ErrorInfo(
                            code=ErrorCode.NOT_FOUND,
                            message=f"{response.request.url} is not an event stream",
                        ),
                    )
                for event in iter_sse(response.iter_lines()):
                    if event is None:
                        yield None
                    elif event.event == JOB_EVENT:
                        yield JobView.model_validate_json(event.data)
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc

    def models(self) -> ModelsView:
        return ModelsView.model_validate(self._call("GET", "/api/images/models"))

    def presets(self) -> PresetsView:
        return PresetsView.model_validate(self._call("GET", "/api/images/presets"))

    def latest(self, limit: int = 36, cursor: str | None = None) -> LatestView:
        """Newest first; pass a listing's ``next_cursor`` as ``cursor`` for the next, older page."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return LatestView.model_validate(self._call("GET", "/api/images/latest", params=params))

    def delete(self, key: str) -> None:
        """Remove an image with its sidecar and thumbnail (``DELETE /api/images/items/{key}``)."""
        self._call("DELETE", f"/api/images/items/{quote(key, safe='/')}")

    def engines(self) -> EnginesView:
        return EnginesView.model_validate(self._call("GET", "/api/images/engines"))

    def select(self, key: str, format: str = "png", quality: int | None = None) -> SelectView:  # noqa: A002
        """The imageRef of `key`; `format` jpeg or webp (at `quality`) names a converted copy."""
        body: dict[str, object] = {"key": key}
        if format != "png":
            body["format"] = format
        if quality is not None:
            body["quality"] = quality
        return SelectView.model_validate(self._call("POST", "/api/images/select", json=body))

    def upload(self, data: bytes, content_type: str) -> UploadView:
        """Store an input image (PNG, JPEG or WebP, the raw file); its `key` goes in `image`/`mask`."""
        headers = {"Content-Type": content_type}
        answer = self._call("POST", "/api/images/uploads", content=data, headers=headers)
        return UploadView.model_validate(answer)

    def download(self, url: str) -> bytes:
        """GET a `downloadUrl`; it is absolute and carries its own authorisation.

        It goes through this client's transport (so an in-process or mock transport serves it too),
        but the API key is sent only to this client's own origin, never to an object store's host.
        """
        target, own = httpx.URL(url), self._http.base_url
        is_own_origin = (target.scheme, target.host, target.port) == (own.scheme, own.host, own.port)
        headers = self._api_headers if is_own_origin else {}
        try:
            # A client of its own: redirects are followed here, and the API client's headers stay put.
            with httpx.Client(
                transport=self._transport, timeout=self._timeout, follow_redirects=True
            ) as http:
                response = http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(f"{target.scheme}://{target.netloc.decode()}", exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.content

    def watch(self, job_id: str, *, interval: float = POLL_INTERVAL_S) -> Iterator[JobView]:
        """Yield the job's view each time it changes, ending with its terminal view."""
        for view in self._follow(job_id, interval):
            if view is not None:
                yield view

    def _follow(self, job_id: str, interval: float) -> Iterator[JobView | None]:
        """Changed views from the event stream, then by polling if the stream is unavailable or ends
        early; ``None`` in between (keep-alives, unchanged polls) lets a waiter check its deadline."""
        last: JobView | None = None
        try:
            for view in self._stream_views(job_id):
                if view is None or view == last:
                    yield None
                    continue
                last = view
                yield view
                if view.status.is_terminal:
                    return
        except ApiError as exc:
            if exc.status not in STREAM_UNAVAILABLE_STATUSES:
                raise
        # No stream (an older service), or it broke or ended before the job did: poll from here on.
        while True:
            view = self.job(job_id)
            if view != last:
                last = view
                yield view
            else:
                yield None
            if view.status.is_terminal:
                return
            time.sleep(interval)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[JobView], None] | None = None,
        interval: float = POLL_INTERVAL_S,
    ) -> JobView:
        """Follow the job until it ends, from its event stream (polling every ``interval`` seconds
        where there is none); ``on_update`` sees each changed view (progress bars)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view: JobView | None = None
        # `_follow` ends after the terminal view, which also closes the event stream.
        for update in self._follow(job_id, interval):
            if update is not None:
                view = update
                if on_update:
                    on_update(view)
            is_over = view is not None and view.status.is_terminal
            if not is_over and deadline is not None and time.monotonic() > deadline:
                status = view.status.value if view else "unseen"
                raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f}s")
        assert view is not None
        return view
