"""`make demo`'s claim, one job → exactly one stored image, checked against what a real worker stored
(real Redis, both stores): it holds for a plain job and is refused, loudly, when it does not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.contracts import JobStatus, JobView
from services.images_service.admin import DemoCheckFailed, check_demo_job, images_of_job
from services.images_service.storage.keys import meta_key_for
from tests.support.harness import Harness

RAN_ONCE = [JobStatus.QUEUED, JobStatus.STARTED, JobStatus.STARTED, JobStatus.DONE]


def one_job(harness: Harness) -> tuple[JobView, set[str]]:
    prefix = harness.settings.s3_prefix
    before = {info.key for info in harness.store.objects(prefix, suffix=".png")}
    job_id = harness.generate()
    harness.work()
    return JobView.model_validate(harness.job(job_id)), before


def test_one_job_one_stored_image_passes(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    harness.generate(prompt="an earlier picture")  # already in the gallery: not this job's
    harness.work()
    view, before = one_job(harness)

    stored = images_of_job(harness.store, harness.settings.s3_prefix, view.job_id, before)
    assert check_demo_job(view, RAN_ONCE, stored) == view.result.png_key  # type: ignore[union-attr]


def test_a_second_stored_image_of_the_job_fails_the_demo(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    view, before = one_job(harness)
    assert view.result is not None
    # What a job run twice leaves: another PNG whose sidecar names the same job.
    twin = view.result.png_key.replace(".png", "-twin.png")
    store = harness.store
    store.put(meta_key_for(twin), store.get(view.result.meta_key), "application/json")
    store.put(twin, store.get(view.result.png_key), "image/png")

    stored = images_of_job(store, harness.settings.s3_prefix, view.job_id, before)
    with pytest.raises(DemoCheckFailed, match="exactly one image; storage holds 2"):
        check_demo_job(view, RAN_ONCE, stored)


def test_a_new_image_without_sidecar_fails_the_demo(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    view, before = one_job(harness)
    assert view.result is not None
    harness.store.delete(view.result.meta_key)

    with pytest.raises(DemoCheckFailed, match="has no JSON sidecar"):
        images_of_job(harness.store, harness.settings.s3_prefix, view.job_id, before)


def test_a_job_queued_again_after_it_started_fails_the_demo(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    view, before = one_job(harness)
    stored = images_of_job(harness.store, harness.settings.s3_prefix, view.job_id, before)
    retried = [JobStatus.QUEUED, JobStatus.STARTED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DONE]

    with pytest.raises(DemoCheckFailed, match="went back to queued after it started"):
        check_demo_job(view, retried, stored)


def test_a_job_that_did_not_end_done_fails_the_demo(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    view, before = one_job(harness)
    failed = view.model_copy(update={"status": JobStatus.ERROR, "result": None})

    with pytest.raises(DemoCheckFailed, match=f"job {view.job_id} ended error"):
        check_demo_job(failed, [JobStatus.QUEUED, JobStatus.ERROR], [])
