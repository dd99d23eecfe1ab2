// The find bar above the grid: prompt search (layout.js focuses #search on `/`), filters (model, engine,
// date range, size, favourites, board), sort, the boards menu (create a board, add the last opened image
// to one, view one) and "this job's images". It only sets the grid's filters: the listing is
// `GET /api/images/latest` with query parameters, and favourites and boards are kept per API key. The
// image dialog makes boards and fills them through it too (makeBoard, addToBoard).

import { api, keyPath } from "./api.js";
import { excerpt, h } from "./dom.js";

const ROUTES = {
  models: "/api/images/models",
  engines: "/api/images/engines",
  boards: "/api/images/boards",
  boardItem: (name, key) => `/api/images/boards/${encodeURIComponent(name)}/items/${keyPath(key)}`,
};

/** Typing pauses this long before the listing is asked again. */
const SEARCH_DEBOUNCE_MS = 300;

/** Size choices: the smallest side both width and height must reach. */
const SIZES = [
  ["", "Any size"],
  ["512", "≥ 512 px"],
  ["1024", "≥ 1024 px"],
];

const IMAGE_EXCERPT_CHARS = 40;

function labelled(text, control) {
  return h("label", { class: "find-field" }, h("span", { class: "find-label", text }), control);
}

function options(select, first, values) {
  const chosen = select.value;
  select.replaceChildren(h("option", { value: "", text: first }), ...values.map((v) => h("option", { value: v, text: v })));
  select.value = values.includes(chosen) ? chosen : "";
}

export function createFind({ container, grid, onStatus, onError }) {
  const search = h("input", {
    id: "search",
    type: "search",
    placeholder: "Search prompts  ( / )",
    "aria-label": "Search prompts",
    autocomplete: "off",
    maxlength: 200,
  });
  const model = h("select", { id: "find-model" });
  const engine = h("select", { id: "find-engine" });
  const since = h("input", { id: "find-since", type: "date" });
  const until = h("input", { id: "find-until", type: "date" });
  const size = h("select", { id: "find-size" }, SIZES.map(([value, text]) => h("option", { value, text })));
  const favourites = h("input", { id: "find-favourites", type: "checkbox" });
  const board = h("select", { id: "find-board" });
  const sort = h(
    "select",
    { id: "find-sort", "aria-label": "Order" },
    h("option", { value: "newest", text: "Newest first" }),
    h("option", { value: "oldest", text: "Oldest first" }),
  );
  const jobChip = h("button", { id: "find-job", type: "button", class: "find-chip", hidden: true });
  const clear = h("button", { type: "reset", class: "button ghost small", text: "Clear" });
  options(model, "Any model", []);
  options(engine, "Any engine", []);
  options(board, "All images", []);

  const bar = h(
    "form",
    { class: "find-bar", role: "search", "aria-label": "Find images" },
    h("span", { class: "find-search" }, search),
    labelled("Model", model),
    labelled("Engine", engine),
    labelled("From", since),
    labelled("To", until),
    labelled("Size", size),
    h("label", { class: "find-check" }, favourites, h("span", { text: "★ Favourites" })),
    labelled("Board", board),
    labelled("Sort", sort),
    jobChip,
    clear,
  );

  // --- the boards menu ------------------------------------------------------------------------------
  const boardName = h("input", {
    id: "board-name",
    type: "text",
    placeholder: "New board name",
    "aria-label": "New board name",
    maxlength: 64,
    autocomplete: "off",
  });
  const target = h("select", { id: "board-target", "aria-label": "Board to add to" });
  const addButton = h("button", { id: "board-add", type: "button", class: "button small", text: "Add", disabled: true });
  const current = h("p", { class: "find-current muted", text: "Open an image to add it to a board." });
  const boardList = h("ul", { id: "board-list", class: "board-list" });
  const menu = h(
    "details",
    { class: "find-boards" },
    h("summary", { text: "Boards" }),
    h(
      "div",
      { class: "find-boards-body" },
      h(
        "form",
        { class: "board-create", onsubmit: (event) => (event.preventDefault(), createBoard()) },
        boardName,
        h("button", { type: "submit", class: "button small primary", text: "Create" }),
      ),
      current,
      h("div", { class: "board-add" }, target, addButton),
      boardList,
    ),
  );
  container.replaceChildren(bar, menu);

  let currentItem = null;
  let jobId = "";
  let searchTimer = null;

  function filters() {
    return {
      q: search.value.trim(),
      model: model.value,
      engine: engine.value,
      since: since.value,
      until: until.value,
      min_width: size.value,
      min_height: size.value,
      favourite: favourites.checked ? "true" : "",
      board: board.value,
      job_id: jobId,
      sort: sort.value === "oldest" ? "oldest" : "",
    };
  }

  function apply() {
    clearTimeout(searchTimer);
    container.dataset.filtered = String(Object.values(filters()).some(Boolean));
    return grid.setFilters(filters());
  }

  bar.addEventListener("change", (event) => event.target !== search && apply());
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(apply, SEARCH_DEBOUNCE_MS);
  });
  bar.addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the search box: search now
    apply();
  });
  bar.addEventListener("reset", () => {
    jobId = "";
    jobChip.hidden = true;
    setTimeout(apply); // after the form has put its fields back
  });
  jobChip.addEventListener("click", () => {
    jobId = "";
    jobChip.hidden = true;
    apply();
  });

  /** List one job's images together (a card's "this job's images"). */
  function showJob(id) {
    jobId = id;
    jobChip.textContent = `Job ${excerpt(id, 14)} ✕`;
    jobChip.title = `Showing job ${id}'s images; click to show all`;
    jobChip.hidden = false;
    return apply();
  }

  // --- boards ---------------------------------------------------------------------------------------
  function showBoards(list) {
    const names = list.map((entry) => entry.name);
    options(board, "All images", names);
    options(target, "Choose a board", names);
    boardList.replaceChildren(
      ...list.map((entry) =>
        h(
          "li",
          {},
          h("button", {
            type: "button",
            class: "link",
            text: `${entry.name} (${entry.count})`,
            onclick: () => viewBoard(entry.name),
          }),
        ),
      ),
    );
  }

  async function loadBoards() {
    showBoards((await api(ROUTES.boards)).boards);
  }

  function viewBoard(name) {
    board.value = name;
    menu.open = false;
    return apply();
  }

  /** Make board `name` (one of that name already there is kept); rejects with the API's refusal. */
  async function makeBoard(name) {
    showBoards((await api(ROUTES.boards, { method: "POST", body: { name } })).boards);
  }

  async function createBoard() {
    const name = boardName.value.trim();
    if (!name) return;
    try {
      await makeBoard(name);
      boardName.value = "";
      target.value = name;
      addButton.disabled = !currentItem;
      onStatus(`Board “${name}” is ready.`);
    } catch (error) {
      onError(error);
    }
  }

  /** Put `key` on board `name` (the image dialog calls this too); rejects with the API's refusal. */
  async function addToBoard(key, name) {
    await api(ROUTES.boardItem(name, key), { method: "PUT" });
    await loadBoards();
    onStatus(`Added to “${name}”.`);
    if (board.value === name) await apply(); // that board is listed: show it with its new image
  }

  addButton.addEventListener("click", async () => {
    if (!currentItem || !target.value) return;
    try {
      await addToBoard(currentItem.key, target.value);
    } catch (error) {
      onError(error);
    }
  });
  target.addEventListener("change", () => (addButton.disabled = !currentItem || !target.value));

  /** The image the boards menu adds: the one opened last. */
  function setCurrent(item) {
    currentItem = item;
    current.textContent = `Last opened: ${excerpt(item.prompt || item.key, IMAGE_EXCERPT_CHARS)}`;
    addButton.disabled = !target.value;
  }

  /** Fill the model, engine and board choices; a list that cannot be read stays empty. */
  async function loadChoices() {
    // Engines are probed for their health, which may take a while: their list fills in when it comes.
    api(ROUTES.engines)
      .then((answer) => options(engine, "Any engine", answer.engines.map((entry) => entry.engine_id)))
      .catch(() => {});
    const [models] = await Promise.all([api(ROUTES.models).catch(() => ({ models: [] })), loadBoards().catch(onError)]);
    options(model, "Any model", models.models.map((entry) => entry.name));
  }

  /** The caller's board names, as last listed. */
  function boardNames() {
    return [...target.options].slice(1).map((option) => option.value);
  }

  return { showJob, setCurrent, addToBoard, makeBoard, boardNames, loadChoices, loadBoards, viewBoard };
}
