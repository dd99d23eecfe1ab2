// The page around its parts: `/` to the search box, the grid's card density (remembered), the phone
// layout's form drawer, and the page as a drop target for a PNG whose settings fill the form (PNG Info).

const DENSITY_STORAGE = "kitty.density";
const DENSITIES = new Set(["small", "medium", "large"]);
const DEFAULT_DENSITY = "medium";

/** Where the form leaves the page for a drawer; gallery.css has the same width. */
const PHONE_QUERY = "(max-width: 600px)";

/** A job panel this soon after a submit is the submitted job's (uploads included). */
const SUBMIT_TO_PANEL_MS = 60_000;

/** Where typing a `/` is text, not the search key. */
const TYPING_TARGETS = "input, textarea, select, [contenteditable]";

function storedDensity() {
  try {
    const stored = localStorage.getItem(DENSITY_STORAGE);
    return DENSITIES.has(stored) ? stored : DEFAULT_DENSITY;
  } catch {
    return DEFAULT_DENSITY; // storage disabled: the default, for this page
  }
}

function storeDensity(value) {
  try {
    localStorage.setItem(DENSITY_STORAGE, value);
  } catch {
    // Nothing to do: the choice lasts as long as the page.
  }
}

function isFileInput(target) {
  return target instanceof HTMLInputElement && target.type === "file";
}

function carriesFiles(event) {
  return Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
}

/**
 * `densityPick`: the select of card sizes; `drawer`, `drawerToggle`, `drawerClose`: the form's aside
 * and the buttons that open and close it on a phone; `gallery`: the rest of the page, inert while the
 * drawer covers it; `jobs`: where a job's panel appears (the drawer closes to show it); `onFile(file)`:
 * a file dropped on the page (not on a file field, which takes it as its own).
 */
export function createLayout({ densityPick, drawer, drawerToggle, drawerClose, gallery, jobs, onFile }) {
  const body = document.body;
  const phone = window.matchMedia(PHONE_QUERY);

  // --- density: a data attribute of <body>; gallery.css sizes the grid's columns from it ------------
  function setDensity(value) {
    const density = DENSITIES.has(value) ? value : DEFAULT_DENSITY;
    body.dataset.density = density;
    densityPick.value = density;
  }
  setDensity(storedDensity());
  densityPick.addEventListener("change", () => {
    setDensity(densityPick.value);
    storeDensity(body.dataset.density);
  });

  // --- the phone's drawer --------------------------------------------------------------------------
  function isDrawerOpen() {
    return body.dataset.drawer === "open";
  }

  function openDrawer() {
    if (!phone.matches) return;
    body.dataset.drawer = "open";
    drawerToggle.setAttribute("aria-expanded", "true");
    gallery.inert = true;
    const first = drawer.querySelector("textarea, input, select");
    if (first) first.focus();
  }

  function closeDrawer({ restoreFocus = true } = {}) {
    if (!isDrawerOpen()) return;
    delete body.dataset.drawer;
    drawerToggle.setAttribute("aria-expanded", "false");
    gallery.inert = false;
    if (restoreFocus && phone.matches) drawerToggle.focus();
  }

  drawerToggle.addEventListener("click", () => (isDrawerOpen() ? closeDrawer() : openDrawer()));
  drawerClose.addEventListener("click", () => closeDrawer());
  drawer.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && isDrawerOpen()) {
      event.preventDefault();
      closeDrawer();
    }
  });
  // Wider again (a rotated phone): the form is back in the page, nothing stays inert.
  phone.addEventListener("change", () => closeDrawer({ restoreFocus: false }));
  // A job the form started shows its panel in the page: the drawer makes way for it (and not for the
  // panel of a job another client started while the form is being filled in).
  let submittedAt = -Infinity;
  drawer.addEventListener("submit", () => (submittedAt = performance.now()));
  new MutationObserver((records) => {
    const isOurs = performance.now() - submittedAt < SUBMIT_TO_PANEL_MS;
    if (phone.matches && isOurs && records.some((record) => record.addedNodes.length)) {
      closeDrawer({ restoreFocus: false });
    }
  }).observe(jobs, { childList: true });

  // --- keys that work anywhere ---------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest(TYPING_TARGETS)) return;
    if (document.querySelector("dialog[open]")) return;
    const search = document.getElementById("search"); // the grid's search box, when the page has one
    if (!search) return;
    event.preventDefault();
    closeDrawer({ restoreFocus: false });
    search.focus();
  });

  // --- a PNG dropped anywhere: PNG Info ------------------------------------------------------------
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event) || isFileInput(event.target)) return;
    event.preventDefault(); // else the browser opens the file instead of the page
    event.dataTransfer.dropEffect = "copy";
    body.dataset.dropping = "true";
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) delete body.dataset.dropping; // left the window
  });
  document.addEventListener("drop", (event) => {
    delete body.dataset.dropping;
    if (!carriesFiles(event) || isFileInput(event.target)) return;
    event.preventDefault();
    const [file] = event.dataTransfer.files;
    if (file) onFile(file);
  });

  return { openDrawer, closeDrawer, isPhone: () => phone.matches };
}
