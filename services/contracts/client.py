"""A typed client for the images API, spoken through the gateway or to the images-service directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .schema import (
    EnginesView,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    GenerateView,
    JobView,
    LatestView,
    SelectView,
)

DEFAULT_TIMEOUT_S = 30.0
"""Per-request timeout; generation itself is asynchronous, so no call should take long."""

POLL_INTERVAL_S = 0.25
"""How often `wait` asks for a job's view while it runs."""


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
        except httpx.TimeoutException as exc:
            raise ApiError(
                504,
                ErrorInfo(
                    code=ErrorCode.UPSTREAM_TIMEOUT,
                    message=f"{self.base_url} did not answer in time",
                    remediation=["Check that the service is running and not overloaded."],
                ),
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiError(
                502,
                ErrorInfo(
                    code=ErrorCode.UPSTREAM_UNAVAILABLE,
                    message=f"cannot reach {self.base_url}: {exc}",
                    remediation=[
                        "Start the stack with `make run`, or set KITTY_GATEWAY_URL to a running gateway.",
                    ],
                ),
            ) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
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

    def job(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("GET", f"/api/images/jobs/{job_id}"))

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._call("POST", f"/api/images/jobs/{job_id}/cancel"))

    def latest(self, limit: int = 36) -> LatestView:
        return LatestView.model_validate(self._call("GET", "/api/images/latest", params={"limit": limit}))

    def engines(self) -> EnginesView:
        return EnginesView.model_validate(self._call("GET", "/api/images/engines"))

    def select(self, key: str) -> SelectView:
        return SelectView.model_validate(self._call("POST", "/api/images/select", json={"key": key}))

    def download(self, url: str) -> bytes:
        """GET a `downloadUrl`; it is absolute and carries its own authorisation."""
        response = httpx.get(url, timeout=DEFAULT_TIMEOUT_S, follow_redirects=True)
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.content

    def watch(self, job_id: str, *, interval: float = POLL_INTERVAL_S) -> Iterator[JobView]:
        """Yield the job's view each time it changes, ending with its terminal view."""
        last: JobView | None = None
        while True:
            view = self.job(job_id)
            if view != last:
                yield view
                last = view
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
        """Poll until the job ends; ``on_update`` sees each changed view (progress bars)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = None
        for view in self.watch(job_id, interval=interval):
            if on_update:
                on_update(view)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view.status.value} after {timeout:.0f}s")
        assert view is not None
        return view
