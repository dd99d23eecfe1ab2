"""Real servers for tests, started as processes on free loopback ports: redis-server and moto's S3
server, as session fixtures. The process helpers live in `services.common.processes` (the bench uses
them too) and are re-exported here for the tests that import them from this module.

Use as a plugin, ``pytest_plugins = ["tests.support.servers"]`` in the root conftest, so every
fixture here (``s3_bucket``, ``s3_env`` too) is available without naming each one.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from services.common.processes import (
    READY_TIMEOUT_S,
    S3_TEST_ACCESS_KEY,
    S3_TEST_REGION,
    S3_TEST_SECRET_KEY,
    ProcessHandle,
    free_port,
    log_tail,
    moto_env,
    redis_server_executable,
    start_process,
    wait_for_http,
    wait_for_redis,
)

__all__ = [
    "S3_TEST_ACCESS_KEY",
    "S3_TEST_REGION",
    "S3_TEST_SECRET_KEY",
    "ProcessHandle",
    "free_port",
    "log_tail",
    "moto_env",
    "redis_server_executable",
    "start_process",
    "unique_bucket_name",
    "wait_for_http",
    "wait_for_redis",
]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, for the whole session; yields ``redis://127.0.0.1:N/0``."""
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    log_path = workdir / "redis.log"
    handle = start_process(
        [
            redis_server_executable(),
            *("--port", str(port), "--bind", "127.0.0.1"),
            # A scratch server: no snapshots, no AOF, in the foreground so stop() can end it.
            *("--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)),
        ],
        None,
        None,
        log_path,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, handle.process, log_path, READY_TIMEOUT_S)
        yield url
    finally:
        handle.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis URL, its database flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    try:
        yield redis_server
    finally:
        client.flushdb()
        client.close()


# --- S3 (moto) ------------------------------------------------------------------------------------
def unique_bucket_name() -> str:
    """A valid S3 bucket name no other test uses."""
    return f"kitty-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a process, for the whole session; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    handle = start_process(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        moto_env(),
        f"{endpoint}/",
        log_path,
    )
    try:
        yield endpoint
    finally:
        handle.stop()


@pytest.fixture
def s3_bucket() -> str:
    """A bucket name no other test uses (buckets are created by the code under test, or by you)."""
    return unique_bucket_name()


@pytest.fixture
def s3_env(s3_server: str, s3_bucket: str) -> dict[str, str]:
    """Environment variables pointing a service at the moto server and this test's own bucket."""
    return {
        "S3_ENDPOINT_URL": s3_server,
        "S3_BUCKET": s3_bucket,
        "S3_REGION": S3_TEST_REGION,
        "S3_ACCESS_KEY": S3_TEST_ACCESS_KEY,
        "S3_SECRET_KEY": S3_TEST_SECRET_KEY,
        "IMAGES_S3_CREATE_BUCKET": "true",
    }
