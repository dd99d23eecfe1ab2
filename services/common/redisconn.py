"""Every Redis client of ours is made here, from REDIS_URL: redis-py's own URLs (`redis://`,
`rediss://`, `unix://`) or a Sentinel-managed master (`redis+sentinel://`, see `SENTINEL_URL_FORMAT`).

The Sentinel form is the `redis+sentinel://` scheme of the Redis-Sentinel-Url package (also what
prefect-redis and docket accept): the sentinels' addresses, comma-separated, then the service name
(Sentinel's `master-name`) and the database. A client asks the sentinels for the master's address
whenever it opens a connection, so after a failover its next connection goes to the new master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"

SENTINEL_URL_FORMAT = (
    "redis+sentinel://[[username]:password@]host[:port][,host2[:port2],...]/service_name[/db]"
    "[?sentinel_password=...&sentinel_username=...]"
)
"""The user name and password are the Redis master's (and replicas'); the sentinels' own, when they
require one, go in the query. The service name is Sentinel's `master-name`; db defaults to 0."""

DEFAULT_SENTINEL_PORT = 26379
"""Sentinel's own default port, used for a sentinel host given without one."""

SENTINEL_QUERY_OPTIONS = ("sentinel_password", "sentinel_username")
"""The only query parameters a Sentinel URL takes; every other client option is the caller's."""


class RedisURLError(ValueError):
    """REDIS_URL is not a URL we can connect with; the message names the problem and the formats."""


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def _refuse(problem: str) -> RedisURLError:
    # Never echo the URL: it may hold a password.
    return RedisURLError(f"{problem}; a Sentinel URL looks like {SENTINEL_URL_FORMAT}")


def _parse_host(part: str) -> tuple[str, int]:
    if part.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, rest = part[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise _refuse(f"sentinel address {part!r} is not [ipv6]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise _refuse(f"sentinel address {part!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _refuse(f"sentinel address {part!r} has no valid port")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a `redis+sentinel://` URL (`SENTINEL_URL_FORMAT`); raise `RedisURLError` saying what is
    wrong with it otherwise."""
    if not is_sentinel_url(url):
        raise _refuse(f"the scheme is not {SENTINEL_SCHEME}://")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _refuse(f"not a URL ({exc})") from None
    userinfo, has_userinfo, hosts = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if has_userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    if not hosts:
        raise _refuse("no sentinel host")
    sentinels = tuple(_parse_host(part.strip()) for part in hosts.split(","))
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not segments:
        raise _refuse("no service name (Sentinel's master-name) after the hosts")
    if len(segments) > 2:
        raise _refuse(f"too many path segments ({parts.path!r}): only /service_name[/db]")
    service_name = unquote(segments[0])
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise _refuse(f"the database {db_text!r} is not a number")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(SENTINEL_QUERY_OPTIONS))
    if unknown:
        raise _refuse(
            f"unknown query parameter(s) {', '.join(unknown)} (only {', '.join(SENTINEL_QUERY_OPTIONS)})"
        )
    return SentinelURL(
        sentinels=sentinels,
        service_name=service_name,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


class SentinelMaster(Redis):
    """The master of a Sentinel service; closing it closes its connections to the sentinels too."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            if isinstance(manager, Sentinel):
                manager.close()


def connect(url: str, **options: Any) -> Redis:
    """A Redis client for `url` with redis-py's client `options` (timeouts, retries); nothing is
    connected until the first command. For `redis+sentinel://`, the master of the service: every new
    connection asks the sentinels where it is, and a connection to a master that was demoted fails
    (ConnectionError) so that the next one finds the new master. The sentinels are asked with the
    same socket timeouts."""
    if not is_sentinel_url(url):
        try:
            return Redis.from_url(url, **options)
        except ValueError as exc:
            raise RedisURLError(
                f"{exc} (or {SENTINEL_SCHEME}://; a Sentinel URL looks like {SENTINEL_URL_FORMAT})"
            ) from None
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if parsed.sentinel_username:
        sentinel_options["username"] = parsed.sentinel_username
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    client: Redis = sentinel.master_for(
        parsed.service_name,
        redis_class=SentinelMaster,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return client
