"""Delivery formats: a stored PNG handed out as JPEG or WebP, its A1111 infotext kept as the EXIF
``UserComment`` (where A1111 writes it in its own JPEG/WebP saves, and where readers look).

The PNG stays the stored original. A converted copy is cached beside it under a derived key
(``<stem>.q90.jpg``) when `select` asks for one: an S3 presigned URL can only name an object that
exists, so converting on download would not work there. Deleting the image deletes its copies.
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image

from .metadata import PARAMETERS_CHUNK
from .storage import Store
from .storage.keys import IMAGE_SUFFIX

DeliveryFormat = Literal["png", "jpeg", "webp"]

FORMATS: dict[str, tuple[str, str, str]] = {
    "png": (IMAGE_SUFFIX, "image/png", "PNG"),
    "jpeg": (".jpg", "image/jpeg", "JPEG"),
    "webp": (".webp", "image/webp", "WEBP"),
}
"""Delivery format → (key suffix, media type, Pillow's format name)."""

DEFAULT_QUALITY = 90
"""JPEG/WebP quality when none is asked: visually lossless for renders, a fifth of the PNG."""

COPY_MARK = ".q"
"""Between a PNG's stem and a copy's quality: ``images/x.q90.jpg``; `copies_of` lists by it."""

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
"""The Exif sub-IFD and its UserComment tag, where A1111 (through piexif) writes the infotext."""

UNICODE_PREFIX = b"UNICODE\x00"
"""UserComment's character-code header for UTF-16 (big-endian, as piexif and A1111 write it)."""


def copy_key(png_key: str, fmt: str, quality: int) -> str:
    """Where the `fmt` copy of `png_key` at `quality` is cached; the PNG's own key for ``png``."""
    suffix = FORMATS[fmt][0]
    if fmt == "png":
        return png_key
    return f"{png_key.removesuffix(IMAGE_SUFFIX)}{COPY_MARK}{quality}{suffix}"


def user_comment(text: str) -> bytes:
    """`text` as an EXIF UserComment value (what ``piexif.helper.UserComment.dump`` makes)."""
    return UNICODE_PREFIX + text.encode("utf_16_be")


def convert(png: bytes, fmt: str, quality: int) -> bytes:
    """The PNG `png` as `fmt` at `quality`, its ``parameters`` text as the EXIF UserComment."""
    if fmt == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        parameters = str((getattr(image, "text", {}) or {}).get(PARAMETERS_CHUNK, ""))
        exif = Image.Exif()
        if parameters:
            exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(parameters)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=FORMATS[fmt][2], quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def ensure_copy(store: Store, png_key: str, fmt: str, quality: int) -> str:
    """The key of the `fmt` copy of `png_key`, converted and stored first unless it already is."""
    key = copy_key(png_key, fmt, quality)
    if key != png_key and store.head(key) is None:
        store.put(key, convert(store.get(png_key), fmt, quality), FORMATS[fmt][1])
    return key


def copies_of(store: Store, png_key: str) -> list[str]:
    """The keys of every cached copy of `png_key` (any format, any quality)."""
    stem = png_key.removesuffix(IMAGE_SUFFIX) + COPY_MARK
    suffixes = tuple(suffix for suffix, _, _ in FORMATS.values() if suffix != IMAGE_SUFFIX)
    return [
        info.key
        for info in store.objects(stem)
        if info.key.endswith(suffixes) and info.key[len(stem) :].split(".")[0].isdigit()
    ]
