// /vision: the KITTY image gallery. Plain ES modules served by the gateway, no build step, no CDN.
// This module wires the parts together: the generate form and its job panels (composer.js), the
// jobs of every client (history.js), the grid (grid.js), the image dialog (viewer.js) and the API key
// prompt for gateways that require one.

import { keyPath, onUnauthorized, storeApiKey, storedApiKey } from "./api.js";
import { createComposer } from "./composer.js";
import { createGrid } from "./grid.js";
import { createHistory } from "./history.js";
import { createViewer } from "./viewer.js";

/** Images per page of the grid (the seed's 36); `/vision?page=N` overrides it. */
const DEFAULT_PAGE_SIZE = 36;
const MAX_PAGE_SIZE = 500;

/** The API routes the gallery calls, in one place; the gateway serves the images-service's. */
const ROUTES = {
  models: "/api/images/models",
  presets: "/api/images/presets",
  generate: "/api/images/generate",
  rerun: "/api/images/rerun",
  upscale: "/api/images/upscale",
  uploads: "/api/images/uploads",
  jobs: "/api/images/jobs",
  job: (jobId) => `/api/images/jobs/${encodeURIComponent(jobId)}`,
  retry: (jobId) => `/api/images/jobs/${encodeURIComponent(jobId)}/retry`,
  latest: "/api/images/latest",
  select: "/api/images/select",
  item: (key) => `/api/images/items/${keyPath(key)}`,
};

/** How long a status line stays before it clears. */
const STATUS_CLEAR_MS = 6_000;

function pageSize() {
  const asked = Number.parseInt(new URLSearchParams(location.search).get("page") || "", 10);
  return Number.isInteger(asked) && asked >= 1 ? Math.min(asked, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
}

const statusLine = document.getElementById("status");
let statusTimer = null;

function showStatus(text, { isError = false } = {}) {
  statusLine.textContent = text;
  statusLine.classList.toggle("is-error", isError);
  clearTimeout(statusTimer);
  if (!isError) statusTimer = setTimeout(() => (statusLine.textContent = ""), STATUS_CLEAR_MS);
}

function showFailure(error) {
  showStatus(`${error.code}: ${error.message}`, { isError: true });
}

let refreshing = Promise.resolve();

/** New images are ready: bring the grid's top up to date, one refresh after the other. */
function showNewImages() {
  refreshing = refreshing.then(async () => {
    try {
      const keys = await grid.refreshTop();
      if (keys.length) showStatus(`${keys.length} new image${keys.length === 1 ? "" : "s"} at the top.`);
    } catch (error) {
      showFailure(error);
    }
  });
  return refreshing;
}

const composer = createComposer({
  form: document.getElementById("generate-form"),
  jobs: document.getElementById("jobs"),
  routes: ROUTES,
  onImagesReady: showNewImages,
  onStatus: showStatus,
  onJobGone: (view, detail) => jobHistory.add(view, detail),
  // A storyboard's panel shows its images as the grid lists them (thumbnail, settings), once listed.
  itemFor: (image) => grid.item(image.key) || image,
  onOpenImage: (item, button) => viewer.open(item, button),
});

const jobHistory = createHistory({
  section: document.getElementById("history"),
  list: document.getElementById("history-list"),
  count: document.getElementById("history-count"),
  routes: ROUTES,
  composer,
  onImagesReady: showNewImages,
});

const viewer = createViewer({
  dialog: document.getElementById("viewer"),
  routes: ROUTES,
  // The service re-runs the stored request itself; the form shows its settings, to tweak.
  onRerun: (item, { newSeed }) => {
    composer.prefill(newSeed ? { ...item, seed: null } : item);
    composer.rerun(item, { newSeed });
  },
  onEdit: (item) => {
    composer.prefill(item);
    composer.focus();
  },
  onUpscale: (item, scale) => composer.upscale(item, scale),
  onUseAsInput: (item) => {
    composer.useImage(item);
    composer.focusPicture();
    showStatus("The form starts from this image: set the strength, write a prompt, Generate.");
  },
  onDeleted: (key) => {
    const next = grid.remove(key);
    if (next) next.focus();
    showStatus("Image deleted.");
  },
  onStatus: showStatus,
});

const grid = createGrid({
  list: document.getElementById("grid"),
  sentinel: document.getElementById("load-more"),
  empty: document.getElementById("empty"),
  routes: ROUTES,
  onOpen: (item, card) => viewer.open(item, card),
  onError: showFailure,
  pageSize: pageSize(),
});

// --- API key: asked for only when the gateway answers 401 ------------------------------------------
const keyForm = document.getElementById("api-key-form");
const keyInput = document.getElementById("api-key");
const keyToggle = document.getElementById("api-key-toggle");

function showKeyForm() {
  keyForm.hidden = false;
  keyToggle.hidden = true;
  keyInput.value = storedApiKey();
  keyInput.focus();
}

onUnauthorized(() => {
  if (keyForm.hidden) showKeyForm();
  showStatus("This gateway needs an API key.", { isError: true });
});

keyToggle.hidden = !storedApiKey();
keyToggle.addEventListener("click", showKeyForm);
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  storeApiKey(keyInput.value.trim());
  keyForm.hidden = true;
  keyToggle.hidden = !storedApiKey();
  start();
});
document.getElementById("api-key-forget").addEventListener("click", () => {
  storeApiKey("");
  keyInput.value = "";
  keyInput.focus();
});

document.getElementById("refresh").addEventListener("click", () => grid.reload());

async function start() {
  await Promise.all([
    composer.loadModels().catch(showFailure),
    composer.loadPresets().catch(showFailure),
    grid.reload(),
    jobHistory.start(),
  ]);
  document.body.dataset.ready = "true"; // for tests and for anyone waiting on the first render
}

start();
