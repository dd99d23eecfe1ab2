"""The service's own exceptions. Each carries a wire code, a status and what the user can do next;
they become HTTP only at the edge (``api/handlers.py``) and job errors only in ``worker/tasks.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.contracts import ErrorCode, ErrorInfo


class KittyError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    status: int = 500
    default_remediation: tuple[str, ...] = ()
    default_headers: Mapping[str, str] = {}
    """HTTP headers the answer carries (a challenge, a Retry-After), merged with ``headers``."""

    def __init__(
        self,
        message: str,
        *,
        remediation: list[str] | None = None,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = list(remediation) if remediation is not None else list(self.default_remediation)
        self.detail = detail
        self.headers = {**self.default_headers, **(headers or {})}

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(
            code=self.code, message=self.message, remediation=self.remediation, detail=self.detail
        )


class ValidationFailed(KittyError):
    code, status = ErrorCode.VALIDATION_ERROR, 400


class ConsentMissing(KittyError):
    """A request that renders a real person's likeness without the caller's statement of consent."""

    code, status = ErrorCode.CONSENT_MISSING, 400


class JobNotFound(KittyError):
    code, status = ErrorCode.JOB_NOT_FOUND, 404
    default_remediation = ("Check the job id; finished jobs are kept for IMAGES_RESULT_TTL seconds.",)


class KeyNotFound(KittyError):
    code, status = ErrorCode.KEY_NOT_FOUND, 404
    default_remediation = ("List existing images with `kitty-cli images.latest` or GET /api/images/latest.",)


class ModelNotFound(KittyError):
    code, status = ErrorCode.MODEL_NOT_FOUND, 400


class EngineOffline(KittyError):
    code, status = ErrorCode.ENGINE_OFFLINE, 503


class EngineTimeout(KittyError):
    code, status = ErrorCode.ENGINE_TIMEOUT, 504
    default_remediation = ("Try fewer steps, a smaller size or fewer images, or raise IMAGES_JOB_TIMEOUT.",)


class EngineError(KittyError):
    code, status = ErrorCode.ENGINE_ERROR, 500
    default_remediation = ("Check the worker's log for this job id; retry, or try other settings.",)


class StorageUnavailable(KittyError):
    code, status = ErrorCode.STORAGE_UNAVAILABLE, 503
    default_remediation = (
        "Check that MinIO/S3 is running and S3_ENDPOINT_URL, S3_BUCKET and the credentials are right.",
    )


class QueueUnavailable(KittyError):
    code, status = ErrorCode.QUEUE_UNAVAILABLE, 503
    default_remediation = ("Check that Redis is running and REDIS_URL points at it.",)


class Canceled(KittyError):
    code, status = ErrorCode.CANCELED, 409
    default_remediation = ("Submit the request again if you still want the image.",)


class Unauthorized(KittyError):
    code, status = ErrorCode.UNAUTHORIZED, 401
    # RFC 9110: a 401 names the scheme that would work; the realm matches the API-key middleware's.
    default_headers = {"WWW-Authenticate": 'Bearer realm="kitty-images"'}


class RateLimited(KittyError):
    """Over a quota; ``Retry-After`` (seconds) says when asking again can succeed."""

    code, status = ErrorCode.RATE_LIMITED, 429


class IdempotencyConflict(KittyError):
    """An ``Idempotency-Key`` already used for another request, or one whose first request is still
    being admitted."""

    code, status = ErrorCode.VALIDATION_ERROR, 409


class UnsupportedMediaType(KittyError):
    code, status = ErrorCode.VALIDATION_ERROR, 415
    default_remediation = ("Send the body as JSON with `Content-Type: application/json`.",)


class ChecksumMismatch(ValidationFailed):
    """A model file whose SHA-256 is not the one its publisher (or models.yaml) gave: tampered with,
    truncated or simply the wrong file, and never loaded."""

    default_remediation = (
        "Check the URL and the --sha256 you were given (the publisher's page lists it); download again.",
    )


class DownloadFailed(KittyError):
    """A model download that did not complete (network, HTTP status): nothing was registered."""

    code, status = ErrorCode.UPSTREAM_UNAVAILABLE, 502
    default_remediation = ("Check the URL and network access to its host, then run the command again.",)
