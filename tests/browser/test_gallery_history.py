"""The /vision gallery's jobs from every client (issue 15): jobs another client queued (the CLI, the
API) show in the jobs area with their progress, their images reach the grid, finished ones are listed
under "Recent jobs", and a failed one can be retried. Headless Chromium against the real stack, as in
test_gallery.py, whose browser and page helpers this module shares."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Route, expect

from services.images_service.models import register_model
from services.images_service.tiny import TINY_DEFAULTS
from tests.browser.test_gallery import (
    JOB_DEADLINE_S,
    JOB_POLL_S,
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    save_screenshot,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

HISTORY_REDIS_DB = 7
"""This module's Redis database (test_gallery.py uses 4 and 6, the end-to-end tests 3 and 5)."""

VANISHED_MODEL = "vanished-sd15"
"""Registered in this module's models.yaml, its folder gone: a job for it fails in the worker."""

LOOK_S = 4
"""How often the page asks for the job listing (history.js's POLL_MS)."""

LINGER_S = 8
"""How long a finished job's panel stays before it leaves for "Recent jobs" (composer.js)."""

LISTING = re.compile(r"/api/images/jobs(\?[^/]*)?$")
"""`GET /api/images/jobs?…`, not a job's own routes (`/api/images/jobs/{id}…`)."""


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models_yaml(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """The tiny models, and one more whose folder was deleted after it was registered."""
    root = tmp_path_factory.mktemp("history-models")
    path = root / "models.yaml"
    shutil.copyfile(tiny_models, path)
    folder = root / VANISHED_MODEL
    shutil.copytree(tiny_models.parent / "models" / TINY_MODEL, folder)
    register_model(path, VANISHED_MODEL, {"path": str(folder), "defaults": dict(TINY_DEFAULTS)})
    shutil.rmtree(folder)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, models_yaml: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("history-var")
    with run_stack(data_dir, redis_server, models_yaml, redis_db=HISTORY_REDIS_DB) as running:
        yield running


@pytest.fixture
def gallery(browser: Browser, stack: Stack) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


@contextmanager
def worker_paused(stack: Stack) -> Iterator[None]:
    """The worker stopped (SIGSTOP) and resumed on exit: what is queued meanwhile stays queued."""
    pid = stack.processes["worker"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- another client: the API, as the CLI uses it ------------------------------------------------------
def submit(stack: Stack, **body: Any) -> str:
    response = httpx.post(f"{stack.gateway_url}/api/images/generate", json={"model": TINY_MODEL, **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def job_view(stack: Stack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.gateway_url}/api/images/jobs/{job_id}")
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    return view


def wait_for_end(stack: Stack, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while time.monotonic() < deadline:
        view = job_view(stack, job_id)
        if view["status"] in ("done", "error", "canceled"):
            return view
        time.sleep(JOB_POLL_S)
    raise AssertionError(f"job {job_id} did not end within {JOB_DEADLINE_S} s")


def listed(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job as `GET /api/images/jobs` lists it (with its request)."""
    response = httpx.get(f"{stack.gateway_url}/api/images/jobs", params={"limit": 50})
    response.raise_for_status()
    jobs = {job["job_id"]: job for job in response.json()["jobs"]}
    assert job_id in jobs, f"{job_id} is not in the listing"
    return jobs[job_id]


def panel_of(gallery: Gallery, job_id: str) -> Any:
    return gallery.page.locator(f'#jobs .job[data-job-id="{job_id}"]')


def row_of(gallery: Gallery, job_id: str) -> Any:
    return gallery.page.locator(f'#history-list .history-item[data-job-id="{job_id}"]')


def shown_anywhere(gallery: Gallery, job_id: str) -> int:
    return gallery.page.locator(f'[data-job-id="{job_id}"]').count()


# --- tests ----------------------------------------------------------------------------------------
def test_a_job_queued_by_another_client_shows_its_progress_then_its_image_in_the_grid(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    prompt = "a lantern-lit harbour at night, queued from the command line"
    with worker_paused(stack):
        job_id = submit(stack, prompt=prompt, steps=6, seed=77)
        panel = panel_of(gallery, job_id)
        expect(panel).to_contain_text(prompt[:30])  # within a look or two, though the tab never sent it
        expect(panel).to_have_attribute("data-status", "queued")
        expect(panel.locator(".job-state")).to_have_text("Queued")

    expect(panel).to_have_attribute("data-status", "done")
    expect(panel.locator(".job-steps")).to_have_text("Step 6 / 6 · 1 image ready")
    (image,) = job_view(stack, job_id)["result"]["images"]
    card = page.locator(f'#grid li[data-key="{image["key"]}"]')
    expect(card).to_contain_text(prompt)
    expect(card.locator(".card")).to_contain_text("seed 77")
    assert shown_anywhere(gallery, job_id) == 1, "one panel for the job, no row yet"

    expect(panel).to_have_count(0, timeout=(LINGER_S + 2 * LOOK_S) * 1000)  # it leaves for the history
    row = row_of(gallery, job_id)
    expect(row).to_have_attribute("data-status", "done")
    expect(row.locator(".job-state")).to_have_text("Done")
    expect(row).to_contain_text("1 image")
    expect(row.get_by_role("button", name="Retry")).to_have_count(0)  # only a failed job is retried
    assert shown_anywhere(gallery, job_id) == 1
    looks = [url for url in gallery.requests if LISTING.search(url)]
    assert looks and all("limit=10" in url for url in looks)


def test_a_job_that_ended_between_two_looks_still_brings_its_image(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    prompt = "a quick sketch of a heron, rendered before the page looked"
    page.route(LISTING, lambda route: route.abort())  # the page's looks fail (quietly) meanwhile
    job_id = submit(stack, prompt=prompt, steps=2, seed=5)
    view = wait_for_end(stack, job_id)
    assert view["status"] == "done", view
    page.unroute(LISTING)

    (image,) = view["result"]["images"]
    expect(page.locator(f'#grid li[data-key="{image["key"]}"]')).to_contain_text(prompt)
    expect(page.locator("#grid li").first).to_have_attribute("data-key", image["key"])
    row = row_of(gallery, job_id)
    expect(row).to_have_attribute("data-status", "done")
    expect(row).to_contain_text(prompt[:30])
    expect(panel_of(gallery, job_id)).to_have_count(0)  # it was over before it was seen: no live panel
    expect(page.locator("#status")).not_to_have_class(re.compile(r"\bis-error\b"))  # the failed looks


def test_a_job_this_tab_submits_is_shown_once_and_then_listed(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    prompt = "a teapot on a windowsill, sent from this tab"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "3")
    with page.expect_response("**/api/images/generate") as answered:
        page.get_by_role("button", name="Generate", exact=True).click()
    job_id = answered.value.json()["job_id"]
    panel = panel_of(gallery, job_id)
    expect(panel).to_have_attribute("data-status", "done")
    with page.expect_request(lambda request: bool(LISTING.search(request.url)), timeout=3 * LOOK_S * 1000):
        pass  # a look that lists the job too
    page.wait_for_timeout(500)
    assert shown_anywhere(gallery, job_id) == 1, "the listing must not add a second panel or a row"

    expect(row_of(gallery, job_id)).to_have_attribute("data-status", "done", timeout=(LINGER_S + 4) * 1000)
    expect(panel).to_have_count(0)
    assert shown_anywhere(gallery, job_id) == 1


def test_a_failed_job_shows_its_error_and_retry_queues_it_again(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    prompt = "a view from a model whose folder is gone"
    failed_id = submit(stack, prompt=prompt, model=VANISHED_MODEL, steps=3)
    failed = wait_for_end(stack, failed_id)
    assert failed["status"] == "error", failed
    gallery.open()

    history = page.locator("#history")
    expect(history).to_be_visible()
    expect(page.locator("#history-count")).to_contain_text("1 failed")
    row = row_of(gallery, failed_id)
    expect(row).to_be_hidden()  # "Recent jobs" starts closed
    page.locator("#history > summary").click()
    expect(row).to_be_visible()
    expect(row.locator(".job-title")).to_have_text(prompt)
    expect(row.locator(".job-state")).to_have_text("Failed")
    expect(row.locator(".error-code")).to_have_text(failed["error"]["code"])
    expect(row).to_contain_text(VANISHED_MODEL)

    with page.expect_response(f"**/api/images/jobs/{failed_id}/retry") as answered:
        row.get_by_role("button", name="Retry").click()
    assert answered.value.status == 202
    retried_id = answered.value.json()["job_id"]
    assert retried_id != failed_id
    panel = panel_of(gallery, retried_id)
    expect(panel).to_contain_text(prompt)
    expect(row.locator(".history-note")).to_have_text(f"Retried as {retried_id}")
    save_screenshot(page, "gallery-history.png")
    retried = listed(stack, retried_id)
    assert (retried["request"]["prompt"], retried["request"]["model"]) == (prompt, VANISHED_MODEL)

    # The folder is still gone: the new job fails too, and its panel offers Retry in turn.
    expect(panel).to_have_attribute("data-status", "error")
    expect(panel.locator(".error-code")).to_have_text(failed["error"]["code"])
    with page.expect_response(f"**/api/images/jobs/{retried_id}/retry") as answered_again:
        panel.get_by_role("button", name="Retry").click()
    third_id = answered_again.value.json()["job_id"]
    expect(panel_of(gallery, third_id)).to_contain_text(prompt)
    expect(panel).to_have_count(0)  # the retried panel leaves for the history, noting its retry
    expect(row_of(gallery, retried_id).locator(".history-note")).to_have_text(f"Retried as {third_id}")
    assert listed(stack, third_id)["request"]["prompt"] == prompt


def test_an_older_service_without_the_listing_shows_no_history_and_no_error(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    api_key = "a-key-the-user-entered"
    page.add_init_script(f"localStorage.setItem('kitty.apiKey', {api_key!r})")
    sent_keys: list[str | None] = []

    def older_service(route: Route) -> None:
        sent_keys.append(route.request.headers.get("x-api-key"))
        missing = {"code": "NOT_FOUND", "message": "no route GET /api/images/jobs", "remediation": []}
        route.fulfill(status=404, json={"error": missing})

    page.route(LISTING, older_service)
    gallery.open()
    page.wait_for_timeout(LOOK_S * 1500)  # longer than a look: none may follow the 404
    assert sent_keys == [api_key], "one look, with the key the user entered, then no more"
    expect(page.locator("#history")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("")
    expect(page.locator(".error-box:visible")).to_have_count(0)
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
