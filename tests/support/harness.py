"""An images-service (in-process, real Redis, a real store) plus a real non-forking worker drained
in burst mode: the queue path from submit to imageRef, with any engine behind it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from rq.serializers import JSONSerializer

from services.images_service.app import create_app
from services.images_service.engines import Engine
from services.images_service.queue import connect_redis, engine_queues
from services.images_service.settings import Settings
from services.images_service.storage import Store, make_store
from services.images_service.worker.rq_worker import KittyWorker
from services.images_service.worker.tasks import Runtime, set_runtime
from tests.support.fakes import FakeEngine

MODEL = "fake-model"
"""A models.yaml entry whose folder exists (for fake engines: nothing is loaded from it)."""


@dataclass
class Harness:
    client: TestClient
    settings: Settings
    store: Store
    engines: dict[str, Engine] = field(default_factory=dict)

    @property
    def engine(self) -> Any:
        return self.engines["diffusers"]

    def work(self, engine: str = "diffusers") -> None:
        """Drain `engine`'s queue with a real KittyWorker in this process (RQ's burst mode)."""
        set_runtime(Runtime(self.settings, self.client.app.state.registry, self.store, dict(self.engines)))
        conn = connect_redis(self.settings.redis_url)
        try:
            queues = engine_queues(conn, self.settings, engine)
            KittyWorker(queues, connection=conn, serializer=JSONSerializer).work(burst=True)
        finally:
            set_runtime(None)
            conn.close()

    def generate(self, **body: object) -> str:
        response = self.client.post("/api/images/generate", json={"prompt": "a red fox", **body})
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/images/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    """Settings isolated from the developer's environment and .env, rooted in `tmp_path`."""
    models_yaml = tmp_path / "models.yaml"
    model_dir = tmp_path / MODEL
    model_dir.mkdir(exist_ok=True)
    models_yaml.write_text(
        yaml.safe_dump(
            {
                "models": {
                    MODEL: {"path": str(model_dir), "defaults": {"width": 64, "height": 48, "steps": 4}},
                    "fake-xl": {"path": str(model_dir), "refiner": MODEL},
                }
            }
        )
    )
    values: dict[str, object] = {
        "redis_url": redis_url,
        "data_dir": tmp_path / "var",
        "models_yaml": models_yaml,
        "job_timeout_s": 30,
        # Server engines point at a closed port unless a test serves a fake peer.
        "comfyui_url": "http://127.0.0.1:9",
        "a1111_base_url": "http://127.0.0.1:9",
        "invoke_port": 9,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _builder(
    tmp_path: Path, redis_url: str, s3: dict[str, object] | None
) -> Iterator[Callable[..., Harness]]:
    clients: list[TestClient] = []

    def build(engine: Engine | None = None, **overrides: object) -> Harness:
        settings = make_settings(tmp_path, redis_url, **{**(s3 or {}), **overrides})
        store = make_store(settings)
        client = TestClient(create_app(settings, store=store))
        client.__enter__()
        clients.append(client)
        return Harness(client, settings, store, {"diffusers": engine or FakeEngine()})

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def harness_with(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Harness]]:
    """Builds harnesses on the filesystem store: ``harness_with(engine, **settings_overrides)``."""
    yield from _builder(tmp_path, redis_url, None)


@pytest.fixture(params=["fs", "s3"])
def harness_factory(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[Callable[..., Harness]]:
    """Like `harness_with`, once per store: the filesystem and S3 (moto's server, a fresh bucket)."""
    s3: dict[str, object] | None = None
    if request.param == "s3":
        s3 = {
            "s3_endpoint_url": request.getfixturevalue("s3_server"),
            "s3_bucket": request.getfixturevalue("s3_bucket"),
            "s3_access_key": "test",
            "s3_secret_key": "test",
        }
    yield from _builder(tmp_path, redis_url, s3)
