"""Every state of the /vision gallery checked with axe-core (issue 20 part 7): the grid, the image
dialog, a queued job's panel, the find bar and boards menu, compare, the phone layout and its drawer,
and each state panel (service down, no models, no worker, quota used up, key missing) — none may have
a serious or critical violation. axe-core is the npm package pinned in tests/browser/axe (`make
install` runs `npm ci` there), injected into the page. With KITTY_UPDATE_SCREENSHOT=1 each state's
picture is refreshed in docs/screenshots/."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from services.common.api_keys import unauthorized_response
from services.contracts import ModelsView
from services.images_service.errors import RateLimited
from tests.browser.test_gallery import (
    PHONE,
    REPO,
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    generate,
    publish_screenshot,
    save_screenshot,
    wait_for_visible_thumbnails,
)
from tests.browser.test_gallery_history import worker_paused
from tests.browser.test_gallery_states import (
    Service,
    dead_gateway,  # noqa: F401  (a gateway whose images-service is gone)
    fulfill_error,
    service,  # noqa: F401  (an images-service and gateway without a worker)
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

A11Y_REDIS_DB = 15
"""This module's Redis database (the other browser and end-to-end modules use 3 to 9 and 12 to 14)."""

AXE_SCRIPT = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
"""axe-core's browser build, installed from tests/browser/axe/package-lock.json by `make install`."""

BLOCKING_IMPACTS = ("serious", "critical")
"""axe's impacts a state may not have; "minor" and "moderate" ones are reported by axe, not failed."""

ColorScheme = Literal["light", "dark"]

COLOR_SCHEMES: tuple[ColorScheme, ...] = ("light", "dark")
"""Both are checked: each has its own colours (gallery.css follows prefers-color-scheme)."""

TARGETS_SHOWN = 6
"""Elements named per violation in a failure message (axe may find dozens of the same)."""

SCREENSHOTS_DIR = REPO / "docs" / "screenshots"

PROMPTS = [
    "a lighthouse on a cliff at dusk, oil painting",
    "watercolor fox curled up in fresh snow",
    "isometric reading nook with plants and soft morning light",
    "a bowl of ramen under studio lighting, top-down",
]

BOARD = "Keepers"


# --- axe ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def axe() -> Path:
    """axe-core's script; missing, the module fails, unless this is no CI run and npm is absent."""
    if AXE_SCRIPT.is_file():
        return AXE_SCRIPT
    reason = (
        f"{AXE_SCRIPT.relative_to(REPO)} is missing: `make install` installs it (npm ci in tests/browser/axe)"
    )
    if os.environ.get("CI") or shutil.which("npm"):
        pytest.fail(reason)
    pytest.skip(f"{reason}; npm is not installed here (`apt-get install -y nodejs npm`)")


def violations(page: Page) -> list[dict[str, Any]]:
    """axe's serious and critical violations of the page as it is now."""
    # Colours are measured as shown: a switch of colour scheme starts transitions, let them end first.
    page.wait_for_function(
        """() => document.getAnimations()
            .every((each) => !(each instanceof CSSTransition) || each.playState !== "running")"""
    )
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE_SCRIPT))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            targets: v.nodes.map((node) => node.target.join(" ")),
        }))"""
    )
    return [violation for violation in found if violation["impact"] in BLOCKING_IMPACTS]


def describe(found: list[dict[str, Any]]) -> str:
    lines = []
    for violation in found:
        targets = violation["targets"]
        shown = ", ".join(targets[:TARGETS_SHOWN]) + (
            f" (+{len(targets) - TARGETS_SHOWN})" if len(targets) > TARGETS_SHOWN else ""
        )
        lines.append(f"- {violation['id']} [{violation['impact']}] {violation['help']}: {shown}")
    return "\n".join(lines)


def check_state(page: Page, name: str, *, pictured: tuple[ColorScheme, ...] = ("light",)) -> None:
    """The state `name` passes axe in the light and the dark colour scheme; its screenshot in each of
    `pictured` is refreshed in docs/ when asked to (`name.png`, `name-dark.png`)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for scheme in COLOR_SCHEMES:
        page.emulate_media(color_scheme=scheme)
        found[scheme] = violations(page)
        if scheme in pictured:
            shot = f"{name}.png" if scheme == "light" else f"{name}-{scheme}.png"
            publish_screenshot(save_screenshot(page, f"a11y-{shot}"), SCREENSHOTS_DIR / shot)
    page.emulate_media(color_scheme="light")
    report = "\n".join(f"{scheme}:\n{describe(each)}" for scheme, each in found.items() if each)
    assert not report, f"axe finds serious or critical violations in the {name} state, {report}"


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    with run_stack(
        tmp_path_factory.mktemp("a11y-var"), redis_server, tiny_models, redis_db=A11Y_REDIS_DB
    ) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    keys: list[str] = []
    for number, prompt in enumerate(PROMPTS):
        keys += generate(stack, prompt=prompt, seed=3000 + number, steps=4)
    with httpx.Client(base_url=stack.gateway_url) as client:
        client.post("/api/images/boards", json={"name": BOARD}).raise_for_status()
        client.put(f"/api/images/boards/{BOARD}/items/{keys[0]}").raise_for_status()
        client.put(f"/api/images/favourites/{keys[1]}").raise_for_status()
    return keys


@pytest.fixture
def gallery(axe: Path, browser: Browser, stack: Stack, seeded: list[str]) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        opened.open()
        # At least the seeded ones: a job of the queue's test may have added its own.
        expect(opened.page.locator("#grid .card").nth(len(PROMPTS) - 1)).to_be_visible()
        wait_for_visible_thumbnails(opened.page)
        yield opened


# --- the gallery's own states -------------------------------------------------------------------------
def test_the_grid_passes_axe_in_light_and_dark(gallery: Gallery) -> None:
    page = gallery.page
    check_state(page, "grid", pictured=("light", "dark"))


def test_the_image_dialog_passes_axe(gallery: Gallery) -> None:
    page = gallery.page
    gallery.card("fox").click()
    expect(page.locator("#viewer-full")).to_have_class(re.compile(r"\bis-loaded\b"))
    expect(page.locator("#viewer")).to_have_attribute("data-record", "read")
    check_state(page, "dialog")
    page.locator("#viewer-board").select_option(label="New board…")
    expect(page.locator("#viewer-board-name")).to_be_visible()
    check_state(page, "dialog-new-board", pictured=())


def test_the_find_bar_and_the_boards_menu_pass_axe(gallery: Gallery) -> None:
    page = gallery.page
    page.locator("#search").fill("fox")
    expect(page.locator("#grid .card")).to_have_count(1)
    page.locator(".find-boards > summary").click()
    expect(page.locator("#board-list")).to_contain_text(f"{BOARD} (1)")
    check_state(page, "find")


def test_comparing_two_images_passes_axe(gallery: Gallery) -> None:
    """Pictured by test_gallery_compare.py (docs/screenshots/compare*.png)."""
    page = gallery.page
    gallery.card("lighthouse").locator("xpath=..").get_by_role("button", name="Compare").click()
    expect(page.locator(".compare-tray")).to_be_visible()
    check_state(page, "compare-tray", pictured=())
    gallery.card("ramen").locator("xpath=..").get_by_role("button", name="Compare").click()
    dialog = page.locator("#compare")
    expect(dialog.locator(".compare-image")).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#compare .compare-image')].every((img) => img.naturalWidth > 0)"
    )
    check_state(page, "compare", pictured=())
    dialog.get_by_role("button", name="A/B slider").click()
    expect(dialog).to_have_attribute("data-mode", "slider")
    check_state(page, "compare-slider", pictured=())


def test_the_phone_layout_and_its_drawer_pass_axe(gallery: Gallery) -> None:
    page = gallery.page
    page.set_viewport_size(PHONE)
    gallery.open()
    wait_for_visible_thumbnails(page)
    check_state(page, "phone")
    page.locator("#drawer-toggle").click()
    expect(page.locator("#generate-form")).to_be_visible()
    check_state(page, "phone-drawer")


def test_a_queued_job_and_the_recent_jobs_pass_axe(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    page.fill("#prompt", "a paper boat on a puddle")
    page.select_option("#model", TINY_MODEL)
    with worker_paused(stack):
        with page.expect_response("**/api/images/generate") as answered:
            page.get_by_role("button", name="Generate", exact=True).click()
        job = page.locator(f'.job[data-job-id="{answered.value.json()["job_id"]}"]')
        expect(job).to_have_attribute("data-status", "queued")
        page.locator("#history > summary").click()  # the seeded jobs, listed as recent
        expect(page.locator("#history-list > li").first).to_be_visible()
        check_state(page, "queue")
    expect(job).to_have_attribute("data-status", "done")


# --- the state panels (as test_gallery_states.py makes them) --------------------------------------------
@contextmanager
def state_down(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    with gallery_on(browser, request.getfixturevalue("dead_gateway")) as gallery:
        gallery.open()
        expect(gallery.page.locator('#states .state-panel[data-state="down"]')).to_be_visible()
        yield gallery.page


@contextmanager
def state_no_models(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    empty = ModelsView(models=[]).model_dump(mode="json")
    with gallery_on(browser, request.getfixturevalue("service").gateway_url) as gallery:
        gallery.page.route("**/api/images/models", lambda route: route.fulfill(json=empty))
        gallery.open()
        expect(gallery.page.locator('#states .state-panel[data-state="models"]')).to_be_visible()
        yield gallery.page


@contextmanager
def state_no_worker(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    without_worker: Service = request.getfixturevalue("service")
    with gallery_on(browser, without_worker.gateway_url) as gallery:
        page = gallery.page
        gallery.open()
        page.fill("#prompt", "a fox nobody renders yet")
        page.select_option("#model", TINY_MODEL)
        with page.expect_response("**/api/images/generate") as answered:
            page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.locator('#queue-states .state-panel[data-state="worker"]')).to_be_visible()
        yield page
        job = page.locator(f'.job[data-job-id="{answered.value.json()["job_id"]}"]')
        job.get_by_role("button", name="Cancel", exact=True).click()
        expect(job).to_have_attribute("data-status", "canceled")


@contextmanager
def state_quota(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    used_up = RateLimited(
        "daily quota of tier 'free' reached: 50 of 50 images used today (UTC), 0 left, "
        "this request asks for 1",
        remediation=[
            "Try again after 00:00 UTC (in 3600 s, see Retry-After).",
            "Or use a key of a higher tier (free < pro < enterprise).",
        ],
        headers={"Retry-After": "3600"},
    )
    with gallery_on(browser, request.getfixturevalue("service").gateway_url) as gallery:
        page = gallery.page
        page.route("**/api/images/generate", lambda route: fulfill_error(route, used_up))
        gallery.open()
        page.fill("#prompt", "one more fox")
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.locator('#generate-form .state-panel[data-state="quota"]')).to_be_visible()
        yield page


@contextmanager
def state_key(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    refusal = json.loads(bytes(unauthorized_response(presented=False).body))

    def refuse(route: Route) -> None:
        route.fulfill(status=401, json=refusal)

    with gallery_on(browser, request.getfixturevalue("service").gateway_url) as gallery:
        gallery.page.route("**/api/images/**", refuse)
        gallery.open()
        expect(gallery.page.locator('#states .state-panel[data-state="key"]')).to_be_visible()
        yield gallery.page


STATE_PANELS: dict[str, Callable[[Browser, pytest.FixtureRequest], AbstractContextManager[Page]]] = {
    "state-down": state_down,
    "state-no-models": state_no_models,
    "state-no-worker": state_no_worker,
    "state-quota": state_quota,
    "state-key": state_key,
}
"""Each state panel by its screenshot's name, and how a page comes to show it."""


@pytest.mark.parametrize("name", list(STATE_PANELS))
def test_each_state_panel_passes_axe(
    name: str,
    axe: Path,
    browser: Browser,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    with STATE_PANELS[name](browser, request) as page:
        check_state(page, name)
