"""API keys for the gateway and the images-service: the ``key1,key2:pro`` syntax, constant-time
matching, and the pure ASGI middleware that answers 401 before any route runs.

The ring of keys keeps only their SHA-256; a key is never logged and never stored: what travels on
is its *key id*, the first 12 hex digits of that SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.contracts import ErrorCode, ErrorInfo

from .errors import error_response

log = logging.getLogger("kitty.auth")

TIER_NAMES = ("free", "pro", "enterprise")
"""The tiers a key may name after a colon (HIP-35); their limits live in the images-service."""

ADMIN = "admin"
"""Named after a key's colon instead of a tier: the admin role (sees and manages every key's jobs,
images and the audit log) with the enterprise tier's limits."""

ADMIN_TIER = "enterprise"

REALM = "kitty-images"
"""The realm of every ``WWW-Authenticate`` challenge."""

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY_PARAM = "api_key"
"""Accepted only on event-stream routes: a browser's EventSource cannot send headers."""

KEY_ID_HEX = 12
"""A key id is this many hex digits of the key's SHA-256: enough to tell keys apart in quota
counters, idempotency records and job meta, far too few to stand in for the key."""

MAX_PRESENTED_KEY_CHARS = 512
"""A presented key longer than this cannot match any sane configured key; it is refused unhashed."""

KEY_PATTERN = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,512}$")
"""Configured keys: printable ASCII without spaces (commas separate keys in the variable)."""

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes answer without a key on every process."""

SIGNED_DOWNLOAD_PREFIX = "/api/images/files/"
"""The filesystem store's download links carry their own HMAC signature (``<img>`` cannot send headers)."""

EVENTS_PATH = re.compile(r"^/api/images/jobs/[^/]+/events$")
"""The job event stream: the one route that also takes ``?api_key=``."""


ON_BEHALF_HEADER = "X-Kitty-Caller"
"""``<key id>;<tier>;<admin|user>``: the caller a gateway speaks for when it authenticates upstream
with its own (admin) key, IMAGES_API_KEY. Honoured only from an admin key, so a tenant cannot
claim to be another; the gateway drops any the client sent."""

ON_BEHALF_PATTERN = re.compile(rf"^([0-9a-f]{{{KEY_ID_HEX}}});({'|'.join(TIER_NAMES)});(admin|user)$")


def on_behalf_value(caller: ApiKey) -> str:
    return f"{caller.key_id};{caller.tier};{'admin' if caller.is_admin else 'user'}"


def on_behalf_caller(value: str | None) -> ApiKey | None:
    """The caller an ``X-Kitty-Caller`` value names; None when absent or malformed."""
    match = ON_BEHALF_PATTERN.fullmatch(value or "")
    if match is None:
        return None
    key_id, tier, role = match.groups()
    return ApiKey(key_id=key_id, tier=tier, digest=b"", is_admin=role == "admin")


def key_id_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_ID_HEX]


@dataclass(frozen=True)
class ApiKey:
    """One configured key, known by its digest; ``repr`` shows only the key id."""

    key_id: str
    tier: str
    digest: bytes = field(repr=False)
    is_admin: bool = False

    @classmethod
    def of(cls, key: str, tier: str, *, is_admin: bool = False) -> ApiKey:
        digest = hashlib.sha256(key.encode()).digest()
        return cls(key_id=digest.hex()[:KEY_ID_HEX], tier=tier, digest=digest, is_admin=is_admin)


def parse_api_keys(value: str | None, default_tier: str) -> list[ApiKey]:
    """``"key1,key2:pro,key3:enterprise,key4:admin"`` → keys with tiers (``admin``: the admin role,
    enterprise limits); raises ValueError naming what is wrong (never the key itself). A key that
    contains a colon must then end with an explicit tier."""
    keys: dict[bytes, ApiKey] = {}
    for position, entry in enumerate((value or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        key, tier, is_admin = entry, default_tier, False
        head, colon, tail = entry.rpartition(":")
        if colon:
            if tail not in (*TIER_NAMES, ADMIN):
                raise ValueError(
                    f"API key #{position} ends with an unknown tier '{tail[:20]}'; "
                    f"use one of {', '.join(TIER_NAMES)} (or {ADMIN})"
                )
            key, is_admin = head, tail == ADMIN
            tier = ADMIN_TIER if is_admin else tail
        if not KEY_PATTERN.match(key):
            raise ValueError(
                f"API key #{position} must be 1-512 printable ASCII characters without spaces or commas"
            )
        parsed = ApiKey.of(key, tier, is_admin=is_admin)
        previous = keys.get(parsed.digest)
        if previous is not None and (previous.tier, previous.is_admin) != (tier, is_admin):
            raise ValueError(f"API key #{position} is listed twice with different tiers")
        keys[parsed.digest] = parsed
    return list(keys.values())


class KeyRing:
    """The configured keys; empty means the API is open (the local default)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def parse(cls, value: str | None, default_tier: str = "pro") -> KeyRing:
        return cls(parse_api_keys(value, default_tier))

    @property
    def is_enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: str | None) -> ApiKey | None:
        """The configured key equal to ``presented``. Digests are compared, so every comparison
        takes the same time whatever the lengths, and every key is compared (no early exit), so
        the answer's timing says nothing about which key, or how much of one, matched."""
        if not presented or len(presented) > MAX_PRESENTED_KEY_CHARS:
            return None
        # Configured keys are ASCII; anything else (a %-escaped query value) simply cannot match.
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


caller_var: ContextVar[ApiKey | None] = ContextVar("caller", default=None)
"""The key the current request authenticated with (None: keys are off, or an exempt route)."""

CALLER_STATE_KEY = "caller"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1")).strip()
    return None


def presented_key(scope: Scope, *, allow_query: bool) -> str | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer``, else (event streams
    only) ``?api_key=``. The first one present is the one judged."""
    header_key = _header(scope, b"x-api-key")
    if header_key:
        return header_key
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if allow_query:
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if name == API_KEY_QUERY_PARAM and value:
                return value
    return None


def without_query_key(query_string: bytes) -> bytes:
    """The query string minus ``api_key``, so nothing further along (logs, errors, an upstream) sees it."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    kept = [(name, value) for name, value in pairs if name != API_KEY_QUERY_PARAM]
    return query_string if len(kept) == len(pairs) else urlencode(kept).encode("latin-1")


def has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def is_exempt_path(path: str, extra: Callable[[str], bool] | None = None) -> bool:
    """Probes, metrics and signed downloads answer without a key; a path with dot segments never
    counts as exempt, whatever prefix it starts with."""
    if has_dot_segment(path):
        return False
    if path in PUBLIC_PATHS or path.startswith(SIGNED_DOWNLOAD_PREFIX):
        return True
    return bool(extra and extra(path))


def unauthorized_response(*, presented: bool) -> JSONResponse:
    # RFC 6750: a key that was sent but refused is an "invalid_token"; a missing one gets the bare challenge.
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if presented else "")
    message = "the API key is not valid" if presented else "an API key is required"
    info = ErrorInfo(
        code=ErrorCode.UNAUTHORIZED,
        message=message,
        remediation=[
            f"Send the key as `{API_KEY_HEADER}: <key>` or `Authorization: Bearer <key>`.",
            "kitty-cli reads it from KITTY_API_KEY (or --api-key); the /vision gallery asks for it.",
        ],
    )
    return error_response(401, info, {"WWW-Authenticate": challenge})


class ApiKeyMiddleware:
    """Refuse requests without a valid key (when keys are configured) before any route runs, and
    tell the routes who called: ``scope["state"]["caller"]`` and `caller_var`.

    Pure ASGI (not ``BaseHTTPMiddleware``), so streamed bodies and event streams pass untouched.
    ``strip_query_key`` removes ``api_key`` from the query string once read (the images-service);
    the gateway keeps it so it can pass the caller's credential on unchanged. ``trust_on_behalf``
    (the images-service): an admin key's request may name the caller it speaks for in
    ``X-Kitty-Caller`` (a gateway using IMAGES_API_KEY), and the routes then see that caller.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: KeyRing,
        extra_exempt: Callable[[str], bool] | None = None,
        strip_query_key: bool = True,
        trust_on_behalf: bool = False,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.extra_exempt = extra_exempt
        self.strip_query_key = strip_query_key
        self.trust_on_behalf = trust_on_behalf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keyring.is_enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if is_exempt_path(path, self.extra_exempt):
            await self.app(scope, receive, send)
            return
        allow_query = bool(EVENTS_PATH.match(path))
        presented = presented_key(scope, allow_query=allow_query)
        caller = self.keyring.match(presented)
        if caller is None:
            # A wrong key may be someone guessing: a warning. A missing one is usually a client not
            # yet configured (the gallery's first call): info. The path only, never the query
            # string, which may hold the very key that was refused.
            log.log(
                logging.WARNING if presented else logging.INFO,
                "request refused: API key %s",
                "invalid" if presented else "missing",
                extra={"path": path, "method": scope.get("method")},
            )
            await unauthorized_response(presented=presented is not None)(scope, receive, send)
            return
        if allow_query and self.strip_query_key:
            scope["query_string"] = without_query_key(scope.get("query_string", b""))
        if self.trust_on_behalf and caller.is_admin:
            # A gateway with an admin key upstream names the caller it speaks for.
            caller = on_behalf_caller(_header(scope, ON_BEHALF_HEADER.lower().encode())) or caller
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        token = caller_var.set(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            caller_var.reset(token)


def caller_of(scope: Scope) -> ApiKey | None:
    state = scope.get("state") or {}
    caller = state.get(CALLER_STATE_KEY)
    return caller if isinstance(caller, ApiKey) else None


def can_see(caller: ApiKey | None, owner: str | None) -> bool:
    """Keys off (no caller): everything. An admin: everything. Any other key: its own only (an
    object made while keys were off has no owner, and only an admin sees it)."""
    return caller is None or caller.is_admin or (owner is not None and owner == caller.key_id)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed_without_keys(logger: logging.Logger, host: str, keyring: KeyRing, variable: str) -> bool:
    """Log a warning when a process listens beyond loopback with no keys; True when it did."""
    if keyring.is_enabled or is_loopback(host):
        return False
    logger.warning(
        "listening on %s without API keys: anyone who can reach this port can use the API; set %s",
        host,
        variable,
        extra={"host": host},
    )
    return True
