"""Many workers, many "hosts", one store: four worker processes with their own data dirs (no shared
filesystem) against one real Redis and moto's S3 server, model-aware dispatch between them, and the
filesystem store refusing a second folder.

The workers are the production `images-worker` with `bench.sleep_worker`'s engine, which sleeps
instead of rendering (a load costs 1 s, a render 0.2 s), so four of them fit on two cores.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.support.deployment import Deployment, is_terminal
from tests.support.servers import ProcessHandle, free_port, start_process

MODELS = ("tiny-sd15", "tiny-sdxl")
SMALL = {"width": 64, "height": 64, "steps": 2}
SLEEP = {"KITTY_SLEEP_LOAD_S": "1.0", "KITTY_SLEEP_RENDER_S": "0.2", "KITTY_SLEEP_CACHE": "1"}


def start_sleep_worker(deployment: Deployment, name: str, data_dir: Path, **env: str) -> ProcessHandle:
    metrics = free_port()
    handle = start_process(
        [sys.executable, "-m", "bench.sleep_worker", "--engine", "diffusers", "--metrics-port", str(metrics)],
        {**deployment.env, **SLEEP, "IMAGES_DATA_DIR": str(data_dir), **env},
        f"http://127.0.0.1:{metrics}/metrics",
        deployment.logs / f"{name}.log",
        timeout=120,
    )
    deployment.processes.append(handle)
    return handle


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, tiny_models: Path, s3_env: dict[str, str]) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, redis_url, tiny_models, IMAGES_DISPATCH_WAIT_S="2")
    deployment.env.update(s3_env)  # one bucket for every process: the store a fleet shares
    deployment.start_api()
    for number in range(4):
        start_sleep_worker(deployment, f"worker-{number}", tmp_path / f"host-{number}")
    yield deployment
    deployment.close()


def finished(deployment: Deployment, job_ids: list[str], timeout: float = 240.0) -> list[dict]:
    views: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(views) < len(job_ids) and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in views:
                view = deployment.view(job_id)
                if is_terminal(view):
                    views[job_id] = view
        time.sleep(0.2)
    missing = [job_id for job_id in job_ids if job_id not in views]
    assert not missing, f"{len(missing)} jobs never ended, e.g. {deployment.view(missing[0])}"
    return [views[job_id] for job_id in job_ids]


def test_four_workers_on_their_own_hosts_share_one_redis_and_one_bucket(
    fleet: Deployment, s3_env: dict[str, str]
) -> None:
    # Warm-up: one job of each model, then enough for every worker to hold one of them.
    warmup = [fleet.generate({"prompt": f"warm {i}", "model": MODELS[i % 2], **SMALL}) for i in range(8)]
    finished(fleet, warmup)

    # A mixed burst in no pattern (alternating models would land each worker on one model by turns).
    mixed = random.Random(7).choices(MODELS, k=48)
    burst = [fleet.generate({"prompt": f"job {i}", "model": model, **SMALL}) for i, model in enumerate(mixed)]
    views = finished(fleet, burst)

    # Every job done, once: one image each, all in the bucket, all in the gallery index.
    assert [view["status"] for view in views] == ["done"] * len(burst), [
        v for v in views if v["status"] != "done"
    ]
    keys = [view["result"]["png_key"] for view in views + finished(fleet, warmup)]
    assert len(set(keys)) == len(keys) == 56
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["S3_ENDPOINT_URL"],
        region_name=s3_env["S3_REGION"],
        aws_access_key_id=s3_env["S3_ACCESS_KEY"],
        aws_secret_access_key=s3_env["S3_SECRET_KEY"],
    )
    stored = {
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_env["S3_BUCKET"])
        for item in page.get("Contents", [])
        if item["Key"].endswith(".png")
    }
    assert stored == set(keys)
    listed: set[str] = set()
    cursor = None
    while True:
        page = fleet.http.get(
            "/api/images/latest", params={"limit": 50, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        listed |= {item["key"] for item in page.json()["items"]}
        cursor = page.json().get("next_cursor")
        if not cursor:
            break
    assert listed == set(keys)

    # Dispatch: the burst went to workers that held its model; every worker took part.
    workers = Counter(view["worker"] for view in views)
    assert len(workers) == 4 and None not in workers, workers
    warm = sum(1 for view in views if view["warm"])
    assert warm / len(views) >= 0.9, f"{warm} of {len(views)} jobs found their model loaded ({workers})"


def test_a_second_folder_for_the_filesystem_store_is_refused(
    tmp_path: Path, redis_url: str, tiny_models: Path
) -> None:
    deployment = Deployment(tmp_path, redis_url, tiny_models)
    try:
        start_sleep_worker(deployment, "first", tmp_path / "host-a")
        # Another worker on the same folder is welcome (one host, two workers) ...
        start_sleep_worker(deployment, "second", tmp_path / "host-a")
        # ... one with a folder of its own is refused at start, saying why and what to use instead.
        refused = subprocess.run(
            [sys.executable, "-m", "bench.sleep_worker", "--engine", "diffusers", "--metrics-port", "0"],
            env={**deployment.env, **SLEEP, "IMAGES_DATA_DIR": str(tmp_path / "host-b")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        deployment.close()
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("images-worker: this deployment's images are stored in the folder")
    assert str(tmp_path / "host-a") in message and str(tmp_path / "host-b") in message
    assert "S3" in message and "Traceback" not in refused.stderr
