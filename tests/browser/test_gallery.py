"""The /vision gallery in headless Chromium (Debian's, driven by Playwright) against the real stack:
images-service, a diffusers worker on the tiny pipeline and the gateway, as processes."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from services.images_service.storage import make_store
from services.images_service.tiny import TINY_LORA
from tests.support.stack import Stack, run_stack

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium; Playwright's own browser downloads are not used (`.ci/run` installs this one)."""

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does)",
        allow_module_level=True,
    )

from playwright.sync_api import (  # noqa: E402
    Browser,
    Locator,
    Page,
    Request,
    Response,
    Route,
    ViewportSize,
    expect,
    sync_playwright,
)

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
"""A quiet, offline browser: no sandbox (containers run as root), no GPU, no calls home."""

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

BROWSER_REDIS_DB = 4
"""This module's Redis database; the end-to-end tests use another, so their galleries never mix."""

IDLE_REDIS_DB = 6
"""The database of the stack without a worker (the end-to-end tests use 3 and 5, this module 4)."""

UI_TIMEOUT_MS = 30_000
"""How long an expectation waits for the page: a tiny job takes well under a second, CI is slower."""

JOB_DEADLINE_S = 120
JOB_POLL_S = 0.05

MAX_TABS_TO_A_CARD = 40
"""Tab presses allowed from the top of the page to the first card (the form's fields come first)."""

TINY_MODEL = "tiny-sd15"
SCROLL_PAGE_SIZE = 4

DARK_BRIGHTNESS_MAX = 64
"""A dark page's background is darker than this (mean RGB channel); a light one is brighter."""

REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIR = REPO / "test-output"
DOCS_SCREENSHOT = REPO / "docs" / "gallery.png"
UPDATE_SCREENSHOT_ENV = "KITTY_UPDATE_SCREENSHOT"
"""Set to 1 to refresh the README's screenshots (docs/gallery.png, docs/screenshots/); CI leaves the
tree alone."""

DOCS_SCREENSHOT_COLORS = 128
"""The README's copy is palette-quantized: the grid is noise from random weights and compresses badly."""

SEED_PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting",
    "watercolor fox curled up in fresh snow",
    "isometric reading nook with plants and soft morning light",
    "macro photo of dew on a spider web at sunrise",
    "a red bicycle leaning on a blue door in Lisbon",
    "retro-futurist city skyline in a synthwave palette",
    "a bowl of ramen under studio lighting, top-down",
    "ancient library with floating books and volumetric light",
    "paper-cut mountains in layered pastel tones",
]
"""The gallery the tests start from: more images than one small page holds."""


@dataclass
class Gallery:
    """A browser page on /vision and every URL it requested."""

    page: Page
    base_url: str
    requests: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    def open(self, query: str = "") -> None:
        self.page.goto(f"{self.base_url}/vision{query}")
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    def png_requests(self) -> list[str]:
        return [url for url in self.requests if urlsplit(url).path.endswith(".png")]

    def card(self, text: str) -> Any:
        return self.page.locator("#grid .card", has_text=text)

    def card_key(self, card: Any) -> str:
        return str(card.locator("xpath=..").get_attribute("data-key"))


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("browser-var")
    with run_stack(data_dir, redis_server, tiny_models, redis_db=BROWSER_REDIS_DB) as running:
        yield running


def generate(stack: Stack, **body: Any) -> list[str]:
    """Submit through the gateway and wait for the job; returns the new image keys."""
    with httpx.Client(base_url=stack.gateway_url) as client:
        response = client.post("/api/images/generate", json={"model": TINY_MODEL, **body})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + JOB_DEADLINE_S
        while time.monotonic() < deadline:
            view = client.get(f"/api/images/jobs/{job_id}").json()
            if view["status"] == "done":
                return [image["key"] for image in view["result"]["images"]]
            assert view["status"] in ("queued", "started"), view
            time.sleep(JOB_POLL_S)
    raise AssertionError(f"job {job_id} not done within {JOB_DEADLINE_S} s")


def presets(stack: Stack) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.gateway_url}/api/images/presets")
    response.raise_for_status()
    listed: list[dict[str, Any]] = response.json()["presets"]
    return listed


def latest(stack: Stack, limit: int = 100) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.gateway_url}/api/images/latest", params={"limit": limit})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    """A gallery of several images with different prompts and seeds."""
    keys: list[str] = []
    for number, prompt in enumerate(SEED_PROMPTS):
        keys += generate(stack, prompt=prompt, seed=1000 + number, steps=6)
    return keys


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def gallery_on(browser: Browser, base_url: str) -> Iterator[Gallery]:
    """A fresh browser context on the gateway at `base_url`; its scripts must not throw."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    opened = Gallery(page=page, base_url=base_url)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("pageerror", lambda error: opened.script_errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert opened.script_errors == [], "the gallery's scripts threw"


@pytest.fixture
def gallery(browser: Browser, stack: Stack, seeded: list[str]) -> Iterator[Gallery]:
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


@pytest.fixture
def idle_stack(tmp_path: Path, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    """A stack whose worker has stopped, as a user meets it before starting one."""
    with run_stack(tmp_path, redis_server, tiny_models, redis_db=IDLE_REDIS_DB) as running:
        running.processes["worker"].stop()  # SIGTERM: it leaves RQ's registry of workers as it exits
        yield running


def wait_for_visible_thumbnails(page: Page) -> None:
    page.wait_for_function(
        """() => [...document.querySelectorAll('#grid img')]
            .filter((img) => img.getBoundingClientRect().top < innerHeight)
            .every((img) => img.complete && img.naturalWidth > 0)"""
    )


def save_screenshot(page: Page, name: str) -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    path = OUTPUT_DIR / name
    page.mouse.move(0, 0)  # no hover effects in the picture
    page.screenshot(path=str(path), animations="disabled")
    return path


def publish_screenshot(path: Path, target: Path = DOCS_SCREENSHOT) -> None:
    """Refresh a screenshot of the docs (the README's by default) when asked to
    (KITTY_UPDATE_SCREENSHOT=1), kept small."""
    if os.environ.get(UPDATE_SCREENSHOT_ENV) != "1":
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as shot:
        shot.convert("RGB").quantize(colors=DOCS_SCREENSHOT_COLORS).save(target, optimize=True)


def brightness(css_color: str) -> float:
    """Mean of the channels of a computed `rgb(r, g, b)` colour, 0–255."""
    channels = [float(part) for part in re.findall(r"[\d.]+", css_color)[:3]]
    return sum(channels) / len(channels)


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def stored_request(stack: Stack, item: dict[str, Any]) -> dict[str, Any]:
    """The request an image's sidecar recorded: every default resolved, inputs by key."""
    sidecar = json.loads(make_store(stack.settings).get(item["meta_key"]))
    request: dict[str, Any] = sidecar["request"]
    return request


def write_png(path: Path, image: Image.Image) -> Path:
    image.save(path, format="PNG")
    return path


def job_panel(page: Page, answered: Response) -> Locator:
    """The panel of the job a generate or re-run answer names (not "the first one": the previous
    job's can still be first until the answer arrives)."""
    return page.locator(f'.job[data-job-id="{answered.json()["job_id"]}"]')


def submit_and_wait(gallery: Gallery) -> dict[str, Any]:
    """Press Generate, wait until this job's own panel says done; the generate body the page sent.
    (Waiting on "the first panel" raced: until the answer came, the first was the previous job's,
    already done, and that job's images could land in the next test.)"""
    page = gallery.page
    with page.expect_response("**/api/images/generate") as answered:
        page.get_by_role("button", name="Generate", exact=True).click()
    job_id = answered.value.json()["job_id"]
    expect(page.locator(f'.job[data-job-id="{job_id}"]')).to_have_attribute("data-status", "done")
    body: dict[str, Any] = answered.value.request.post_data_json
    return body


PICTURE_FIELDS = ("image", "mask", "strength")
"""What a generate request carries of a starting picture: sent only when there is one."""


# --- tests ----------------------------------------------------------------------------------------
def test_generate_shows_progress_then_the_card_and_select_gives_the_stored_png(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open("?page=12")
    prompt = "a small glass greenhouse on a moonlit hill"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "8")
    page.fill("#seed", "4242")
    page.get_by_role("button", name="Generate", exact=True).click()

    job = page.locator(".job").first
    expect(job).to_contain_text(prompt[:30])
    expect(job).to_have_attribute("data-status", "done")
    expect(job.locator("progress")).to_have_attribute("value", "8")
    expect(job.locator(".job-steps")).to_contain_text("Step 8 / 8")

    card = page.locator("#grid .card").first
    expect(card).to_contain_text(prompt)
    for shown in (TINY_MODEL, "seed 4242", "64×64", "just now"):
        expect(card).to_contain_text(shown)
    key = gallery.card_key(card)
    assert key == latest(stack, 1)[0]["key"]

    wait_for_visible_thumbnails(page)
    thumbnails = page.locator("#grid img").evaluate_all("(imgs) => imgs.map((img) => img.src)")
    assert thumbnails and all(urlsplit(src).path.endswith(".thumb.webp") for src in thumbnails)
    assert gallery.png_requests() == [], "the grid must show thumbnails, never full PNGs"
    publish_screenshot(save_screenshot(page, "gallery.png"))

    card.click()
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-prompt")).to_have_text(prompt)
    page.locator("#viewer").get_by_role("button", name="Select", exact=True).click()
    expect(page.locator("#image-ref")).to_contain_text("downloadUrl")
    ref = json.loads(page.locator("#image-ref").text_content() or "")["imageRef"]
    assert ref["storageUri"].endswith(key)

    downloaded = httpx.get(ref["downloadUrl"]).content
    assert downloaded == make_store(stack.settings).get(key)
    expect(page.locator("#viewer-full")).to_have_class(re.compile(r"\bis-loaded\b"))
    assert all(urlsplit(url).path.endswith(key) for url in gallery.png_requests())
    save_screenshot(page, "gallery-select.png")


def test_scrolling_to_the_end_loads_older_pages(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    page.set_viewport_size(PHONE)
    expected = [item["key"] for item in latest(stack)]
    assert len(expected) > 2 * SCROLL_PAGE_SIZE
    gallery.open(f"?page={SCROLL_PAGE_SIZE}")

    cards = page.locator("#grid .card")
    for _ in range(len(expected)):
        if page.locator("#load-more").is_hidden():
            break
        page.mouse.wheel(0, 4000)
        page.wait_for_timeout(100)
    expect(page.locator("#load-more")).to_be_hidden()  # the last page came: no older images

    expect(cards).to_have_count(len(expected))
    shown = page.locator("#grid li").evaluate_all("(items) => items.map((li) => li.dataset.key)")
    assert shown == expected
    pages = [url for url in gallery.requests if "/api/images/latest" in url]
    assert f"limit={SCROLL_PAGE_SIZE}" in pages[0] and "cursor=" not in pages[0]
    assert sum("cursor=" in url for url in pages) >= 2
    assert gallery.png_requests() == []


def test_a_refused_submit_shows_the_error_code_and_remediation(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    body: dict[str, Any] = {"prompt": "out of range", "model": TINY_MODEL, "seed": 99_999_999_999}
    refusal = httpx.post(f"{stack.gateway_url}/api/images/generate", json=body).json()["error"]

    page.fill("#prompt", body["prompt"])
    page.select_option("#model", TINY_MODEL)
    page.fill("#seed", str(body["seed"]))
    page.get_by_role("button", name="Generate", exact=True).click()

    error = page.locator("#generate-form .error-box")
    expect(error).to_be_visible()
    expect(error.locator(".error-code")).to_have_text("VALIDATION_ERROR")
    expect(error).to_contain_text("seed")
    for step in refusal["remediation"]:
        expect(error.locator(".remediation")).to_contain_text(step)
    expect(page.locator("#seed")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".job")).to_have_count(0)


def test_an_engine_offline_refusal_shows_its_message_and_remediation(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    body = {"prompt": "a fox for a server engine", "model": TINY_MODEL, "engine": "comfyui"}
    refusal = httpx.post(f"{stack.gateway_url}/api/images/generate", json=body)
    assert refusal.status_code == 503, refusal.text
    refused = refusal.json()["error"]

    def on_comfyui(route: Route) -> None:
        # The form has no engine field: its request goes on to the service naming one nobody serves.
        route.continue_(post_data=json.dumps({**route.request.post_data_json, "engine": "comfyui"}))

    page.route("**/api/images/generate", on_comfyui)
    gallery.open()
    page.fill("#prompt", body["prompt"])
    page.select_option("#model", TINY_MODEL)
    page.get_by_role("button", name="Generate", exact=True).click()

    error = page.locator("#generate-form .error-box")
    expect(error.locator(".error-code")).to_have_text("ENGINE_OFFLINE")
    expect(error.locator(".error-message")).to_have_text(refused["message"])
    expect(error.locator(".remediation li")).to_have_text(refused["remediation"])
    expect(page.locator(".job")).to_have_count(0)


def test_a_queued_job_says_what_it_waits_for_until_it_ends(browser: Browser, idle_stack: Stack) -> None:
    with gallery_on(browser, idle_stack.gateway_url) as gallery:
        page = gallery.page
        gallery.open()
        page.fill("#prompt", "a fox nobody renders yet")
        page.select_option("#model", TINY_MODEL)
        page.get_by_role("button", name="Generate", exact=True).click()

        job = page.locator(".job").first
        expect(job.locator(".job-state")).to_have_text("Queued")
        expect(job.locator(".job-steps")).to_have_text(
            "Waiting for a worker: none serves engine 'diffusers' now; start one with `images-worker`"
        )
        job.get_by_role("button", name="Cancel", exact=True).click()
        expect(job).to_have_attribute("data-status", "canceled")
        expect(job.locator(".job-steps")).not_to_contain_text("Waiting")


def test_delete_asks_for_confirmation_then_removes_the_card(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    prompt = "an image that is about to be deleted"
    (key,) = generate(stack, prompt=prompt, steps=4)
    gallery.open()
    card = gallery.card(prompt)

    card.click()
    page.locator("#viewer").get_by_role("button", name="Delete…", exact=True).click()
    expect(page.locator("#confirm-delete")).to_be_visible()
    page.locator("#viewer").get_by_role("button", name="Keep", exact=True).click()
    expect(page.locator("#confirm-delete")).to_be_hidden()
    assert key in [item["key"] for item in latest(stack)]

    page.locator("#viewer").get_by_role("button", name="Delete…", exact=True).click()
    page.locator("#confirm-delete-yes").click()
    expect(page.locator("#viewer")).to_be_hidden()
    expect(card).to_have_count(0)
    assert key not in [item["key"] for item in latest(stack)]
    assert make_store(stack.settings).head(key) is None

    gallery.open()
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(gallery.card(prompt)).to_have_count(0)


def test_keyboard_tab_to_a_card_enter_opens_escape_closes(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    for _ in range(MAX_TABS_TO_A_CARD):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('card')"):
            break
    else:
        pytest.fail(f"no card reached in {MAX_TABS_TO_A_CARD} Tab presses")
    key = page.evaluate("document.activeElement.parentElement.dataset.key")
    save_screenshot(page, "gallery-keyboard.png")

    page.keyboard.press("Enter")
    dialog = page.locator("#viewer")
    expect(dialog).to_be_visible()
    assert page.evaluate("document.getElementById('viewer').contains(document.activeElement)")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page.evaluate("document.activeElement.parentElement.dataset.key") == key


RERUN_SETTINGS = (
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "steps",
    "cfg",
    "scheduler",
    "preset",
)
"""What a re-run keeps of the stored request (the seed too, unless a new one is asked for)."""


def test_rerun_asks_the_service_to_render_the_stored_request_again(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    prompt = "a paper boat on a rainy street, re-run me"
    (original_key,) = generate(
        stack, prompt=prompt, negative_prompt="fog", seed=31337, steps=5, cfg=6.5, scheduler="DPM++ 2M Karras"
    )
    gallery.open()
    gallery.card(prompt).click()
    with page.expect_response("**/api/images/rerun") as answered:
        page.locator("#viewer").get_by_role("button", name="Re-run", exact=True).click()
    assert answered.value.request.post_data_json == {"key": original_key}

    expect(job_panel(page, answered.value)).to_have_attribute("data-status", "done")
    expect(gallery.card(prompt)).to_have_count(2)
    newest, original = latest(stack, 2)
    assert original["key"] == original_key and newest["key"] != original_key
    assert original["scheduler"] == "dpmpp_2m_karras"
    same = (*RERUN_SETTINGS, "seed")
    assert {name: newest.get(name) for name in same} == {name: original.get(name) for name in same}
    store = make_store(stack.settings)
    assert pixels(store.get(newest["key"])) == pixels(store.get(original_key))
    expect(page.locator("#prompt")).to_have_value(prompt)  # the form holds the settings, to tweak
    expect(page.locator("#seed")).to_have_value("31337")


def test_edit_settings_fills_the_form_and_puts_the_focus_in_it(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    prompt = "a tin robot watering tulips, edit me"
    generate(stack, prompt=prompt, seed=2024, steps=3)
    gallery.open()
    gallery.card(prompt).click()
    page.locator("#viewer").get_by_role("button", name="Edit settings", exact=True).click()

    expect(page.locator("#viewer")).not_to_be_visible()
    expect(page.locator("#prompt")).to_have_value(prompt)
    expect(page.locator("#seed")).to_have_value("2024")
    # The dialog's close comes after the form took the focus: it must not hand it back to the card.
    page.wait_for_timeout(200)
    expect(page.locator("#prompt")).to_be_focused()


def test_rerun_with_a_new_seed_keeps_everything_else(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    prompt = "a kite over the dunes, vary me"
    (original_key,) = generate(stack, prompt=prompt, seed=2718, steps=5)
    gallery.open()
    gallery.card(prompt).click()
    with page.expect_response("**/api/images/rerun") as answered:
        page.locator("#viewer").get_by_role("button", name="Re-run with a new seed").click()
    assert answered.value.request.post_data_json == {"key": original_key, "new_seed": True}

    expect(job_panel(page, answered.value)).to_have_attribute("data-status", "done")
    expect(gallery.card(prompt)).to_have_count(2)
    newest, original = latest(stack, 2)
    assert original["key"] == original_key and newest["seed"] != original["seed"]
    assert {name: newest.get(name) for name in RERUN_SETTINGS} == {
        name: original.get(name) for name in RERUN_SETTINGS
    }
    store = make_store(stack.settings)
    assert pixels(store.get(newest["key"])) != pixels(store.get(original_key))
    expect(page.locator("#seed")).to_have_value("")  # random: the form does not pin the old seed


def test_a_preset_and_quality_chosen_in_the_form_shape_the_image_and_show_on_its_card(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    prompt = "a lighthouse keeper at the window"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    expect(page.locator("#preset option")).to_have_count(len(presets(stack)) + 1)

    page.select_option("#preset", "cinematic")
    expect(page.locator("#preset-note")).to_contain_text("film grain")
    expect(page.locator("#preset-note")).to_contain_text("Then: post-processing.")
    expect(page.locator("#size option:checked")).to_have_text("Preset · 1024 × 576")
    expect(page.locator("#steps")).to_have_attribute("placeholder", "30")  # cinematic's standard
    page.select_option("#quality", "low")
    expect(page.locator("#steps")).to_have_attribute("placeholder", "20")
    expect(page.locator("#cfg")).to_have_attribute("placeholder", "6")
    page.select_option("#size", "64x64")  # the model's own size: the tiny pipeline stays fast
    with page.expect_response("**/api/images/generate") as answered:
        page.get_by_role("button", name="Generate", exact=True).click()
    body = answered.value.request.post_data_json
    assert (body["preset"], body["quality"], body["width"]) == ("cinematic", "low", 64)
    assert "steps" not in body and "negative_prompt" not in body

    panel = job_panel(page, answered.value)
    # cinematic grades and grains the render in a second step: the panel lists both.
    expect(panel.locator(".job-pipeline li")).to_have_count(2)
    expect(panel.locator(".job-pipeline li[data-kind=postprocess]")).to_have_attribute("data-status", "done")
    expect(panel).to_have_attribute("data-status", "done")
    # The newest card is the post-processed image; the render it was made from is the one before.
    card = gallery.card(prompt).first
    expect(card).to_contain_text("cinematic · low")
    graded, item = latest(stack, 2)
    assert graded["preset"] == "cinematic" and graded["key"] != item["key"]
    assert (item["preset"], item["quality"], item["steps"], item["cfg"]) == ("cinematic", "low", 20, 6.0)
    cinematic = next(preset for preset in presets(stack) if preset["name"] == "cinematic")
    assert item["prompt"] == cinematic["prompt_template"].replace("{prompt}", prompt)
    assert item["negative_prompt"] == cinematic["negative_prompt"]
    card.click()
    settings = page.locator("#viewer-settings")
    expect(settings).to_contain_text("Preset")
    expect(settings).to_contain_text("cinematic")
    expect(settings).to_contain_text("low")


def test_phone_viewport_puts_the_form_in_a_drawer_and_never_scrolls_sideways(
    gallery: Gallery, tmp_path: Path
) -> None:
    """Images first on a phone; the form opens from its drawer and fits the width with a picture in."""
    page = gallery.page
    page.set_viewport_size(PHONE)
    gallery.open()
    expect(page.locator("#grid .card").first).to_be_visible()
    is_overflowing = "document.documentElement.scrollWidth > document.documentElement.clientWidth"
    assert not page.evaluate(is_overflowing)
    expect(page.locator("#generate-form")).to_be_hidden()
    page.locator("#drawer-toggle").click()
    long_name = tmp_path / f"a-picture-with-a-very-{'long-' * 12}name.png"
    page.set_input_files("#image", str(write_png(long_name, Image.new("RGB", (96, 64), (200, 90, 40)))))
    expect(page.locator("#strength")).to_be_visible()  # the picture's controls fit too
    expect(page.locator("#loras")).to_be_visible()
    assert not page.evaluate(is_overflowing)
    save_screenshot(page, "gallery-phone.png")

    page.keyboard.press("Escape")
    expect(page.locator("#generate-form")).to_be_hidden()
    page.locator("#grid .card").first.click()
    expect(page.locator("#viewer")).to_be_visible()
    assert not page.evaluate(is_overflowing)
    save_screenshot(page, "gallery-phone-dialog.png")


def test_the_page_follows_the_dark_color_scheme(gallery: Gallery) -> None:
    page = gallery.page
    background = "getComputedStyle(document.body).backgroundColor"
    gallery.open()
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert brightness(dark) < DARK_BRIGHTNESS_MAX < brightness(light)
    wait_for_visible_thumbnails(page)
    save_screenshot(page, "gallery-dark.png")


def test_a_401_asks_for_an_api_key_then_sends_it(gallery: Gallery) -> None:
    page = gallery.page
    api_key = "kitty-test-key"
    sent_keys: list[str | None] = []

    def require_key(route: Route) -> None:
        if "/api/images/files/" in route.request.url:
            route.continue_()  # signed links (thumbnails, downloads) carry their own authority
            return
        sent = route.request.headers.get("x-api-key")
        sent_keys.append(sent)
        if sent == api_key:
            route.continue_()
            return
        error = {"code": "UNAUTHORIZED", "message": "an API key is required", "remediation": []}
        route.fulfill(status=401, json={"error": error})

    page.route("**/api/images/**", require_key)
    gallery.open()
    key_field = page.locator("#api-key")
    expect(key_field).to_be_visible()
    expect(page.locator("#status")).to_contain_text("API key")

    key_field.fill(api_key)
    page.locator("#api-key-form").get_by_role("button", name="Save").click()
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page.locator("#api-key-form")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('kitty.apiKey')") == api_key
    assert sent_keys[-1] == api_key


def test_a_picture_and_mask_from_disk_are_uploaded_then_start_the_image(
    gallery: Gallery, stack: Stack, tmp_path: Path
) -> None:
    page = gallery.page
    picture = write_png(tmp_path / "start.png", Image.new("RGB", (64, 64), (10, 120, 200)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask_path = write_png(tmp_path / "mask.png", mask)
    gallery.open()
    expect(page.locator("#strength")).to_be_hidden()  # no picture, no picture controls

    prompt = "the lighthouse repainted from a blue picture"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "4")
    page.set_input_files("#image", str(picture))
    expect(page.locator("#image-name")).to_have_text("start.png")
    expect(page.locator("#size option:checked")).to_have_text("Picture's size")
    expect(page.locator("#strength-value")).to_have_text("0.75")
    page.locator("#strength").focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")  # 0.05 a press
    expect(page.locator("#strength-value")).to_have_text("0.50")
    page.set_input_files("#mask", str(mask_path))
    uploaded_types: list[str] = []

    def note_upload(request: Request) -> None:
        if "/api/images/uploads" in request.url:
            uploaded_types.append(request.headers.get("content-type", ""))

    page.on("request", note_upload)
    body = submit_and_wait(gallery)

    assert uploaded_types == ["image/png", "image/png"]  # each file as itself, not multipart
    assert body["strength"] == 0.5 and "width" not in body
    expect(gallery.card(prompt)).to_be_visible()
    item = latest(stack, 1)[0]
    assert item["prompt"] == prompt and (item["width"], item["height"]) == (64, 64)
    request = stored_request(stack, item)
    uploads_prefix = stack.settings.uploads_prefix
    assert (request["image"], request["mask"]) == (body["image"], body["mask"])
    assert request["image"].startswith(uploads_prefix) and request["mask"].startswith(uploads_prefix)
    assert request["strength"] == 0.5
    store = make_store(stack.settings)
    assert store.get(request["image"]) == picture.read_bytes()  # the raw file, not a multipart body
    assert store.get(request["mask"]) == mask_path.read_bytes()


def test_use_as_input_starts_the_form_from_a_gallery_image_and_clear_forgets_it(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    card = page.locator("#grid .card").first
    key = gallery.card_key(card)
    card.click()
    page.locator("#viewer").get_by_role("button", name="Use as input").click()
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator("#image-name")).to_have_text(f"gallery image {key.split('/')[-1]}")
    expect(page.locator("#strength")).to_be_focused()

    prompt = "a variation of a gallery image"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "4")
    body = submit_and_wait(gallery)
    assert (body["image"], body["strength"]) == (key, 0.75) and "mask" not in body
    assert not [url for url in gallery.requests if "/api/images/uploads" in url], (
        "a gallery image needs no upload"
    )
    item = latest(stack, 1)[0]
    assert item["prompt"] == prompt
    request = stored_request(stack, item)
    assert (request["image"], request["strength"]) == (key, 0.75)

    page.get_by_role("button", name="Clear picture").click()
    expect(page.locator("#image-chosen")).to_be_hidden()
    expect(page.locator("#strength")).to_be_hidden()
    body = submit_and_wait(gallery)
    assert not set(PICTURE_FIELDS) & body.keys()


def test_a_checked_lora_and_its_weight_reach_the_request(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    loras = page.locator("#loras")
    expect(loras).to_be_visible()
    weight = page.get_by_label(f"Weight of {TINY_LORA}")
    expect(weight).to_be_disabled()  # weighs nothing until checked
    page.get_by_label(TINY_LORA, exact=True).check()
    weight.fill("0.5")

    prompt = "a fox in the tiny LoRA's style"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "4")
    body = submit_and_wait(gallery)
    assert body["loras"] == [{"name": TINY_LORA, "weight": 0.5}]
    assert not set(PICTURE_FIELDS) & body.keys()  # no picture chosen: none of its fields
    item = latest(stack, 1)[0]
    assert item["prompt"] == prompt
    assert stored_request(stack, item)["loras"] == [{"name": TINY_LORA, "weight": 0.5}]


def test_a_refused_upload_shows_its_code_and_remediation_and_queues_nothing(
    gallery: Gallery, stack: Stack, tmp_path: Path
) -> None:
    page = gallery.page
    fake = tmp_path / "not-really.png"
    fake.write_text("this is text, not a PNG")
    refusal = httpx.post(
        f"{stack.gateway_url}/api/images/uploads",
        content=fake.read_bytes(),
        headers={"content-type": "image/png"},
    )
    assert refusal.status_code == 400
    newest = latest(stack, 1)[0]["key"]
    gallery.open()

    page.fill("#prompt", "never rendered")
    page.set_input_files("#image", str(fake))
    page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator("#generate-form .error-box")
    expect(error).to_be_visible()
    refused = refusal.json()["error"]
    expect(error.locator(".error-code")).to_have_text(refused["code"])
    expect(error.locator(".error-message")).to_have_text(refused["message"])
    expect(error.locator(".remediation li")).to_have_text(refused["remediation"])
    expect(page.locator("#image")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
    expect(page.locator(".job")).to_have_count(0)
    assert [url for url in gallery.requests if "/api/images/uploads" in url]
    assert not [url for url in gallery.requests if "/api/images/generate" in url]
    assert latest(stack, 1)[0]["key"] == newest


def test_the_dialogs_format_picks_what_select_and_download_give(gallery: Gallery, stack: Stack) -> None:
    """PNG is the stored original; WebP and JPEG are the copies the service converts once, for the
    download link and for the imageRef that Select prints."""
    page = gallery.page
    prompt = "a lantern on a jetty, to be delivered as webp"
    (key,) = generate(stack, prompt=prompt, steps=4)
    gallery.open()
    gallery.card(prompt).click()
    download = page.locator("#viewer-download")
    expect(download).to_be_visible()  # hidden until its link is made
    expect(download).to_have_text("Download PNG")
    assert httpx.get(download.get_attribute("href") or "").content == make_store(stack.settings).get(key)

    page.select_option("#viewer-format", "webp")
    expect(download).to_have_text("Download WebP")
    expect(download).to_be_visible()
    expect(download).to_have_attribute("download", re.compile(r"\.webp$"))
    webp = httpx.get(download.get_attribute("href") or "").content
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    page.locator("#viewer").get_by_role("button", name="Select", exact=True).click()
    expect(page.locator("#image-ref")).to_contain_text(".webp")
    ref = json.loads(page.locator("#image-ref").text_content() or "")["imageRef"]
    assert ref["storageUri"].endswith(".webp") and key.removesuffix(".png") in ref["storageUri"]

    page.select_option("#viewer-format", "jpeg")
    expect(download).to_have_text("Download JPEG")
    expect(download).to_be_visible()
    assert httpx.get(download.get_attribute("href") or "").content[:2] == b"\xff\xd8"
