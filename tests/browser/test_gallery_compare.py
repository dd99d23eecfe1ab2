"""Comparing two images in the /vision gallery (issue 20 part 3): pick A and B from their cards (or
"Compare with…" in the image dialog), see them side by side with the settings that differ marked,
then overlaid with an A/B slider moved by the keyboard. Headless Chromium against the real stack, as
in test_gallery.py, whose browser and page helpers this module shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.test_gallery import (
    DOCS_SCREENSHOT,
    PHONE,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    generate,
    publish_screenshot,
    save_screenshot,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

COMPARE_REDIS_DB = 2
"""This module's Redis database (the other browser and end-to-end modules use 3 to 9 and 11 to 15)."""

IMAGE_A = {
    "prompt": "a lighthouse on a cliff at dusk",
    "seed": 4242,
    "steps": 4,
    "cfg": 7.0,
    "width": 64,
    "height": 64,
}
IMAGE_B = {
    "prompt": "a red bicycle by a blue door",
    "seed": 4343,
    "steps": 5,
    "cfg": 5.5,
    "width": 128,
    "height": 64,
}
"""Two images that share their model and differ in every other key setting, their sizes included."""

DIFFERING = ["Seed", "Steps", "CFG", "Size"]
"""The settings the dialog lists that differ between IMAGE_A and IMAGE_B (the prompt is shown above them)."""

SLIDER_START = 50
ARROW_PRESSES = 5

SCREENSHOTS_DIR = DOCS_SCREENSHOT.parent / "screenshots"
"""Where KITTY_UPDATE_SCREENSHOT=1 refreshes the docs' pictures of the compare dialog."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp("compare-var"), redis_server, tiny_models, redis_db=COMPARE_REDIS_DB
    ) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    return generate(stack, **IMAGE_A) + generate(stack, **IMAGE_B)


@pytest.fixture
def gallery(browser: Browser, stack: Stack, seeded: list[str]) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


def open_gallery(gallery: Gallery) -> None:
    gallery.open()
    expect(gallery.page.locator("#grid .card")).to_have_count(2)


def compare_toggle(gallery: Gallery, text: str) -> Locator:
    return gallery.card(text).locator("xpath=..").get_by_role("button", name="Compare")


def side(page: Page, slot: str) -> Locator:
    return page.locator(f"#compare .compare-side[data-slot={slot}]")


def wait_for_loaded(page: Page, selector: str, count: int) -> list[dict[str, int]]:
    """Wait until `count` images match `selector` and all have loaded; their natural sizes."""
    page.wait_for_function(
        """([selector, count]) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length === count && images.every((img) => img.complete && img.naturalWidth > 0);
        }""",
        arg=[selector, count],
    )
    sizes: list[dict[str, int]] = page.eval_on_selector_all(
        selector, "(images) => images.map((img) => ({width: img.naturalWidth, height: img.naturalHeight}))"
    )
    return sizes


def box(locator: Locator) -> dict[str, Any]:
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not laid out"
    return dict(found)


def expect_settings(page: Page, slot: str, image: dict[str, Any]) -> None:
    figure = side(page, slot)
    expect(figure.locator(".compare-prompt")).to_have_text(image["prompt"])
    settings = figure.locator("dl")
    for shown in (
        str(image["seed"]),
        str(image["steps"]),
        f"{image['width']}×{image['height']}",
        "tiny-sd15",
    ):
        expect(settings).to_contain_text(shown)
    expect(figure.locator(".compare-prompt.is-different")).to_have_count(1)
    marked = figure.locator("dt.is-different")
    expect(marked).to_have_text(DIFFERING)
    expect(figure.locator("dd.is-different")).to_have_count(len(DIFFERING))
    expect(figure.locator("dt", has_text="Model")).not_to_have_class("is-different")


def test_two_picked_images_are_compared_side_by_side_then_with_the_slider(gallery: Gallery) -> None:
    page = gallery.page
    open_gallery(gallery)
    # Picked with the keyboard: A waits (its toggle pressed, a tray saying so), B opens the dialog.
    toggle_a = compare_toggle(gallery, "lighthouse")
    toggle_a.focus()
    page.keyboard.press("Enter")
    expect(toggle_a).to_have_attribute("aria-pressed", "true")
    expect(page.locator(".compare-tray")).to_contain_text("lighthouse")
    toggle_b = compare_toggle(gallery, "bicycle")
    toggle_b.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#compare")
    expect(dialog).to_be_visible()
    expect(dialog).to_have_attribute("data-mode", "side")
    expect(page.get_by_role("dialog", name="Compare")).to_be_visible()
    expect(page.locator(".compare-tray")).to_be_hidden()
    expect(toggle_a).to_have_attribute("aria-pressed", "false")

    # The full PNGs (not the WebP thumbnails), each under its own settings, differences marked.
    sources = page.eval_on_selector_all("#compare .compare-image", "(images) => images.map((img) => img.src)")
    assert [urlsplit(source).path.endswith(".png") for source in sources] == [True, True], sources
    assert wait_for_loaded(page, "#compare .compare-image", 2) == [
        {"width": IMAGE_A["width"], "height": IMAGE_A["height"]},
        {"width": IMAGE_B["width"], "height": IMAGE_B["height"]},
    ]
    expect_settings(page, "a", IMAGE_A)
    expect_settings(page, "b", IMAGE_B)
    # Still so once each PNG's own record (its `kitty` chunk) has been read.
    expect(dialog).to_have_attribute("data-records", "2")
    expect_settings(page, "a", IMAGE_A)
    expect_settings(page, "b", IMAGE_B)
    expect(page.locator("#compare-note")).to_contain_text("A is 64×64, B is 128×64")
    publish_screenshot(save_screenshot(page, "gallery-compare.png"), SCREENSHOTS_DIR / "compare.png")
    # Side by side, in frames of one size.
    frame_a, frame_b = (
        box(side(page, "a").locator(".compare-frame")),
        box(side(page, "b").locator(".compare-frame")),
    )
    assert frame_a["y"] == frame_b["y"] and frame_a["x"] + frame_a["width"] <= frame_b["x"]
    assert (frame_a["width"], frame_a["height"]) == (frame_b["width"], frame_b["height"])

    # The slider: A over B, clipped at the divider, which the arrow keys move.
    page.get_by_role("button", name="A/B slider").click()
    expect(dialog).to_have_attribute("data-mode", "slider")
    expect(page.get_by_role("button", name="A/B slider")).to_have_attribute("aria-pressed", "true")
    slider = page.get_by_role("slider", name="Divider: how much of A shows over B")
    expect(slider).to_be_focused()
    expect(side(page, "a").locator(".compare-frame")).to_be_hidden()
    assert wait_for_loaded(page, "#compare .compare-over, #compare .compare-under", 2)
    over = page.locator("#compare .compare-over")
    expect(over).to_have_attribute("style", f"clip-path: inset(0px {100 - SLIDER_START}% 0px 0px);")
    for _ in range(ARROW_PRESSES):
        page.keyboard.press("ArrowRight")
    expect(slider).to_have_value(str(SLIDER_START + ARROW_PRESSES))
    expect(over).to_have_attribute(
        "style", f"clip-path: inset(0px {100 - SLIDER_START - ARROW_PRESSES}% 0px 0px);"
    )
    for _ in range(2 * ARROW_PRESSES):
        page.keyboard.press("ArrowLeft")
    revealed = SLIDER_START - ARROW_PRESSES
    expect(over).to_have_attribute("style", f"clip-path: inset(0px {100 - revealed}% 0px 0px);")
    overlay, divider = (
        box(page.locator("#compare .compare-overlay")),
        box(page.locator("#compare .compare-divider")),
    )
    divider_x = divider["x"] + divider["width"] / 2
    publish_screenshot(
        save_screenshot(page, "gallery-compare-slider.png"), SCREENSHOTS_DIR / "compare-slider.png"
    )
    assert abs(divider_x - (overlay["x"] + overlay["width"] * revealed / 100)) <= 2, (
        "the divider is where A ends"
    )

    # Swap: B's image and settings go to the A side.
    page.get_by_role("button", name="Swap A/B").click()
    expect(side(page, "a").locator(".compare-prompt")).to_have_text(IMAGE_B["prompt"])
    expect(page.locator("#compare-note")).to_contain_text("A is 128×64, B is 64×64")
    assert wait_for_loaded(page, "#compare .compare-over", 1) == [
        {"width": IMAGE_B["width"], "height": IMAGE_B["height"]}
    ]

    # Esc closes; the focus goes back to where the comparison was opened.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(toggle_b).to_be_focused()


def test_at_a_phone_width_compare_with_from_the_image_dialog_stacks_the_two(gallery: Gallery) -> None:
    page = gallery.page
    page.set_viewport_size(PHONE)
    open_gallery(gallery)
    gallery.card("lighthouse").click()
    expect(page.locator("#viewer")).to_be_visible()
    page.get_by_role("button", name="Compare with…").click()
    expect(page.locator("#viewer")).to_be_hidden()
    expect(compare_toggle(gallery, "lighthouse")).to_have_attribute("aria-pressed", "true")
    compare_toggle(gallery, "bicycle").click()
    expect(page.locator("#compare")).to_be_visible()
    wait_for_loaded(page, "#compare .compare-image", 2)
    expect_settings(page, "a", IMAGE_A)
    save_screenshot(page, "gallery-compare-phone.png")
    # Stacked: B below A, each as wide as the screen allows, nothing wider than the screen.
    figure_a, figure_b = box(side(page, "a")), box(side(page, "b"))
    assert figure_b["y"] >= figure_a["y"] + figure_a["height"], "B is below A"
    assert figure_a["x"] == figure_b["x"] and figure_a["width"] == figure_b["width"]
    assert figure_a["x"] >= 0 and figure_a["x"] + figure_a["width"] <= PHONE["width"]
    page.get_by_role("button", name="Close", exact=True).click()
    expect(page.locator("#compare")).to_be_hidden()
