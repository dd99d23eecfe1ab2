// A job's view in words, for its panel and its history row: the status labels, a pipeline's steps
// (one line each: render → post-processing) or a storyboard's (one line a shot, its render and the
// steps after it, then the contact sheet), a finished storyboard's images, the sheet first, and a
// queued job's place (its position, the worker that took it, why it waits, Move to front).

import { api, isTerminal, storedApiKey } from "./api.js";
import { excerpt, h, safeUrl } from "./dom.js";

export const STATUS_LABELS = {
  queued: "Queued",
  started: "Rendering",
  done: "Done",
  error: "Failed",
  canceled: "Canceled",
};

export const STEP_LABELS = {
  generate: "render",
  shot: "render",
  refine: "refine",
  upscale: "upscale",
  postprocess: "post-processing",
  contact_sheet: "contact sheet",
};

/** Characters of a beat a shot's line shows; the whole beat is its tooltip. */
const BEAT_EXCERPT_CHARS = 48;

/** A storyboard's view: its steps are shots (and what follows each), then a contact sheet. */
export function isStoryboard(view) {
  return Array.isArray(view.steps) && view.steps.some((step) => step.kind === "shot");
}

function progressText(step) {
  const { step: done = 0, total = 0 } = step.progress || {};
  return total ? ` ${done}/${total}` : "";
}

/** One status for a chain of steps: a failure shows, else done once all are, else where it stands. */
function chainStatus(steps) {
  for (const ended of ["error", "canceled"]) if (steps.some((step) => step.status === ended)) return ended;
  if (steps.every((step) => step.status === "done")) return "done";
  return steps.some((step) => step.status !== "queued") ? "started" : "queued";
}

/**
 * A storyboard's steps by shot: each shot with the steps that read its image (`after` names one step
 * of its chain), in order; what reads several (the contact sheet) or none stands alone.
 */
function groupByShot(steps) {
  const chainOf = new Map(); // step index -> the chain of its shot
  const lines = []; // {shot: number, steps} for a shot's chain, {steps: [step]} for one standing alone
  for (const step of steps) {
    const after = step.after || [];
    const chain = step.kind === "shot" ? null : after.length === 1 ? chainOf.get(after[0]) : undefined;
    if (chain) {
      chain.steps.push(step);
      chainOf.set(step.index, chain);
    } else if (step.kind === "shot") {
      const line = { shot: lines.filter((other) => other.shot).length + 1, steps: [step] };
      lines.push(line);
      chainOf.set(step.index, line);
    } else {
      lines.push({ steps: [step] });
    }
  }
  return lines;
}

function stepLine(step) {
  const label = `${STEP_LABELS[step.kind] || step.kind}: ${STATUS_LABELS[step.status] || step.status}${progressText(step)}`;
  return h("li", { dataset: { status: step.status, kind: step.kind }, text: label });
}

/** A storyboard's line: a name cut to fit (`title`: the whole of it), then where it stands. */
function storyLine(name, state, { title, ...dataset }) {
  return h(
    "li",
    { dataset, title },
    h("span", { class: "story-name", text: name }),
    " ",
    h("span", { class: "story-state", text: state }),
  );
}

/** A shot's line: "Shot 2 · the beat   Rendering 3/8", naming the step under way when it is not the render. */
function shotLine({ shot, steps }, beats) {
  const status = chainStatus(steps);
  const active = steps.find((step) => step.status !== "done") || steps[steps.length - 1];
  const beat = beats[shot - 1] || "";
  const doing = active.kind !== "shot" && status !== "done" ? `${STEP_LABELS[active.kind] || active.kind}: ` : "";
  const name = `Shot ${shot}${beat ? ` · ${excerpt(beat, BEAT_EXCERPT_CHARS)}` : ""}`;
  const state = `${doing}${STATUS_LABELS[status] || status}${progressText(active)}`;
  return storyLine(name, state, { status, kind: "shot", shot: String(shot), title: beat });
}

/** A storyboard's step of its own (the contact sheet): "Contact sheet   Done". */
function sheetLine(step) {
  const label = STEP_LABELS[step.kind] || step.kind;
  const state = `${STATUS_LABELS[step.status] || step.status}${progressText(step)}`;
  return storyLine(`${label[0].toUpperCase()}${label.slice(1)}`, state, { status: step.status, kind: step.kind });
}

/**
 * Fill `list` with the view's steps (hidden for a single job). `beats`: the storyboard's, to name
 * each shot by its beat.
 */
export function renderSteps(list, view, { beats = [] } = {}) {
  const steps = view.steps || [];
  list.hidden = steps.length === 0;
  if (list.hidden) return;
  const storyboard = isStoryboard(view);
  list.classList.toggle("is-storyboard", storyboard);
  list.setAttribute("aria-label", storyboard ? "Shots" : "Steps");
  list.replaceChildren(
    ...(storyboard
      ? groupByShot(steps).map((line) => (line.shot ? shotLine(line, beats) : sheetLine(line.steps[0])))
      : steps.map(stepLine)),
  );
}

/**
 * Show a running job's live preview in `img` when `view.preview_step` is new: fetched with the API
 * key (an <img src> cannot send it) and swapped in as a blob URL, "Preview at step N" its alt text.
 * A failed fetch keeps the last one: the next step brings another.
 */
export async function showPreview(img, jobPath, view) {
  const step = view.preview_step;
  if (step === null || step === undefined || img.dataset.step === String(step)) return;
  img.dataset.step = String(step);
  const key = storedApiKey();
  try {
    const response = await fetch(`${jobPath}/preview`, { headers: key ? { "X-API-Key": key } : {} });
    if (!response.ok || img.dataset.step !== String(step)) return; // gone, or a newer one is coming
    const url = URL.createObjectURL(await response.blob());
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
    img.alt = `Preview at step ${step}`;
    img.hidden = false;
  } catch {
    // No answer this time; the view keeps coming.
  }
}

/** What a finished job made, in words: "3 shots and a contact sheet ready", "2 images ready". */
export function readyText(view) {
  const images = (view.result && view.result.images) || [];
  if (isStoryboard(view)) {
    const shots = images.filter((image) => image.key !== view.result.png_key).length;
    return `${shots} shot${shots === 1 ? "" : "s"} and a contact sheet ready`;
  }
  return `${images.length} image${images.length === 1 ? "" : "s"} ready`;
}

/**
 * Fill `container` with a finished storyboard's images: the contact sheet large, then each shot, every
 * one a button that opens it like a card of the grid. `itemFor(image)` is the image as the gallery
 * lists it (for its thumbnail and settings); `onOpen(item, button)` opens it.
 */
export function renderStoryboardImages(container, view, { beats = [], itemFor, onOpen }) {
  const images = (view.result && view.result.images) || [];
  const sheet = images.find((image) => image.key === view.result.png_key);
  const shots = images.filter((image) => image !== sheet);

  function imageButton(image, label, title, className) {
    const item = itemFor(image);
    const thumb = safeUrl(item.thumb_url);
    const button = h(
      "button",
      { type: "button", class: className, title, dataset: { key: image.key }, "aria-label": label },
      thumb ? h("img", { src: thumb, alt: "", decoding: "async" }) : h("span", { class: "thumb-missing", text: "no preview" }),
      h("span", { class: "job-image-label", text: label }),
    );
    button.addEventListener("click", () => onOpen(item, button));
    return button;
  }

  container.replaceChildren(
    sheet ? imageButton(sheet, "Contact sheet", "Every shot, each under its beat", "job-image is-sheet") : null,
    h(
      "ol",
      { class: "job-shots", "aria-label": "Shots" },
      shots.map((image, index) =>
        h("li", {}, imageButton(image, `Shot ${index + 1}`, beats[index] || "", "job-image")),
      ),
    ),
  );
  container.hidden = images.length === 0;
}

// --- issue 20 part 1: a job's place in the queue -------------------------------------------------------

/** Waits whose reasons a card spells out with what to do (the others: the place line says it all). */
const EXPLAINED_WAITS = new Set(["no_worker", "paused", "queue_paused"]);

/** "2nd in line · paused", "Next in line", "On worker host-1.42": where a job stands, in a few words. */
export function placeText(view) {
  if (view.status === "started" && view.worker) return `On worker ${view.worker}`;
  if (view.status !== "queued") return "";
  const parts = [];
  if (view.position === 1) parts.push("Next in line");
  else if (view.position) parts.push(`#${view.position} in line`);
  if (view.paused) parts.push(view.position ? "paused" : "Paused");
  return parts.join(" · ");
}

/**
 * A job card's place in the queue: `info` (its position or worker), `waiting` (why it waits, with the
 * remediation, when no worker serves its engine or a pause holds it) and `front`, a "Move to front"
 * button (`POST {jobPath}/front`) on a queued job that is not next. `onView(view)` gets the moved
 * job's view; `onError(error)` a refusal. Call `render(view)` with each view the card shows.
 */
export function createQueuePlace(jobPath, { title, onView, onError }) {
  const info = h("span", { class: "job-place", hidden: true });
  const waiting = h("div", { class: "job-waiting", role: "note", hidden: true });
  const front = h("button", {
    type: "button",
    class: "link job-front",
    text: "Move to front",
    title: "Start this job before your other queued jobs",
    "aria-label": `Move to front: ${title}`,
    hidden: true,
  });
  front.addEventListener("click", async () => {
    front.disabled = true;
    try {
      onView(await api(`${jobPath}/front`, { method: "POST" }));
    } catch (error) {
      onError(error);
    } finally {
      front.disabled = false;
    }
  });

  function render(view) {
    const place = placeText(view);
    info.textContent = place;
    info.hidden = !place;
    const wait = view.status === "queued" ? view.waiting : null;
    waiting.hidden = !(wait && EXPLAINED_WAITS.has(wait.reason));
    if (!waiting.hidden) {
      const steps = wait.remediation || [];
      waiting.dataset.reason = wait.reason;
      waiting.replaceChildren(
        h("p", { class: "job-waiting-message", text: `Waiting: ${wait.message}.` }),
        steps.length ? h("ul", { class: "remediation" }, steps.map((step) => h("li", { text: step }))) : null,
      );
    }
    const movable = view.status === "queued" && !view.steps && view.position !== 1;
    // The button just used stays where it is (a no-op now) rather than drop the keyboard's focus.
    front.hidden = isTerminal(view.status) || (!movable && document.activeElement !== front);
  }

  return { info, waiting, front, render };
}
// --- end issue 20 part 1 ------------------------------------------------------------------------------
