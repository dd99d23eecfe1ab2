"""Object storage of images and sidecars: the `Store` seam, its two implementations and the factory
that picks one from settings (S3 when a bucket is configured, else the embedded folder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ObjectInfo, Store
from .fs import FilesystemStore, load_or_create_signing_key

if TYPE_CHECKING:
    from ..settings import Settings
    from .s3 import S3Store

__all__ = ["FilesystemStore", "ObjectInfo", "S3Store", "Store", "load_or_create_signing_key", "make_store"]


def make_store(settings: Settings) -> Store:
    """The store these settings describe: `S3Store` when ``S3_BUCKET`` is set, else a
    `FilesystemStore` under ``IMAGES_DATA_DIR/store`` (keys already carry the ``images/`` prefix)."""
    if settings.s3_bucket:  # Settings.uses_s3, spelled so the type checker sees a str
        from .s3 import S3Store

        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            public_endpoint_url=settings.s3_public_endpoint_url,
            create_bucket=settings.s3_create_bucket,
        )
    signing_key = load_or_create_signing_key(settings.data_dir, settings.signing_key)
    return FilesystemStore(settings.images_dir, signing_key)


def __getattr__(name: str) -> Any:
    # `from ...storage import S3Store` works without importing boto3 for filesystem-only processes.
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
