"""The /vision gallery's guided generation (issue 17) in headless Chromium against the real stack: the
form's Guide section uploads its control and reference pictures and sends them by key with their
settings, the consent statement and the hires fix; a refusal points at the guide's field; the image
dialog's Upscale buttons queue an upscale of that image and follow its job. Shares test_gallery.py's
browser and page helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from services.images_service.storage import make_store
from services.images_service.tiny import TINY_CANNY, TINY_IP_ADAPTER
from tests.browser.test_gallery import (
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    generate,
    job_panel,
    latest,
    save_screenshot,
    stored_request,
    submit_and_wait,
    write_png,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

GUIDED_REDIS_DB = 8
"""This module's Redis database (test_gallery.py uses 4 and 6, test_gallery_history.py 7, the
end-to-end tests 3 and 5)."""

GUIDE_FIELDS = ("controls", "reference_image", "reference_weight", "consent", "hires")
"""What a generate request carries of the guide: sent only for the parts that are used."""


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("guided-var")
    with run_stack(data_dir, redis_server, tiny_models, redis_db=GUIDED_REDIS_DB) as running:
        yield running


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> list[str]:
    """One image in the gallery, for the dialog's actions."""
    return generate(stack, prompt="a lantern on a jetty at night, upscale me", seed=77, steps=4)


@pytest.fixture
def gallery(browser: Browser, stack: Stack, seeded: list[str]) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


def pictures(tmp_path: Path) -> tuple[Path, Path]:
    """A control picture (a white square on black: edges to trace) and a reference picture."""
    edges = Image.new("RGB", (64, 64), (0, 0, 0))
    edges.paste((255, 255, 255), (16, 16, 48, 48))
    reference = Image.new("RGB", (64, 64), (200, 120, 40))
    return write_png(tmp_path / "edges.png", edges), write_png(tmp_path / "face.png", reference)


def fill_prompt(page: Page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "4")


def nudge(page: Page, selector: str, key: str, presses: int) -> None:
    """Move a range input by `presses` steps of 0.05, as a keyboard user does."""
    page.locator(selector).focus()
    for _ in range(presses):
        page.keyboard.press(key)


# --- tests ----------------------------------------------------------------------------------------
def test_the_guide_uploads_its_pictures_and_sends_a_control_a_reference_with_consent_and_the_hires_fix(
    gallery: Gallery, stack: Stack, tmp_path: Path
) -> None:
    page = gallery.page
    edges, face = pictures(tmp_path)
    gallery.open()
    fill_prompt(page, "a lighthouse traced from a square")
    expect(page.locator("#control_image")).to_be_hidden()  # the guide is closed until opened
    page.locator("#guide > summary").click()
    expect(page.locator("#control_type")).to_be_hidden()  # no control picture, no control settings
    expect(page.locator("#hires_scale")).to_be_disabled()

    page.set_input_files("#control_image", str(edges))
    expect(page.locator("#control-name")).to_have_text("edges.png")
    page.select_option("#control_type", "depth")
    nudge(page, "#control_weight", "ArrowLeft", 4)
    expect(page.locator("#control-weight-value")).to_have_text("0.80")
    page.set_input_files("#reference_image", str(face))
    nudge(page, "#reference_weight", "ArrowRight", 2)
    expect(page.locator("#reference-weight-value")).to_have_text("0.70")
    page.get_by_label("The person pictured agreed to this use").check()
    page.get_by_label("Hires fix").check()
    page.select_option("#hires_scale", "1.5")
    expect(page.locator("#guide-on")).to_have_text("depth map · reference · hires ×1.5")
    save_screenshot(page, "gallery-guide.png")

    with page.expect_request("**/api/images/generate") as sent:
        page.get_by_role("button", name="Generate", exact=True).click()
    body = sent.value.post_data_json

    (control,) = body["controls"]
    control_key, reference_key = control["image"], body["reference_image"]
    assert control == {"image": control_key, "type": "depth", "weight": 0.8}
    assert (body["reference_weight"], body["consent"]) == (0.7, True)
    assert body["hires"] == {"scale": 1.5}
    assert "image" not in body  # the guide's pictures are not a starting picture
    uploads_prefix = stack.settings.uploads_prefix
    assert control_key.startswith(uploads_prefix) and reference_key.startswith(uploads_prefix)
    store = make_store(stack.settings)  # each picture uploaded as itself before the submit
    assert store.get(control_key) == edges.read_bytes() and store.get(reference_key) == face.read_bytes()


def test_a_guided_image_renders_end_to_end_and_its_sidecar_keeps_the_guide(
    gallery: Gallery, stack: Stack, tmp_path: Path
) -> None:
    page = gallery.page
    edges, face = pictures(tmp_path)
    gallery.open()
    prompt = "a guided lighthouse, traced, referenced and redrawn larger"
    fill_prompt(page, prompt)
    page.locator("#guide > summary").click()
    page.set_input_files("#control_image", str(edges))  # canny: the edges are traced from it
    page.set_input_files("#reference_image", str(face))
    page.get_by_label("Hires fix").check()  # × 2

    body = submit_and_wait(gallery)

    expect(gallery.card(prompt)).to_contain_text("128×128")
    item = latest(stack, 1)[0]
    assert (item["prompt"], item["width"], item["height"]) == (prompt, 128, 128)
    request = stored_request(stack, item)
    (control,) = request["controls"]
    assert (control["image"], control["type"], control["weight"]) == (
        body["controls"][0]["image"],
        "canny",
        1.0,
    )
    assert control["model"] == TINY_CANNY  # the registered ControlNet for canny on SD 1.5
    assert (request["reference_image"], request["reference_model"]) == (
        body["reference_image"],
        TINY_IP_ADAPTER,
    )
    assert request["reference_weight"] == 0.6 and request["hires"]["scale"] == 2


def test_an_unused_guide_sends_none_of_its_fields_and_clearing_a_picture_forgets_it(
    gallery: Gallery, tmp_path: Path
) -> None:
    page = gallery.page
    edges, _ = pictures(tmp_path)
    gallery.open()
    fill_prompt(page, "a plain fox, no guide")
    page.locator("#guide > summary").click()
    page.set_input_files("#control_image", str(edges))
    page.get_by_role("button", name="Clear control").click()
    expect(page.locator("#control-chosen")).to_be_hidden()
    expect(page.locator("#control_type")).to_be_hidden()
    expect(page.locator("#guide-on")).to_have_text("")

    with page.expect_response("**/api/images/generate") as answered:
        page.get_by_role("button", name="Generate", exact=True).click()

    assert not set(GUIDE_FIELDS) & answered.value.request.post_data_json.keys()
    assert not [url for url in gallery.requests if "/api/images/uploads" in url]
    expect(job_panel(page, answered.value)).to_have_attribute("data-status", "done")


def test_a_refusal_of_a_guide_field_points_at_it_and_opens_the_guide(
    gallery: Gallery, tmp_path: Path
) -> None:
    page = gallery.page
    _, face = pictures(tmp_path)
    refusal = {
        "code": "CONSENT_MISSING",
        "message": "the identity_lock preset renders a real person's likeness: send `consent: true`",
        "remediation": ['Add "consent": true once the person pictured has agreed.'],
        "detail": None,
    }

    def refuse(route: Route) -> None:
        route.fulfill(status=400, content_type="application/json", body=json.dumps({"error": refusal}))

    page.route("**/api/images/generate", refuse)
    gallery.open()
    fill_prompt(page, "the same person, as an astronaut")
    page.locator("#guide > summary").click()
    page.set_input_files("#reference_image", str(face))
    page.locator("#guide > summary").click()  # closed again before the submit
    page.get_by_role("button", name="Generate", exact=True).click()

    error = page.locator("#generate-form .error-box")
    expect(error.locator(".error-code")).to_have_text("CONSENT_MISSING")
    expect(page.locator("#guide")).to_have_attribute("open", "")
    expect(page.locator("#consent")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("The person pictured agreed to this use").check()
    expect(page.locator("#consent")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator(".job")).to_have_count(0)


@pytest.mark.parametrize("scale", [2, 4])
def test_the_dialogs_upscale_button_queues_that_image_larger_and_the_new_one_joins_the_grid(
    gallery: Gallery, stack: Stack, seeded: list[str], scale: int
) -> None:
    page = gallery.page
    (key,) = seeded
    gallery.open()
    page.locator(f'#grid li[data-key="{key}"] .card').click()
    with page.expect_response("**/api/images/upscale") as answered:
        page.locator("#viewer").get_by_role("button", name=f"Upscale ×{scale}", exact=True).click()

    assert answered.value.request.post_data_json == {"key": key, "scale": scale}
    expect(page.locator("#viewer")).to_be_hidden()
    panel = job_panel(page, answered.value)
    expect(panel).to_contain_text(f"Upscale ×{scale}")
    expect(panel).to_have_attribute("data-status", "done")
    newest = latest(stack, 1)[0]
    assert newest["key"] != key and (newest["width"], newest["height"]) == (64 * scale, 64 * scale)
    expect(page.locator("#grid .card").first).to_contain_text(f"{64 * scale}×{64 * scale}")
