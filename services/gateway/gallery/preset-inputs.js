// The picked preset's inputs (`inputs` of `GET /api/images/presets`) in the form. An input the form
// has its own field for (the prompt, the starting picture, the guide's pictures, consent) is marked
// with the preset's words, and required when the preset says so; one it has no field for gets one in
// "Preset inputs", made from its type and sent under its own name. A submit with a required input
// left empty names it and sends nothing.

import { h } from "./dom.js";

/** Request fields the form has its own field for: that field's id and what the form calls it. */
const OWN_FIELDS = {
  prompt: { id: "prompt", label: "Prompt" },
  negative_prompt: { id: "negative_prompt", label: "Negative prompt" },
  image: { id: "image", label: "Picture" },
  mask: { id: "mask", label: "Mask" },
  controls: { id: "control_image", label: "Control picture" },
  reference_image: { id: "reference_image", label: "Reference picture" },
  consent: { id: "consent", label: "Consent" },
};

/** What a preset asking for consent (`requires_consent`) needs, as one of its inputs. */
const CONSENT_INPUT = { type: "consent", required: true, description: "the person pictured agreed to this use" };

const PICTURE_TYPES = "image/png,image/jpeg,image/webp";

const TEXTS_ROWS = 5;

/** An input's name as a label: `reference_images` → "Reference images". */
function labelOf(name) {
  const words = name.replace(/_/g, " ");
  return `${words[0].toUpperCase()}${words.slice(1)}`;
}

/** A `texts` input's value: its non-empty lines, trimmed. */
function linesOf(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

/** A generated field of `type`, named `name` so a refusal's `detail[].field` finds it. */
function fieldFor(name, type, describedBy) {
  const common = { id: `preset-input-${name}`, name, "aria-describedby": describedBy };
  if (type === "texts") return h("textarea", { ...common, rows: TEXTS_ROWS, placeholder: "One per line" });
  if (type === "number") return h("input", { ...common, type: "number", inputmode: "decimal", step: "any" });
  if (type === "image" || type === "images") {
    return h("input", { ...common, type: "file", accept: PICTURE_TYPES, multiple: type === "images" });
  }
  return h("input", { ...common, type: "text", autocomplete: "off" });
}

/**
 * `isFilled[name]()`, when given, says whether an own field holds a value (the starting picture may be
 * a gallery image, not a file); `uploadFile(input, file)` stores a picture and resolves to its key.
 */
export function createPresetInputs({ form, isFilled = {}, uploadFile }) {
  const fieldset = form.querySelector("#preset-inputs");
  const list = form.querySelector("#preset-input-list");
  let marked = []; // {element, hint, describedBy}: own fields marked for the preset shown
  let generated = []; // {name, type, element}: the "Preset inputs" fields of the preset shown
  let inputs = []; // {name, type, required, description, label, element}: every input of the preset shown

  function unmark() {
    for (const { element, hint, describedBy } of marked) {
      hint.remove();
      element.removeAttribute("aria-required");
      element.removeAttribute("required");
      if (describedBy) element.setAttribute("aria-describedby", describedBy);
      else element.removeAttribute("aria-describedby");
    }
    marked = [];
  }

  /** Tell an own field what the preset wants of it; a required one inside the closed guide opens it. */
  function mark(element, preset, input) {
    const what = input.required ? `Required by ${preset.title}` : `${preset.title} uses it`;
    const hint = h("p", {
      class: "hint preset-hint",
      id: `${element.id}-preset-hint`,
      text: input.description ? `${what}: ${input.description}.` : `${what}.`,
    });
    const describedBy = element.getAttribute("aria-describedby") || "";
    (element.closest(".field, .check") || element.parentElement).append(hint);
    element.setAttribute("aria-describedby", [describedBy, hint.id].filter(Boolean).join(" "));
    if (input.required) {
      element.setAttribute("aria-required", "true");
      element.setAttribute("required", "");
      const section = element.closest("details");
      if (section) section.open = true;
    }
    marked.push({ element, hint, describedBy });
  }

  function generate(name, input) {
    const hintId = `preset-input-${name}-note`;
    const element = fieldFor(name, input.type, input.description || input.type === "texts" ? hintId : null);
    if (input.required) {
      element.setAttribute("aria-required", "true");
      element.setAttribute("required", ""); // the form is novalidate: this only says so
    }
    element.addEventListener(element.type === "file" ? "change" : "input", () => element.removeAttribute("aria-invalid"));
    const note = [input.description, input.type === "texts" ? "One per line." : ""].filter(Boolean).join(" · ");
    list.append(
      h(
        "div",
        { class: "field" },
        h(
          "label",
          { for: element.id },
          labelOf(name),
          input.required ? null : " ",
          input.required ? null : h("span", { class: "optional", text: "optional" }),
        ),
        element,
        note ? h("p", { id: hintId, class: "hint", text: note }) : null,
      ),
    );
    generated.push({ name, type: input.type, element });
    return element;
  }

  /** Show `preset`'s inputs (none for null); the last preset's fields, values and marks go. */
  function show(preset) {
    unmark();
    list.replaceChildren();
    generated = [];
    inputs = [];
    if (preset) {
      const wanted = { ...(preset.inputs || {}), ...(preset.requires_consent ? { consent: CONSENT_INPUT } : {}) };
      for (const [name, input] of Object.entries(wanted)) {
        const own = OWN_FIELDS[name] && form.querySelector(`#${OWN_FIELDS[name].id}`);
        if (own) mark(own, preset, input);
        const element = own || generate(name, input);
        inputs.push({ ...input, name, element, label: own ? OWN_FIELDS[name].label : labelOf(name) });
      }
    }
    fieldset.hidden = generated.length === 0;
  }

  function hasValue({ name, element }) {
    if (isFilled[name]) return isFilled[name]();
    if (element.type === "file") return element.files.length > 0;
    if (element.type === "checkbox") return element.checked;
    return element.value.trim() !== "";
  }

  /** The required inputs left empty: `{name, label, description, element}` each, in the preset's order. */
  function missing() {
    return inputs.filter((input) => input.required && !hasValue(input));
  }

  /** Point at inputs by request field (a refusal's `missing`), opening the guide for its own fields. */
  function markInvalid(names) {
    for (const input of inputs.filter(({ name }) => names.includes(name))) {
      input.element.setAttribute("aria-invalid", "true");
      const section = input.element.closest("details");
      if (section) section.open = true;
    }
  }

  /** `request` with the generated fields' values: pictures uploaded first, their keys sent. */
  async function addTo(request) {
    const added = { ...request };
    for (const { name, type, element } of generated) {
      if (type === "texts") {
        const lines = linesOf(element.value);
        if (lines.length) added[name] = lines;
      } else if (type === "number") {
        const text = element.value.trim();
        if (text) added[name] = Number.isFinite(Number(text)) ? Number(text) : text; // else the API says why
      } else if (type === "image") {
        if (element.files.length) added[name] = await uploadFile(element);
      } else if (type === "images") {
        const keys = [];
        for (const file of element.files) keys.push(await uploadFile(element, file));
        if (keys.length) added[name] = keys;
      } else if (element.value.trim()) {
        added[name] = element.value.trim();
      }
    }
    return added;
  }

  return { show, missing, markInvalid, addTo };
}
