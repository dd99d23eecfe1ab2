"""Object keys of stored images: how a new one is named and which ones a client may name.

Layout (the seed's): ``{prefix}{YYYYmmdd_HHMMSS}_{id8}.png`` with the JSON sidecar beside it.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from ..errors import ValidationFailed

KEY_TIME_FORMAT = "%Y%m%d_%H%M%S"
"""UTC timestamp part of a key; sorts lexically in time order."""

KEY_ID_BYTES = 4
"""Random bytes of a key's id part (8 hex characters): collisions within one second are negligible."""

MAX_KEY_CHARS = 1024
"""S3's key length limit."""

IMAGE_SUFFIX = ".png"
META_SUFFIX = ".json"
VIDEO_SUFFIX = ".mp4"
"""A video job's stored original (H.264), beside its sidecar and poster."""
POSTER_SUFFIX = ".poster.webp"
"""A clip's poster frame (WebP), beside it."""
MEDIA_SUFFIXES = (IMAGE_SUFFIX, VIDEO_SUFFIX)
"""What `select` and delete accept: an image's or a clip's key."""

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def new_image_key(prefix: str, now: datetime | None = None) -> str:
    """A fresh key stem, ``{prefix}{YYYYmmdd_HHMMSS}_{8 hex}``, without extension."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}{moment.strftime(KEY_TIME_FORMAT)}_{secrets.token_hex(KEY_ID_BYTES)}"


def meta_key_for(png_key: str) -> str:
    """The sidecar's key of an image or a clip: ``.png`` (``.mp4``) replaced by ``.json``."""
    return media_stem(png_key) + META_SUFFIX


def media_stem(key: str) -> str:
    """`key` without its ``.png`` or ``.mp4``."""
    for suffix in MEDIA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def is_video_key(key: str) -> bool:
    return key.endswith(VIDEO_SUFFIX)


def poster_key_for(video_key: str) -> str:
    return media_stem(video_key) + POSTER_SUFFIX


def validate_image_key(
    key: str,
    prefix: str,
    *,
    suffixes: tuple[str, ...] = (IMAGE_SUFFIX,),
    listing: str = "List images with GET /api/images/latest and use a `key` from there.",
) -> str:
    """Return `key` when it names an image under `prefix`; raise `ValidationFailed` otherwise.

    Keys arrive from clients (``select``, the download route, a request's `image`), so anything that
    could escape the image prefix or confuse a path join is refused before it reaches a store.
    `suffixes` are the extensions accepted (uploads: ``.png``, ``.jpg``, ``.webp``); `listing` says
    where valid keys come from.
    """

    def refuse(problem: str) -> ValidationFailed:
        return ValidationFailed(
            f"Invalid image key {key!r}: {problem}.",
            remediation=[listing],
            detail={"key": key, "prefix": prefix},
        )

    if not key:
        raise ValidationFailed("The image key is empty.", remediation=[listing], detail={"key": key})
    if len(key) > MAX_KEY_CHARS:
        raise refuse(f"longer than {MAX_KEY_CHARS} characters")
    if _CONTROL_CHARS.search(key):
        raise refuse("it contains control characters")
    if "\\" in key:
        raise refuse("it contains a backslash; keys use '/' only")
    if key.startswith("/"):
        raise refuse("it starts with '/'; keys are relative, like 'images/20250101_120000_ab12cd34.png'")
    if "//" in key:
        raise refuse("it contains an empty path segment ('//')")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise refuse("it contains a '.' or '..' path segment")
    if not _KEY_CHARS.fullmatch(key):
        raise refuse("only letters, digits and '.', '_', '-', '/' are allowed")
    if not key.startswith(prefix):
        raise refuse(f"images live under {prefix!r}")
    if not key.endswith(suffixes) or any(key == prefix + suffix for suffix in suffixes):
        raise refuse(f"an image key ends in {' or '.join(repr(suffix) for suffix in suffixes)}")
    return key
