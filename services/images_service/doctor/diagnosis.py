"""One doctor run: the settings read, every check not skipped run side by side, and the report
assembled with every secret redacted."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from typing import Any

from ..engines.descriptors import server_engines
from ..redaction import secret_values, settings_summary
from ..settings import Settings
from .configuration import read_stack_settings
from .device import DEVICE_TIMEOUT_S, check_device
from .disk import check_disk
from .engines import ENGINE_TIMEOUT_S, check_engine_name, check_server_engine
from .models import check_models
from .redis import REDIS_TIMEOUT_S, check_redis
from .report import Report
from .result import CheckResult
from .runner import CHECK_TIMEOUT_S, CheckFn, run_checks
from .storage import check_storage

CHECK_NAMES = ("redis", "storage", "engines", "models", "device", "disk")
"""What `--skip` accepts."""

VERSIONED_PACKAGES = (
    "kitty-images",
    "fastapi",
    "pydantic",
    "redis",
    "rq",
    "boto3",
    "httpx",
    "torch",
    "diffusers",
    "transformers",
)
"""Distributions whose versions go into the --json bundle (read from metadata, nothing imported)."""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def audit_section(settings: Settings) -> dict[str, Any]:
    """The newest audit entries for the bundle (see `audit.for_bundle`); read only when the Redis
    check passed, with the check's own short timeouts, so a sick Redis cannot stall the doctor."""
    from services.common.redisconn import connect

    from ..audit import BUNDLE_ENTRIES, recent_entries

    try:
        client = connect(
            settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        try:
            return {"entries": recent_entries(client, settings, BUNDLE_ENTRIES)}
        finally:
            client.close()
    except Exception as exc:  # the bundle is still useful without them
        return {"entries": [], "unavailable": f"{type(exc).__name__}: {exc}"}


def diagnose(skip: Iterable[str] = (), *, device_timeout: float = DEVICE_TIMEOUT_S) -> Report:
    """Read the settings from the environment (and `.env`) now, run every check not skipped."""
    skipped = set(skip)
    stack = read_stack_settings()
    checks: list[CheckResult] = list(stack.problems)
    settings = stack.images
    if settings is not None:
        planned: list[tuple[str, CheckFn, float]] = [
            ("engine", partial(check_engine_name, settings), CHECK_TIMEOUT_S)
        ]
        if "redis" not in skipped:
            planned.append(("redis", partial(check_redis, settings), CHECK_TIMEOUT_S))
        if "storage" not in skipped:
            planned.append(("storage", partial(check_storage, settings), CHECK_TIMEOUT_S))
        if "engines" not in skipped:
            planned += [
                (engine.name, partial(check_server_engine, engine.name, settings), ENGINE_TIMEOUT_S)
                for engine in server_engines()
            ]
        if "models" not in skipped:
            planned.append(("models", partial(check_models, settings), CHECK_TIMEOUT_S))
        if "device" not in skipped:
            # The check's own subprocess timeout fires first; the margin covers starting the child.
            planned.append(("device", partial(check_device, settings, device_timeout), device_timeout + 5))
        if "disk" not in skipped:
            planned.append(("disk", partial(check_disk, settings), CHECK_TIMEOUT_S))
        checks += run_checks(planned)

    redis_ok = any(check.name == "redis" and check.status != "fail" for check in checks)
    report = Report(
        checks=checks,
        settings=settings_summary(*stack.read),
        versions=package_versions(),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        audit=audit_section(settings) if settings is not None and redis_ok else {},
    )
    return report.scrubbed(secret_values(*stack.read))
