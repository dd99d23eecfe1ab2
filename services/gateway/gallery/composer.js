// The generate form and the jobs it starts: models and their defaults from `GET /api/images/models`,
// size presets, submit to `POST /api/images/generate`, live progress for each job until it ends.

import { api, watchJob } from "./api.js";
import { clearError, excerpt, h, showError } from "./dom.js";

/** Size presets offered besides the model's own default size. */
const SIZE_PRESETS = [
  { width: 512, height: 512, shape: "square" },
  { width: 768, height: 768, shape: "square" },
  { width: 1024, height: 1024, shape: "square" },
  { width: 1024, height: 768, shape: "landscape" },
  { width: 768, height: 1024, shape: "portrait" },
];

/** A finished job's panel stays this long, so its end is seen, then leaves. */
const DONE_LINGER_MS = 8_000;

const JOB_TITLE_CHARS = 70;

const STATUS_LABELS = {
  queued: "Queued",
  started: "Rendering",
  done: "Done",
  error: "Failed",
  canceled: "Canceled",
};

/** Form fields sent as numbers when they hold one (anything else goes as typed, for the API to judge). */
const NUMERIC_FIELDS = ["steps", "cfg", "seed"];

function asNumber(text) {
  const trimmed = text.trim();
  return trimmed !== "" && Number.isFinite(Number(trimmed)) ? Number(trimmed) : trimmed;
}

export function createComposer({ form, jobs, routes, onImagesReady, onStatus }) {
  const fields = form.elements;
  const submitButton = form.querySelector("button[type=submit]");
  const errorBox = form.querySelector(".error-box");
  const modelNote = form.querySelector("#model-note");
  const models = new Map();

  function selectedModel() {
    return models.get(fields.model.value) || null;
  }

  function sizeOption(width, height, label) {
    return h("option", { value: `${width}x${height}`, text: label || `${width} × ${height}` });
  }

  /** Size choices for the selected model: its default first (sent as no size), then the presets. */
  function renderSizes(keep) {
    const defaults = (selectedModel() || {}).defaults || {};
    const defaultLabel =
      defaults.width && defaults.height ? `Default · ${defaults.width} × ${defaults.height}` : "Model default";
    fields.size.replaceChildren(
      h("option", { value: "", text: defaultLabel }),
      SIZE_PRESETS.map((p) => sizeOption(p.width, p.height, `${p.width} × ${p.height} · ${p.shape}`)),
    );
    if (keep) chooseSize(keep);
  }

  /** Select "WxH", adding it as a custom choice when no preset has it. */
  function chooseSize(value) {
    if (value && ![...fields.size.options].some((option) => option.value === value)) {
      const [width, height] = value.split("x");
      fields.size.append(sizeOption(width, height));
    }
    fields.size.value = value;
  }

  function applyModelDefaults() {
    const model = selectedModel();
    const defaults = (model && model.defaults) || {};
    fields.steps.placeholder = defaults.steps !== undefined ? String(defaults.steps) : "default";
    fields.cfg.placeholder = defaults.cfg !== undefined ? String(defaults.cfg) : "default";
    renderSizes(fields.size.value);
    modelNote.textContent = model && model.description ? model.description : "";
  }

  async function loadModels() {
    const view = await api(routes.models);
    models.clear();
    for (const model of view.models) models.set(model.name, model);
    const options = view.models.map((model) => h("option", { value: model.name, text: model.name }));
    if (!options.length) {
      options.push(h("option", { value: "", text: "No models registered" }));
      modelNote.textContent = "Register one: kitty-images models tiny (demo) or kitty-images models pull NAME.";
    }
    fields.model.replaceChildren(...options);
    if (view.default && models.has(view.default)) fields.model.value = view.default;
    applyModelDefaults();
  }

  /** The request the form describes; empty fields are left out so the model's defaults apply. */
  function readForm() {
    const request = { prompt: fields.prompt.value, num_images: Number(fields.num_images.value) || 1 };
    if (fields.negative_prompt.value.trim()) request.negative_prompt = fields.negative_prompt.value;
    if (fields.model.value) request.model = fields.model.value;
    if (fields.size.value) {
      const [width, height] = fields.size.value.split("x").map(Number);
      Object.assign(request, { width, height });
    }
    for (const name of NUMERIC_FIELDS) {
      if (fields[name].value.trim() !== "") request[name] = asNumber(fields[name].value);
    }
    return request;
  }

  /** Fill the form from an image's settings (re-run, edit). */
  function prefill(item) {
    fields.prompt.value = item.prompt || "";
    fields.negative_prompt.value = item.negative_prompt || "";
    if (item.model && models.has(item.model)) fields.model.value = item.model;
    applyModelDefaults();
    chooseSize(item.width && item.height ? `${item.width}x${item.height}` : "");
    fields.steps.value = item.steps ?? "";
    fields.cfg.value = item.cfg ?? "";
    fields.seed.value = item.seed ?? "";
    fields.num_images.value = "1";
    clearInvalid();
  }

  function clearInvalid() {
    for (const element of form.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  }

  /** Point at the fields a VALIDATION_ERROR names (its detail lists `{field, message}`). */
  function markInvalid(error) {
    if (!Array.isArray(error.detail)) return;
    for (const problem of error.detail) {
      const name = String(problem.field || "").split(".")[0];
      const target = name === "width" || name === "height" ? fields.size : fields[name];
      if (target && target.setAttribute) target.setAttribute("aria-invalid", "true");
    }
  }

  async function submit(request) {
    clearError(errorBox);
    clearInvalid();
    submitButton.disabled = true;
    try {
      const accepted = await api(routes.generate, { method: "POST", body: request });
      trackJob(accepted.job_id, request);
      onStatus(`Job ${accepted.job_id.slice(0, 8)} queued.`);
    } catch (error) {
      showError(errorBox, error);
      markInvalid(error);
      errorBox.scrollIntoView({ block: "nearest" });
    } finally {
      submitButton.disabled = false;
    }
  }

  function trackJob(jobId, request) {
    const bar = h("progress", { max: request.steps || 1, "aria-label": "Progress" });
    const state = h("span", { class: "job-state", text: STATUS_LABELS.queued });
    const steps = h("span", { class: "job-steps", text: "Waiting for a worker…" });
    const errorBox = h("div", { class: "error-box", role: "alert", hidden: true });
    const cancel = h("button", { type: "button", class: "link", text: "Cancel" });
    const dismiss = h("button", { type: "button", class: "link", text: "Dismiss", hidden: true });
    const panel = h(
      "article",
      { class: "job", dataset: { jobId, status: "queued" }, "aria-label": `Job ${jobId}` },
      h("div", { class: "job-head" }, h("span", { class: "job-title", text: excerpt(request.prompt, JOB_TITLE_CHARS) }), state),
      bar,
      h("div", { class: "job-foot" }, steps, cancel, dismiss),
      errorBox,
    );
    jobs.prepend(panel);

    const watcher = watchJob(routes.job(jobId), {
      onView: (view) => render(view),
      onFailure: (error) => {
        showError(errorBox, error);
        finish("error");
      },
    });

    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        render(await api(`${routes.job(jobId)}/cancel`, { method: "POST" }));
      } catch (error) {
        showError(errorBox, error);
        cancel.disabled = false;
      }
    });
    dismiss.addEventListener("click", () => {
      watcher.close();
      panel.remove();
    });

    function finish(status) {
      panel.dataset.status = status;
      state.textContent = STATUS_LABELS[status] || status;
      cancel.hidden = true;
      dismiss.hidden = false;
    }

    function render(view) {
      panel.dataset.status = view.status;
      state.textContent = STATUS_LABELS[view.status] || view.status;
      const { step = 0, total = 0 } = view.progress || {};
      if (total > 0) {
        bar.max = total;
        bar.value = step;
        steps.textContent = `Step ${step} / ${total}`;
      } else if (view.status === "started") {
        steps.textContent = "Loading the model…";
      }
      if (view.status === "done") {
        const keys = ((view.result && view.result.images) || []).map((image) => image.key);
        bar.value = bar.max;
        steps.textContent = `${total ? `Step ${total} / ${total} · ` : ""}${keys.length} image${keys.length === 1 ? "" : "s"} ready`;
        finish("done");
        onImagesReady(keys);
        setTimeout(() => panel.remove(), DONE_LINGER_MS);
      } else if (view.status === "error" || view.status === "canceled") {
        if (view.error) showError(errorBox, view.error);
        finish(view.status);
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!fields.prompt.value.trim()) {
      showError(errorBox, { code: "PROMPT_REQUIRED", message: "Write a prompt first.", remediation: [] });
      fields.prompt.setAttribute("aria-invalid", "true");
      fields.prompt.focus();
      return;
    }
    submit(readForm());
  });
  fields.model.addEventListener("change", applyModelDefaults);

  return { loadModels, prefill, submit, focus: () => fields.prompt.focus() };
}
