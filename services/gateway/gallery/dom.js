// DOM helpers. Elements are built from properties and text nodes, never from HTML strings, so a
// prompt or any other text from the API can never turn into markup.

const SAFE_URL = /^(https?:|\/(?!\/)|blob:)/i;

/** `h("button", {class: "primary", onclick: fn}, "Save")`: an element with attributes and children. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if ((name === "src" || name === "href") && !SAFE_URL.test(String(value))) continue;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/** A URL from the API if it is one a page may load (http(s) or same-origin path), else "". */
export function safeUrl(value) {
  return typeof value === "string" && SAFE_URL.test(value) ? value : "";
}

/** The first `limit` characters of `text` on one line, with an ellipsis when cut. */
export function excerpt(text, limit) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length > limit ? `${flat.slice(0, limit - 1).trimEnd()}…` : flat;
}

/** An ISO timestamp as a Date; fractions beyond milliseconds (Python's µs) are dropped first. */
export function parseTime(iso) {
  return new Date(String(iso).replace(/(\.\d{3})\d+/, "$1"));
}

const MINUTE_S = 60;
const HOUR_S = 60 * MINUTE_S;
const DAY_S = 24 * HOUR_S;
const WEEK_S = 7 * DAY_S;

/** "just now", "3 min ago", "2 h ago", "5 d ago", then the date. */
export function formatAge(date, now = new Date()) {
  const seconds = Math.max(0, (now - date) / 1000);
  if (Number.isNaN(seconds)) return "";
  if (seconds < 45) return "just now";
  if (seconds < HOUR_S) return `${Math.max(1, Math.round(seconds / MINUTE_S))} min ago`;
  if (seconds < DAY_S) return `${Math.round(seconds / HOUR_S)} h ago`;
  if (seconds < WEEK_S) return `${Math.round(seconds / DAY_S)} d ago`;
  return date.toLocaleDateString();
}

export function formatSize(width, height) {
  return width && height ? `${width}×${height}` : "";
}

/** Show an ApiError (or any Error) in `box`: its code, message, remediation steps. */
export function showError(box, error) {
  const steps = error.remediation || [];
  box.replaceChildren(
    h(
      "p",
      { class: "error-title" },
      h("code", { class: "error-code", text: error.code || "ERROR" }),
      " ",
      h("span", { class: "error-message", text: error.message }),
    ),
    steps.length ? h("ul", { class: "remediation" }, steps.map((step) => h("li", { text: step }))) : null,
  );
  box.hidden = false;
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}
