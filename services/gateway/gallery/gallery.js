// /vision: the KITTY image gallery. Plain ES modules served by the gateway, no build step, no CDN.
// This module wires the parts together: the generate form and its job panels (composer.js), the
// jobs of every client (history.js), the grid (grid.js), the image dialog (viewer.js) and the API key
// prompt for gateways that require one.

import { api, keyPath, onUnauthorized, storeApiKey, storedApiKey } from "./api.js";
import { createCompare } from "./compare.js"; // issue 20 part 3: compare two images
import { createComposer } from "./composer.js";
import { h } from "./dom.js";
import { createFind } from "./find.js"; // issue 20 part 3: find bar, favourites, boards
import { createGrid } from "./grid.js";
import { createHistory } from "./history.js";
import { createLayout } from "./layout.js";
import { readSettingsFromFile } from "./pnginfo.js";
import { ADD_MODEL_STEPS, createStates, stateOfError } from "./states.js"; // issue 20 part 6
import { createViewer } from "./viewer.js";

/** Images per page of the grid (the seed's 36); `/vision?page=N` overrides it. */
const DEFAULT_PAGE_SIZE = 36;
const MAX_PAGE_SIZE = 500;

/** The API routes the gallery calls, in one place; the gateway serves the images-service's. */
const ROUTES = {
  models: "/api/images/models",
  engines: "/api/images/engines",
  presets: "/api/images/presets",
  generate: "/api/images/generate",
  rerun: "/api/images/rerun",
  upscale: "/api/images/upscale",
  uploads: "/api/images/uploads",
  jobs: "/api/images/jobs",
  job: (jobId) => `/api/images/jobs/${encodeURIComponent(jobId)}`,
  retry: (jobId) => `/api/images/jobs/${encodeURIComponent(jobId)}/retry`,
  queue: "/api/images/queue", // issue 20 part 1: pause / resume (history.js)
  queuePause: "/api/images/queue/pause",
  queueResume: "/api/images/queue/resume",
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

// --- issue 20 part 6: states that explain themselves (states.js) -----------------------------------------
const pageStates = createStates(document.getElementById("states"));
const queueStates = createStates(document.getElementById("queue-states"));

/** Show a failure that is the page's state (service down, key missing) as its panel; whether it was. */
function showPageState(error) {
  const state = stateOfError(error);
  if (!state || state.name === "quota") return false; // a used-up quota is the form's to show
  const retry = h("button", { type: "button", class: "button small", text: "Retry", onclick: retryService });
  pageStates.show(state.name, {
    title: state.title,
    code: error.code,
    message: error.message,
    remediation: error.remediation,
    actions: state.name === "down" ? [retry] : [],
  });
  return true;
}

function showLoadFailure(error) {
  if (!showPageState(error)) showFailure(error);
}

/** Ask again for what the page lists; a service still down shows its panel again. */
async function retryService() {
  pageStates.hide("down");
  await Promise.all([loadModels(), composer.loadPresets().catch(showLoadFailure), grid.reload()]);
}

/** What to do about an empty models listing, in the service's words where the engines matrix has them. */
async function addModelSteps() {
  let said = [];
  try {
    const matrix = await api(ROUTES.engines);
    said = matrix.engines.map((row) => row.detail || "").filter((detail) => /no models registered/i.test(detail));
  } catch {
    // The matrix is a nicety here: the steps below say the same.
  }
  const steps = said.length ? [...new Set(said), ADD_MODEL_STEPS[1]] : [...ADD_MODEL_STEPS];
  if (storedApiKey()) steps.push("If models are registered, this key's tier may use none of them: ask for another key.");
  return steps;
}

async function loadModels() {
  let view;
  try {
    view = await composer.loadModels();
  } catch (error) {
    showLoadFailure(error);
    return;
  }
  if (view.models.length) {
    pageStates.hide("models");
    return;
  }
  pageStates.show("models", {
    title: "No models are registered yet",
    message: "The service has no model to draw with, so Generate cannot start a job.",
    remediation: await addModelSteps(),
  });
}

/** Queued jobs that wait because no worker serves their engine, by job id: the engine and what to do. */
const jobsWithoutWorker = new Map();

function noteWaitingJob(jobId, view) {
  const wait = view.status === "queued" ? view.waiting : null;
  if (wait && wait.reason === "no_worker") jobsWithoutWorker.set(jobId, wait);
  else jobsWithoutWorker.delete(jobId);
  if (!jobsWithoutWorker.size) {
    queueStates.hide("worker");
    return;
  }
  const waits = [...jobsWithoutWorker.values()];
  const engines = [...new Set(waits.map((w) => w.engine).filter(Boolean))];
  const count = waits.length;
  queueStates.show("worker", {
    title: "No worker is running for this engine",
    message:
      `${count} job${count === 1 ? "" : "s"} for ${engines.map((e) => `'${e}'`).join(", ") || "an engine"}` +
      " will wait in the queue until a worker starts.",
    remediation: [...new Set(waits.flatMap((w) => w.remediation || []))],
  });
}
// --- end issue 20 part 6 --------------------------------------------------------------------------------

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
  onJobView: noteWaitingJob, // issue 20 part 6
});

const jobHistory = createHistory({
  section: document.getElementById("history"),
  list: document.getElementById("history-list"),
  count: document.getElementById("history-count"),
  routes: ROUTES,
  composer,
  onImagesReady: showNewImages,
  queueBar: document.getElementById("queue-bar"), // issue 20 part 1
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
  // issue 20 part 3: the dialog's star and "Add to board", kept by the grid's cards and the find bar
  onFavourite: (item, isFavourite) => grid.star(item.key, isFavourite),
  boardNames: () => find.boardNames(),
  onCreateBoard: (name) => find.makeBoard(name),
  onAddToBoard: (item, name) => find.addToBoard(item.key, name),
});

const grid = createGrid({
  list: document.getElementById("grid"),
  sentinel: document.getElementById("load-more"),
  empty: document.getElementById("empty"),
  routes: ROUTES,
  onOpen: (item, card) => {
    find.setCurrent(item); // issue 20 part 3: the boards menu adds the image opened last
    viewer.open(item, card);
  },
  onError: showLoadFailure, // issue 20 part 6: a service down or a key missing shows its panel
  pageSize: pageSize(),
  onShowJob: (jobId) => find.showJob(jobId), // issue 20 part 3
  compareButton: (item) => compare.button(item), // issue 20 part 3
});

// issue 20 part 3: compare two images: a card's ◧ toggle or the dialog's "Compare with…" (compare.js)
const compare = createCompare({ dialog: document.getElementById("compare"), routes: ROUTES, onStatus: showStatus });
compare.attachViewer(viewer, document.getElementById("viewer-compare"));

// --- issue 20 part 3: the find bar above the grid (find.js) ---------------------------------------------
const find = createFind({
  container: document.getElementById("find"),
  grid,
  onStatus: showStatus,
  onError: showLoadFailure, // issue 20 part 6
});
// --- end issue 20 part 3 --------------------------------------------------------------------------------

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

onUnauthorized((error) => {
  if (keyForm.hidden) showKeyForm();
  showPageState(error); // issue 20 part 6: what the key is for, in the API's words
  showStatus("This gateway needs an API key.", { isError: true });
});

keyToggle.hidden = !storedApiKey();
keyToggle.addEventListener("click", showKeyForm);
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  storeApiKey(keyInput.value.trim());
  keyForm.hidden = true;
  keyToggle.hidden = !storedApiKey();
  pageStates.hide("key");
  start();
});
document.getElementById("api-key-forget").addEventListener("click", () => {
  storeApiKey("");
  keyInput.value = "";
  keyInput.focus();
});

document.getElementById("refresh").addEventListener("click", () => grid.reload());

// --- issue 20: the page's keys, density and phone drawer (layout.js); PNG Info (pnginfo.js) ----------
/** A dropped PNG's settings fill the form; the status line says what was read, or why nothing was. */
async function readDroppedPng(file) {
  try {
    const settings = await readSettingsFromFile(file);
    const skipped = [...composer.fillForm(settings.fields), ...settings.unread];
    const left = skipped.length ? ` Not taken: ${skipped.join(", ")}.` : "";
    layout.openDrawer();
    showStatus(`Read the ${settings.source} settings of ${file.name} into the form.${left}`);
  } catch (error) {
    const steps = (error.remediation || []).join(" ");
    showStatus(`${error.code || "PNG_INFO"}: ${error.message}${steps ? ` ${steps}` : ""}`, { isError: true });
  }
}

const layout = createLayout({
  densityPick: document.getElementById("density"),
  drawer: document.getElementById("composer"),
  drawerToggle: document.getElementById("drawer-toggle"),
  drawerClose: document.getElementById("drawer-close"),
  gallery: document.getElementById("gallery"),
  jobs: document.getElementById("jobs"),
  onFile: readDroppedPng,
});
// --- end issue 20 -------------------------------------------------------------------------------------

async function start() {
  await Promise.all([
    loadModels(), // issue 20 part 6: an empty listing shows how to add a model
    composer.loadPresets().catch(showLoadFailure),
    grid.reload(),
    jobHistory.start(),
    find.loadChoices(), // issue 20 part 3
  ]);
  document.body.dataset.ready = "true"; // for tests and for anyone waiting on the first render
}

start();
