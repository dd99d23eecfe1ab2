// Compare two images (issue 20 part 3): a Compare toggle on each card picks A, then B, and opens a
// dialog that shows them side by side (each fitted to the same box, its key settings under it, the
// settings that differ marked) or overlaid with an A/B slider (a range input clips A over B).
// "Compare with…" in the image dialog picks the image shown. Full PNGs through a `select` downloadUrl,
// the settings from the listing and then from each PNG's `kitty` record, as the image dialog does.

import { api } from "./api.js";
import { clearError, excerpt, formatSize, h, safeUrl, showError } from "./dom.js";
import { fetchTextChunks, settingsFromChunks } from "./pnginfo.js";

/** Where the slider starts: A over the left half, B on the right. */
const SLIDER_START_PERCENT = 50;

/** An image shown this many times its own size or more is drawn with crisp pixels (as in the viewer). */
const UPSCALE_PIXELATED = 3;

/** Characters of A's prompt the "pick a second image" tray shows. */
const TRAY_PROMPT_CHARS = 60;

/** The settings compared, in the order shown: label and how to read it from what is known of an image. */
const KEY_SETTINGS = [
  ["Prompt", (known) => known.prompt],
  ["Negative prompt", (known) => known.negative_prompt],
  ["Model", (known) => known.model],
  ["Seed", (known) => known.seed],
  ["Steps", (known) => known.steps],
  ["CFG", (known) => known.cfg],
  ["Sampler", (known) => known.scheduler],
  ["Size", (known) => formatSize(known.width, known.height)],
  ["LoRAs", (known) => known.loras],
];

function isMissing(value) {
  return value === undefined || value === null || value === "";
}

/** What the listing knows of an image, in the words KEY_SETTINGS reads. */
function knownFromItem(item) {
  return { ...item, loras: "" };
}

/** The listing's values, overridden by what the PNG's `kitty` record says was rendered. */
function knownFromSidecar(item, sidecar) {
  const request = sidecar.request || {};
  const used = sidecar.settings_used || {}; // a raw workflow's own sampler settings
  const pick = (...values) => values.find((value) => !isMissing(value));
  return {
    prompt: pick(request.prompt, item.prompt),
    negative_prompt: pick(request.negative_prompt, item.negative_prompt),
    model: pick(sidecar.model, item.model),
    seed: pick(sidecar.seed, request.seed, item.seed),
    steps: pick(used.steps, request.steps, item.steps),
    cfg: pick(used.cfg, request.cfg, item.cfg),
    scheduler: pick(used.sampler && [used.sampler, used.scheduler].filter(Boolean).join(" "), request.scheduler, item.scheduler),
    width: pick(sidecar.width, item.width),
    height: pick(sidecar.height, item.height),
    loras: (request.loras || []).map((lora) => `${lora.name} ×${lora.weight ?? 1}`).join(", "),
  };
}

export function createCompare({ dialog, routes, onStatus }) {
  let picked = null; // the item picked as A, waiting for B
  let pair = null; // {a, b}: the items compared, in their slots
  let known = { a: {}, b: {} }; // their settings, as far as read
  let generation = 0; // bumps on every open, so a late answer for an earlier pair is dropped
  let trigger = null; // what opened the dialog, focused again on close

  // --- the dialog's contents -------------------------------------------------------------------
  function side(slot) {
    const image = h("img", { class: "compare-image", alt: `Image ${slot.toUpperCase()}`, dataset: { slot } });
    const loading = h("span", { class: "compare-loading", text: "Loading the full image…" });
    const prompt = h("p", { class: "compare-prompt" });
    const settings = h("dl", { class: "settings compare-settings" });
    const figure = h(
      "figure",
      { class: "compare-side", dataset: { slot } },
      h("div", { class: "compare-frame" }, image, loading),
      h(
        "figcaption",
        { class: "compare-caption" },
        h("span", { class: "compare-badge", text: slot.toUpperCase(), "aria-hidden": "true" }),
        prompt,
        settings,
      ),
    );
    image.addEventListener("load", () => (loading.hidden = true));
    image.addEventListener("error", () => image.getAttribute("src") && (loading.textContent = "The full image could not be loaded."));
    return { figure, image, loading, prompt, settings };
  }

  const sides = { a: side("a"), b: side("b") };
  const overA = h("img", { class: "compare-over", alt: "Image A, over the left of the divider" });
  const underB = h("img", { class: "compare-under", alt: "Image B, under the right of the divider" });
  for (const image of [sides.a.image, sides.b.image, overA, underB]) {
    image.addEventListener("load", () => image.classList.toggle("is-small", image.naturalWidth * UPSCALE_PIXELATED < image.clientWidth));
  }
  const divider = h("span", { class: "compare-divider", "aria-hidden": "true" });
  const overlay = h(
    "div",
    { class: "compare-overlay" },
    underB,
    overA,
    divider,
    h("span", { class: "compare-badge is-a", text: "A", "aria-hidden": "true" }),
    h("span", { class: "compare-badge is-b", text: "B", "aria-hidden": "true" }),
  );
  const range = h("input", {
    id: "compare-range",
    type: "range",
    min: 0,
    max: 100,
    step: 1,
    value: SLIDER_START_PERCENT,
    "aria-label": "Divider: how much of A shows over B",
  });
  const slider = h(
    "div",
    { class: "compare-slider" },
    overlay,
    h("label", { class: "compare-range" }, h("span", { text: "A" }), range, h("span", { text: "B" })),
  );
  const sideMode = h("button", { type: "button", class: "button small", dataset: { mode: "side" }, text: "Side by side" });
  const sliderMode = h("button", { type: "button", class: "button small", dataset: { mode: "slider" }, text: "A/B slider" });
  const swap = h("button", { id: "compare-swap", type: "button", class: "button small", text: "Swap A/B" });
  const close = h("button", { type: "button", class: "button ghost icon", "aria-label": "Close", text: "✕" });
  const note = h("p", { id: "compare-note", class: "hint compare-note" });
  const errorBox = h("div", { class: "error-box", role: "alert", hidden: true });
  const body = h(
    "div",
    { class: "compare-body" },
    h(
      "div",
      { class: "compare-head" },
      h("h2", { id: "compare-title", text: "Compare" }),
      h("div", { class: "compare-modes", role: "group", "aria-label": "How to compare" }, sideMode, sliderMode),
      swap,
      close,
    ),
    note,
    errorBox,
    slider,
    h("div", { class: "compare-pair" }, sides.a.figure, sides.b.figure),
  );
  dialog.replaceChildren(body);

  // --- the picking tray: A is chosen, a second image is awaited -----------------------------------
  const trayText = h("span", { class: "compare-tray-text" });
  const tray = h(
    "div",
    { class: "compare-tray", role: "status", hidden: true },
    trayText,
    h("button", { type: "button", class: "button small", text: "Cancel", onclick: () => unpick() }),
  );
  dialog.after(tray);

  /** Show the picked image's Compare toggles as pressed (the others not), and the tray while one waits. */
  function markToggles() {
    for (const toggle of document.querySelectorAll(".card-compare")) {
      const isPicked = picked !== null && toggle.dataset.key === picked.key;
      toggle.setAttribute("aria-pressed", isPicked ? "true" : "false");
      toggle.textContent = isPicked ? "A" : "◧";
    }
    tray.hidden = !picked;
    trayText.textContent = picked
      ? `Comparing A: ${excerpt(picked.prompt || picked.key, TRAY_PROMPT_CHARS)}. Pick a second image (◧ on its card).`
      : "";
  }

  function unpick() {
    picked = null;
    markToggles();
  }

  /** Pick `item`: as A when none is picked (or unpick it again), else as B, which opens the dialog. */
  function pick(item, openedBy = null) {
    if (picked && picked.key === item.key) {
      unpick();
      onStatus("Compare: nothing picked.");
      return;
    }
    if (!picked) {
      picked = item;
      markToggles();
      onStatus("Picked A. Pick a second image to compare.");
      return;
    }
    const first = picked;
    unpick();
    open(first, item, openedBy);
  }

  /** A card's Compare toggle (grid.js puts it in the card's tools). */
  function button(item) {
    const isPicked = picked !== null && picked.key === item.key;
    const toggle = h("button", {
      type: "button",
      class: "card-compare",
      "aria-pressed": isPicked ? "true" : "false",
      "aria-label": "Compare",
      title: "Compare: pick two images",
      dataset: { key: item.key },
      text: isPicked ? "A" : "◧", // Geometric Shapes, as the job link's ▣: in the fonts chromium carries
    });
    toggle.addEventListener("click", () => pick(item, toggle));
    return toggle;
  }

  // --- showing a pair ---------------------------------------------------------------------------
  /** Each side's settings, the ones that differ from the other side's marked. */
  function renderSettings() {
    const rows = KEY_SETTINGS.map(([label, read]) => ({ label, a: read(known.a), b: read(known.b) }));
    for (const slot of ["a", "b"]) {
      const other = slot === "a" ? "b" : "a";
      sides[slot].prompt.textContent = known[slot].prompt || "(no prompt recorded)";
      sides[slot].settings.replaceChildren(
        ...rows
          .filter((row) => row.label !== "Prompt" && !(isMissing(row[slot]) && isMissing(row[other])))
          .flatMap((row) => {
            const differs = String(row[slot] ?? "") !== String(row[other] ?? "");
            const value = isMissing(row[slot]) ? "—" : String(row[slot]);
            return [
              h("dt", { class: differs ? "is-different" : null, text: row.label }),
              h(
                "dd",
                { class: differs ? "is-different" : null, title: differs ? `Differs from ${other.toUpperCase()}` : null },
                value,
                differs ? h("span", { class: "compare-sr", text: ` (differs from ${other.toUpperCase()})` }) : null,
              ),
            ];
          }),
      );
      const promptDiffers = rows[0].a !== rows[0].b;
      sides[slot].prompt.classList.toggle("is-different", promptDiffers);
    }
    const [sizeA, sizeB] = ["a", "b"].map((slot) => formatSize(known[slot].width, known[slot].height));
    note.textContent =
      sizeA && sizeB && sizeA !== sizeB
        ? `A is ${sizeA}, B is ${sizeB}: each is fitted to the same box, so they are not shown at the same scale.`
        : "Both are fitted to the same box, at the same scale. Settings that differ are marked.";
  }

  async function readRecord(slot, item, url, mine) {
    try {
      const read = settingsFromChunks(await fetchTextChunks(url));
      if (mine !== generation || !read || !read.sidecar) return;
      known[slot] = knownFromSidecar(item, read.sidecar);
      renderSettings();
      dialog.dataset.records = String(Number(dialog.dataset.records || 0) + 1); // for tests: records read
    } catch {
      // Not readable here (another origin's storage without CORS): the listing's settings stay.
    }
  }

  async function loadFull(slot, item, mine) {
    const selected = await api(routes.select, { method: "POST", body: { key: item.key } });
    if (mine !== generation) return;
    const url = safeUrl(selected.imageRef.downloadUrl);
    sides[slot].image.src = url;
    (slot === "a" ? overA : underB).src = url;
    if (url) await readRecord(slot, item, url, mine);
  }

  function show() {
    const mine = (generation += 1);
    known = { a: knownFromItem(pair.a), b: knownFromItem(pair.b) };
    delete dialog.dataset.records;
    clearError(errorBox);
    for (const slot of ["a", "b"]) {
      sides[slot].image.removeAttribute("src");
      sides[slot].loading.textContent = "Loading the full image…";
      sides[slot].loading.hidden = false;
    }
    overA.removeAttribute("src");
    underB.removeAttribute("src");
    renderSettings();
    Promise.all(["a", "b"].map((slot) => loadFull(slot, pair[slot], mine))).catch((error) => {
      if (mine === generation) showError(errorBox, error);
    });
  }

  function setMode(mode) {
    dialog.dataset.mode = mode;
    sideMode.setAttribute("aria-pressed", mode === "side" ? "true" : "false");
    sliderMode.setAttribute("aria-pressed", mode === "slider" ? "true" : "false");
    slider.hidden = mode !== "slider";
  }

  function setReveal(percent) {
    const clamped = Math.min(100, Math.max(0, Math.round(percent)));
    range.value = String(clamped);
    range.setAttribute("aria-valuetext", `${clamped}% A, ${100 - clamped}% B`);
    overA.style.clipPath = `inset(0 ${100 - clamped}% 0 0)`;
    divider.style.left = `${clamped}%`;
  }

  /** Compare `a` with `b` (listing items), side by side first. */
  function open(a, b, openedBy = null) {
    pair = { a, b };
    trigger = openedBy || (document.activeElement instanceof HTMLElement ? document.activeElement : null);
    setMode("side");
    setReveal(SLIDER_START_PERCENT);
    show();
    if (!dialog.open) dialog.showModal();
  }

  sideMode.addEventListener("click", () => setMode("side"));
  sliderMode.addEventListener("click", () => {
    setMode("slider");
    range.focus();
  });
  range.addEventListener("input", () => setReveal(Number(range.value)));
  // Dragging on the picture moves the divider there, as the range input's thumb would.
  function revealAt(event) {
    const box = overlay.getBoundingClientRect();
    if (box.width) setReveal(((event.clientX - box.left) / box.width) * 100);
  }
  overlay.addEventListener("pointerdown", (event) => {
    overlay.setPointerCapture(event.pointerId);
    revealAt(event);
  });
  overlay.addEventListener("pointermove", (event) => overlay.hasPointerCapture(event.pointerId) && revealAt(event));
  swap.addEventListener("click", () => {
    pair = { a: pair.b, b: pair.a };
    show();
    onStatus("Swapped A and B.");
  });
  close.addEventListener("click", () => dialog.close());
  // A click on the backdrop (the dialog element itself, outside its content) closes it.
  dialog.addEventListener("click", (event) => event.target === dialog && dialog.close());
  dialog.addEventListener("close", () => {
    generation += 1; // answers still in flight are for a pair no longer shown
    for (const image of [sides.a.image, sides.b.image, overA, underB]) image.removeAttribute("src");
    const card = trigger;
    trigger = null;
    if (card && card.isConnected) card.focus();
  });

  /** "Compare with…" in the image dialog: `viewer.current()` is picked (B when an A waits). */
  function attachViewer(viewer, viewerButton) {
    viewerButton.addEventListener("click", () => {
      const item = viewer.current();
      if (!item) return;
      viewer.close();
      pick(item);
    });
  }

  return { button, pick, open, attachViewer, close: () => dialog.open && dialog.close() };
}
