"""The /vision queue controls (issue 20 part 1): Pause my queue holds the queued jobs (their cards say
so), Move to front on a card changes which runs first, Resume my queue runs them in that order.
Headless Chromium against the real stack (gateway, images-service, a worker rendering the tiny
model), as in test_gallery.py, whose browser and page helpers this module shares."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_gallery import (
    JOB_DEADLINE_S,
    JOB_POLL_S,
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

QUEUE_REDIS_DB = 11
"""This module's Redis database (see the other browser modules for theirs)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp("queue-var"), redis_server, tiny_models, redis_db=QUEUE_REDIS_DB
    ) as s:
        yield s


@pytest.fixture
def gallery(browser: Browser, stack: Stack) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


def submit(stack: Stack, prompt: str) -> str:
    body = {"prompt": prompt, "model": TINY_MODEL, "steps": 4, "width": 64, "height": 64}
    response = httpx.post(f"{stack.gateway_url}/api/images/generate", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job_view(stack: Stack, job_id: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{stack.gateway_url}/api/images/jobs/{job_id}").json()
    return view


def wait_for_done(stack: Stack, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_DEADLINE_S
    while time.monotonic() < deadline:
        view = job_view(stack, job_id)
        if view["status"] in ("done", "error", "canceled"):
            return view
        time.sleep(JOB_POLL_S)
    raise AssertionError(f"job {job_id} did not end within {JOB_DEADLINE_S} s")


def test_pause_move_to_front_and_resume_from_the_queue_panel(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    pause = page.get_by_role("button", name="Pause my queue")
    expect(pause).to_be_visible()
    pause.click()
    expect(page.locator("#queue-note")).to_contain_text("Paused")
    resume = page.get_by_role("button", name="Resume my queue")
    expect(resume).to_be_visible()

    # Another client queues three jobs: the worker sets them aside, their cards say why they wait.
    jobs = [submit(stack, f"paused fox {n}") for n in (1, 2, 3)]
    cards = [page.locator(f'article.job[data-job-id="{job_id}"]') for job_id in jobs]
    for card in cards:
        expect(card.locator(".job-place")).to_have_text("Paused")
        expect(card.locator(".job-waiting")).to_contain_text("your queue is paused")
    expect(page.locator("#queue-note")).to_contain_text("3 set aside")

    # The third to the front, from the keyboard.
    front = page.get_by_role("button", name="Move to front: paused fox 3")
    front.focus()
    with page.expect_response(lambda response: response.url.endswith(f"/jobs/{jobs[2]}/front")) as moved:
        page.keyboard.press("Enter")
    assert moved.value.ok, moved.value.text()
    expect(cards[2].locator(".error-box")).to_be_hidden()

    resume.click()
    expect(page.get_by_role("button", name="Pause my queue")).to_be_visible()
    expect(page.locator("#queue-note")).to_contain_text("3 jobs back in line")
    finals = [wait_for_done(stack, job_id) for job_id in jobs]
    assert [view["status"] for view in finals] == ["done"] * 3
    started = [datetime.fromisoformat(view["started_at"]) for view in finals]
    assert started[2] < started[0] < started[1], "Move to front did not put the third job first"
    for card in cards:
        expect(card).to_have_attribute("data-status", "done")


def test_a_queued_card_shows_its_position_and_the_running_one_its_worker(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    long = submit(stack, "a long fox")
    httpx.post(f"{stack.gateway_url}/api/images/queue/pause", params={"scope": "all"})
    try:
        queued = submit(stack, "a waiting fox")
        card = page.locator(f'article.job[data-job-id="{queued}"]')
        expect(card.locator(".job-place")).to_contain_text("in line")
        expect(card.locator(".job-waiting")).to_contain_text("an admin paused the whole queue")
        expect(page.locator("#queue-note")).to_contain_text("An admin paused the whole queue")
    finally:
        httpx.post(f"{stack.gateway_url}/api/images/queue/resume", params={"scope": "all"})
    assert wait_for_done(stack, long)["worker"]
    assert wait_for_done(stack, queued)["status"] == "done"
