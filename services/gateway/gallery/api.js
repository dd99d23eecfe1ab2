// The gallery's one way to the gateway: JSON calls and file uploads that carry the API key when there
// is one, the wire's error shape as an ApiError, and a job watcher (server-sent events, polling as a fallback).

const API_KEY_STORAGE = "kitty.apiKey";
const API_KEY_HEADER = "X-API-Key";

/** How often a job is polled when its event stream cannot be used (no EventSource, a dropped stream). */
const JOB_POLL_MS = 750;

const TERMINAL_STATUSES = new Set(["done", "error", "canceled"]);

export function isTerminal(status) {
  return TERMINAL_STATUSES.has(status);
}

/** An error answer of the API: `{"error": {code, message, remediation, detail}}` and its HTTP status. */
export class ApiError extends Error {
  constructor(status, info) {
    super(info.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = info.code || `HTTP_${status}`;
    this.remediation = Array.isArray(info.remediation) ? info.remediation : [];
    this.detail = info.detail ?? null;
  }
}

export function storedApiKey() {
  try {
    return localStorage.getItem(API_KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled (private mode, policies): behave as without a key
  }
}

export function storeApiKey(value) {
  try {
    if (value) localStorage.setItem(API_KEY_STORAGE, value);
    else localStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // Nothing to do: the key then lives for this page only, through the form field.
  }
}

let unauthorizedListener = () => {};

/** Call `listener(error)` whenever a request answers 401, so the page can ask for a key. */
export function onUnauthorized(listener) {
  unauthorizedListener = listener;
}

/**
 * `fetch` a route of the API; resolve to the parsed JSON answer (null for 204), reject with ApiError.
 * `body` goes as JSON; a `file` (a File or Blob) goes as the raw body with its own Content-Type.
 */
export async function api(path, { method = "GET", body, file } = {}) {
  const headers = { Accept: "application/json" };
  const key = storedApiKey();
  if (key) headers[API_KEY_HEADER] = key;
  // A file of a type the browser does not know is sent as such, for the API to refuse with its reasons.
  if (file) headers["Content-Type"] = file.type || "application/octet-stream";
  else if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: file || (body === undefined ? undefined : JSON.stringify(body)),
    });
  } catch (error) {
    throw new ApiError(0, {
      code: "NETWORK_ERROR",
      message: `The gateway did not answer (${error.message}).`,
      remediation: ["Check that the gateway is running: `make run` starts the whole stack."],
    });
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const info = data && data.error ? data.error : { message: `HTTP ${response.status} ${response.statusText}` };
    const error = new ApiError(response.status, info);
    if (response.status === 401) unauthorizedListener(error);
    throw error;
  }
  return data;
}

/**
 * Store `file` as an input image (`POST /api/images/uploads`, the raw file, not multipart); resolves to
 * `{key, width, height, content_type, size}`, the key to send as `image` or `mask`.
 */
export function upload(path, file) {
  return api(path, { method: "POST", file });
}

/** A key as a URL path: each segment encoded, the slashes kept (routes take `{key:path}`). */
export function keyPath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

/**
 * Follow the job at `path` (its view's route; the event stream is `${path}/events`) until it ends:
 * `onView(view)` for each new view, the last one terminal; `onFailure(error)` when the job cannot be
 * followed (unknown job, refused key). Returns `{close}`.
 *
 * The event stream is the live path. EventSource cannot send headers, so an API key rides in the
 * stream's URL as `?api_key=` (accepted on this route only, never logged); when the stream breaks
 * before the job ends, the job view is polled instead.
 */
export function watchJob(path, { onView, onFailure }) {
  let closed = false;
  let source = null;
  let timer = null;

  function close() {
    closed = true;
    if (source) source.close();
    clearTimeout(timer);
  }

  function deliver(view) {
    if (closed) return;
    onView(view);
    if (isTerminal(view.status)) close();
  }

  async function poll() {
    if (closed) return;
    try {
      deliver(await api(path));
    } catch (error) {
      if (error.status >= 400 && error.status < 500 && error.status !== 429) {
        close();
        onFailure(error);
        return;
      }
      // 5xx or no answer: the gateway may be restarting; keep trying.
    }
    if (!closed) timer = setTimeout(poll, JOB_POLL_MS);
  }

  if (typeof EventSource === "undefined") {
    poll();
  } else {
    const key = storedApiKey();
    source = new EventSource(key ? `${path}/events?api_key=${encodeURIComponent(key)}` : `${path}/events`);
    source.addEventListener("job", (event) => deliver(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (closed) return;
      source.close();
      source = null;
      poll();
    });
  }
  return { close };
}
