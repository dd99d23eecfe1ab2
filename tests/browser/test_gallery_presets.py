"""The /vision gallery's presets (issue 18): picking one shows its inputs (a field the form has is
marked required with the preset's words, one it lacks is made from the input's type), a required
input left empty is named before anything is sent, and a storyboard's beats go as a list whose shots
and contact sheet its job panel shows, each selectable. Headless Chromium against the real stack, as
in test_gallery.py, whose browser and page helpers this module shares."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.test_gallery import (
    JOB_DEADLINE_S,
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    job_panel,
    presets,
    save_screenshot,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

PRESETS_REDIS_DB = 9
"""This module's Redis database (test_gallery.py uses 4 and 6, test_gallery_history.py 7,
test_gallery_guided.py 8, the end-to-end tests 3 and 5)."""

BEATS = ["a knock at the door", "the door swings open", "an empty hallway, one lamp burning"]
BEATS_TYPED = "  a knock at the door  \n\nthe door swings open\n   \nan empty hallway, one lamp burning\n"
"""The beats as a user types them: stray spaces and blank lines, which the form drops."""

GENERATE = re.compile(r"/api/images/generate$")
THUMBNAIL = re.compile(r"\.thumb\.webp(\?|$)")


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("presets-var")
    with run_stack(data_dir, redis_server, tiny_models, redis_db=PRESETS_REDIS_DB) as running:
        yield running


@pytest.fixture
def gallery(browser: Browser, stack: Stack) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


def preset(stack: Stack, name: str) -> dict[str, Any]:
    return next(listed for listed in presets(stack) if listed["name"] == name)


def generate_requests(gallery: Gallery) -> list[str]:
    return [url for url in gallery.requests if GENERATE.search(url)]


def submit(page: Page) -> None:
    page.get_by_role("button", name="Generate", exact=True).click()


def select_ref(page: Page, opener: Locator, key: str) -> dict[str, Any]:
    """Open an image from `opener`, press Select: the imageRef the dialog shows for `key`; the dialog
    closes again."""
    opener.click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    viewer.get_by_role("button", name="Select", exact=True).click()
    expect(page.locator("#image-ref-panel")).to_be_visible()
    expect(page.locator("#image-ref")).to_contain_text(key)
    ref: dict[str, Any] = json.loads(page.locator("#image-ref").text_content() or "")["imageRef"]
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    return ref


# --- tests ----------------------------------------------------------------------------------------
def test_a_presets_own_input_gets_a_field_and_left_empty_is_named_before_anything_is_sent(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    beats = preset(stack, "storyboard")["inputs"]["beats"]
    assert (beats["type"], beats["required"]) == ("texts", True)
    expect(page.get_by_role("group", name="Preset inputs")).to_be_hidden()

    page.select_option("#preset", "storyboard")
    field = page.get_by_label("Beats")
    expect(field).to_be_visible()
    expect(field).to_have_attribute("aria-required", "true")
    expect(field).to_have_attribute("placeholder", "One per line")
    expect(page.locator("#preset-input-beats-note")).to_contain_text(beats["description"])
    expect(page.locator("#prompt")).to_have_attribute("aria-required", "true")  # the form's own field
    expect(page.locator("#prompt-preset-hint")).to_have_text(
        f"Required by Storyboard: {preset(stack, 'storyboard')['inputs']['prompt']['description']}."
    )

    page.fill("#prompt", "a night in an old hotel")
    field.fill("  \n \n")  # only blank lines: no beat
    submit(page)

    error = page.locator("#generate-form .error-box")
    expect(error.locator(".error-code")).to_have_text("INPUT_REQUIRED")
    expect(error.locator(".error-message")).to_have_text(f"Storyboard needs: Beats ({beats['description']}).")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    field.fill("a knock at the door")
    expect(field).not_to_have_attribute("aria-invalid", "true")

    page.select_option("#preset", "")  # another preset, or none: its inputs go, with what was typed
    expect(page.get_by_role("group", name="Preset inputs")).to_be_hidden()
    expect(page.locator("#preset-input-beats")).to_have_count(0)
    expect(page.locator("#prompt")).not_to_have_attribute("aria-required", "true")
    expect(page.locator("#prompt-preset-hint")).to_have_count(0)
    assert generate_requests(gallery) == []


def test_a_presets_inputs_in_the_forms_own_fields_are_marked_required_and_named_when_missing(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    identity = preset(stack, "identity_lock")
    expect(page.locator("#reference_image")).to_be_hidden()  # inside the guide, closed

    page.select_option("#preset", "identity_lock")
    reference = page.locator("#reference_image")
    expect(reference).to_be_visible()  # the guide opened: the preset needs one of its pictures
    expect(reference).to_have_attribute("aria-required", "true")
    expect(page.locator("#reference_image-preset-hint")).to_have_text(
        f"Required by Identity lock: {identity['inputs']['reference_image']['description']}."
    )
    expect(page.get_by_role("group", name="Preset inputs")).to_be_hidden()  # no input of its own

    page.fill("#prompt", "the same person, as an astronaut")
    page.select_option("#model", TINY_MODEL)
    submit(page)

    message = page.locator("#generate-form .error-box .error-message")
    expect(message).to_contain_text("Identity lock needs: Reference picture (")
    expect(message).to_contain_text("Consent (the person pictured agreed to this use)")
    expect(reference).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#consent")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".job")).to_have_count(0)
    assert generate_requests(gallery) == []
    assert not [url for url in gallery.requests if "/api/images/uploads" in url]


def test_a_storyboard_sends_its_beats_and_its_panel_shows_each_shot_and_the_contact_sheet_to_select(
    gallery: Gallery, stack: Stack
) -> None:
    page = gallery.page
    gallery.open()
    prompt = "a night in an old hotel"
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.select_option("#preset", "storyboard")
    page.get_by_label("Beats").fill(BEATS_TYPED)
    page.select_option("#size", "64x64")  # the model's own size: the tiny pipeline stays fast
    page.fill("#steps", "4")

    with page.expect_response(GENERATE) as answered:
        submit(page)
    body = answered.value.request.post_data_json or {}
    assert (body["preset"], body["prompt"], body["beats"]) == ("storyboard", prompt, BEATS)
    assert answered.value.status == 202, answered.value.text()

    panel = job_panel(page, answered.value)
    expect(panel).to_have_attribute("data-status", "done", timeout=JOB_DEADLINE_S * 1000)
    shots = panel.locator(".job-pipeline li[data-kind=shot]")
    expect(shots).to_have_count(len(BEATS))
    for number, beat in enumerate(BEATS, start=1):
        line = panel.locator(f'.job-pipeline li[data-shot="{number}"]')
        expect(line).to_contain_text(f"Shot {number} · {beat}")
        expect(line).to_have_attribute("data-status", "done")
    sheet_line = panel.locator(".job-pipeline li[data-kind=contact_sheet]")
    expect(sheet_line).to_have_attribute("data-status", "done")
    expect(panel.locator(".job-steps")).to_contain_text(f"{len(BEATS)} shots and a contact sheet ready")

    view = httpx.get(f"{stack.gateway_url}/api/images/jobs/{answered.value.json()['job_id']}").json()
    keys = [image["key"] for image in view["result"]["images"]]
    sheet_key = view["result"]["png_key"]
    assert keys[-1] == sheet_key and len(keys) == len(BEATS) + 1

    sheet = panel.get_by_role("button", name="Contact sheet", exact=True)
    expect(sheet).to_have_attribute("data-key", sheet_key)
    expect(sheet.locator("img")).to_have_attribute("src", THUMBNAIL)
    shot_buttons = panel.locator(".job-shots .job-image")
    expect(shot_buttons).to_have_count(len(BEATS))
    for number, key in enumerate(keys[:-1], start=1):
        button = panel.get_by_role("button", name=f"Shot {number}", exact=True)
        expect(button).to_have_attribute("data-key", key)
        expect(button).to_have_attribute("title", BEATS[number - 1])
    save_screenshot(page, "gallery-storyboard.png")

    assert select_ref(page, sheet, sheet_key)["storageUri"].endswith(sheet_key)
    expect(sheet).to_be_focused()  # the dialog gives the focus back to what opened it
    second = panel.get_by_role("button", name="Shot 2", exact=True)
    assert select_ref(page, second, keys[1])["storageUri"].endswith(keys[1])
    expect(panel).to_be_visible()  # a storyboard's panel stays, for its images, until dismissed
