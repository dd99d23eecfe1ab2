"""Object storage down when a job finishes, for real (the S3 server process is stopped): the
images wait in the worker's spool, the job is not `done` until they are stored, and nothing is lost
when storage returns."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient

from services.images_service.app import create_app
from services.images_service.gallery import GalleryIndex
from services.images_service.queue import connect_redis
from services.images_service.storage import make_store
from services.images_service.worker.spool import Spool
from tests.support.fakes import FakeEngine
from tests.support.harness import Harness, make_settings
from tests.support.servers import ProcessHandle, free_port, moto_env, start_process

BUCKET = "kitty-outage"


class MotoProcess:
    """An S3 server of our own that the test stops and starts again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.handle: ProcessHandle | None = None

    def start(self) -> None:
        self.handle = start_process(
            [sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", "127.0.0.1"],
            moto_env(),
            f"{self.url}/",
            self.log_dir / "moto.log",
        )

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoProcess]:
    server = MotoProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def test_images_wait_in_the_spool_until_storage_returns(
    tmp_path: Path, redis_url: str, moto: MotoProcess
) -> None:
    settings = make_settings(
        tmp_path,
        redis_url,
        s3_endpoint_url=moto.url,
        s3_bucket=BUCKET,
        s3_access_key="test",
        s3_secret_key="test",
    )
    store = make_store(settings)
    store.check()  # creates the bucket
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"diffusers": FakeEngine()})
        job_id = harness.generate(seed=11)

        moto.stop()
        harness.work()  # renders, cannot store, keeps the images on disk

        view = harness.job(job_id)
        assert view["status"] == "started" and view["result"] is None
        spool = settings.data_dir / "spool"
        assert (spool / job_id / "manifest.json").exists()
        assert client.get("/api/images/latest").json()["items"] == []

        moto.start()  # storage is back (an S3 server keeps its buckets; this one starts empty)
        boto3.client(
            "s3",
            endpoint_url=moto.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        from services.images_service.worker.spool import Spool

        redis = connect_redis(settings.redis_url)
        assert Spool(spool).flush(store, redis, GalleryIndex(redis, settings.queue_prefix)) == 1

        view = harness.job(job_id)
        assert view["status"] == "done"
        key = view["result"]["png_key"]
        assert [i["key"] for i in client.get("/api/images/latest").json()["items"]] == [key]
        ref = client.post("/api/images/select", json={"key": key}).json()["imageRef"]
        assert httpx.get(ref["downloadUrl"]).content == store.get(key)
        assert store.head(key.replace(".png", ".json")) is not None
        assert not (spool / job_id).exists()


def test_flush_while_storage_is_still_down_keeps_everything(
    tmp_path: Path, redis_url: str, moto: MotoProcess
) -> None:
    settings = make_settings(
        tmp_path, redis_url, s3_endpoint_url=moto.url, s3_bucket=BUCKET, s3_access_key="t", s3_secret_key="t"
    )
    store = make_store(settings)
    store.check()
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"diffusers": FakeEngine()})
        job_id = harness.generate()
        moto.stop()
        harness.work()

        redis = connect_redis(settings.redis_url)
        spool = Spool(settings.data_dir / "spool")
        assert spool.flush(store, redis, GalleryIndex(redis, settings.queue_prefix)) == 0
        assert spool.pending() == [job_id]
        assert harness.job(job_id)["status"] == "started"
