// The generate form and the jobs it starts: models, their defaults and the LoRAs from
// `GET /api/images/models`, presets and quality levels from `GET /api/images/presets`, size choices,
// a starting picture (a file, uploaded on submit, or a gallery image) with its strength and mask,
// the guide (guide.js: control and reference pictures, hires fix), the picked preset's inputs
// (preset-inputs.js), submit to `POST /api/images/generate` (or `/rerun` or `/upscale` for an image of
// the gallery), live progress of each job in a panel (this tab's, and those of other clients that
// history.js finds) with its steps and, for a storyboard, its images (job-view.js), Retry for a failed
// or canceled one (`POST /api/images/jobs/{id}/retry`).

import { api, isTerminal, upload, watchJob } from "./api.js";
import { clearError, excerpt, h, safeUrl, showError } from "./dom.js";
import { createGuide } from "./guide.js";
import {
  createQueuePlace, // issue 20 part 1
  isStoryboard,
  readyText,
  renderSteps,
  renderStoryboardImages,
  showPreview,
  STATUS_LABELS,
  STEP_LABELS,
} from "./job-view.js";
import { createPresetInputs } from "./preset-inputs.js";
import { showStateIn } from "./states.js"; // issue 20 part 6

/** Sizes offered besides the default one (the preset's, else the model's). */
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

/** A queued job's note until its view says what it waits for (an older service never does). */
const WAITING_NOTE = "Waiting for a worker…";

/** What `POST /api/images/jobs/{id}/retry` takes: a failed or canceled job. */
export const RETRYABLE_STATUSES = new Set(["error", "canceled"]);
const INPUT_LABELS = { image: "a starting picture", reference_image: "a reference picture", controls: "a control picture" };

/** A job's title: its prompt, else (a raw workflow, a request redacted away) its short id. */
export function jobTitle(request, jobId) {
  const prompt = request && typeof request.prompt === "string" ? request.prompt.trim() : "";
  return prompt ? excerpt(prompt, JOB_TITLE_CHARS) : `Job ${jobId}`;
}

/** Form fields sent as numbers when they hold one (anything else goes as typed, for the API to judge). */
const NUMERIC_FIELDS = ["steps", "cfg", "seed"];

/** A LoRA's weight field: the range the API takes, and its default weight. */
const LORA_WEIGHT_RANGE = { min: -2, max: 2, step: 0.05, value: 1 };

const NEGATIVE_PLACEHOLDER = "blurry, low quality";
const NEGATIVE_EXCERPT_CHARS = 80;

function asNumber(text) {
  const trimmed = text.trim();
  return trimmed !== "" && Number.isFinite(Number(trimmed)) ? Number(trimmed) : trimmed;
}

/** A request's LoRA: an empty weight is left out, for the API's default. */
function loraRef(name, weight) {
  return weight.trim() === "" ? { name } : { name, weight: asNumber(weight) };
}

/**
 * `onJobGone(view, {retriedAs})` is called when a job's panel leaves (a finished job after a while,
 * a dismissed or retried one) with the job's last view and its request, so the history can list it.
 * `onImagesReady(keys)` may return a promise: a storyboard's panel shows its images once it settles,
 * each as `itemFor(image)` gives it (the grid's item), opened with `onOpenImage(item, button)`.
 * `onJobView(jobId, view)` sees every view a panel shows (the page names a missing worker from it).
 */
export function createComposer({
  form,
  jobs,
  routes,
  onImagesReady,
  onStatus,
  onJobGone = () => {},
  itemFor = (image) => image,
  onOpenImage = () => {},
  onJobView = () => {},
}) {
  const fields = form.elements;
  const submitButton = form.querySelector("button[type=submit]");
  const errorBox = form.querySelector(".error-box");
  const modelNote = form.querySelector("#model-note");
  const presetNote = form.querySelector("#preset-note");
  const loraGroup = form.querySelector("#loras");
  const loraList = form.querySelector("#lora-list");
  const picture = {
    chosen: form.querySelector("#image-chosen"),
    preview: form.querySelector("#image-preview"),
    name: form.querySelector("#image-name"),
    options: form.querySelector("#image-options"),
    strengthValue: form.querySelector("#strength-value"),
    maskClear: form.querySelector("#mask-clear"),
  };
  const models = new Map();
  const presets = new Map();
  let qualityLevels = {}; // quality name -> {steps, cfg}: the same for every preset
  let loraRows = []; // {box, weight}: one per LoRA offered
  let galleryImage = null; // the LatestItem chosen with "Use as input", when no file is
  let previewUrl = ""; // the object URL of the chosen file's preview, revoked when it changes
  const panels = new Map(); // job id -> its panel, while one shows: a job never gets two
  const guide = createGuide({ form, uploadFile });
  const presetInputs = createPresetInputs({ form, isFilled: { image: hasPicture }, uploadFile });

  function selectedModel() {
    return models.get(fields.model.value) || null;
  }

  function selectedPreset() {
    return presets.get(fields.preset.value) || null;
  }

  function hasPicture() {
    return fields.image.files.length > 0 || galleryImage !== null;
  }

  /** The quality level a submit gets: the one chosen, else the preset's own (none without either). */
  function effectiveQuality() {
    const preset = selectedPreset();
    return fields.quality.value || (preset && preset.defaults && preset.defaults.quality) || "";
  }

  function sizeOption(width, height, label) {
    return h("option", { value: `${width}x${height}`, text: label || `${width} × ${height}` });
  }

  /**
   * Size choices: first what the service picks when no size is sent (the starting picture's size,
   * else the preset's, else the model's), then, under a preset, the model's own size, then the usual.
   */
  function renderSizes(keep) {
    const defaults = (selectedModel() || {}).defaults || {};
    const hasModelSize = Boolean(defaults.width && defaults.height);
    const preset = selectedPreset();
    const options = [];
    if (hasPicture()) {
      options.push(h("option", { value: "", text: "Picture's size" }));
      if (hasModelSize) {
        options.push(sizeOption(defaults.width, defaults.height, `Model · ${defaults.width} × ${defaults.height}`));
      }
    } else if (preset) {
      const { width, height } = preset.defaults;
      options.push(h("option", { value: "", text: `Preset · ${width} × ${height}` }));
      if (hasModelSize) {
        options.push(sizeOption(defaults.width, defaults.height, `Model · ${defaults.width} × ${defaults.height}`));
      }
    } else {
      const label = hasModelSize ? `Default · ${defaults.width} × ${defaults.height}` : "Model default";
      options.push(h("option", { value: "", text: label }));
    }
    const taken = new Set(options.map((option) => option.value));
    for (const p of SIZE_PRESETS) {
      if (!taken.has(`${p.width}x${p.height}`)) options.push(sizeOption(p.width, p.height, `${p.width} × ${p.height} · ${p.shape}`));
    }
    fields.size.replaceChildren(...options);
    if (keep) chooseSize(keep);
  }

  /** Quality choices, each with its steps and cfg once the levels are known. */
  function renderQualities() {
    const preset = selectedPreset();
    const keep = fields.quality.value;
    const presetQuality = preset && preset.defaults ? preset.defaults.quality : "";
    const options = [h("option", { value: "", text: presetQuality ? `Preset · ${presetQuality}` : "Model default" })];
    for (const [name, level] of Object.entries(qualityLevels)) {
      const label = `${name[0].toUpperCase()}${name.slice(1)} · ${level.steps} steps`; // cfg: the CFG field's hint
      options.push(h("option", { value: name, text: label }));
    }
    fields.quality.replaceChildren(...options);
    fields.quality.value = [...fields.quality.options].some((option) => option.value === keep) ? keep : "";
  }

  /** Select "WxH", adding it as a custom choice when no preset has it. */
  function chooseSize(value) {
    if (value && ![...fields.size.options].some((option) => option.value === value)) {
      const [width, height] = value.split("x");
      fields.size.append(sizeOption(width, height));
    }
    fields.size.value = value;
  }

  /** Placeholders and notes for what an empty field gets: quality level > preset > model default. */
  function applyDefaults() {
    const model = selectedModel();
    const preset = selectedPreset();
    const defaults = (model && model.defaults) || {};
    const level = qualityLevels[effectiveQuality()] || {};
    const steps = level.steps ?? defaults.steps;
    const cfg = level.cfg ?? defaults.cfg;
    fields.steps.placeholder = steps !== undefined ? String(steps) : "default";
    fields.cfg.placeholder = cfg !== undefined ? String(cfg) : "default";
    fields.negative_prompt.placeholder = preset
      ? `Preset: ${excerpt(preset.negative_prompt, NEGATIVE_EXCERPT_CHARS)}`
      : NEGATIVE_PLACEHOLDER;
    renderSizes(fields.size.value);
    modelNote.textContent = model ? modelNoteText(model) : "";
    presetNote.textContent = preset ? presetSummary(preset) : "";
  }

  /** The model's description and, beside it, its license (from models.yaml; "license not recorded"
   * for one registered without `kitty-images models add`, so its absence is visible too). */
  function modelNoteText(model) {
    const license = model.license ? `License: ${model.license}` : "License not recorded";
    return [model.description, license].filter(Boolean).join(" · ");
  }

  /** A preset's goal, what it needs and what runs after the render, in one line. */
  function presetSummary(preset) {
    const parts = [preset.description];
    const needs = Object.entries(preset.inputs || {})
      .filter(([name, input]) => input.required && name !== "prompt")
      .map(([name]) => INPUT_LABELS[name] || name);
    if (preset.requires_consent) needs.push("consent");
    if (needs.length) parts.push(`Needs: ${needs.join(", ")}.`);
    const after = (preset.steps || []).map((step) => STEP_LABELS[step.kind] || step.kind);
    if (after.length) parts.push(`Then: ${after.join(" → ")}.`);
    return parts.join(" ");
  }

  /**
   * A newly picked preset brings its size, quality and inputs: the choices made for the last one are
   * reset, its input fields emptied.
   */
  function applyPreset() {
    fields.size.value = "";
    fields.quality.value = "";
    renderQualities();
    applyDefaults();
    presetInputs.show(selectedPreset());
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
    renderLoras(view.loras || []);
    applyDefaults();
    return view;
  }

  /** A checkbox and a weight per LoRA; the group stays hidden when none is registered. */
  function renderLoras(loras) {
    const rows = loras.map((lora, index) => {
      const id = `lora-${index}`;
      const box = h("input", { type: "checkbox", id, value: lora.name, "aria-describedby": `${id}-note` });
      const weight = h("input", {
        type: "number",
        id: `${id}-weight`,
        inputmode: "decimal",
        ...LORA_WEIGHT_RANGE,
        disabled: true,
        "aria-label": `Weight of ${lora.name}`,
      });
      box.addEventListener("change", () => (weight.disabled = !box.checked));
      const note = [lora.base, lora.description].filter(Boolean).join(" · ");
      const row = h(
        "div",
        { class: "lora" },
        box,
        h("label", { for: id, class: "lora-name", text: lora.name }),
        h("label", { for: weight.id, class: "lora-weight", text: "Weight" }),
        weight,
        h("p", { id: `${id}-note`, class: "hint lora-note", text: note }),
      );
      return { row, box, weight };
    });
    loraRows = rows;
    loraList.replaceChildren(...rows.map(({ row }) => row));
    loraGroup.hidden = rows.length === 0;
  }

  async function loadPresets() {
    const view = await api(routes.presets);
    presets.clear();
    for (const preset of view.presets) presets.set(preset.name, preset);
    qualityLevels = view.presets.length ? view.presets[0].qualities : {};
    const keep = fields.preset.value;
    fields.preset.replaceChildren(
      h("option", { value: "", text: "None" }),
      ...view.presets.map((preset) => h("option", { value: preset.name, text: preset.title })),
    );
    fields.preset.value = presets.has(keep) ? keep : "";
    renderQualities();
    applyDefaults();
    presetInputs.show(selectedPreset());
  }

  /** The request the form describes; empty fields are left out so the model's defaults apply. */
  function readForm() {
    const request = { prompt: fields.prompt.value, num_images: Number(fields.num_images.value) || 1 };
    if (fields.negative_prompt.value.trim()) request.negative_prompt = fields.negative_prompt.value;
    if (fields.model.value) request.model = fields.model.value;
    if (fields.preset.value) request.preset = fields.preset.value;
    if (fields.quality.value) request.quality = fields.quality.value;
    if (fields.size.value) {
      const [width, height] = fields.size.value.split("x").map(Number);
      Object.assign(request, { width, height });
    }
    for (const name of NUMERIC_FIELDS) {
      if (fields[name].value.trim() !== "") request[name] = asNumber(fields[name].value);
    }
    const loras = loraRows.filter(({ box }) => box.checked).map(({ box, weight }) => loraRef(box.value, weight.value));
    if (loras.length) request.loras = loras;
    return request;
  }

  /**
   * `request` with the starting picture, its strength and mask: a chosen file is uploaded first and
   * its key sent, a gallery image is sent by its own key. Without a picture, none of these is sent.
   */
  async function withPicture(request) {
    if (!hasPicture()) return request;
    const image = galleryImage ? galleryImage.key : await uploadFile(fields.image);
    const mask = fields.mask.files.length ? await uploadFile(fields.mask) : null;
    return { ...request, image, ...(mask && { mask }), strength: Number(fields.strength.value) };
  }

  /** Upload `file` (the one chosen in `input`); its key. A refusal points at the input, then goes on up. */
  async function uploadFile(input, file = input.files[0]) {
    onStatus(`Uploading ${file.name}…`);
    try {
      return (await upload(routes.uploads, file)).key;
    } catch (error) {
      input.setAttribute("aria-invalid", "true");
      throw error;
    }
  }

  /** Show the starting picture (a file's name, or the gallery image), or hide its controls. */
  function renderPicture() {
    const file = fields.image.files[0];
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = file ? URL.createObjectURL(file) : "";
    const thumb = file ? previewUrl : galleryImage ? safeUrl(galleryImage.thumb_url) : "";
    if (thumb) picture.preview.src = thumb;
    else picture.preview.removeAttribute("src");
    picture.preview.hidden = !thumb;
    const galleryName = galleryImage ? `gallery image ${galleryImage.key.split("/").pop()}` : "";
    picture.name.textContent = file ? file.name : galleryName;
    picture.chosen.hidden = !hasPicture();
    picture.options.hidden = !hasPicture();
    if (!hasPicture()) clearMask();
    renderSizes(fields.size.value);
  }

  function clearMask() {
    fields.mask.value = "";
    fields.mask.removeAttribute("aria-invalid");
    picture.maskClear.hidden = true;
  }

  /**
   * Start from an image of the gallery ("Use as input" in the image dialog), by its key: no upload.
   * `null` clears the starting picture, whichever it was.
   */
  function useImage(item) {
    fields.image.value = "";
    fields.image.removeAttribute("aria-invalid");
    galleryImage = item;
    renderPicture();
  }

  /**
   * Fill the form from an image's settings (re-run, edit). Its prompt already holds its preset's
   * template and its steps and cfg its quality level, so the preset and quality are left unset.
   */
  function prefill(item) {
    fields.prompt.value = item.prompt || "";
    fields.negative_prompt.value = item.negative_prompt || "";
    if (item.model && models.has(item.model)) fields.model.value = item.model;
    fields.preset.value = "";
    fields.quality.value = "";
    renderQualities();
    applyDefaults();
    presetInputs.show(null);
    chooseSize(item.width && item.height ? `${item.width}x${item.height}` : "");
    fields.steps.value = item.steps ?? "";
    fields.cfg.value = item.cfg ?? "";
    fields.seed.value = item.seed ?? "";
    fields.num_images.value = "1";
    clearInvalid();
  }

  /**
   * Fill the form from settings read elsewhere (PNG Info: a dropped PNG's, see pnginfo.js): request
   * fields as `prefill` takes them, plus `loras` (checked when registered here) and `hires`. Returns
   * what the form could not take (a model or LoRA not registered here, a hires scale not offered).
   */
  function fillForm(settings) {
    prefill(settings);
    const skipped = [];
    if (settings.model && !models.has(settings.model)) skipped.push(`model ${settings.model}`);
    const wanted = new Map((settings.loras || []).map((lora) => [lora.name, lora]));
    for (const { box, weight } of loraRows) {
      const lora = wanted.get(box.value);
      box.checked = Boolean(lora);
      weight.disabled = !lora;
      weight.value = lora && lora.weight !== undefined ? String(lora.weight) : "";
      wanted.delete(box.value);
    }
    skipped.push(...[...wanted.keys()].map((name) => `LoRA ${name}`));
    const scale = settings.hires ? String(settings.hires.scale) : "";
    const isOffered = [...fields.hires_scale.options].some((option) => option.value === scale);
    if (scale && !isOffered) skipped.push(`hires ×${scale}`);
    fields.hires.checked = Boolean(scale && isOffered);
    if (fields.hires.checked) fields.hires_scale.value = scale;
    fields.hires.dispatchEvent(new Event("change")); // the guide shows its summary and scale
    if (settings.scheduler) skipped.push(`sampler ${settings.scheduler} (the form has none: the model's runs)`);
    return skipped;
  }

  function clearInvalid() {
    for (const element of form.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  }

  /**
   * Point at the fields a VALIDATION_ERROR names: its detail lists `{field, message}`, or (a preset's
   * input missing) says `{preset, missing: [field, …]}`.
   */
  function markInvalid(error) {
    if (error.detail && Array.isArray(error.detail.missing)) presetInputs.markInvalid(error.detail.missing);
    if (!Array.isArray(error.detail)) return;
    for (const problem of error.detail) {
      const name = String(problem.field || "").split(".")[0];
      const target = name === "width" || name === "height" ? fields.size : fields[name];
      if (target && target.setAttribute) target.setAttribute("aria-invalid", "true");
    }
  }

  function submit(request) {
    return start(routes.generate, async () => presetInputs.addTo(await guide.addTo(await withPicture(request))));
  }

  /** Render a stored image again from its stored request: its own seed, or a fresh one. */
  function rerun(item, { newSeed = false } = {}) {
    const body = newSeed ? { key: item.key, new_seed: true } : { key: item.key };
    return start(routes.rerun, () => body, { prompt: item.prompt || item.key, steps: item.steps });
  }

  /** Queue a stored image made `scale` (2 or 4) times larger; the new image joins the grid. */
  function upscale(item, scale) {
    const shown = { prompt: `Upscale ×${scale} · ${item.prompt || item.key}` };
    return start(routes.upscale, () => ({ key: item.key, scale }), shown);
  }

  /**
   * POST the body `makeBody()` resolves to (it may upload files first) to `route`, then follow the
   * job it queued in a panel titled from `shown` (a request: the body itself when none is given).
   * A refused upload shows like a refused submit.
   */
  async function start(route, makeBody, shown = null) {
    clearError(errorBox);
    clearInvalid();
    submitButton.disabled = true;
    try {
      const body = await makeBody();
      const accepted = await api(route, { method: "POST", body });
      trackJob(accepted.job_id, shown || body);
      onStatus(`Job ${accepted.job_id} queued.`);
    } catch (error) {
      if (!showStateIn(errorBox, error)) showError(errorBox, error); // a used-up quota, a key: a panel
      markInvalid(error);
      guide.markInvalid(error);
      errorBox.scrollIntoView({ block: "nearest" });
    } finally {
      submitButton.disabled = false;
    }
  }

  /**
   * Queue a failed or canceled job's request again (`POST /api/images/jobs/{id}/retry`) and follow
   * the new job in a panel; resolves to `{job_id, status}`, rejects with the ApiError of a refusal.
   */
  async function retryJob(jobId, request) {
    const accepted = await api(routes.retry(jobId), { method: "POST", body: {} });
    trackJob(accepted.job_id, request);
    onStatus(`Job ${jobId} retried as ${accepted.job_id}.`);
    return accepted;
  }

  /**
   * Follow the job `jobId` in a panel titled from `request` (what the job asked for): its event
   * stream, polling as a fallback. `view`, when known (a job another client queued), shows at once.
   * A job that already has a panel keeps it.
   */
  function trackJob(jobId, request, view = null) {
    if (panels.has(jobId)) return;
    const bar = h("progress", { max: request.steps || 1, "aria-label": "Progress" });
    const state = h("span", { class: "job-state", text: STATUS_LABELS.queued });
    const steps = h("span", { class: "job-steps", text: WAITING_NOTE });
    const stages = h("ol", { class: "job-pipeline", "aria-label": "Steps", hidden: true });
    const images = h("div", { class: "job-images", hidden: true });
    const preview = h("img", { class: "job-preview", alt: "", width: 128, hidden: true });
    const errorBox = h("div", { class: "error-box", role: "alert", hidden: true });
    const cancel = h("button", { type: "button", class: "link", text: "Cancel" });
    const retry = h("button", { type: "button", class: "link", text: "Retry", hidden: true });
    const dismiss = h("button", { type: "button", class: "link", text: "Dismiss", hidden: true });
    // issue 20 part 1: position, worker, why it waits, Move to front (job-view.js)
    const place = createQueuePlace(routes.job(jobId), {
      title: jobTitle(request, jobId),
      onView: (moved) => render(moved),
      onError: (error) => showError(errorBox, error),
    });
    const panel = h(
      "article",
      { class: "job", dataset: { jobId, status: "queued" }, "aria-label": `Job ${jobId}` },
      h("div", { class: "job-head" }, h("span", { class: "job-title", text: jobTitle(request, jobId) }), state),
      bar,
      preview,
      stages,
      images,
      place.info,
      place.waiting,
      h("div", { class: "job-foot" }, steps, h("span", { class: "job-actions" }, place.front, cancel, retry, dismiss)),
      errorBox,
    );
    jobs.prepend(panel);
    panels.set(jobId, panel);
    let last = null; // the newest view shown

    const watcher = watchJob(routes.job(jobId), {
      onView: (next) => render(next),
      onFailure: (error) => {
        showError(errorBox, error);
        finish("error");
      },
    });

    /** The panel leaves; the history lists the job from then on. */
    function leave(detail = {}) {
      if (panels.get(jobId) !== panel) return;
      watcher.close();
      panel.remove();
      panels.delete(jobId);
      if (last) onJobGone({ ...last, request: last.request || request }, detail);
    }

    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        render(await api(`${routes.job(jobId)}/cancel`, { method: "POST" }));
      } catch (error) {
        showError(errorBox, error);
        cancel.disabled = false;
      }
    });
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      try {
        const accepted = await retryJob(jobId, request);
        leave({ retriedAs: accepted.job_id });
      } catch (error) {
        showError(errorBox, error);
        retry.disabled = false;
      }
    });
    dismiss.addEventListener("click", () => leave());

    function finish(status) {
      panel.dataset.status = status;
      state.textContent = STATUS_LABELS[status] || status;
      cancel.hidden = true;
      dismiss.hidden = false;
    }

    function render(next) {
      if (last && isTerminal(last.status)) return; // a late view (a cancel's answer after the stream's end)
      last = next;
      onJobView(jobId, next);
      panel.dataset.status = next.status;
      state.textContent = STATUS_LABELS[next.status] || next.status;
      const { step = 0, total = 0 } = next.progress || {};
      renderSteps(stages, next, { beats: beatsOf(next) });
      place.render(next);
      showPreview(preview, routes.job(jobId), next);
      if (next.status === "queued") {
        // The service's words say what to do about it ("none serves engine …; start one with …").
        steps.textContent = next.waiting_for ? `Waiting for ${next.waiting_for}` : WAITING_NOTE;
      } else if (total > 0) {
        bar.max = total;
        bar.value = step;
        steps.textContent = `Step ${step} / ${total}`;
      } else {
        steps.textContent = next.status === "started" ? "Loading the model…" : "";
      }
      if (next.status === "done") {
        const keys = ((next.result && next.result.images) || []).map((image) => image.key);
        bar.value = bar.max;
        steps.textContent = `${total ? `Step ${total} / ${total} · ` : ""}${readyText(next)}`;
        finish("done");
        const listed = Promise.resolve(onImagesReady(keys));
        if (isStoryboard(next)) {
          // Its shots and sheet are there to pick from: the panel stays until dismissed.
          listed.finally(() => renderStoryboardImages(images, next, { beats: beatsOf(next), itemFor, onOpen: onOpenImage }));
        } else {
          setTimeout(() => leave(), DONE_LINGER_MS);
        }
      } else if (next.status === "error" || next.status === "canceled") {
        if (next.error) showError(errorBox, next.error);
        finish(next.status);
        retry.hidden = !RETRYABLE_STATUSES.has(next.status);
      }
    }

    /** A storyboard's beats: from the view (a listing's), else from the request the panel was made with. */
    function beatsOf(next) {
      const beats = (next.request && next.request.beats) || request.beats;
      return Array.isArray(beats) ? beats : [];
    }

    if (view) render(view);
  }

  /** Name the preset's required inputs left empty, point at them; whether there were any. */
  function refuseMissing() {
    const missing = presetInputs.missing();
    if (!missing.length) return false;
    const named = missing.map(({ label, description }) => (description ? `${label} (${description})` : label));
    showError(errorBox, {
      code: "INPUT_REQUIRED",
      message: `${selectedPreset().title} needs: ${named.join("; ")}.`,
      remediation: [],
    });
    presetInputs.markInvalid(missing.map(({ name }) => name));
    missing[0].element.focus();
    return true;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearError(errorBox);
    clearInvalid();
    if (refuseMissing()) return;
    if (!fields.prompt.value.trim()) {
      showError(errorBox, { code: "PROMPT_REQUIRED", message: "Write a prompt first.", remediation: [] });
      fields.prompt.setAttribute("aria-invalid", "true");
      fields.prompt.focus();
      return;
    }
    submit(readForm());
  });
  // Ctrl+Enter (⌘Enter) generates from any field, as in chat boxes and code editors.
  form.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
    event.preventDefault();
    form.requestSubmit(submitButton);
  });
  fields.model.addEventListener("change", applyDefaults);
  fields.preset.addEventListener("change", applyPreset);
  fields.quality.addEventListener("change", applyDefaults);
  fields.image.addEventListener("change", () => {
    fields.image.removeAttribute("aria-invalid");
    if (fields.image.files.length) galleryImage = null;
    renderPicture();
  });
  form.querySelector("#image-clear").addEventListener("click", () => {
    useImage(null);
    fields.image.focus();
  });
  fields.strength.addEventListener("input", () => {
    picture.strengthValue.value = Number(fields.strength.value).toFixed(2);
  });
  fields.mask.addEventListener("change", () => {
    fields.mask.removeAttribute("aria-invalid");
    picture.maskClear.hidden = fields.mask.files.length === 0;
  });
  picture.maskClear.addEventListener("click", () => {
    clearMask();
    fields.mask.focus();
  });

  return {
    loadModels,
    loadPresets,
    prefill,
    fillForm,
    submit,
    rerun,
    upscale,
    retryJob,
    /** Follow a job this tab did not submit (history.js found it queued or running). */
    track: (view) => trackJob(view.job_id, view.request || {}, view),
    isTracking: (jobId) => panels.has(jobId),
    useImage,
    focus: () => fields.prompt.focus(),
    focusPicture: () => fields.strength.focus(),
  };
}
