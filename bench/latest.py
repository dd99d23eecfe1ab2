"""(1) Latest at any size: ``GET /api/images/latest?limit=36`` answered by a real images-service
process (over HTTP, started as the console script) with 200 and with 20,000 stored images, on the
filesystem store and on S3 (moto's server process). Four services run side by side and the four
requests are interleaved round by round, so the ratios compare like with like.

The stores are filled directly (files written, objects PUT from a thread pool) and the gallery index
is built from them with `GalleryIndex.rebuild`, the code `kitty-images reindex` runs; the S3
configurations get a copy of the same index. `latest` reads the index and presigns thumbnail URLs;
for contrast, the bench also times listing the store itself, which is what `latest` did before the
index existed.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from redis import Redis

from services.common.processes import S3_TEST_ACCESS_KEY, S3_TEST_REGION, S3_TEST_SECRET_KEY
from services.contracts import RenderSpec
from services.images_service.gallery import GalleryIndex, thumb_key_for
from services.images_service.metadata import build_sidecar, encode_thumbnail
from services.images_service.storage import FilesystemStore, Store
from services.images_service.storage.keys import new_image_key
from services.images_service.storage.s3 import S3Store

from .processes import Processes, clean_env
from .report import Goal, Measurement, interleaved, median, ratio, summary

log = logging.getLogger("bench.latest")

SIZES = (200, 20_000)
"""Images stored in the small and the large gallery."""

LIMIT = 36
"""Items asked for: the gallery's first page."""

WARMUP_REQUESTS = 20
"""Requests per service before timing: connections open, code paths imported and cached."""

ROUNDS = 200
"""Timed requests per service, interleaved."""

LISTING_REPEATS = {"fs": 3, "s3": 1}
"""Times each store is listed for the contrast row (S3 through moto takes ~15 s for 20,000 images)."""

FILL_THREADS = 16
"""Concurrent PUTs while filling the bucket: moto answers each in ~2 ms, one at a time is slow."""

RATIO_GOAL = Goal("<=", 1.5, "×")
"""p50 with 20,000 images at most 1.5 × p50 with 200."""

PREFIX = "images/"
"""S3_PREFIX: the default, as a deployment has it."""

PROMPTS = (
    "a watercolor fox in the snow",
    "a lighthouse at dusk, oil on canvas",
    "a red bicycle leaning on a brick wall",
    "an isometric city block at night, neon",
)


@dataclass
class Gallery:
    """One configuration: a store kind and size, the service answering for it, its newest key."""

    store: str
    size: int
    url: str
    newest_key: str

    @property
    def name(self) -> str:
        return f"{self.store}-{self.size}"


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_objects(count: int, now: datetime) -> list[tuple[str, bytes]]:
    """(key, bytes) of `count` images, one per second up to `now`: PNG, JSON sidecar (as a worker
    writes it) and thumbnail each. The newest image's PNG key is the last PNG in the list."""
    png = _tiny_png()
    thumb = encode_thumbnail(Image.open(io.BytesIO(png)))
    objects: list[tuple[str, bytes]] = []
    for i in range(count):
        created_at = now - timedelta(seconds=count - i)
        base = new_image_key(PREFIX, created_at)
        png_key, meta_key = f"{base}.png", f"{base}.json"
        spec = RenderSpec(
            prompt=f"{PROMPTS[i % len(PROMPTS)]} #{i}",
            model="tiny-sd15",
            width=64,
            height=64,
            steps=20,
            cfg=7.0,
            seed=i,
        )
        sidecar = build_sidecar(
            job_id=f"bench-{i:06d}",
            engine="diffusers",
            spec=spec,
            seed=i,
            width=64,
            height=64,
            device="cpu",
            png_key=png_key,
            meta_key=meta_key,
            engine_info={},
            timings={},
            created_at=created_at,
            index=0,
        )
        sidecar["thumb_key"] = thumb_key_for(png_key)
        objects += [(meta_key, json.dumps(sidecar).encode()), (sidecar["thumb_key"], thumb), (png_key, png)]
    return objects


def newest_png(objects: list[tuple[str, bytes]]) -> str:
    return next(key for key, _ in reversed(objects) if key.endswith(".png"))


def write_files(root: Path, objects: list[tuple[str, bytes]]) -> None:
    """The filesystem store's layout, written directly (the store's own `put` fsyncs every file)."""
    for key, data in objects:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def put_objects(client: Any, bucket: str, objects: list[tuple[str, bytes]]) -> None:
    """PNGs and sidecars into `bucket` from a thread pool. Thumbnails are left out: `latest`
    presigns their URLs without reading them, and PUTs to moto are the slow part of the bench."""
    wanted = [(key, data) for key, data in objects if not key.endswith(".webp")]
    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=bucket, Key=item[0], Body=item[1]), wanted))


def s3_store(endpoint: str, bucket: str) -> S3Store:
    return S3Store(
        bucket,
        endpoint_url=endpoint,
        region=S3_TEST_REGION,
        access_key=S3_TEST_ACCESS_KEY,
        secret_key=S3_TEST_SECRET_KEY,
        create_bucket=True,
    )


def s3_client(endpoint: str) -> Any:
    """A boto3 client with a connection per filling thread."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_TEST_REGION,
        aws_access_key_id=S3_TEST_ACCESS_KEY,
        aws_secret_access_key=S3_TEST_SECRET_KEY,
        config=Config(max_pool_connections=FILL_THREADS, s3={"addressing_style": "path"}),
    )


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "S3_ENDPOINT_URL": endpoint,
        "S3_BUCKET": bucket,
        "S3_REGION": S3_TEST_REGION,
        "S3_ACCESS_KEY": S3_TEST_ACCESS_KEY,
        "S3_SECRET_KEY": S3_TEST_SECRET_KEY,
        "IMAGES_S3_CREATE_BUCKET": "true",
    }


def time_listing(store: Store, repeats: int) -> float:
    """Seconds to find the newest `LIMIT` images by listing the whole store (the seed's `latest`)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.list_latest(PREFIX, LIMIT, suffix=".png")
        samples.append(time.perf_counter() - started)
    return median(samples)


def measure(procs: Processes, redis_base: str, *, sizes: tuple[int, ...] = SIZES) -> list[Measurement]:
    """The measurement; its moto server and four services stop when it returns."""
    with ExitStack() as stack:
        return _measure(Processes(stack, procs.workdir), redis_base, sizes)


def _measure(procs: Processes, redis_base: str, sizes: tuple[int, ...]) -> list[Measurement]:
    workdir = procs.workdir / "latest"
    redis_url = f"{redis_base}/1"
    endpoint = procs.moto()
    now = datetime.now(UTC)
    galleries: list[Gallery] = []
    listings: dict[str, float] = {}
    fill_seconds: dict[str, float] = {}
    uploader = s3_client(endpoint)

    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
        for size in sizes:
            objects = make_objects(size, now)
            newest = newest_png(objects)

            started = time.perf_counter()
            data_dir = workdir / f"fs-{size}"
            write_files(data_dir / "store", objects)
            fs_store = FilesystemStore(data_dir / "store", b"bench-signing-key-0123456789abcdef")
            fs_prefix = f"bench-fs-{size}"
            indexed = GalleryIndex(redis, fs_prefix).rebuild(fs_store, PREFIX)
            assert indexed == size, f"indexed {indexed} of {size}"
            fill_seconds[f"fs-{size}"] = round(time.perf_counter() - started, 2)
            fs_env = clean_env(
                REDIS_URL=redis_url,
                IMAGES_DATA_DIR=str(data_dir),
                IMAGES_QUEUE_PREFIX=fs_prefix,
                MODELS_YAML=str(workdir / "models.yaml"),
                IMAGES_SIGNING_KEY="bench-signing-key-0123456789abcdef",
            )
            galleries.append(Gallery("fs", size, procs.images_service(f"images-fs-{size}", fs_env), newest))

            started = time.perf_counter()
            bucket = f"bench-latest-{size}"
            store = s3_store(endpoint, bucket)
            store.check()  # creates the bucket
            put_objects(uploader, bucket, objects)
            s3_prefix = f"bench-s3-{size}"
            index = GalleryIndex(redis, s3_prefix)
            source = GalleryIndex(redis, fs_prefix)
            redis.copy(source.index_key, index.index_key, replace=True)
            redis.copy(source.aliases_key, index.aliases_key, replace=True)
            fill_seconds[f"s3-{size}"] = round(time.perf_counter() - started, 2)
            s3_service_env = clean_env(
                REDIS_URL=redis_url,
                IMAGES_DATA_DIR=str(workdir / f"s3-{size}"),
                IMAGES_QUEUE_PREFIX=s3_prefix,
                MODELS_YAML=str(workdir / "models.yaml"),
                **s3_env(endpoint, bucket),
            )
            galleries.append(
                Gallery("s3", size, procs.images_service(f"images-s3-{size}", s3_service_env), newest)
            )
            if size == max(sizes):
                listings = {
                    "fs": time_listing(fs_store, LISTING_REPEATS["fs"]),
                    "s3": time_listing(store, LISTING_REPEATS["s3"]),
                }

    clients = {g.name: httpx.Client(base_url=g.url, timeout=30, trust_env=False) for g in galleries}
    try:
        for gallery in galleries:
            first = clients[gallery.name].get("/api/images/latest", params={"limit": LIMIT})
            first.raise_for_status()
            items = first.json()["items"]
            assert len(items) == min(LIMIT, gallery.size), (gallery.name, len(items))
            assert items[0]["key"] == gallery.newest_key, (gallery.name, items[0]["key"], gallery.newest_key)
            assert all(item.get("thumb_url") for item in items), "thumbnails are presigned"

        def request(name: str) -> Callable[[], float]:
            client = clients[name]

            def one() -> float:
                started = time.perf_counter()
                response = client.get("/api/images/latest", params={"limit": LIMIT})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed

            return one

        cases = {g.name: request(g.name) for g in galleries}
        interleaved(WARMUP_REQUESTS, cases)
        samples = interleaved(ROUNDS, cases)
    finally:
        for client in clients.values():
            client.close()

    small, large = min(sizes), max(sizes)
    results = []
    for store_kind, title in (("fs", "filesystem"), ("s3", "S3 (moto)")):
        p50_small = median(samples[f"{store_kind}-{small}"])
        p50_large = median(samples[f"{store_kind}-{large}"])
        results.append(
            Measurement(
                key=f"latest.{store_kind}.ratio",
                label=f"latest?limit={LIMIT} p50, {large:,} ÷ {small:,} images, {title}",
                value=round(ratio(p50_large, p50_small), 3),
                unit="×",
                goal=RATIO_GOAL,
                note=f"{p50_large * 1000:.1f} vs {p50_small * 1000:.1f} ms",
                detail={
                    f"{small}_ms": summary(samples[f"{store_kind}-{small}"], 1000),
                    f"{large}_ms": summary(samples[f"{store_kind}-{large}"], 1000),
                    "fill_s": {k: v for k, v in fill_seconds.items() if k.startswith(store_kind)},
                    "how": "HTTP to an images-service process, keep-alive client, requests interleaved",
                },
            )
        )
    for store_kind, title in (("fs", "filesystem"), ("s3", "S3 (moto)")):
        if store_kind in listings:
            index_p50 = median(samples[f"{store_kind}-{large}"])
            results.append(
                Measurement(
                    key=f"latest.{store_kind}.listing",
                    label=f"listing the store instead, {large:,} images, {title}",
                    value=round(listings[store_kind] * 1000, 1),
                    unit="ms",
                    note=f"{ratio(listings[store_kind], index_p50):.0f}× the index",
                    detail={
                        "repeats": LISTING_REPEATS[store_kind],
                        "what": "Store.list_latest, the seed's latest",
                    },
                )
            )
    return results
