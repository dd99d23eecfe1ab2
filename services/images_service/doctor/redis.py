"""The Redis check: reachable, and configured so queued and finished jobs survive a restart (AOF on,
no eviction)."""

from __future__ import annotations

from typing import Any

from ..redaction import redact_url
from ..settings import Settings
from .result import CheckResult

REDIS_TIMEOUT_S = 2.0
"""Connect and socket timeout of the doctor's Redis client: a local Redis answers in milliseconds."""


def check_redis(settings: Settings) -> CheckResult:
    from redis.exceptions import RedisError, ResponseError

    from services.common.redisconn import connect

    where = redact_url(settings.redis_url)
    try:
        client = connect(
            settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
    except ValueError as exc:
        return CheckResult(
            "redis",
            "fail",
            f"REDIS_URL is not a Redis URL ({where}): {exc}",
            [
                "Set REDIS_URL like redis://127.0.0.1:6379/0 (or rediss://, unix://), or through"
                " Sentinel like redis+sentinel://127.0.0.1:26379/mymaster/0."
            ],
        )
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "?"))
        details: dict[str, Any] = {"url": where, "version": version}
        try:
            config: dict[str, str] = {}
            for name in ("appendonly", "appendfsync", "maxmemory-policy"):
                config.update({str(k): str(v) for k, v in client.config_get(name).items()})
        except ResponseError:
            # Managed Redis often renames CONFIG away; persistence is then the provider's business.
            return CheckResult(
                "redis",
                "ok",
                f"Redis {version} at {where} (persistence settings not readable: CONFIG is disabled)",
                details=details,
            )
        details.update(config)
        problems: list[str] = []
        remedies: list[str] = []
        if config.get("appendonly") != "yes":
            problems.append(
                "append-only file (AOF) is off: queued and finished jobs are lost if Redis restarts"
            )
            remedies += [
                "Turn it on now: redis-cli CONFIG SET appendonly yes && redis-cli CONFIG REWRITE",
                "Or start Redis with: redis-server --appendonly yes --appendfsync everysec",
            ]
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            problems.append(
                f"maxmemory-policy is {policy}: Redis may evict queued jobs under memory pressure"
            )
            remedies.append("redis-cli CONFIG SET maxmemory-policy noeviction && redis-cli CONFIG REWRITE")
        aof = f"AOF {config.get('appendonly')}"
        if config.get("appendonly") == "yes":
            aof += f" (appendfsync {config.get('appendfsync', '?')})"
        if problems:
            return CheckResult(
                "redis", "warn", f"Redis {version} at {where}: " + "; ".join(problems), remedies, details
            )
        return CheckResult("redis", "ok", f"Redis {version} at {where}, {aof}", details=details)
    except RedisError as exc:
        return CheckResult(
            "redis",
            "fail",
            f"Redis is not reachable at {where}: {exc}",
            [
                "Start Redis: redis-server --appendonly yes (or brew services start redis, or"
                " docker compose up -d redis); `make run` starts a private one.",
                "Or set REDIS_URL to where your Redis listens.",
            ],
            {"url": where},
        )
    finally:
        client.close()
