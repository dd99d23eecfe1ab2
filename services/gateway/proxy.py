"""The `/api/images/*` proxy: forwards a request to the images-service through the app's pooled client
and streams the answer back unbuffered (large PNGs, server-sent events), mapping transport failures onto
the wire's error shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.api_keys import (
    API_KEY_HEADER,
    ON_BEHALF_HEADER,
    caller_of,
    on_behalf_value,
    without_query_key,
)
from services.common.request_id import request_id_of
from services.contracts import ErrorCode

from .errors import GatewayError, route_not_found, upstream_timeout, upstream_unavailable
from .metrics import PROXY_REQUESTS, PROXY_SECONDS, UPSTREAM_ERRORS, route_template
from .settings import GatewaySettings

log = logging.getLogger("kitty.gateway.proxy")

PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
    }
)
"""Headers that describe one connection (RFC 9110 §7.6.1), never forwarded across a proxy."""

REQUEST_HEADERS_SET_HERE = frozenset(
    {"host", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-kitty-caller"}
)
"""Request headers the gateway writes itself: httpx sets Host for the upstream; the rest are this hop's."""

RESPONSE_HEADERS_SET_HERE = frozenset({"date", "server", "x-request-id"})
"""Response headers the gateway's own server writes; passing the upstream's too would duplicate them."""

CALLER_CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})
"""The caller's key headers: replaced by IMAGES_API_KEY when the gateway has one."""

READINESS_TIMEOUT_S = 5.0
"""How long `/readyz` waits for the images-service's `/readyz` (which itself pings Redis and storage)."""

EVENT_STREAM = "text/event-stream"


def _dropped_by_connection(headers: httpx.Headers) -> set[str]:
    # `Connection: close, X-Foo` makes X-Foo hop-by-hop too.
    names: set[str] = set()
    for value in headers.get_list("connection"):
        names.update(part.strip().lower() for part in value.split(",") if part.strip())
    return names


def upstream_request_headers(
    request: Request, request_id: str, credential: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The caller's headers minus hop-by-hop ones, plus this hop's forwarding headers. With a
    ``credential`` (IMAGES_API_KEY) the caller's own key headers are replaced by it.

    Values travel as the exact bytes the caller sent, non-ASCII ones included (RFC 9110's obs-text;
    h11 has already refused control characters). Passing them on, rather than refusing them here,
    leaves each header to the service that reads it: the images-service answers 400 to an
    Idempotency-Key that is not printable ASCII, and a header nobody reads does no harm. (Handed str
    values, httpx encodes them as ASCII: a byte like 0xE9 was a 500 that also dropped the connection.)"""
    incoming = httpx.Headers(request.headers.raw)
    # Decoding as latin-1 maps each byte to one character, so encoding back restores the bytes.
    incoming.encoding = "latin-1"
    dropped = HOP_BY_HOP_HEADERS | REQUEST_HEADERS_SET_HERE | _dropped_by_connection(incoming)
    if credential:
        dropped |= CALLER_CREDENTIAL_HEADERS
    headers = [(k, v) for k, v in incoming.multi_items() if k.lower() not in dropped]
    if credential:
        headers.append((API_KEY_HEADER, credential))
        caller = caller_of(request.scope)
        if caller is not None:
            # Upstream sees the gateway's key; this names whose request it is (ownership, quotas).
            headers.append((ON_BEHALF_HEADER, on_behalf_value(caller)))
    if "accept-encoding" not in incoming:
        # Bodies are relayed raw; without this httpx would ask for gzip the caller never agreed to read.
        headers.append(("accept-encoding", "identity"))
    client_ip = request.client.host if request.client else "unknown"
    # Appended, as proxies conventionally do; the gateway is the edge, so only the last entry is ours.
    prior = incoming.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{prior}, {client_ip}" if prior else client_ip))
    headers.append(("x-forwarded-proto", request.url.scheme))
    headers.append(("x-forwarded-host", request.headers.get("host", request.url.netloc)))
    headers.append(("x-request-id", request_id))
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def downstream_response_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones, as the exact bytes it sent (a UTF-8 filename in
    Content-Disposition stays UTF-8).

    Content-Length and Content-Encoding are kept: bodies are relayed raw (``aiter_raw``), byte for byte,
    so both stay true, and a client downloading a large PNG still sees its size.
    """
    dropped = HOP_BY_HOP_HEADERS | RESPONSE_HEADERS_SET_HERE | _dropped_by_connection(upstream.headers)
    raw = [(k.lower(), v) for k, v in upstream.headers.raw]
    return [(k, v) for k, v in raw if k.decode("latin-1") not in dropped]


def upstream_timeout_for(request: Request, settings: GatewaySettings) -> httpx.Timeout:
    """The usual timeouts, except that an event stream may stay quiet between events indefinitely."""
    is_event_stream = EVENT_STREAM in request.headers.get("accept", "") or request.url.path.endswith(
        "/events"
    )
    read = None if is_event_stream else settings.upstream_timeout_s
    return httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s, read=read)


def upstream_url(request: Request, settings: GatewaySettings) -> httpx.URL:
    """``{IMAGES_BASE}`` + the path exactly as the caller encoded it + the query string untouched."""
    decoded_path: str = request.scope["path"]
    if any(segment in (".", "..") for segment in decoded_path.split("/")):
        # The upstream serves more than /api/images (metrics, health); a dot segment must not reach it.
        raise route_not_found(request.method, decoded_path)
    raw_path: bytes | None = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(decoded_path)
    query: bytes = request.scope.get("query_string", b"")
    if settings.images_api_key:
        # The gateway speaks for the caller upstream: the caller's own ?api_key= goes no further.
        query = without_query_key(query)
    url = httpx.URL(settings.images_base + path)
    return url.copy_with(query=query) if query else url


class UpstreamStreamResponse(StreamingResponse):
    """Relays an upstream response's raw bytes, and always releases its pooled connection afterwards,
    including when the client disconnects midway (Starlette then skips background tasks)."""

    def __init__(self, upstream: httpx.Response, base: str) -> None:
        super().__init__(_relay(upstream, base), status_code=upstream.status_code)
        self.raw_headers = downstream_response_headers(upstream)
        self._upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                await body.aclose()
            await self._upstream.aclose()


async def _relay(upstream: httpx.Response, base: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        # The status line is already sent; aborting the connection is the only honest signal left.
        UPSTREAM_ERRORS.labels(kind="stream").inc()
        log.warning("upstream body broke off", extra={"upstream": base, "error": repr(exc)})
        raise


BUFFERED_BODY_MAX_BYTES = 64 * 1024
"""Upstream bodies up to this size with a declared length (every JSON answer) are read whole and sent
as one message; longer or open-ended ones (images, event streams) are streamed. A stream costs a task
group per response, which was a tenth of the gateway's time on a burst of generates."""


def is_small(upstream: httpx.Response) -> bool:
    length = upstream.headers.get("content-length", "")
    return length.isdigit() and int(length) <= BUFFERED_BODY_MAX_BYTES


async def buffered(upstream: httpx.Response, base: str) -> Response:
    """The upstream answer read whole, its raw bytes and headers unchanged."""
    try:
        body = b"".join([chunk async for chunk in _relay(upstream, base)])
    except httpx.TransportError as exc:
        raise transport_failure(exc, base) from exc
    finally:
        await upstream.aclose()
    response = Response(body, status_code=upstream.status_code)
    response.raw_headers = downstream_response_headers(upstream)
    return response


async def forward(request: Request, client: httpx.AsyncClient, settings: GatewaySettings) -> Response:
    """Send ``request`` to the images-service and return its response: whole when small, otherwise
    as a stream."""
    route = route_template(request.scope["path"].removeprefix("/api/images/"))
    started = time.perf_counter()
    status = "error"
    try:
        upstream = await _send(request, client, settings)
        status = str(upstream.status_code)
        if is_small(upstream):
            return await buffered(upstream, settings.images_base)
        return UpstreamStreamResponse(upstream, settings.images_base)
    except GatewayError as exc:
        status = str(exc.status)
        raise
    finally:
        PROXY_REQUESTS.labels(route=route, method=request.method, status=status).inc()
        PROXY_SECONDS.labels(route=route, method=request.method).observe(time.perf_counter() - started)


async def _send(request: Request, client: httpx.AsyncClient, settings: GatewaySettings) -> httpx.Response:
    request_id = request_id_of(request.scope) or ""
    # Stream the body only when there is one, so a GET is not turned into a chunked upload.
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    outgoing = client.build_request(
        request.method,
        upstream_url(request, settings),
        headers=upstream_request_headers(request, request_id, settings.images_api_key),
        content=request.stream() if has_body else None,
        timeout=upstream_timeout_for(request, settings),
    )
    try:
        return await client.send(outgoing, stream=True)
    except httpx.TransportError as exc:
        raise transport_failure(exc, settings.images_base) from exc


def transport_failure(
    exc: httpx.TransportError, base: str, *, unavailable_status: int = 502, timeout_status: int = 504
) -> GatewayError:
    """Count a failure to reach the images-service and say it in the wire's terms."""
    text = f"{type(exc).__name__}: {str(exc).strip() or 'no detail'}"
    # A connect timeout means nothing accepted the connection: unreachable, not slow.
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        UPSTREAM_ERRORS.labels(kind="connect").inc()
        return upstream_unavailable(base, text, status=unavailable_status)
    if isinstance(exc, httpx.TimeoutException):
        UPSTREAM_ERRORS.labels(kind="timeout").inc()
        return upstream_timeout(base, text, status=timeout_status)
    UPSTREAM_ERRORS.labels(kind="protocol").inc()
    return upstream_unavailable(base, text, status=unavailable_status)


async def check_upstream_ready(client: httpx.AsyncClient, settings: GatewaySettings) -> JSONResponse:
    """200 when the images-service's `/readyz` answers 200; otherwise a 503 `GatewayError` saying why."""
    base = settings.images_base
    timeout = httpx.Timeout(
        min(settings.upstream_timeout_s, READINESS_TIMEOUT_S), connect=settings.connect_timeout_s
    )
    try:
        response = await client.get(f"{base}/readyz", timeout=timeout)
    except httpx.TransportError as exc:
        # Readiness answers 503 whatever the cause, so orchestrators read one status.
        raise transport_failure(exc, base, unavailable_status=503, timeout_status=503) from exc
    if response.status_code != 200:
        try:
            detail: Any = response.json()
        except ValueError:
            detail = response.text[:500]
        raise GatewayError(
            503,
            ErrorCode.UPSTREAM_UNAVAILABLE,
            f"images-service at {base} is not ready (its /readyz answered HTTP {response.status_code})",
            remediation=[
                "See `detail` for the dependency (Redis, storage) that is down; `make run` starts both.",
                "Check the images-service's log.",
            ],
            detail=detail,
        )
    return JSONResponse({"status": "ready", "upstream": base})
