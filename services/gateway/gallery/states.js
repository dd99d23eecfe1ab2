// The page's states that explain themselves (issue 20 part 6): service down, no models, no worker for
// an engine, quota used up, key missing. Each is a titled panel with the API's message and its
// remediation steps as a list, shown where the grid or the form would otherwise say nothing.

import { h } from "./dom.js";

/** Codes of a service that is not answering, whatever part of it: the panel offers Retry. */
const DOWN_TITLES = {
  UPSTREAM_UNAVAILABLE: "The image service is not answering",
  UPSTREAM_TIMEOUT: "The image service is not answering",
  NETWORK_ERROR: "The gateway is not answering",
  QUEUE_UNAVAILABLE: "The job queue is not answering",
  STORAGE_UNAVAILABLE: "Image storage is not answering",
};

/** Statuses that mean "nobody answered" (0: no answer at all). */
const DOWN_STATUSES = new Set([0, 502, 503, 504]);

/** Said when neither the models listing nor the engines matrix gives words of their own. */
export const ADD_MODEL_STEPS = [
  "Register the small demo models: `kitty-images models tiny`.",
  "Or fetch a real one: `kitty-images models pull sdxl_base` (see `kitty-images models list`).",
];

/**
 * The state a failed request puts the page in — `{name, title}` with name "key", "quota" or "down" —
 * or null for a failure of that request alone (a refused field, an unknown job).
 */
export function stateOfError(error) {
  if (!error) return null;
  if (error.status === 401 || error.code === "UNAUTHORIZED") {
    const refused = /not valid/i.test(error.message || "");
    return { name: "key", title: refused ? "This API key was refused" : "This gateway needs an API key" };
  }
  if (error.code === "RATE_LIMITED" || error.status === 429) {
    return { name: "quota", title: "Your image quota is used up for now" };
  }
  if (DOWN_TITLES[error.code]) return { name: "down", title: DOWN_TITLES[error.code] };
  // A proxy in front that answered without the wire's shape (ApiError names it HTTP_502 and so on).
  if (DOWN_STATUSES.has(error.status) && String(error.code).startsWith("HTTP_")) {
    return { name: "down", title: DOWN_TITLES.UPSTREAM_UNAVAILABLE };
  }
  return null;
}

/** A titled panel: the code when there is one, the message, the steps as a list, then any actions. */
export function statePanel({ name, title, code = "", message = "", remediation = [], actions = [] }) {
  return h(
    "section",
    { class: "state-panel", dataset: { state: name }, role: "alert", "aria-label": title },
    h("h3", { class: "state-title", text: title }),
    message || code
      ? h(
          "p",
          { class: "error-title" },
          code ? h("code", { class: "error-code", text: code }) : null,
          code && message ? " " : null,
          message ? h("span", { class: "error-message", text: message }) : null,
        )
      : null,
    remediation.length ? h("ul", { class: "remediation" }, remediation.map((step) => h("li", { text: step }))) : null,
    actions.length ? h("p", { class: "state-actions" }, actions) : null,
  );
}

/** The panel of a failed request's state, from its ApiError; null when it is no page state. */
export function errorPanel(error, { actions = [] } = {}) {
  const state = stateOfError(error);
  if (!state) return null;
  return statePanel({ ...state, code: error.code, message: error.message, remediation: error.remediation, actions });
}

/**
 * Show `error` in `box` as its state's panel when it is one (quota, key, down); returns whether it
 * did, so the caller shows any other error its usual way.
 */
export function showStateIn(box, error) {
  const panel = errorPanel(error);
  if (!panel) return false;
  panel.removeAttribute("role"); // the box is the alert already
  box.replaceChildren(panel);
  box.hidden = false;
  return true;
}

/** The panels of one place on the page (`container`), one per state name, newest first. */
export function createStates(container) {
  const panels = new Map();

  function show(name, spec) {
    const panel = statePanel({ name, ...spec });
    const old = panels.get(name);
    if (old) old.replaceWith(panel);
    else container.prepend(panel);
    panels.set(name, panel);
    container.hidden = false;
    return panel;
  }

  function hide(name) {
    const panel = panels.get(name);
    if (!panel) return;
    panel.remove();
    panels.delete(name);
    container.hidden = panels.size === 0;
  }

  return { show, hide, has: (name) => panels.has(name) };
}
