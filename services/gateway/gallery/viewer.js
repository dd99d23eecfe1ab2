// The image dialog: the full PNG through a fresh `select` downloadUrl (the thumbnail, upscaled, until
// it has loaded), every setting, and the actions: Select (the imageRef, copyable), Re-run (the same
// seed, or a new one), Edit, Use as input (the form's starting picture), Upscale ×2 or ×4 (a new
// image, followed in a job panel), Download, Delete with a confirmation. Once the PNG's text chunks
// have arrived (pnginfo.js), every setting and timing its `kitty` record holds, and the prompt or the
// A1111 infotext to copy. ← and → move to the previous and next image of the list it was opened from.
// Its star and "Add to board" are viewer-collect.js's.

import { api } from "./api.js";
import { clearError, formatSize, h, parseTime, safeUrl, showError } from "./dom.js";
import { A1111_SAMPLERS, fetchTextChunks, settingsFromChunks } from "./pnginfo.js";
import { createCollect } from "./viewer-collect.js"; // issue 20 part 3: the star and "Add to board"

/** How long "Copied" stays next to the Copy button. */
const COPIED_NOTE_MS = 2_500;

/** An image shown this many times its own size or more is drawn with crisp pixels, not smeared. */
const UPSCALE_PIXELATED = 3;

/** Timings of the sidecar (`render_s`, …) by their name, in the order a job goes through them. */
const TIMING_LABELS = {
  load_s: "Model load",
  lora_s: "LoRAs",
  render_s: "Render",
  upscale_s: "Upscale",
  postprocess_s: "Post-processing",
  contact_sheet_s: "Contact sheet",
  safety_s: "Safety check",
  watermark_s: "Watermark",
  total_s: "Total",
};

/** Elements the arrow keys leave alone: they use the arrows themselves. */
const ARROW_KEY_TARGETS = "input, select, textarea, [contenteditable]";

function seconds(value) {
  const number = Number(value);
  return Number.isFinite(number) ? `${number < 10 ? number.toFixed(2) : number.toFixed(1)} s` : String(value);
}

function timingLabel(name) {
  if (TIMING_LABELS[name]) return TIMING_LABELS[name];
  const words = name.replace(/_s$/, "").replace(/_/g, " ");
  return `${words[0].toUpperCase()}${words.slice(1)}`;
}

/** "dpmpp_2m_karras (DPM++ 2M Karras)": ours, and what A1111 calls it. */
function schedulerText(name) {
  const a1111 = A1111_SAMPLERS[name];
  return a1111 ? `${name} (${a1111.filter(Boolean).join(" ")})` : name;
}

function listText(values) {
  return values.filter(Boolean).join(" · ");
}

export function createViewer({
  dialog,
  routes,
  onRerun,
  onEdit,
  onUseAsInput,
  onUpscale,
  onDeleted,
  onStatus,
  // issue 20 part 3: star the image (`onFavourite(item, isFavourite)`), put it on a board
  onFavourite,
  boardNames,
  onCreateBoard,
  onAddToBoard,
}) {
  const $ = (selector) => dialog.querySelector(selector);
  const preview = $("#viewer-preview");
  const full = $("#viewer-full");
  const loading = $("#viewer-loading");
  const title = $("#viewer-title");
  const prompt = $("#viewer-prompt");
  const settings = $("#viewer-settings");
  const download = $("#viewer-download");
  const formatPick = $("#viewer-format");
  const refPanel = $("#image-ref-panel");
  const refText = $("#image-ref");
  const copyButton = $("#copy-ref");
  const copyNote = $("#copy-note");
  const confirm = $("#confirm-delete");
  const errorBox = $("#viewer-error");
  const timingsSection = $("#viewer-timings-section");
  const timings = $("#viewer-timings");
  const copyPrompt = $("#viewer-copy-prompt");
  const copyInfotext = $("#viewer-copy-infotext");
  const copyTextNote = $("#viewer-copy-note");
  const infotextBlock = $("#viewer-infotext-block");
  const infotextText = $("#viewer-infotext");
  let current = null; // the LatestItem shown
  let reading = null; // the AbortController of the text chunks' download in flight
  let trigger = null; // the card that opened the dialog, focused again on close
  const collect = createCollect({
    root: $(".collect"),
    onFavourite,
    boardNames,
    onCreateBoard,
    onAddToBoard,
    onError: (error) => showError(errorBox, error),
  });

  function setting(label, value, className) {
    if (value === undefined || value === null || value === "") return [];
    return [h("dt", { text: label }), h("dd", { class: className, text: String(value) })];
  }

  /** What the listing knows of an image, shown at once (and kept when the PNG's record can't be read). */
  function renderSettings(item) {
    const created = parseTime(item.last_modified);
    settings.replaceChildren(
      ...setting("Model", item.model),
      ...setting("Engine", item.engine),
      ...setting("Preset", item.preset),
      ...setting("Quality", item.quality),
      ...setting("Seed", item.seed, "mono"),
      ...setting("Size", formatSize(item.width, item.height)),
      ...setting("Steps", item.steps),
      ...setting("CFG", item.cfg),
      ...setting("Scheduler", item.scheduler),
      ...setting("Negative prompt", item.negative_prompt),
      ...setting("Created", Number.isNaN(created.valueOf()) ? "" : created.toLocaleString()),
      ...setting("Key", item.key, "mono"),
    );
  }

  /** Every setting the image's `kitty` record holds: the request as rendered, where and how fast. */
  function renderRecord(item, sidecar) {
    const request = sidecar.request || {};
    const used = sidecar.settings_used || {}; // a raw workflow's own sampler settings
    const created = parseTime(sidecar.created_at || item.last_modified);
    const hires = request.hires;
    const firstPass = hires ? ` (first pass ${formatSize(request.width, request.height)})` : "";
    const outputSize = formatSize(sidecar.width ?? item.width, sidecar.height ?? item.height);
    const loras = (request.loras || []).map((lora) => `${lora.name} ×${lora.weight ?? 1}`);
    const controls = (request.controls || []).map((control) =>
      listText([control.type, control.model, `weight ${control.weight}`, `${control.start ?? 0}–${control.end ?? 1}`]),
    );
    const versions = Object.entries(sidecar.versions || {}).map(([name, version]) => `${name} ${version}`);
    settings.replaceChildren(
      ...setting("Model", sidecar.model ?? item.model),
      ...setting("Engine", sidecar.engine ?? item.engine),
      ...setting("Preset", request.preset),
      ...setting("Quality", request.quality),
      ...setting("Seed", sidecar.seed ?? request.seed, "mono"),
      ...setting("Size", outputSize && `${outputSize}${firstPass}`),
      ...setting("Steps", used.steps ?? request.steps),
      ...setting("CFG", used.cfg ?? request.cfg),
      ...setting("Sampler", used.sampler ? listText([used.sampler, used.scheduler]) : request.scheduler && schedulerText(request.scheduler)),
      ...setting("Negative prompt", request.negative_prompt),
      ...setting("LoRAs", loras.join(", ")),
      ...setting("Refiner", request.refiner ? "yes" : ""),
      ...setting("Hires fix", hires && listText([`×${hires.scale}`, `strength ${hires.strength}`, hires.steps && `${hires.steps} steps`, hires.upscaler])),
      ...setting("Controls", controls.join("; ")),
      ...setting("Reference", request.reference_image && listText([`weight ${request.reference_weight}`, request.reference_model])),
      ...setting("Starting picture", request.image && listText([request.image, `strength ${request.strength}`, request.mask && "masked"]), "mono"),
      ...setting("Upscale of", request.upscale && `×${request.upscale.scale} · ${request.upscale.source}`, "mono"),
      ...setting("Source", sidecar.source, "mono"),
      ...setting("Device", sidecar.device),
      ...setting("Created", Number.isNaN(created.valueOf()) ? "" : created.toLocaleString()),
      ...setting("Job", sidecar.job_id, "mono"),
      ...setting("Key", item.key, "mono"),
      ...setting("Versions", versions.join(", ")),
    );
    const measured = Object.entries(sidecar.timings || {});
    timings.replaceChildren(...measured.flatMap(([name, value]) => setting(timingLabel(name), seconds(value))));
    timingsSection.hidden = measured.length === 0;
  }

  /** The prompt is always there to copy; the infotext once the PNG's `parameters` chunk is read. */
  function showInfotext(text) {
    infotextText.textContent = text;
    infotextBlock.hidden = !text;
    copyInfotext.disabled = !text;
    copyInfotext.title = text ? "" : "This image's PNG carries no A1111 infotext (or it is still loading).";
  }

  /** Read the stored PNG's text chunks (only its head: the image data is the <img>'s download). */
  async function readRecord(item, url) {
    reading = new AbortController();
    const { signal } = reading;
    try {
      const read = settingsFromChunks(await fetchTextChunks(url, { signal }));
      if (current !== item || !read) return;
      if (read.sidecar) renderRecord(item, read.sidecar);
      showInfotext(read.infotext || "");
    } catch {
      // Not readable here (another origin's storage without CORS): the listing's settings stay.
    } finally {
      if (current === item) dialog.dataset.record = "read";
    }
  }

  function stopReading() {
    if (reading) reading.abort();
    reading = null;
  }

  const FORMAT_EXTENSIONS = { png: "png", jpeg: "jpg", webp: "webp" };
  const FORMAT_LABELS = { png: "PNG", jpeg: "JPEG", webp: "WebP" };

  async function selectRef(key, format = formatPick.value) {
    const body = format === "png" ? { key } : { key, format };
    return api(routes.select, { method: "POST", body });
  }

  // Download gives the chosen format: the stored PNG, or a converted copy the service makes once.
  async function pointDownload(item) {
    const format = formatPick.value;
    const selected = format === "png" ? await selectRef(item.key, "png") : await selectRef(item.key);
    if (current !== item || formatPick.value !== format) return;
    const url = safeUrl(selected.imageRef.downloadUrl);
    const stem = item.key.split("/").pop().replace(/\.png$/, "");
    download.href = url;
    download.download = `${stem}.${FORMAT_EXTENSIONS[format]}`;
    download.textContent = `Download ${FORMAT_LABELS[format]}`;
    download.hidden = !url;
  }

  async function loadFull(item) {
    try {
      const selected = await selectRef(item.key, "png");
      if (current !== item) return;
      const url = safeUrl(selected.imageRef.downloadUrl);
      full.src = url;
      if (url) readRecord(item, url);
      await pointDownload(item);
    } catch (error) {
      if (current !== item) return;
      loading.hidden = true;
      showError(errorBox, error);
    }
  }

  function open(item, openedBy) {
    current = item;
    trigger = openedBy;
    title.textContent = item.model ? `${item.model} · ${formatSize(item.width, item.height)}` : "Image";
    prompt.textContent = item.prompt || "(no prompt recorded)";
    renderSettings(item);
    stopReading();
    delete dialog.dataset.record;
    timingsSection.hidden = true;
    timings.replaceChildren();
    showInfotext("");
    copyPrompt.disabled = !item.prompt;
    copyTextNote.textContent = "";
    const thumb = safeUrl(item.thumb_url);
    preview.hidden = !thumb;
    if (thumb) preview.src = thumb;
    else preview.removeAttribute("src");
    full.removeAttribute("src");
    full.classList.remove("is-loaded", "is-small");
    loading.textContent = "Loading the full image…";
    loading.hidden = false;
    download.hidden = true;
    download.removeAttribute("href");
    download.download = item.key.split("/").pop();
    refPanel.hidden = true;
    refText.textContent = ""; // the last image's imageRef must not pass for this one's
    confirm.hidden = true;
    copyNote.textContent = "";
    clearError(errorBox);
    collect.show(item);
    if (!dialog.open) dialog.showModal();
    loadFull(item);
  }

  function close() {
    if (dialog.open) dialog.close();
  }

  full.addEventListener("load", () => {
    full.classList.toggle("is-small", full.naturalWidth * UPSCALE_PIXELATED < full.clientWidth);
    full.classList.add("is-loaded");
    preview.hidden = true;
    loading.hidden = true;
  });
  full.addEventListener("error", () => {
    if (!full.getAttribute("src")) return;
    loading.textContent = "The full image could not be loaded.";
  });

  formatPick.addEventListener("change", async () => {
    const item = current;
    if (!item) return;
    clearError(errorBox);
    download.hidden = true;
    try {
      await pointDownload(item);
    } catch (error) {
      if (current === item) showError(errorBox, error);
    }
  });

  dialog.addEventListener("close", () => {
    full.removeAttribute("src"); // stop a download still in flight
    stopReading();
    const card = trigger;
    current = null;
    trigger = null;
    if (card && card.isConnected) card.focus();
  });
  // A click on the backdrop (the dialog element itself, outside its content) closes it.
  dialog.addEventListener("click", (event) => event.target === dialog && close());
  $("#viewer-close").addEventListener("click", close);

  $("#viewer-select").addEventListener("click", async () => {
    const item = current;
    clearError(errorBox);
    try {
      const selected = await selectRef(item.key);
      if (current !== item) return;
      refText.textContent = JSON.stringify(selected, null, 2);
      refPanel.hidden = false;
      copyNote.textContent = "";
      copyButton.focus();
      onStatus("Selected: the imageRef is ready to copy.");
    } catch (error) {
      showError(errorBox, error);
    }
  });

  /** Put `source`'s text on the clipboard and say so in `note`; without a clipboard, select it. */
  async function copyFrom(source, note) {
    const text = source.textContent;
    try {
      await navigator.clipboard.writeText(text);
      note.textContent = "Copied";
    } catch {
      // No clipboard API (plain http on another host) or no permission: select the text instead.
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      const copied = document.execCommand && document.execCommand("copy");
      note.textContent = copied ? "Copied" : "Selected: press Ctrl+C (⌘C) to copy";
      source.focus();
    }
    setTimeout(() => (note.textContent = ""), COPIED_NOTE_MS);
  }

  copyButton.addEventListener("click", () => copyFrom(refText, copyNote));
  copyPrompt.addEventListener("click", () => copyFrom(prompt, copyTextNote));
  copyInfotext.addEventListener("click", () => {
    infotextBlock.open = true; // what is copied is seen, and selectable without a clipboard
    copyFrom(infotextText, copyTextNote);
  });

  /** The card `offset` places after the one the dialog was opened from, in that card's own list. */
  function neighbour(offset) {
    const list = trigger && trigger.isConnected ? trigger.closest("ul, ol") : null;
    if (!list) return null;
    const cards = [...list.querySelectorAll(`.${trigger.classList[0]}`)];
    const index = cards.indexOf(trigger);
    return index < 0 ? null : cards[index + offset] || null;
  }

  dialog.addEventListener("keydown", (event) => {
    const offset = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!offset || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (event.target.closest(ARROW_KEY_TARGETS)) return;
    event.preventDefault();
    const next = neighbour(offset);
    if (next) next.click(); // its list opens it here, as a click on it would
    else onStatus(offset > 0 ? "This is the last image loaded." : "This is the first image.");
  });

  $("#viewer-rerun").addEventListener("click", () => {
    const item = current;
    close();
    onRerun(item, { newSeed: false });
  });
  $("#viewer-rerun-new").addEventListener("click", () => {
    const item = current;
    close();
    onRerun(item, { newSeed: true });
  });
  $("#viewer-edit").addEventListener("click", () => {
    const item = current;
    trigger = null; // the focus goes to the form, not back to the card
    close();
    onEdit(item);
  });
  $("#viewer-use").addEventListener("click", () => {
    const item = current;
    trigger = null; // the focus goes to the form, not back to the card
    close();
    onUseAsInput(item);
  });

  for (const button of dialog.querySelectorAll("[data-scale]")) {
    button.addEventListener("click", () => {
      const item = current;
      close();
      onUpscale(item, Number(button.dataset.scale));
    });
  }

  $("#viewer-delete").addEventListener("click", () => {
    confirm.hidden = false;
    $("#confirm-delete-no").focus();
  });
  $("#confirm-delete-no").addEventListener("click", () => {
    confirm.hidden = true;
    $("#viewer-delete").focus();
  });
  $("#confirm-delete-yes").addEventListener("click", async () => {
    const item = current;
    try {
      await api(routes.item(item.key), { method: "DELETE" });
    } catch (error) {
      if (error.code !== "KEY_NOT_FOUND") {
        showError(errorBox, error);
        return;
      }
    }
    trigger = null; // its card is about to go
    close();
    onDeleted(item.key);
  });

  return { open, close, current: () => current }; // current: compare.js's "Compare with…" (issue 20 part 3)
}
