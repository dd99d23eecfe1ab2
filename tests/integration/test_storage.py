"""The two stores behave alike: the filesystem store in a temp folder and the S3 store against a
real S3 HTTP endpoint (moto's server as a process)."""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from services.images_service.errors import KeyNotFound, KittyError, StorageUnavailable, ValidationFailed
from services.images_service.settings import Settings
from services.images_service.storage import (
    FilesystemStore,
    S3Store,
    Store,
    load_or_create_signing_key,
    make_store,
)
from services.images_service.storage.fs import DOWNLOAD_ROUTE
from services.images_service.storage.keys import meta_key_for, new_image_key
from tests.support.servers import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY, free_port, unique_bucket_name

PREFIX = "images/"
SIGNING_KEY = b"k" * 32
MANY_OBJECTS = 1050
"""More than one ListObjectsV2 page (1,000 keys)."""

FAST_FAIL_S = 5.0
"""How quickly an unreachable store must say so."""

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_s3_store(endpoint: str, bucket: str | None = None, **options: object) -> S3Store:
    return S3Store(
        bucket or unique_bucket_name(),
        endpoint_url=endpoint,
        region="us-east-1",
        access_key=S3_TEST_ACCESS_KEY,
        secret_key=S3_TEST_SECRET_KEY,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "fs":
        return FilesystemStore(tmp_path / "store", SIGNING_KEY)
    return make_s3_store(request.getfixturevalue("s3_server"), create_bucket=True)


class DownloadHandler(BaseHTTPRequestHandler):
    """Stands in for the images-service's download route of the filesystem store."""

    store: FilesystemStore

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        key = unquote(url.path.removeprefix(DOWNLOAD_ROUTE))
        try:
            allowed = self.store.verify(key, int(query["expires"][0]), query["sig"][0])
        except (KeyError, ValueError):
            allowed = False
        if not allowed:
            self.send_response(403)
            self.end_headers()
            return
        body = self.store.get(key)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def download_server(store: FilesystemStore) -> Iterator[str]:
    """Serve `store`'s signed URLs on a free port; yields the base URL."""
    handler = type("BoundDownloadHandler", (DownloadHandler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def base_url(store: Store) -> Iterator[str]:
    """Where the filesystem store's signed URLs are served (S3 serves its own)."""
    if not isinstance(store, FilesystemStore):
        yield "http://unused.invalid"
        return
    with download_server(store) as url:
        yield url


def png_key(moment: datetime) -> str:
    return new_image_key(PREFIX, now=moment) + ".png"


# --- behaviour shared by both stores ----------------------------------------------------------------
def test_put_get_head_delete(store: Store) -> None:
    key = png_key(T0)
    before = datetime.now(UTC) - timedelta(seconds=2)
    store.put(key, b"\x89PNG first", "image/png")
    store.put(key, b"\x89PNG second", "image/png")

    assert store.get(key) == b"\x89PNG second"
    info = store.head(key)
    assert info is not None and info.key == key and info.size == len(b"\x89PNG second")
    assert info.last_modified.tzinfo is not None
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=2)

    store.delete(key)
    assert store.head(key) is None
    with pytest.raises(KeyNotFound):
        store.get(key)
    store.delete(key)  # deleting what is gone is not an error


def test_head_and_get_of_a_missing_key(store: Store) -> None:
    assert store.head("images/nothing-here.png") is None
    with pytest.raises(KeyNotFound) as caught:
        store.get("images/nothing-here.png")
    assert caught.value.status == 404


def test_list_latest_is_newest_first_limited_and_png_only(store: Store) -> None:
    keys = [png_key(T0 + timedelta(seconds=i)) for i in range(5)]
    for key in keys:
        store.put(key, b"png", "image/png")
        store.put(meta_key_for(key), b"{}", "application/json")
    store.put("other/20990101_000000_ffffffff.png", b"png", "image/png")

    latest = store.list_latest(PREFIX, 3)
    assert [item.key for item in latest] == keys[::-1][:3]
    assert all(item.size == 3 for item in latest)
    assert [item.key for item in store.list_latest(PREFIX, 100)] == keys[::-1]
    assert [item.key for item in store.list_latest(PREFIX, 100, suffix=".json")] == [
        meta_key_for(key) for key in keys[::-1]
    ]
    assert store.list_latest(PREFIX, 0) == []
    assert store.list_latest("nothing/", 10) == []


def test_list_latest_reads_past_the_first_page(store: Store) -> None:
    # Keys sort in time order, so ties of coarse timestamps (S3: one second) resolve the same way.
    bulk = [png_key(T0 + timedelta(seconds=i)) for i in range(MANY_OBJECTS)]
    for key in bulk:
        store.put(key, b"x", "image/png")
    # Written strictly later but named to sort first: they sit on the first page S3 lists, so only
    # an implementation that reads every page and orders by time puts them on top.
    time.sleep(1.1)
    late = [png_key(datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=i)) for i in range(3)]
    for key in late:
        store.put(key, b"late", "image/png")

    expected = late[::-1] + bulk[::-1]
    everything = store.list_latest(PREFIX, 5000)
    assert len(everything) == MANY_OBJECTS + 3
    assert [item.key for item in everything] == expected
    assert [item.key for item in store.list_latest(PREFIX, 5)] == expected[:5]


def test_presigned_url_is_fetchable_by_a_plain_client(store: Store, base_url: str) -> None:
    key = png_key(T0)
    data = bytes(range(256)) * 40
    store.put(key, data, "image/png")

    url = store.presign(key, 300, base_url=base_url)
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200
    assert response.content == data


def test_presign_refuses_a_ttl_beyond_seven_days(store: Store, base_url: str) -> None:
    with pytest.raises(ValidationFailed):
        store.presign(png_key(T0), 7 * 24 * 3600 + 1, base_url=base_url)


def test_check_passes_on_a_working_store(store: Store) -> None:
    store.check()


# --- filesystem store -------------------------------------------------------------------------------
def test_fs_signature_rejects_tampering_expiry_and_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path / "store", SIGNING_KEY)
    key = png_key(T0)
    url = urlsplit(store.presign(key, 60, base_url="http://images.local:8089/"))
    assert url.path == f"/api/images/files/{key}"
    query = parse_qs(url.query)
    expires, sig = int(query["expires"][0]), query["sig"][0]
    assert abs(expires - (time.time() + 60)) < 5

    assert store.verify(key, expires, sig)
    assert not store.verify(key, expires + 1, sig)
    assert not store.verify(png_key(T0 + timedelta(seconds=1)), expires, sig)
    assert not store.verify(key, expires, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    assert not store.verify(key, expires, "ünïcode")
    assert not FilesystemStore(tmp_path / "store", b"another key" * 3).verify(key, expires, sig)

    monkeypatch.setattr(time, "time", lambda: expires + 1)
    assert not store.verify(key, expires, sig)


def test_fs_expired_url_is_refused_over_http(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store", SIGNING_KEY)
    key = png_key(T0)
    store.put(key, b"png", "image/png")
    with download_server(store) as base:
        url = urlsplit(store.presign(key, 60, base_url=base))
        sig = parse_qs(url.query)["sig"][0]
        past = int(time.time()) - 1
        assert httpx.get(f"{base}{url.path}?expires={past}&sig={sig}", trust_env=False).status_code == 403
        assert httpx.get(url.geturl(), trust_env=False).status_code == 200


@pytest.mark.parametrize(
    "key",
    [
        "../outside.png",
        "images/../../outside.png",
        "/etc/passwd",
        "images\\..\\x.png",
        "images//x.png",
        "",
        ".",
    ],
)
def test_fs_refuses_keys_that_leave_the_root(tmp_path: Path, key: str) -> None:
    store = FilesystemStore(tmp_path / "store", SIGNING_KEY)
    for operation in (
        lambda: store.put(key, b"x", "image/png"),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.storage_uri(key),
        lambda: store.presign(key, 60, base_url="http://x"),
    ):
        with pytest.raises(ValidationFailed):
            operation()
    assert not (tmp_path / "outside.png").exists()


def test_fs_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    (root / "images" / "escape").symlink_to(outside)
    store = FilesystemStore(root, SIGNING_KEY)
    with pytest.raises(ValidationFailed):
        store.get("images/escape/secret.png")


def test_fs_writes_leave_no_temp_files_and_uris_are_absolute(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store", SIGNING_KEY)
    key = png_key(T0)
    store.put(key, b"png", "image/png")
    assert [path.name for path in (tmp_path / "store" / "images").iterdir()] == [key.removeprefix(PREFIX)]
    assert store.storage_uri(key) == (tmp_path / "store" / key).resolve().as_uri()
    assert store.storage_uri(key).startswith("file:///")


def test_fs_check_fails_when_the_root_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    store = FilesystemStore(blocker / "store", SIGNING_KEY)
    with pytest.raises(StorageUnavailable) as caught:
        store.check()
    assert caught.value.remediation
    with pytest.raises(StorageUnavailable):
        store.put(png_key(T0), b"x", "image/png")


def test_signing_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "var", None)
    path = tmp_path / "var" / "signing.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_signing_key(tmp_path / "var", None) == key
    assert load_or_create_signing_key(tmp_path / "var", "configured-secret") == b"configured-secret"
    assert [p.name for p in (tmp_path / "var").iterdir()] == ["signing.key"]

    path.write_text("not hex")
    with pytest.raises(KittyError, match="signing.key"):
        load_or_create_signing_key(tmp_path / "var", None)


# --- S3 store ---------------------------------------------------------------------------------------
def test_s3_storage_uri_and_public_endpoint(s3_server: str) -> None:
    public = s3_server.replace("127.0.0.1", "localhost")
    bucket = unique_bucket_name()
    store = make_s3_store(s3_server, bucket, create_bucket=True, public_endpoint_url=public)
    key = png_key(T0)
    store.put(key, b"public bytes", "image/png")
    assert store.storage_uri(key) == f"s3://{bucket}/{key}"
    url = store.presign(key, 60, base_url="http://ignored")
    assert url.startswith(f"{public}/{bucket}/{key}?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    assert httpx.get(url, trust_env=False).content == b"public bytes"


def test_s3_missing_bucket_is_reported_unless_created(s3_server: str) -> None:
    bucket = unique_bucket_name()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        make_s3_store(s3_server, bucket).check()
    make_s3_store(s3_server, bucket, create_bucket=True).check()
    # A second process finding the bucket already there is fine.
    make_s3_store(s3_server, bucket, create_bucket=True).check()
    make_s3_store(s3_server, bucket).check()


@pytest.mark.parametrize("operation", ["check", "put", "get", "head", "list_latest"])
def test_s3_down_is_storage_unavailable_quickly(operation: str) -> None:
    store = make_s3_store(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        call(store, operation)
    assert time.monotonic() - started < FAST_FAIL_S
    assert caught.value.status == 503 and caught.value.remediation


def test_s3_that_accepts_but_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or replies
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = make_s3_store(endpoint, read_timeout_s=0.5, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.get(png_key(T0))
        assert time.monotonic() - started < FAST_FAIL_S


def call(store: Store, operation: str) -> None:
    key = png_key(T0)
    if operation == "put":
        store.put(key, b"x", "image/png")
    elif operation == "list_latest":
        store.list_latest(PREFIX, 10)
    elif operation == "check":
        store.check()
    else:
        getattr(store, operation)(key)


# --- factory ----------------------------------------------------------------------------------------
def test_make_store_picks_s3_when_a_bucket_is_set(tmp_path: Path, s3_server: str) -> None:
    bucket = unique_bucket_name()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        IMAGES_DATA_DIR=tmp_path,
        S3_ENDPOINT_URL=s3_server,
        S3_BUCKET=bucket,
        S3_ACCESS_KEY=S3_TEST_ACCESS_KEY,
        S3_SECRET_KEY=S3_TEST_SECRET_KEY,
    )
    store = make_store(settings)
    assert isinstance(store, S3Store)
    store.put("images/a.png", b"a", "image/png")
    assert store.storage_uri("images/a.png") == f"s3://{bucket}/images/a.png"


def test_make_store_defaults_to_the_folder_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("S3_BUCKET", "S3_ENDPOINT_URL", "IMAGES_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None, IMAGES_DATA_DIR=tmp_path)  # type: ignore[call-arg]
    store = make_store(settings)
    assert isinstance(store, FilesystemStore)
    store.put("images/a.png", b"a", "image/png")
    assert (tmp_path / "store" / "images" / "a.png").read_bytes() == b"a"
    assert (tmp_path / "signing.key").exists()
    # The signing key lives outside the store's root, out of reach of any key.
    with pytest.raises(ValidationFailed):
        store.get("../signing.key")
