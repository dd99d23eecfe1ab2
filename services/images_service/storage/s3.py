"""The S3 store (MinIO or any S3): objects in one bucket, presigned GET URLs as download links.

boto3 is imported when an `S3Store` is built, so filesystem-only processes never pay for it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import TYPE_CHECKING, Any

from ..errors import KeyNotFound, StorageUnavailable
from .base import ObjectInfo
from .fs import check_presign_ttl

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

CONNECT_TIMEOUT_S = 2.0
"""TCP connect timeout: a local MinIO answers in milliseconds, so a down one fails fast."""

READ_TIMEOUT_S = 10.0
"""Per-socket-read timeout: long enough for a multi-MB PNG on a slow link, short enough for /readyz."""

MAX_ATTEMPTS = 2
"""Total attempts per call (botocore "standard" retries): one retry for a blip, not a minute of waiting."""

LIST_PAGE_SIZE = 1000
"""Keys per ListObjectsV2 page: S3's maximum, so the fewest round trips."""

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_OWNED_CODES = frozenset({"BucketAlreadyOwnedByYou"})


class S3Store:
    """A `Store` keeping each object at ``s3://bucket/key``."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
        public_endpoint_url: str | None = None,
        create_bucket: bool = False,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._create_bucket = create_bucket
        self._bucket_ready = not create_bucket
        self._bucket_lock = threading.Lock()
        config = Config(
            signature_version="s3v4",
            # Path-style (endpoint/bucket/key): MinIO and moto serve it without wildcard DNS.
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        # Presigned URLs embed the host they were signed for, so clients that reach S3 by another
        # name (compose: the browser sees localhost:9000, the service sees minio:9000) need a client
        # signing for that name. Signing is local: this client never makes a request.
        self._presign_client: Any = (
            session.client("s3", endpoint_url=public_endpoint_url, config=config)
            if public_endpoint_url
            else self._client
        )

    # --- Store --------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._ensure_bucket()
        with self._translated(key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        self._ensure_bucket()
        with self._translated(key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = response["Body"].read()
        return body

    def head(self, key: str) -> ObjectInfo | None:
        self._ensure_bucket()
        try:
            with self._translated(key):
                response = self._client.head_object(Bucket=self.bucket, Key=key)
        except KeyNotFound:
            return None
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            last_modified=response["LastModified"].astimezone(UTC),
        )

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        with self._translated(key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def list_latest(self, prefix: str, limit: int, suffix: str = ".png") -> list[ObjectInfo]:
        if limit <= 0:
            return []
        # S3 lists in key order, not time order, so every page is read; the bounded heap keeps
        # memory at O(limit). LastModified has 1 s resolution: ties go to the larger key, which
        # is also the later one for our timestamped keys.
        return heapq.nlargest(limit, self.objects(prefix, suffix), key=lambda o: (o.last_modified, o.key))

    def objects(self, prefix: str, suffix: str = "") -> Iterator[ObjectInfo]:
        self._ensure_bucket()
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translated(prefix):
            pages = paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    if item["Key"].endswith(suffix):
                        yield ObjectInfo(
                            key=item["Key"],
                            size=int(item["Size"]),
                            last_modified=item["LastModified"].astimezone(UTC),
                        )

    def presign(self, key: str, ttl_s: int, *, base_url: str) -> str:
        check_presign_ttl(ttl_s)
        with self._translated(key):
            url: str = self._presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_s
            )
        return url

    def storage_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check(self) -> None:
        self._ensure_bucket()
        with self._translated(None):
            self._client.head_bucket(Bucket=self.bucket)

    # --- internals ----------------------------------------------------------------------------
    def _ensure_bucket(self) -> None:
        """Create the bucket once per process when asked to; retried on the next call if S3 was down."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            from botocore.exceptions import ClientError

            with self._translated(None):
                try:
                    self._client.head_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if _code(exc) not in _MISSING_CODES | _NO_BUCKET_CODES:
                        raise
                    self._make_bucket()
            self._bucket_ready = True

    def _make_bucket(self) -> None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) not in _OWNED_CODES:
                raise

    @contextmanager
    def _translated(self, key: str | None) -> Iterator[None]:
        """Turn botocore's exceptions into the service's own."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, key) from exc
        except BotoCoreError as exc:
            # Connection refused, DNS, timeouts, missing credentials: the store cannot be used.
            raise StorageUnavailable(
                f"S3 at {self.endpoint_url or 'AWS'} is unreachable: {exc}.",
                detail={"endpoint": self.endpoint_url, "bucket": self.bucket, "reason": type(exc).__name__},
            ) from exc

    def _client_error(self, exc: ClientError, key: str | None) -> Exception:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = {"endpoint": self.endpoint_url, "bucket": self.bucket, "key": key, "code": code}
        if code in _NO_BUCKET_CODES or (key is None and code in _MISSING_CODES):
            return StorageUnavailable(
                f"The bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}.",
                remediation=[
                    "Create it (e.g. `mc mb`), or set IMAGES_S3_CREATE_BUCKET=true to have it created.",
                    "Check S3_BUCKET and S3_ENDPOINT_URL.",
                ],
                detail=detail,
            )
        if key is not None and code in _MISSING_CODES:
            return KeyNotFound(f"No image or object named {key!r}.", detail=detail)
        if status in (401, 403):
            return StorageUnavailable(
                f"S3 refused the credentials ({code}).",
                remediation=["Check S3_ACCESS_KEY, S3_SECRET_KEY and the bucket policy."],
                detail=detail,
            )
        return StorageUnavailable(f"S3 answered {status} {code}.", detail=detail)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
