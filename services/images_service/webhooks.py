"""Completion webhooks: a job that names a `webhook` URL gets one signed POST when it ends (done,
error or canceled), as Cog offers, so a client need not poll.

Why each rule:

* **Only http(s), never a private address** (loopback, private, link-local, reserved, multicast,
  unspecified) unless IMAGES_WEBHOOK_ALLOW_PRIVATE=true: the worker sits inside the deployment's
  network, and a webhook is a request a caller makes *from* there (SSRF). The URL is checked at
  submit (a 400 with the reason) and again at send time, because DNS may have changed in between.
* **Sent to the address that was checked**: at send time the host is resolved once, every address
  it resolves to is checked, and the request goes to the first one by IP, with the original `Host`
  header (and, for https, the original name as TLS SNI, so the certificate is still verified against
  the host name). A second lookup by the HTTP client could otherwise return a different (private)
  address than the one checked (DNS rebinding).
* **Signed**: the receiver recomputes ``X-Kitty-Signature: sha256=<hex>``, the HMAC-SHA256 with
  IMAGES_WEBHOOK_SECRET of the signing string ``f"{X-Kitty-Timestamp}.{raw body}"`` (the timestamp is
  Unix seconds, as sent in ``X-Kitty-Timestamp``), and rejects an old timestamp to stop replays.
  There is no derived default secret: a receiver must be told the secret, so without
  IMAGES_WEBHOOK_SECRET a request with `webhook` is refused (400) rather than signed with something
  the operator never saw.
* **Retried, never redirected**: connection errors, timeouts, 429 and 5xx are retried with
  exponential backoff (IMAGES_WEBHOOK_ATTEMPTS tries, IMAGES_WEBHOOK_BACKOFF s doubling: 1, 2, 4, 8);
  another 4xx is the receiver's final answer. A redirect is not followed (it could point anywhere).
* **Off the job's path**: delivery runs in a daemon thread, so the next job starts at once; at exit
  the worker waits at most SHUTDOWN_WAIT_S for deliveries still running. A failed delivery is logged
  and never changes the job's status.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .errors import ValidationFailed
from .redaction import redact_url
from .settings import Settings

log = logging.getLogger("kitty.images.webhooks")

SHUTDOWN_WAIT_S = 5.0
"""At interpreter exit, how long the worker waits for deliveries still in flight (then drops them)."""

SIGNATURE_HEADER, TIMESTAMP_HEADER, EVENT_HEADER = "X-Kitty-Signature", "X-Kitty-Timestamp", "X-Kitty-Event"
DELIVERY_HEADER = "X-Kitty-Delivery"
"""A fresh id per delivery (the same on each retry), so a receiver can drop duplicates."""

Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def _refuse(url: str, reason: str, *remediation: str) -> ValidationFailed:
    return ValidationFailed(
        f"webhook {redact_url(url)!s} refused: {reason}",
        remediation=list(remediation) or ["Give a public http(s) URL that receives the job's result."],
    )


def check_webhook(url: str, settings: Settings, resolver: Resolver = resolve_host) -> str:
    """The address (an IP) `url` may be sent to, or ValidationFailed saying why not. Used at
    submit and again at send time."""
    if not settings.webhook_secret:
        raise ValidationFailed(
            "webhooks are off on this server: IMAGES_WEBHOOK_SECRET is not set",
            remediation=[
                "Drop `webhook` and poll GET /api/images/jobs/{id}, or ask the operator to set "
                "IMAGES_WEBHOOK_SECRET."
            ],
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _refuse(url, f"scheme '{parts.scheme or '(none)'}' is not allowed; only http and https are")
    if not parts.hostname:
        raise _refuse(url, "the URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname, port)
    except (OSError, UnicodeError):
        raise _refuse(url, f"host '{parts.hostname}' does not resolve", "Check the host name.") from None
    if not addresses:
        raise _refuse(url, f"host '{parts.hostname}' does not resolve", "Check the host name.")
    if not settings.webhook_allow_private:
        private = [address for address in addresses if _is_private(address)]
        if private:
            raise _refuse(
                url,
                f"host '{parts.hostname}' resolves to a loopback, private, link-local or reserved "
                f"address ({private[0]})",
                "Give a URL on the public internet.",
                "An operator may allow private receivers with IMAGES_WEBHOOK_ALLOW_PRIVATE=true.",
            )
    return addresses[0]


def check_webhook_url(url: str, settings: Settings) -> str:
    """`url`, when it may be a job's webhook (checked at submit); ValidationFailed (400) otherwise."""
    check_webhook(url, settings)
    return url


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``f"{timestamp}.".encode() + body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def event_body(
    job_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    engine: str | None = None,
    model: str | None = None,
    enqueued_at: str | None = None,
    started_at: str | None = None,
) -> dict[str, Any]:
    """The shape of GET /api/images/jobs/{id} for an ended job."""
    return {
        "job_id": job_id,
        "status": status,
        "result": result,
        "error": error,
        "engine": engine,
        "model": model,
        "enqueued_at": enqueued_at,
        "started_at": started_at,
        "ended_at": datetime.now(UTC).isoformat(),
    }


def _pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """`url` with its host replaced by the checked `address`; the Host header and TLS SNI keep the name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
    return (
        urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        {"Host": host_header},
        extensions,
    )


def deliver(
    url: str,
    body: dict[str, Any],
    settings: Settings,
    *,
    resolver: Resolver = resolve_host,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST `body` to `url` until it is taken (2xx/3xx) or refused (4xx but 429) or the attempts run
    out; whether it was taken. Never raises; logs every attempt (the URL redacted, never the secret)."""
    shown = redact_url(url)
    data = json.dumps(body, separators=(",", ":"), default=str).encode()
    event = f"job.{body.get('status')}"
    delivery = uuid.uuid4().hex
    delay = settings.webhook_backoff_s
    for attempt in range(1, settings.webhook_attempts + 1):
        outcome: str
        retry = True
        try:
            address = check_webhook(url, settings, resolver)  # DNS may have changed since submit
            target, headers, extensions = _pinned(url, address)
            timestamp = str(int(time.time()))
            headers |= {
                "Content-Type": "application/json",
                "User-Agent": "kitty-images-webhook",
                EVENT_HEADER: event,
                TIMESTAMP_HEADER: timestamp,
                DELIVERY_HEADER: delivery,
                SIGNATURE_HEADER: sign(settings.webhook_secret or "", timestamp, data),
            }
            with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
                request = client.build_request("POST", target, content=data, headers=headers)
                request.extensions.update(extensions)
                response = client.send(request)
            code = response.status_code
            if code < 400:
                log.info("webhook delivered", extra={"url": shown, "attempt": attempt, "http_status": code})
                return True
            outcome, retry = f"HTTP {code}", code == 429 or code >= 500
        except ValidationFailed as exc:
            outcome, retry = exc.message, False
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}"
        except Exception as exc:  # a delivery never takes the worker down
            outcome, retry = f"{type(exc).__name__}", False
        final = not retry or attempt == settings.webhook_attempts
        log.warning(
            "webhook attempt failed" + ("; giving up" if final else "; retrying"),
            extra={"url": shown, "attempt": attempt, "outcome": outcome, "event": event},
        )
        if final:
            return False
        sleep(delay)
        delay *= 2
    return False


_threads: set[threading.Thread] = set()
_threads_lock = threading.Lock()


def send_in_background(url: str, body: dict[str, Any], settings: Settings) -> threading.Thread:
    """Deliver on a daemon thread, so the worker goes on to its next job at once."""

    def run() -> None:
        try:
            deliver(url, body, settings)
        finally:
            with _threads_lock:
                _threads.discard(thread)

    thread = threading.Thread(target=run, name=f"webhook-{body.get('job_id')}", daemon=True)
    with _threads_lock:
        _threads.add(thread)
    thread.start()
    return thread


def wait_for_deliveries(timeout: float = SHUTDOWN_WAIT_S) -> bool:
    """Wait up to `timeout` seconds in all for deliveries in flight; whether none is left."""
    deadline = time.monotonic() + timeout
    while True:
        with _threads_lock:
            pending = list(_threads)
        if not pending:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pending[0].join(timeout=left)


atexit.register(wait_for_deliveries)


def job_ended(
    job: Any,
    webhook: str | None,
    status: str,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    settings: Settings,
) -> None:
    """The worker's hook when a job ends: queue its webhook, if it has one. Never raises."""
    if not webhook:
        return
    try:
        meta = (job.meta or {}) if job is not None else {}
        body = event_body(
            job.id if job is not None else "local",
            status,
            result=result if status == "done" else None,
            error=None if status == "done" else error,
            engine=meta.get("engine"),
            model=meta.get("model"),
            enqueued_at=_iso(getattr(job, "enqueued_at", None)),
            started_at=_iso(getattr(job, "started_at", None)),
        )
        send_in_background(webhook, body, settings)
    except Exception:
        log.exception("webhook not queued", extra={"url": redact_url(webhook)})


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
