"""The storage seam: an object store holding PNGs and their JSON sidecars (S3/MinIO or a folder)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    """Timezone-aware (UTC)."""


class Store(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write an object. Raises `StorageUnavailable` when the store cannot be reached."""
        ...

    def get(self, key: str) -> bytes:
        """Read an object. Raises `KeyNotFound` or `StorageUnavailable`."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""
        ...

    def delete(self, key: str) -> None: ...

    def list_latest(self, prefix: str, limit: int, suffix: str = ".png") -> list[ObjectInfo]:
        """The `limit` newest objects under `prefix` whose key ends with `suffix`, newest first."""
        ...

    def objects(self, prefix: str, suffix: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix` whose key ends with `suffix`, in no particular order; read
        lazily (S3: a page of 1,000 at a time). Raises `StorageUnavailable` while iterating."""
        ...

    def presign(self, key: str, ttl_s: int, *, base_url: str) -> str:
        """An absolute URL any HTTP client can GET for `ttl_s` seconds. `base_url` is where this
        service is reachable, for stores whose URLs it serves itself."""
        ...

    def storage_uri(self, key: str) -> str:
        """``s3://bucket/key`` or ``file:///abs/path``."""
        ...

    def check(self) -> None:
        """Raise `StorageUnavailable` unless the store answers (for ``/readyz``)."""
        ...
