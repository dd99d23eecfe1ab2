// The image dialog: the full PNG through a fresh `select` downloadUrl (the thumbnail, upscaled, until
// it has loaded), every setting, and the actions: Select (the imageRef, copyable), Re-run (the same
// seed, or a new one), Edit, Use as input (the form's starting picture), Upscale ×2 or ×4 (a new
// image, followed in a job panel), Download, Delete with a confirmation.

import { api } from "./api.js";
import { clearError, formatSize, h, parseTime, safeUrl, showError } from "./dom.js";

/** How long "Copied" stays next to the Copy button. */
const COPIED_NOTE_MS = 2_500;

/** An image shown this many times its own size or more is drawn with crisp pixels, not smeared. */
const UPSCALE_PIXELATED = 3;

export function createViewer({ dialog, routes, onRerun, onEdit, onUseAsInput, onUpscale, onDeleted, onStatus }) {
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
  let current = null; // the LatestItem shown
  let trigger = null; // the card that opened the dialog, focused again on close

  function setting(label, value, className) {
    if (value === undefined || value === null || value === "") return [];
    return [h("dt", { text: label }), h("dd", { class: className, text: String(value) })];
  }

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

  copyButton.addEventListener("click", async () => {
    const text = refText.textContent;
    try {
      await navigator.clipboard.writeText(text);
      copyNote.textContent = "Copied";
    } catch {
      // No clipboard API (plain http on another host) or no permission: select the text instead.
      const range = document.createRange();
      range.selectNodeContents(refText);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      const copied = document.execCommand && document.execCommand("copy");
      copyNote.textContent = copied ? "Copied" : "Selected: press Ctrl+C (⌘C) to copy";
      refText.focus();
    }
    setTimeout(() => (copyNote.textContent = ""), COPIED_NOTE_MS);
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

  return { open, close };
}
