"""The embedded store: objects as files under one folder, and the HMAC-signed download URLs the
images-service serves for them (the filesystem's stand-in for S3 presigned URLs)."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from ..errors import KeyNotFound, KittyError, StorageUnavailable, ValidationFailed
from ..settings import MAX_PRESIGN_TTL_S
from .base import ObjectInfo

DOWNLOAD_ROUTE = "/api/images/files/"
"""Path under the service's base URL where signed downloads are served; the key follows it."""

SIGNING_KEY_FILE = "signing.key"
"""File under the data dir holding the generated HMAC key (hex)."""

SIGNING_KEY_BYTES = 32
"""Length of a generated key: SHA-256's output size, so the key is as strong as the MAC."""

MIN_SIGNING_KEY_BYTES = 16
"""A key file shorter than this is treated as damaged rather than silently used."""

SECRET_FILE_MODE = 0o600
"""The signing key is readable by its owner only."""

TEMP_PREFIX = ".tmp-"
"""Prefix of in-flight writes; hidden, so listings never show a half-written object."""


class FilesystemStore:
    """A `Store` keeping each object at ``root/key``."""

    def __init__(self, root: Path, signing_key: bytes) -> None:
        if not signing_key:
            raise ValueError("FilesystemStore needs a non-empty signing key")
        self.root = Path(root).absolute()
        self._signing_key = signing_key

    # --- paths --------------------------------------------------------------------------------
    def _path_for(self, key: str) -> Path:
        """The file of `key`, refusing any key that would land outside the root."""
        if not key or key.startswith("/") or "\\" in key or "\x00" in key:
            raise ValidationFailed(f"Invalid storage key {key!r}.", detail={"key": key})
        if any(segment in ("", ".", "..") for segment in key.split("/")):
            raise ValidationFailed(
                f"Invalid storage key {key!r}: empty, '.' or '..' segment.", detail={"key": key}
            )
        root = self.root.resolve()
        path = (root / key).resolve()
        # resolve() follows symlinks too, so a link pointing out of the root is caught here.
        if path == root or not path.is_relative_to(root):
            raise ValidationFailed(f"Storage key {key!r} points outside the store.", detail={"key": key})
        return path

    # --- Store --------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # mkstemp creates 0600; objects are ordinary files, readable like any other output.
            os.chmod(tmp_name, 0o644)
            # os.replace is atomic on one filesystem: readers see the old object or the new one.
            os.replace(tmp_name, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise _unavailable(self.root, exc) from exc

    def get(self, key: str) -> bytes:
        path = self._path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise KeyNotFound(f"No image or object named {key!r}.", detail={"key": key}) from exc
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path_for(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=stat.st_size, last_modified=_utc(stat.st_mtime))

    def delete(self, key: str) -> None:
        path = self._path_for(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc

    def list_latest(self, prefix: str, limit: int, suffix: str = ".png") -> list[ObjectInfo]:
        if limit <= 0:
            return []
        # A bounded heap: O(n log limit) time, O(limit) memory. Ties (coarse mtimes) go to the
        # larger key, which is also the later one for keys that start with a timestamp.
        return heapq.nlargest(limit, self.objects(prefix, suffix), key=lambda o: (o.last_modified, o.key))

    def objects(self, prefix: str, suffix: str = "") -> Iterator[ObjectInfo]:
        root = self.root.resolve()
        # A key prefix may end mid-name ("images/2025"): walk its folder, filter by the full prefix.
        folder = root / prefix.rpartition("/")[0] if "/" in prefix else root
        if not folder.resolve().is_relative_to(root):
            raise ValidationFailed(f"Invalid listing prefix {prefix!r}.", detail={"prefix": prefix})
        try:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [name for name in dirnames if not name.startswith(".")]
                for name in filenames:
                    if name.startswith(".") or not name.endswith(suffix):
                        continue
                    path = Path(dirpath) / name
                    key = path.relative_to(root).as_posix()
                    if not key.startswith(prefix):
                        continue
                    try:
                        stat = path.stat()
                    except FileNotFoundError:  # deleted while we walked
                        continue
                    yield ObjectInfo(key=key, size=stat.st_size, last_modified=_utc(stat.st_mtime_ns / 1e9))
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc

    def presign(self, key: str, ttl_s: int, *, base_url: str) -> str:
        self._path_for(key)
        check_presign_ttl(ttl_s)
        expires = int(time.time()) + ttl_s
        signature = self._sign(key, expires)
        return (
            f"{base_url.rstrip('/')}{DOWNLOAD_ROUTE}{quote(key, safe='/')}?expires={expires}&sig={signature}"
        )

    def verify(self, key: str, expires: int, sig: str) -> bool:
        """True when `sig` was made by `presign` for `key` and `expires` has not passed."""
        if expires < time.time():
            return False
        expected = self._sign(key, expires).encode()
        try:
            given = sig.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(expected, given)

    def storage_uri(self, key: str) -> str:
        return self._path_for(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Writing is the only reliable test: os.access lies for root and on read-only mounts.
            with tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX, dir=self.root):
                pass
        except OSError as exc:
            raise _unavailable(self.root, exc) from exc

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def load_or_create_signing_key(data_dir: Path, configured: str | None) -> bytes:
    """The HMAC key of download URLs: `configured` when set, else ``data_dir/signing.key``, created
    (32 random bytes, hex, mode 0600) on first use so URLs survive restarts."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / SIGNING_KEY_FILE
    if not path.exists():
        _create_key_file(path)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise KittyError(
            f"The signing key file {path} is damaged: expected at least {MIN_SIGNING_KEY_BYTES} bytes"
            " written as hex.",
            remediation=[f"Delete {path} to have a new one generated, or set IMAGES_SIGNING_KEY."],
        )
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(fd, SECRET_FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(SIGNING_KEY_BYTES) + "\n")
        # link() fails when the name exists, so of two processes starting at once, one key wins
        # and both read it; a reader never sees a half-written file.
        with contextlib.suppress(FileExistsError):
            os.link(tmp_name, path)
    finally:
        os.unlink(tmp_name)


def check_presign_ttl(ttl_s: int) -> None:
    """Refuse a download-URL lifetime outside 1 s .. 7 days (SigV4's limit; we keep it for both stores)."""
    if not 0 < ttl_s <= MAX_PRESIGN_TTL_S:
        raise ValidationFailed(
            f"A download URL lives 1 to {MAX_PRESIGN_TTL_S} seconds, not {ttl_s}.",
            remediation=["Set IMAGES_URL_TTL to at most 7 days."],
        )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _unavailable(root: Path, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(
        f"The image folder {root} cannot be used: {exc.strerror or exc}.",
        remediation=[
            f"Check that {root} exists, is writable by this process and its disk is not full.",
            "Or point IMAGES_DATA_DIR elsewhere, or configure S3_ENDPOINT_URL and S3_BUCKET.",
        ],
        detail={"root": str(root), "errno": exc.errno},
    )
