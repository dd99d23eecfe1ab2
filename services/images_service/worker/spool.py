"""Rendered images that storage could not take yet: kept on the worker's disk and uploaded when
storage answers again, so no image is lost to a storage outage.

A job whose images wait here is shown as still running (`upload: pending` in its meta); it becomes
`done` only when every object is stored and indexed. Each job is one folder: the objects as files
plus ``manifest.json`` (written last, so a folder without one is an interrupted write, ignored).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from services.contracts import LatestItem

from ..errors import KittyError, StorageUnavailable
from ..gallery import GalleryIndex
from ..storage import Store

log = logging.getLogger("kitty.images.spool")

STORE_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
"""Backoff between attempts to store one object before the job's images go to the spool."""

MANIFEST = "manifest.json"
UPLOAD_META = "upload"
"""Job meta field: "pending" while images wait in the spool, "done" once they are stored."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    data: bytes
    content_type: str


def put_with_retry(store: Store, obj: StoredObject, delays: tuple[float, ...] = STORE_RETRY_DELAYS_S) -> None:
    """Store `obj`, retrying with backoff; raises `StorageUnavailable` when every attempt failed."""
    for delay in (*delays, None):
        try:
            store.put(obj.key, obj.data, obj.content_type)
            return
        except StorageUnavailable:
            if delay is None:
                raise
            time.sleep(delay)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, job_id: str, objects: list[StoredObject], items: list[LatestItem]) -> None:
        """Write a job's objects and gallery entries to disk; they are uploaded by `flush`."""
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for number, obj in enumerate(objects):
            name = f"{number:03d}.bin"
            (folder / name).write_bytes(obj.data)
            entries.append({"file": name, "key": obj.key, "content_type": obj.content_type})
        manifest = {"job_id": job_id, "objects": entries, "items": [i.model_dump(mode="json") for i in items]}
        tmp = folder / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest))
        tmp.replace(folder / MANIFEST)
        log.warning(
            "storage unavailable: images kept in the spool", extra={"job_id": job_id, "objects": len(objects)}
        )

    def pending(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).exists())

    def flush(self, store: Store, redis: Redis, index: GalleryIndex | None) -> int:
        """Upload every spooled job storage now takes; returns how many jobs were completed."""
        completed = 0
        for job_id in self.pending():
            folder = self.root / job_id
            manifest = json.loads((folder / MANIFEST).read_text())
            try:
                for entry in manifest["objects"]:
                    store.put(entry["key"], (folder / entry["file"]).read_bytes(), entry["content_type"])
                if index is not None:
                    for raw in manifest["items"]:
                        index.add(LatestItem.model_validate(raw))
            except StorageUnavailable:
                return completed  # still down: everything waits for the next round
            mark_uploaded(redis, job_id)
            shutil.rmtree(folder, ignore_errors=True)
            completed += 1
            log.info("spooled images uploaded", extra={"job_id": job_id})
        return completed


def mark_uploaded(redis: Redis, job_id: str) -> None:
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return  # the job's record expired; its images are stored and indexed all the same
    job.meta[UPLOAD_META] = "done"
    job.save_meta()


class SpoolUploader(threading.Thread):
    """Retries the spool every `interval_s` for as long as the worker runs."""

    def __init__(
        self, spool: Spool, store: Store, redis: Redis, index: GalleryIndex, interval_s: float
    ) -> None:
        super().__init__(name="spool-uploader", daemon=True)
        self.spool, self.store, self.redis, self.index = spool, store, redis, index
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.spool.flush(self.store, self.redis, self.index)
            except KittyError as exc:  # Redis down too: the next round retries
                log.warning("spool flush failed", extra={"code": exc.code.value, "error": exc.message})
            except Exception:
                log.exception("spool flush failed")
            if self.stopped.wait(self.interval_s):
                return

    def stop(self) -> None:
        self.stopped.set()
