// The queue and history of the caller's jobs from every client (the CLI, the API, other tabs), not
// only this tab's: `GET /api/images/jobs` on load, then every few seconds while the page is visible.
// A queued or running job that no panel shows yet gets one (the composer's: live progress from its
// event stream, its images into the grid when done); a finished one a row under "Recent jobs", with
// its state, its error and, when it failed or was canceled, Retry. A service without the listing
// (404: an older one) shows no history and is not asked again. Above the panels, Pause / Resume holds
// the caller's queued jobs (`POST /api/images/queue/pause|resume`), its state asked for at each look.

import { api, isTerminal } from "./api.js";
import { jobTitle, RETRYABLE_STATUSES } from "./composer.js";
import { clearError, formatAge, formatSize, h, parseTime, showError } from "./dom.js";
import { STATUS_LABELS } from "./job-view.js";

/** Jobs asked for at each look: the newest; a look is one small GET. */
const HISTORY_LIMIT = 10;

/** How often the listing is asked for while the page is visible. */
const POLL_MS = 4_000;

/** Rows kept; older ones leave as newer ones come. */
const MAX_ROWS = 30;

/** Whether "Recent jobs" was left open, so it opens so again. */
const OPEN_STORAGE = "kitty.historyOpen";

/** Answers that mean the service has no job listing: stop asking, show nothing. */
const UNSUPPORTED_STATUSES = new Set([404, 405, 501]);

function storedOpen() {
  try {
    return localStorage.getItem(OPEN_STORAGE) === "true";
  } catch {
    return false;
  }
}

function storeOpen(open) {
  try {
    localStorage.setItem(OPEN_STORAGE, String(open));
  } catch {
    // Storage disabled: the choice lasts for this page only.
  }
}

function imageKeys(view) {
  return ((view.result && view.result.images) || []).map((image) => image.key);
}

/** When a job happened, for ordering and its age: enqueued, else ended; unknown is now. */
function jobTime(view) {
  const when = parseTime(view.enqueued_at || view.ended_at || "");
  return Number.isNaN(when.getTime()) ? new Date() : when;
}

/**
 * The caller's queue: one button that pauses it or resumes it, and a note that says which it is (and
 * an admin's pause of the whole queue). Hidden while the service has no such routes (an older one).
 */
function createQueueBar({ bar, routes, onChange }) {
  const button = bar.querySelector("#queue-pause");
  const note = bar.querySelector("#queue-note");
  const errorBox = bar.querySelector(".error-box");
  let state = null; // the service's QueueView, once known
  let resumed = 0; // what the last Resume put back in line: said until the next pause

  function show(view) {
    state = view;
    if (view.paused) resumed = 0;
    else if (view.resumed !== undefined && view.resumed !== null) resumed = view.resumed;
    bar.hidden = false;
    bar.dataset.paused = String(view.paused);
    button.textContent = view.paused ? "Resume my queue" : "Pause my queue";
    button.title = view.paused
      ? "Your queued jobs start again, in their places and their order"
      : "Your queued jobs wait after the running one; they stay listed and can be canceled";
    const parts = [];
    if (view.paused) parts.push(`Paused: your queued jobs wait${view.held ? ` (${view.held} set aside)` : ""}.`);
    if (view.everyone_paused) parts.push("An admin paused the whole queue: no new job starts.");
    if (resumed) parts.push(`${resumed} job${resumed === 1 ? "" : "s"} back in line.`);
    note.textContent = parts.join(" ");
  }

  async function look() {
    try {
      show(await api(routes.queue));
    } catch (error) {
      if (UNSUPPORTED_STATUSES.has(error.status)) bar.hidden = true;
    }
  }

  button.addEventListener("click", async () => {
    if (!state) return;
    button.disabled = true;
    clearError(errorBox);
    try {
      show(await api(state.paused ? routes.queueResume : routes.queuePause, { method: "POST" }));
      onChange();
    } catch (error) {
      showError(errorBox, error);
    } finally {
      button.disabled = false;
    }
  });

  return { look };
}

export function createHistory({ section, list, count, routes, composer, onImagesReady, queueBar = null }) {
  const rows = new Map(); // job id -> {row, time, age}: the finished jobs listed, newest first
  const seen = new Set(); // every job id met, so one that left (a dismissed panel, an old row) stays gone
  let timer = null;
  let inFlight = null;
  let paused = true; // until start(); again after a 401 or 403, until a key is saved
  let unsupported = false;
  let initial = true; // the first look: finished jobs are old news, the grid already has their images
  // issue 20 part 1: Pause / Resume of the caller's queue, its state asked for at each look
  const queue = queueBar && routes.queue ? createQueueBar({ bar: queueBar, routes, onChange: () => poll() }) : null;

  section.open = storedOpen();
  section.addEventListener("toggle", () => storeOpen(section.open));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") poll();
  });

  /** Start (again, after an API key was saved) looking; resolves once the first look is shown. */
  function start() {
    paused = false;
    initial = true;
    return poll();
  }

  function poll() {
    clearTimeout(timer);
    timer = null;
    if (paused || unsupported || document.visibilityState === "hidden") return Promise.resolve();
    if (!inFlight) inFlight = look();
    return inFlight;
  }

  async function look() {
    try {
      const listing = api(`${routes.jobs}?${new URLSearchParams({ limit: String(HISTORY_LIMIT) })}`);
      const [page] = await Promise.all([listing, queue ? queue.look() : null]);
      absorb((page && page.jobs) || []);
      initial = false;
    } catch (error) {
      if (UNSUPPORTED_STATUSES.has(error.status)) {
        unsupported = true;
        section.hidden = true;
      } else if (error.status === 401 || error.status === 403) {
        paused = true; // the page asks for a key (api.js); start() resumes once one is saved
      }
      // Anything else (a restarting gateway, a busy Redis): quietly try again at the next look.
    } finally {
      inFlight = null;
      if (!paused && !unsupported) timer = setTimeout(poll, POLL_MS);
    }
  }

  /** Show the jobs of a listing that nothing shows yet. */
  function absorb(views) {
    const ready = [];
    for (const view of [...views].reverse()) { // oldest first: each new panel goes on top
      const id = view.job_id;
      if (!id || seen.has(id) || rows.has(id)) continue;
      seen.add(id);
      if (composer.isTracking(id)) continue; // this tab's: its panel lists it here when it leaves
      if (!isTerminal(view.status)) {
        composer.track(view);
      } else {
        add(view);
        // Done between two looks (a quick job from the CLI): its images go to the grid all the same.
        if (!initial && view.status === "done") ready.push(...imageKeys(view));
      }
    }
    if (ready.length) onImagesReady(ready);
    for (const entry of rows.values()) entry.age.textContent = formatAge(entry.time);
  }

  /** A finished job's row (`retriedAs`: the job its retry queued). */
  function add(view, { retriedAs } = {}) {
    const id = view.job_id;
    seen.add(id);
    if (!isTerminal(view.status)) {
      seen.delete(id); // a panel that lost its job's stream: the next look shows where it stands
      return;
    }
    if (rows.has(id)) return;
    const request = view.request || {};
    const time = jobTime(view);
    const titleId = `history-title-${id}`;
    const age = h("time", { datetime: time.toISOString(), text: formatAge(time) });
    const images = imageKeys(view).length;
    const model = request.model || view.model;
    const meta = [
      model ? h("span", { class: "meta-model", text: model }) : null,
      request.width ? h("span", { text: formatSize(request.width, request.height) }) : null,
      view.status === "done" ? h("span", { text: `${images} image${images === 1 ? "" : "s"}` }) : null,
      age,
    ];
    const note = h("span", { class: "history-note", role: "status" });
    const retryError = h("div", { class: "error-box", role: "alert", hidden: true });
    const retry = RETRYABLE_STATUSES.has(view.status)
      ? h("button", { type: "button", class: "link", text: "Retry", "aria-describedby": titleId })
      : null;
    const jobError = h("div", { class: "error-box", hidden: true });
    if (view.error && view.status !== "canceled") showError(jobError, view.error);
    const row = h(
      "li",
      { class: "history-item", dataset: { jobId: id, status: view.status } },
      h(
        "div",
        { class: "job-head" },
        h("span", { class: "job-title", id: titleId, title: request.prompt || "", text: jobTitle(request, id) }),
        h("span", { class: "job-state", text: STATUS_LABELS[view.status] || view.status }),
      ),
      h("div", { class: "job-foot" }, h("span", { class: "history-meta" }, meta), note, retry),
      jobError,
      retryError,
    );
    if (retriedAs) note.textContent = `Retried as ${retriedAs}`;
    if (retry) {
      retry.addEventListener("click", async () => {
        retry.disabled = true;
        clearError(retryError);
        try {
          const accepted = await composer.retryJob(id, request);
          note.textContent = `Retried as ${accepted.job_id}`;
        } catch (error) {
          showError(retryError, error);
        } finally {
          retry.disabled = false; // a retried job may be retried again: it stays failed
        }
      });
    }
    insert({ row, time, age }, id);
  }

  /** Put a row in its place, newest first; the oldest leave beyond MAX_ROWS. */
  function insert(entry, id) {
    let next = null; // the newest of the older rows: the new one goes just before it
    for (const other of rows.values()) if (other.time < entry.time && (!next || other.time > next.time)) next = other;
    list.insertBefore(entry.row, next ? next.row : null);
    rows.set(id, entry);
    while (rows.size > MAX_ROWS) {
      let oldest = null;
      for (const [otherId, other] of rows) if (!oldest || other.time < oldest[1].time) oldest = [otherId, other];
      oldest[1].row.remove();
      rows.delete(oldest[0]);
    }
    summarize();
  }

  function summarize() {
    const statuses = [...rows.values()].map((entry) => entry.row.dataset.status);
    const failed = statuses.filter((status) => status === "error").length;
    const canceled = statuses.filter((status) => status === "canceled").length;
    const total = `${rows.size} job${rows.size === 1 ? "" : "s"}`;
    const parts = [total, failed ? `${failed} failed` : "", canceled ? `${canceled} canceled` : ""];
    count.textContent = parts.filter(Boolean).join(" · ");
    count.classList.toggle("is-error", failed > 0);
    section.hidden = unsupported || rows.size === 0;
  }

  return { start, add, poll };
}
