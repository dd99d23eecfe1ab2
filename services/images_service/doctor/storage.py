"""The storage check: the configured store (S3 bucket or folder) is reachable and usable, checked
without creating the filesystem store's signing key."""

from __future__ import annotations

from typing import Any

from ..redaction import redact_url
from ..settings import Settings
from .result import CheckResult

DOCTOR_PROBE_KEY = "doctor-probe-only"
"""Stands in for the filesystem store's signing key while its folder is checked; never signs a URL."""


def describe_store(settings: Settings) -> str:
    if settings.s3_bucket:
        endpoint = redact_url(settings.s3_endpoint_url) if settings.s3_endpoint_url else "AWS S3"
        return f"S3 bucket '{settings.s3_bucket}' at {endpoint}"
    return f"folder {settings.images_dir.resolve()}"


def check_storage(settings: Settings) -> CheckResult:
    from ..errors import KittyError
    from ..storage import make_store
    from ..storage.fs import SIGNING_KEY_FILE

    where = describe_store(settings)
    details: dict[str, Any] = {"kind": "s3" if settings.s3_bucket else "filesystem", "where": where}
    probe_settings = settings
    if not settings.s3_bucket and not settings.signing_key:
        key_file = settings.data_dir / SIGNING_KEY_FILE
        details["signing_key"] = (
            str(key_file) if key_file.exists() else "created on the service's first start"
        )
        # make_store() would create the key file: the doctor, perhaps run as another user, must not.
        probe_settings = settings.model_copy(update={"signing_key": DOCTOR_PROBE_KEY})
    try:
        make_store(probe_settings).check()
    except KittyError as exc:
        remedies = list(exc.remediation)
        if settings.s3_bucket:
            remedies.append(
                "Start MinIO (docker compose up minio; brew services start minio) or fix S3_ENDPOINT_URL,"
                " S3_ACCESS_KEY and S3_SECRET_KEY."
            )
        return CheckResult(
            "storage", "fail", f"storage ({where}) cannot be used: {exc.message}", remedies, details
        )
    except Exception as exc:  # boto3 raises more than botocore's errors (bad endpoint URL, ...)
        return CheckResult(
            "storage",
            "fail",
            f"storage ({where}) cannot be used: {type(exc).__name__}: {exc}",
            ["Check S3_ENDPOINT_URL (a full http(s) URL), S3_BUCKET, S3_REGION and the credentials."],
            details,
        )
    return CheckResult("storage", "ok", f"{where} is reachable and usable", details=details)
