// The form's "Guide" section: a control picture (ControlNet) with its type and weight, a reference
// picture (IP-Adapter) with its weight and the consent statement, and the hires fix with its scale.
// The pictures are uploaded on submit like the starting picture; a part left empty sends nothing.

/** Request fields (a VALIDATION_ERROR's `detail[].field`, first segment) → the guide input to point at. */
const INVALID_TARGETS = {
  controls: "control_image",
  reference_image: "reference_image",
  reference_weight: "reference_weight",
  reference_model: "reference_image",
  consent: "consent",
  hires: "hires",
};

/** A refusal that concerns the consent checkbox whatever its detail says. */
const CONSENT_MISSING = "CONSENT_MISSING";

/**
 * `uploadFile(input)` stores the file chosen in `input` and resolves to its key (the composer's own,
 * so a refused upload shows like one of the starting picture).
 */
export function createGuide({ form, uploadFile }) {
  const fields = form.elements;
  const $ = (selector) => form.querySelector(selector);
  const section = $("#guide");
  const summaryNote = $("#guide-on");
  const parts = {
    control: {
      input: fields.control_image,
      chosen: $("#control-chosen"),
      name: $("#control-name"),
      preview: $("#control-preview"),
      options: $("#control-options"),
      clear: $("#control-clear"),
      previewUrl: "", // the object URL of the chosen file's preview, revoked when it changes
    },
    reference: {
      input: fields.reference_image,
      chosen: $("#reference-chosen"),
      name: $("#reference-name"),
      preview: $("#reference-preview"),
      options: $("#reference-options"),
      clear: $("#reference-clear"),
      previewUrl: "",
    },
  };

  function hasFile(part) {
    return part.input.files.length > 0;
  }

  /** What is switched on, shown beside the summary so a closed section still says it. */
  function renderSummary() {
    const on = [];
    if (hasFile(parts.control)) on.push(fields.control_type.selectedOptions[0].textContent.toLowerCase());
    if (hasFile(parts.reference)) on.push("reference");
    if (fields.hires.checked) on.push(`hires ×${fields.hires_scale.value}`);
    summaryNote.textContent = on.length ? on.join(" · ") : "";
  }

  function renderPart(part) {
    const file = part.input.files[0];
    if (part.previewUrl) URL.revokeObjectURL(part.previewUrl);
    part.previewUrl = file ? URL.createObjectURL(file) : "";
    if (part.previewUrl) part.preview.src = part.previewUrl;
    else part.preview.removeAttribute("src");
    part.name.textContent = file ? file.name : "";
    part.chosen.hidden = !file;
    part.options.hidden = !file;
    renderSummary();
  }

  function clearPart(part) {
    part.input.value = "";
    part.input.removeAttribute("aria-invalid");
    renderPart(part);
    part.input.focus();
  }

  /** `request` with the guide's fields: pictures uploaded first, their keys sent. */
  async function addTo(request) {
    const guided = { ...request };
    if (hasFile(parts.control)) {
      const image = await uploadFile(fields.control_image);
      const weight = Number(fields.control_weight.value);
      guided.controls = [{ image, type: fields.control_type.value, weight }];
    }
    if (hasFile(parts.reference)) {
      guided.reference_image = await uploadFile(fields.reference_image);
      guided.reference_weight = Number(fields.reference_weight.value);
      if (fields.consent.checked) guided.consent = true;
    }
    if (fields.hires.checked) guided.hires = { scale: Number(fields.hires_scale.value) };
    return guided;
  }

  /** Point at the guide inputs a refusal names, opening the section so they can be seen. */
  function markInvalid(error) {
    const names = Array.isArray(error.detail)
      ? error.detail.map((problem) => INVALID_TARGETS[String(problem.field || "").split(/[.[]/)[0]])
      : [];
    if (error.code === CONSENT_MISSING) names.push("consent");
    const targets = names.filter(Boolean).map((name) => fields[name]);
    for (const target of targets) target.setAttribute("aria-invalid", "true");
    if (targets.length) section.open = true;
  }

  for (const part of Object.values(parts)) {
    part.input.addEventListener("change", () => {
      part.input.removeAttribute("aria-invalid");
      renderPart(part);
    });
    part.clear.addEventListener("click", () => clearPart(part));
  }
  for (const [input, output] of [
    [fields.control_weight, $("#control-weight-value")],
    [fields.reference_weight, $("#reference-weight-value")],
  ]) {
    input.addEventListener("input", () => (output.value = Number(input.value).toFixed(2)));
  }
  fields.hires.addEventListener("change", () => {
    fields.hires_scale.disabled = !fields.hires.checked;
    renderSummary();
  });
  fields.control_type.addEventListener("change", renderSummary);
  fields.hires_scale.addEventListener("change", renderSummary);
  fields.consent.addEventListener("change", () => fields.consent.removeAttribute("aria-invalid"));

  return { addTo, markInvalid };
}
