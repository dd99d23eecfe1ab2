"""Finding images in the /vision gallery (issue 20 part 3): prompt search, filters, sort, a favourite
star on each card, boards and a job's images. Headless Chromium against the real stack, as in
test_gallery.py, whose browser and page helpers this module shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_gallery import (
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    generate,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

FIND_REDIS_DB = 13
"""This module's Redis database (the other browser and end-to-end modules use 3 to 9)."""

PROMPTS = ["a lighthouse on a cliff at dusk", "watercolor fox curled up in snow", "a bowl of ramen, top-down"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp("find-var"), redis_server, tiny_models, redis_db=FIND_REDIS_DB
    ) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    keys: list[str] = []
    for number, prompt in enumerate(PROMPTS):
        keys += generate(stack, prompt=prompt, seed=2000 + number, steps=4)
    return keys


@pytest.fixture
def gallery(browser: Browser, stack: Stack, seeded: list[str]) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        opened.open()
        expect(opened.page.locator("#grid .card")).to_have_count(len(PROMPTS))
        yield opened


def test_search_and_filters_narrow_the_grid(gallery: Gallery) -> None:
    page = gallery.page
    cards = page.locator("#grid .card")
    page.locator("body").press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("FOX")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("watercolor fox")
    page.locator("#search").fill("nothing like this")
    expect(page.locator("#empty")).to_have_text("No images match these filters.")
    page.get_by_role("button", name="Clear").click()
    expect(cards).to_have_count(len(PROMPTS))
    expect(cards.first).to_contain_text(PROMPTS[-1])
    page.locator("#find-sort").select_option("oldest")
    expect(cards.first).to_contain_text(PROMPTS[0])
    page.locator("#find-size").select_option("1024")
    expect(cards).to_have_count(0)
    page.get_by_role("button", name="Clear").click()
    # A card's job link lists that job's images together (here, one each).
    gallery.card("ramen").locator("xpath=..").get_by_role("button", name="This job's images").click()
    expect(cards).to_have_count(1)
    expect(page.locator("#find-job")).to_be_visible()
    page.locator("#find-job").click()
    expect(cards).to_have_count(len(PROMPTS))


def test_a_starred_card_is_listed_under_favourites(gallery: Gallery) -> None:
    page = gallery.page
    star = gallery.card("lighthouse").locator("xpath=..").get_by_role("button", name="Favourite")
    star.click()
    expect(star).to_have_attribute("aria-pressed", "true")
    page.locator("#find-favourites").check()
    expect(page.locator("#grid .card")).to_have_count(1)
    expect(page.locator("#grid .card").first).to_contain_text("lighthouse")
    # Unstarring there takes it off the list; a fresh page remembers the state (it is the server's).
    page.locator("#grid .card-star").first.click()
    expect(page.locator("#grid .card")).to_have_count(0)
    gallery.open()
    expect(page.locator("#grid .card-star[aria-pressed=true]")).to_have_count(0)


def test_a_board_is_made_filled_and_viewed(gallery: Gallery) -> None:
    page = gallery.page
    page.locator(".find-boards > summary").click()
    page.locator("#board-name").fill("Keepers")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#board-list")).to_contain_text("Keepers (0)")
    gallery.card("ramen").click()
    expect(page.locator("#viewer")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator(".find-current")).to_contain_text("ramen")
    page.locator("#board-target").select_option("Keepers")
    page.locator("#board-add").click()
    expect(page.locator("#board-list")).to_contain_text("Keepers (1)")
    page.get_by_role("button", name="Keepers (1)").click()
    expect(page.locator("#grid .card")).to_have_count(1)
    expect(page.locator("#grid .card").first).to_contain_text("ramen")
    expect(page.locator("#find-board")).to_have_value("Keepers")


def test_the_dialog_stars_an_image_and_puts_it_on_boards_that_filters_then_list(gallery: Gallery) -> None:
    page = gallery.page
    cards = page.locator("#grid .card")
    card_star = gallery.card("fox").locator("xpath=..").locator(".card-star")
    gallery.card("fox").click()
    star = page.locator("#viewer").get_by_role("button", name="Favourite")
    expect(star).to_have_attribute("aria-pressed", "false")
    star.click()
    expect(star).to_have_attribute("aria-pressed", "true")
    expect(card_star).to_have_attribute("aria-pressed", "true")  # the grid's card shows it too
    # A new board, named in the dialog, gets the image at once.
    page.locator("#viewer-board").select_option(label="New board…")
    expect(page.locator("#viewer-board-name")).to_be_focused()
    page.keyboard.type("Dinner")
    page.locator("#viewer").get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#viewer-boards")).to_have_text("On Dinner")
    expect(page.locator("#viewer-board")).to_contain_text("Dinner ✓")
    page.keyboard.press("Escape")
    # Another image joins that board from the dialog's list of boards.
    gallery.card("ramen").click()
    page.locator("#viewer-board").select_option("Dinner")
    page.locator("#viewer").get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#viewer-boards")).to_contain_text("Dinner")
    page.keyboard.press("Escape")

    # A fresh page: the star and the boards are the service's.
    gallery.open()
    expect(card_star).to_have_attribute("aria-pressed", "true")
    gallery.card("fox").click()
    expect(star).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#viewer-boards")).to_have_text("On Dinner")
    page.keyboard.press("Escape")
    page.locator("#find-favourites").check()
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("watercolor fox")
    page.locator("#find-favourites").uncheck()
    page.locator("#find-board").select_option("Dinner")
    expect(cards).to_have_count(2)
    expect(page.locator("#grid")).to_contain_text("fox")
    expect(page.locator("#grid")).to_contain_text("ramen")

    # Unstarred in the dialog: off the card too, and off the favourites after a reload.
    gallery.card("fox").click()
    star.click()
    expect(star).to_have_attribute("aria-pressed", "false")
    expect(card_star).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("Escape")
    gallery.open()
    page.locator("#find-favourites").check()
    expect(page.locator("#empty")).to_have_text("No images match these filters.")
