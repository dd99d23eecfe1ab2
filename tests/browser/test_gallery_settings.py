"""The /vision gallery reads and reuses settings, and works from the keyboard and on any screen
(issue 20, parts 4 and 5): the image dialog's settings, timings and copy buttons; PNG Info (a PNG of
ours, AUTOMATIC1111's or ComfyUI's dropped on the page fills the form, anything else is refused);
Ctrl+Enter, the arrow keys and `/`; the sticky submit, the phone's form drawer and the card density."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from playwright.sync_api import Browser, Page, ViewportSize, expect

from services.contracts import A1111_SAMPLERS
from services.images_service.engines.comfyui.graph import COMFYUI_SAMPLERS
from services.images_service.metadata import read_png_text
from services.images_service.storage import make_store
from services.images_service.tiny import TINY_LORA
from tests.browser.test_gallery import (
    PHONE,
    TINY_MODEL,
    Gallery,
    browser,  # noqa: F401  (the module's browser fixture, shared)
    gallery_on,
    generate,
    latest,
    save_screenshot,
)
from tests.support.stack import Stack, run_stack

pytestmark = pytest.mark.browser

SETTINGS_REDIS_DB = 12
"""This module's Redis database (the other browser modules use 4 and 6 to 9, the end-to-end tests 3 and 5)."""

FULL_HD: ViewportSize = {"width": 1920, "height": 1080}

PNG_INFO_MODULE = "/vision/static/pnginfo.js"

RECORDED_PROMPT = "a brass telescope on a rooftop, read my settings"
RECORDED = {
    "prompt": RECORDED_PROMPT,
    "negative_prompt": "fog, lens flare",
    "seed": 8675309,
    "steps": 5,
    "cfg": 6.5,
    "scheduler": "DPM++ 2M Karras",
    "loras": [{"name": TINY_LORA, "weight": 0.7}],
}
"""The image whose settings the dialog lists and whose PNG is dropped back onto the page."""

NEIGHBOUR_PROMPTS = ["first of three neighbours, a lantern", "second of three neighbours, a kettle"]

CLIPBOARD_STUB = """
window.__copied = [];
Object.defineProperty(navigator, "clipboard", {
  configurable: true,
  value: { writeText: async (text) => { window.__copied.push(text); } },
});
"""
"""What the page hands to the clipboard, recorded (headless Chromium grants no clipboard by default)."""

DROP_FILE = """async ([name, type, b64, size]) => {
  const bytes = b64 === null ? new Uint8Array(size) : Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const target = document.getElementById("gallery");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: transfer }));
  }
}"""
"""Drop a file (its bytes, or `size` zero bytes) on the images, as a drag from the desktop would."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, tiny_models: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("settings-var")
    with run_stack(data_dir, redis_server, tiny_models, redis_db=SETTINGS_REDIS_DB) as running:
        yield running


@pytest.fixture(scope="module")
def recorded_key(stack: Stack) -> str:
    for number, prompt in enumerate(NEIGHBOUR_PROMPTS):
        generate(stack, prompt=prompt, seed=500 + number, steps=2)
    (key,) = generate(stack, **RECORDED)
    return key


@pytest.fixture
def gallery(browser: Browser, stack: Stack, recorded_key: str) -> Iterator[Gallery]:  # noqa: F811
    with gallery_on(browser, stack.gateway_url) as opened:
        yield opened


def drop_file(page: Page, name: str, data: bytes | None, mime: str = "image/png", size: int = 0) -> None:
    encoded = base64.b64encode(data).decode() if data is not None else None
    page.evaluate(DROP_FILE, [name, mime, encoded, size])


def png_with(chunks: PngInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 90, 160)).save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def a1111_png() -> bytes:
    """A PNG as AUTOMATIC1111 saves one, its infotext deflated (zTXt) as some tools rewrite it."""
    info = PngInfo()
    infotext = (
        f"a watercolor fox in the snow <lora:{TINY_LORA}:0.6>\n"
        "Negative prompt: blurry, low quality\n"
        "Steps: 23, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 1234, "
        f"Size: 512x768, Model hash: abc123, Model: {TINY_MODEL}, Hires upscale: 2, Denoising strength: 0.4, "
        'Version: "v1.9.4, kitty"'
    )
    info.add_text("parameters", infotext, zip=True)
    return png_with(info)


def comfyui_png() -> bytes:
    """A PNG as ComfyUI saves one: its API-format `prompt` graph (with a UTF-8 prompt: an iTXt chunk)
    and its UI `workflow`."""
    graph = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 77,
                "steps": 9,
                "cfg": 4.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1,
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{TINY_MODEL}.safetensors"}},
        "10": {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": f"{TINY_LORA}.safetensors",
                "strength_model": 0.8,
                "model": ["4", 0],
                "clip": ["4", 1],
            },
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 384, "batch_size": 1}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a sleeping cat in Zürich, 猫", "clip": ["10", 1]},
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["10", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    info = PngInfo()
    info.add_text("prompt", json.dumps(graph, ensure_ascii=False))
    info.add_text("workflow", json.dumps({"nodes": [], "links": []}))
    return png_with(info)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 90, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def open_recorded(gallery: Gallery) -> Page:
    page = gallery.page
    gallery.open()
    gallery.card(RECORDED_PROMPT).click()
    expect(page.locator("#viewer")).to_have_attribute("data-record", "read")
    return page


def form_values(page: Page) -> dict[str, str]:
    return {
        name: page.locator(f"#{name}").input_value()
        for name in ("prompt", "negative_prompt", "steps", "cfg", "seed", "size", "model")
    }


# --- the dialog -----------------------------------------------------------------------------------
def test_the_dialog_lists_every_setting_and_timing_of_a_generated_image(
    gallery: Gallery, stack: Stack
) -> None:
    page = open_recorded(gallery)
    item = next(item for item in latest(stack) if item["prompt"] == RECORDED_PROMPT)
    sidecar = json.loads(make_store(stack.settings).get(item["meta_key"]))

    settings = page.locator("#viewer-settings")
    for label, shown in (
        ("Model", TINY_MODEL),
        ("Engine", "diffusers"),
        ("Seed", "8675309"),
        ("Size", "64×64"),
        ("Steps", "5"),
        ("CFG", "6.5"),
        ("Sampler", "dpmpp_2m_karras (DPM++ 2M Karras)"),
        ("Negative prompt", "fog, lens flare"),
        ("LoRAs", f"{TINY_LORA} ×0.7"),
        ("Job", sidecar["job_id"]),
    ):
        expect(
            settings.locator("dt", has_text=label).first.locator("xpath=following-sibling::dd[1]")
        ).to_have_text(shown)
    expect(settings).to_contain_text("kitty-images")  # the versions

    timings = page.locator("#viewer-timings")
    expect(page.locator("#viewer-timings-section")).to_be_visible()
    assert sidecar["timings"], "the tiny worker records its timings"
    for name, value in sidecar["timings"].items():
        expect(timings).to_contain_text(
            f"{float(value):.2f} s" if float(value) < 10 else f"{float(value):.1f} s"
        )
        assert name.endswith("_s")
    expect(timings).to_contain_text("Render")
    expect(timings).to_contain_text("Total")
    save_screenshot(page, "gallery-settings-dialog.png")


def test_copy_buttons_put_the_prompt_and_the_a1111_infotext_on_the_clipboard(
    gallery: Gallery, stack: Stack
) -> None:
    gallery.page.add_init_script(CLIPBOARD_STUB)
    page = open_recorded(gallery)
    item = next(item for item in latest(stack) if item["prompt"] == RECORDED_PROMPT)
    infotext = read_png_text(make_store(stack.settings).get(item["key"]))["parameters"]

    page.get_by_role("button", name="Copy prompt").click()
    expect(page.locator("#viewer-copy-note")).to_have_text("Copied")
    page.get_by_role("button", name="Copy infotext").click()
    expect(page.locator("#viewer-infotext")).to_be_visible()
    copied = page.evaluate("window.__copied")
    assert copied == [RECORDED_PROMPT, infotext]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext


# --- PNG Info -------------------------------------------------------------------------------------
def test_the_parsers_sampler_tables_match_the_services(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    tables = page.evaluate(
        f"import('{PNG_INFO_MODULE}').then((m) => ({{a1111: m.A1111_SAMPLERS, comfyui: m.COMFYUI_SAMPLERS}}))"
    )
    assert tables["a1111"] == {name: list(pair) for name, pair in A1111_SAMPLERS.items()}
    assert tables["comfyui"] == {name: list(pair) for name, pair in COMFYUI_SAMPLERS.items()}


def test_dropping_one_of_our_pngs_fills_the_form_with_its_settings(gallery: Gallery, stack: Stack) -> None:
    page = gallery.page
    gallery.open()
    item = next(item for item in latest(stack) if item["prompt"] == RECORDED_PROMPT)
    drop_file(page, "telescope.png", make_store(stack.settings).get(item["key"]))

    expect(page.locator("#status")).to_contain_text("Read the KITTY settings of telescope.png")
    expect(page.locator("#prompt")).to_have_value(RECORDED_PROMPT)
    assert form_values(page) == {
        "prompt": RECORDED_PROMPT,
        "negative_prompt": "fog, lens flare",
        "steps": "5",
        "cfg": "6.5",
        "seed": "8675309",
        "size": "64x64",
        "model": TINY_MODEL,
    }
    lora = page.get_by_role("checkbox", name=TINY_LORA)
    expect(lora).to_be_checked()
    expect(page.get_by_label(f"Weight of {TINY_LORA}")).to_have_value("0.7")
    expect(page.locator("#status")).to_contain_text("sampler dpmpp_2m_karras")  # said, not silently lost


def test_dropping_an_a1111_png_reads_its_infotext_into_the_form(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    drop_file(page, "fox.png", a1111_png())

    expect(page.locator("#status")).to_contain_text("Read the AUTOMATIC1111 settings of fox.png")
    assert form_values(page) == {
        "prompt": "a watercolor fox in the snow",
        "negative_prompt": "blurry, low quality",
        "steps": "23",
        "cfg": "6.5",
        "seed": "1234",
        "size": "512x768",
        "model": TINY_MODEL,
    }
    expect(page.get_by_role("checkbox", name=TINY_LORA)).to_be_checked()
    expect(page.get_by_label(f"Weight of {TINY_LORA}")).to_have_value("0.6")
    expect(page.locator("#hires")).to_be_checked()
    expect(page.locator("#hires_scale")).to_have_value("2")
    expect(page.locator("#status")).to_contain_text("sampler euler_a")


def test_dropping_a_comfyui_png_reads_its_prompt_graph_into_the_form(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    drop_file(page, "cat.png", comfyui_png())

    expect(page.locator("#status")).to_contain_text("Read the ComfyUI settings of cat.png")
    assert form_values(page) == {
        "prompt": "a sleeping cat in Zürich, 猫",
        "negative_prompt": "watermark",
        "steps": "9",
        "cfg": "4.5",
        "seed": "77",
        "size": "640x384",
        "model": TINY_MODEL,
    }
    expect(page.get_by_role("checkbox", name=TINY_LORA)).to_be_checked()
    expect(page.get_by_label(f"Weight of {TINY_LORA}")).to_have_value("0.8")
    expect(page.locator("#status")).to_contain_text("sampler dpmpp_2m_karras")


@pytest.mark.parametrize(
    ("name", "mime", "data", "size", "said"),
    [
        ("holiday.jpg", "image/jpeg", jpeg(), 0, "NOT_A_PNG: holiday.jpg is not a PNG"),
        ("plain.png", "image/png", png_with(), 0, "NO_SETTINGS: plain.png carries no generation settings"),
        ("huge.png", "image/png", None, 51 * 1024 * 1024, "FILE_TOO_LARGE: huge.png is 51.0 MB"),
    ],
    ids=["jpeg", "png-without-settings", "too-large"],
)
def test_a_file_without_readable_settings_is_refused_with_what_to_do(
    gallery: Gallery, name: str, mime: str, data: bytes | None, size: int, said: str
) -> None:
    page = gallery.page
    gallery.open()
    page.fill("#prompt", "kept as typed")
    drop_file(page, name, data, mime, size)

    status = page.locator("#status")
    expect(status).to_contain_text(said)
    expect(status).to_have_class("status is-error")
    assert "Drop" in (status.text_content() or "")  # what to do instead
    expect(page.locator("#prompt")).to_have_value("kept as typed")


def test_a_file_dropped_on_a_file_field_is_that_fields_not_png_info(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], "fox.png", { type: "image/png" }));
          const drop = new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: transfer });
          window.__defaultPrevented = !document.getElementById("image").dispatchEvent(drop);
        }""",
        base64.b64encode(a1111_png()).decode(),
    )
    assert page.evaluate("window.__defaultPrevented") is False
    expect(page.locator("#prompt")).to_have_value("")


# --- keys -----------------------------------------------------------------------------------------
def test_ctrl_enter_generates_from_any_field(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    page.fill("#prompt", "a teapot, generated from the keyboard")
    page.select_option("#model", TINY_MODEL)
    page.fill("#steps", "2")
    page.locator("#seed").focus()
    with page.expect_response("**/api/images/generate") as answered:
        page.keyboard.press("Control+Enter")
    assert answered.value.status == 202
    body = answered.value.request.post_data_json
    assert body and body["prompt"] == "a teapot, generated from the keyboard"
    expect(page.locator(f'.job[data-job-id="{answered.value.json()["job_id"]}"]')).to_have_attribute(
        "data-status", "done"
    )


def test_arrow_keys_move_between_images_in_the_dialog(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    cards = page.locator("#grid .card")
    first, second = cards.nth(0).get_attribute("title"), cards.nth(1).get_attribute("title")
    cards.nth(0).click()
    prompt = page.locator("#viewer-prompt")
    expect(prompt).to_have_text(first or "")

    page.keyboard.press("ArrowRight")
    expect(prompt).to_have_text(second or "")
    page.keyboard.press("ArrowLeft")
    expect(prompt).to_have_text(first or "")
    page.keyboard.press("ArrowLeft")  # nothing before the first: it stays, and says so
    expect(prompt).to_have_text(first or "")
    expect(page.locator("#status")).to_contain_text("first image")

    page.keyboard.press("ArrowRight")
    expect(prompt).to_have_text(second or "")
    page.keyboard.press("Escape")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(cards.nth(1)).to_be_focused()  # the card last shown, not the one first opened


def test_slash_focuses_the_search_box_unless_typing(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    page.keyboard.press("/")  # no search box on this page yet: nothing happens, nothing throws
    page.evaluate(
        """() => { if (!document.getElementById("search")) {
             const box = Object.assign(document.createElement("input"), { id: "search", type: "search" });
             document.querySelector(".gallery-head").append(box);
           } }"""
    )
    page.locator("#prompt").fill("a / b")
    page.locator("#prompt").press("End")
    page.keyboard.press("/")
    expect(page.locator("#prompt")).to_have_value("a / b/")
    page.locator("#gallery-title").click()
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    expect(page.locator("#search")).to_have_value("")


# --- layout ---------------------------------------------------------------------------------------
def test_the_generate_button_is_in_view_at_full_hd_without_scrolling(gallery: Gallery) -> None:
    page = gallery.page
    page.set_viewport_size(FULL_HD)
    gallery.open()
    page.locator("#guide > summary").click()  # the longest form: the guide's fields open too
    assert page.evaluate(
        "(() => { const panel = document.querySelector('.composer');"
        " return panel.scrollHeight > panel.clientHeight; })()"
    ), "the form must be taller than its panel, else this test proves nothing"
    assert page.evaluate("scrollY") == 0
    box = page.get_by_role("button", name="Generate", exact=True).bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= FULL_HD["height"]
    button_center = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    on_top = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).closest('button')?.textContent", button_center
    )
    assert on_top == "Generate"  # not hidden under another part of the form
    save_screenshot(page, "gallery-full-hd.png")


def test_a_phone_shows_the_images_first_and_the_form_in_a_drawer(gallery: Gallery) -> None:
    page = gallery.page
    page.set_viewport_size(PHONE)
    gallery.open()
    first = page.locator("#grid .card").first
    expect(first).to_be_visible()
    box = first.bounding_box()
    assert box and box["y"] < PHONE["height"], "the first image is above the fold"
    expect(page.locator("#prompt")).to_be_hidden()
    assert not page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")

    toggle = page.locator("#drawer-toggle")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(page.locator("#prompt")).to_be_visible()
    expect(page.locator("#prompt")).to_be_focused()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_in_viewport(ratio=1)  # once slid in
    save_screenshot(page, "gallery-phone-drawer.png")

    page.keyboard.press("Escape")
    expect(page.locator("#prompt")).to_be_hidden()
    expect(toggle).to_be_focused()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    toggle.click()
    page.get_by_role("button", name="Close the form").click()
    expect(page.locator("#prompt")).to_be_hidden()


def test_the_density_control_changes_the_card_size_and_is_remembered(gallery: Gallery) -> None:
    page = gallery.page
    gallery.open()
    card = page.locator("#grid .card").first

    def card_width() -> float:
        box = card.bounding_box()
        assert box
        return box["width"]

    medium = card_width()
    page.select_option("#density", "small")
    expect(page.locator("body")).to_have_attribute("data-density", "small")
    small = card_width()
    page.select_option("#density", "large")
    large = card_width()
    assert small < medium < large

    gallery.open()
    expect(page.locator("#density")).to_have_value("large")
    expect(page.locator("body")).to_have_attribute("data-density", "large")
    assert card_width() == pytest.approx(large)
