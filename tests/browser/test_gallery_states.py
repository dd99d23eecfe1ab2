"""States that explain themselves (issue 20 part 6): service down, no models, no worker for an engine,
quota used up, key missing — each a titled panel with the API's remediation, never an empty grid.
Headless Chromium against a real images-service and gateway without a worker (and a gateway whose
images-service is gone); the states the stack cannot reach are answered with the API's own error
bodies, built from its error classes. Browser and page helpers are test_gallery.py's."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Route, expect

from services.common.api_keys import unauthorized_response
from services.contracts import ModelsView, error_body
from services.images_service.errors import KittyError, QueueUnavailable, RateLimited
from tests.browser.test_gallery import (
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    save_screenshot,
)
from tests.support.servers import ProcessHandle, free_port, start_process
from tests.support.stack import BIN

pytestmark = pytest.mark.browser

STATES_REDIS_DB = 14
"""This module's Redis database (the other browser modules and the end-to-end tests use their own)."""

API_KEY = "kitty-states-key"


@dataclass
class Service:
    gateway_url: str
    processes: list[ProcessHandle]


def gateway_env(images_base: str, gateway_port: int) -> dict[str, str]:
    return {**os.environ, "IMAGES_BASE": images_base, "GATEWAY_PORT": str(gateway_port)}


def start_gateway(images_base: str, log: Path) -> tuple[str, ProcessHandle]:
    """A gateway in front of `images_base`; ready once it serves at all (`/healthz`, not `/readyz`,
    which asks the images-service)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return url, start_process([str(BIN / "gateway")], gateway_env(images_base, port), f"{url}/healthz", log)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path
) -> Iterator[Service]:
    """The images-service and the gateway, no worker and no images: a stack as first installed."""
    data_dir = tmp_path_factory.mktemp("states-var")
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{STATES_REDIS_DB}"
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    images_port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "IMAGES_DATA_DIR": str(data_dir),
        "MODELS_YAML": str(tiny_models),
        "IMAGES_PORT": str(images_port),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("S3_BUCKET", None)
    images_url = f"http://127.0.0.1:{images_port}"
    processes = [
        start_process([str(BIN / "images-service")], env, f"{images_url}/readyz", data_dir / "images.log")
    ]
    try:
        gateway_url, gateway = start_gateway(images_url, data_dir / "gateway.log")
        processes.append(gateway)
        yield Service(gateway_url=gateway_url, processes=processes)
    finally:
        for process in processes:
            process.stop()
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()


@pytest.fixture(scope="module")
def dead_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose IMAGES_BASE names a port nothing listens on: the service down, for real."""
    url, gateway = start_gateway(
        f"http://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("dead") / "gateway.log"
    )
    try:
        yield url
    finally:
        gateway.stop()


@pytest.fixture
def gallery(browser: Browser, service: Service) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, service.gateway_url) as opened:
        yield opened


def fulfill_error(route: Route, error: KittyError) -> None:
    route.fulfill(status=error.status, json=error_body(error.to_info()), headers=dict(error.headers))


# --- tests ----------------------------------------------------------------------------------------


def test_an_images_service_that_is_down_shows_a_panel_with_its_remediation_and_retry(
    browser: Browser,  # noqa: F811
    dead_gateway: str,
) -> None:
    refused = httpx.get(f"{dead_gateway}/api/images/latest").json()["error"]
    assert refused["code"] == "UPSTREAM_UNAVAILABLE"
    with gallery_on(browser, dead_gateway) as gallery:
        page = gallery.page
        gallery.open()
        panel = page.locator('#states .state-panel[data-state="down"]')
        expect(panel.locator(".state-title")).to_have_text("The image service is not answering")
        expect(panel.locator(".remediation li")).to_have_text(refused["remediation"])
        expect(page.locator("#grid .card")).to_have_count(0)
        expect(page.locator("#empty")).to_be_hidden()
        save_screenshot(page, "gallery-state-down.png")

        with page.expect_request("**/api/images/latest?**"):
            panel.get_by_role("button", name="Retry").click()
        expect(page.locator('#states .state-panel[data-state="down"]')).to_have_count(1)


def test_retry_after_the_queue_comes_back_lists_the_gallery(gallery: Gallery) -> None:
    page = gallery.page
    down = QueueUnavailable("Redis at redis://127.0.0.1:6379/14 is unreachable (connection refused)")
    page.route("**/api/images/latest?**", lambda route: fulfill_error(route, down))
    gallery.open()
    panel = page.locator('#states .state-panel[data-state="down"]')
    expect(panel.locator(".state-title")).to_have_text("The job queue is not answering")
    expect(panel.locator(".remediation li")).to_have_text(down.remediation)

    page.unroute("**/api/images/latest?**")
    panel.get_by_role("button", name="Retry").click()
    expect(page.locator("#states .state-panel")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()


def test_an_empty_gallery_of_a_working_service_invites_a_first_prompt(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    expect(page.locator("#empty")).to_have_text("No images yet. Write a prompt and press Generate.")
    expect(page.locator("#states")).to_be_hidden()
    save_screenshot(page, "gallery-state-empty.png")


def test_no_models_registered_says_how_to_add_one(gallery: Gallery) -> None:
    page = gallery.page
    empty = ModelsView(models=[]).model_dump(mode="json")
    page.route("**/api/images/models", lambda route: route.fulfill(json=empty))
    gallery.open()
    panel = page.locator('#states .state-panel[data-state="models"]')
    expect(panel.locator(".state-title")).to_have_text("No models are registered yet")
    expect(panel.locator(".remediation")).to_contain_text("kitty-images models tiny")
    expect(panel.locator(".remediation")).to_contain_text("kitty-images models pull")
    expect(page.locator("#empty")).to_be_hidden()  # "write a prompt" would contradict the panel
    save_screenshot(page, "gallery-state-no-models.png")


def test_a_job_queued_for_an_engine_without_a_worker_names_the_command_to_start_one(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    page.fill("#prompt", "a fox nobody renders yet")
    page.select_option("#model", TINY_MODEL)
    with page.expect_response("**/api/images/generate") as answered:
        page.get_by_role("button", name="Generate", exact=True).click()
    job_id = answered.value.json()["job_id"]
    view = httpx.get(f"{gallery.base_url}/api/images/jobs/{job_id}").json()
    assert "start one with `images-worker`" in view["waiting_for"]
    waiting = view["waiting"]
    assert waiting["reason"] == "no_worker" and waiting["engine"] == "diffusers"
    assert waiting["remediation"][0] == "Start one: `images-worker`."

    note = page.locator('#queue-states .state-panel[data-state="worker"]')
    expect(note.locator(".state-title")).to_have_text("No worker is running for this engine")
    expect(note.locator(".error-message")).to_contain_text("1 job for 'diffusers' will wait")
    expect(note.locator(".remediation li")).to_have_text(waiting["remediation"])
    save_screenshot(page, "gallery-state-no-worker.png")

    job = page.locator(f'.job[data-job-id="{job_id}"]')
    job.get_by_role("button", name="Cancel", exact=True).click()
    expect(job).to_have_attribute("data-status", "canceled")
    expect(note).to_have_count(0)


def test_a_used_up_quota_shows_by_the_form_when_it_resets(gallery: Gallery) -> None:
    page = gallery.page
    used_up = RateLimited(
        "daily quota of tier 'free' reached: 50 of 50 images used today (UTC), 0 left, "
        "this request asks for 1",
        remediation=[
            "Try again after 00:00 UTC (in 3600 s, see Retry-After).",
            "Or use a key of a higher tier (free < pro < enterprise).",
        ],
        headers={"Retry-After": "3600"},
    )
    page.route("**/api/images/generate", lambda route: fulfill_error(route, used_up))
    gallery.open()
    page.fill("#prompt", "one more fox")
    page.get_by_role("button", name="Generate", exact=True).click()

    panel = page.locator('#generate-form .error-box .state-panel[data-state="quota"]')
    expect(panel.locator(".state-title")).to_have_text("Your image quota is used up for now")
    expect(panel.locator(".error-code")).to_have_text("RATE_LIMITED")
    expect(panel.locator(".error-message")).to_have_text(used_up.message)
    expect(panel.locator(".remediation li")).to_have_text(used_up.remediation)
    expect(page.locator(".job")).to_have_count(0)
    save_screenshot(page, "gallery-state-quota.png")


def test_a_missing_key_asks_for_one_and_explains_it_until_one_is_saved(gallery: Gallery) -> None:
    page = gallery.page
    refusal = json.loads(bytes(unauthorized_response(presented=False).body))

    def require_key(route: Route) -> None:
        if route.request.headers.get("x-api-key") == API_KEY:
            route.continue_()
        else:
            route.fulfill(status=401, json=refusal)

    page.route("**/api/images/**", require_key)
    gallery.open()
    expect(page.locator("#api-key")).to_be_visible()
    panel = page.locator('#states .state-panel[data-state="key"]')
    expect(panel.locator(".state-title")).to_have_text("This gateway needs an API key")
    expect(panel.locator(".error-message")).to_have_text(refusal["error"]["message"])
    expect(panel.locator(".remediation li")).to_have_text(refusal["error"]["remediation"])
    expect(page.locator("#empty")).to_be_hidden()
    save_screenshot(page, "gallery-state-key.png")

    page.fill("#api-key", API_KEY)
    page.locator("#api-key-form").get_by_role("button", name="Save").click()
    expect(page.locator("#states .state-panel")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()


def test_no_state_message_tells_a_person_to_read_the_schema() -> None:
    gallery_dir = Path(__file__).resolve().parents[2] / "services" / "gateway" / "gallery"
    for path in gallery_dir.iterdir():
        assert "openapi" not in path.read_text(encoding="utf-8").lower(), path.name
