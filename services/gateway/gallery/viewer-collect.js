// The image dialog's star and "Add to board" (issue 20 part 3): the open image's favourite state as a
// toggle button, and a choice of the caller's boards (or a new one) to put it on. The state shown is
// the listing's (`favourite`, `boards` of a LatestItem), updated as the service accepts each change.

import { h } from "./dom.js";

/** The choice of the board menu that asks for a new board's name instead. */
const NEW_BOARD = "new";

/**
 * `root`: the dialog's `.collect` group; `onFavourite(item, isFavourite)`, `onCreateBoard(name)` and
 * `onAddToBoard(item, name)` save (and reject with the API's refusal); `boardNames()` lists the
 * caller's boards; `onError(error)` shows a refusal in the dialog.
 */
export function createCollect({ root, onFavourite, boardNames, onCreateBoard, onAddToBoard, onError }) {
  const $ = (selector) => root.querySelector(selector);
  const star = $("#viewer-star");
  const glyph = star.querySelector(".star-glyph");
  const form = $("#viewer-board-form");
  const pick = $("#viewer-board");
  const newName = $("#viewer-board-name");
  const addButton = $("#viewer-board-add");
  const onBoards = $("#viewer-boards");
  let item = null;

  function isNew() {
    return pick.selectedOptions[0]?.dataset.choice === NEW_BOARD;
  }

  function chosenName() {
    return isNew() ? newName.value.trim() : pick.value;
  }

  function updateForm() {
    newName.hidden = !isNew();
    addButton.disabled = !chosenName();
  }

  function showStar() {
    const isFavourite = Boolean(item.favourite);
    star.setAttribute("aria-pressed", String(isFavourite));
    glyph.textContent = isFavourite ? "★" : "☆";
  }

  /** The boards to choose from (those the image is on say so), then "New board…". */
  function showBoards() {
    const on = new Set(item.boards || []);
    pick.replaceChildren(
      h("option", { value: "", text: "Choose a board" }),
      ...boardNames().map((name) => h("option", { value: name, text: on.has(name) ? `${name} ✓` : name })),
      h("option", { value: "", text: "New board…", dataset: { choice: NEW_BOARD } }),
    );
    onBoards.textContent = on.size ? `On ${[...on].join(", ")}` : "";
    onBoards.hidden = !on.size;
    newName.value = "";
    updateForm();
  }

  /** Show `shown`'s state; the dialog calls this each time it opens an image. */
  function show(shown) {
    item = shown;
    showStar();
    showBoards();
  }

  // A click while one is saved is ignored (not by disabling the button: that would drop its focus).
  let isSaving = false;
  star.addEventListener("click", async () => {
    const shown = item;
    if (!shown || isSaving) return;
    const isFavourite = !shown.favourite;
    isSaving = true;
    try {
      await onFavourite(shown, isFavourite);
      shown.favourite = isFavourite;
      if (item === shown) showStar();
    } catch (error) {
      onError(error);
    } finally {
      isSaving = false;
    }
  });

  pick.addEventListener("change", () => {
    updateForm();
    if (isNew()) newName.focus();
  });
  newName.addEventListener("input", updateForm);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const shown = item;
    const name = chosenName();
    if (!shown || !name) return;
    addButton.disabled = true;
    try {
      if (isNew()) await onCreateBoard(name);
      await onAddToBoard(shown, name);
      shown.boards = [...new Set([...(shown.boards || []), name])];
      if (item === shown) {
        showBoards();
        pick.focus();
      }
    } catch (error) {
      onError(error);
      updateForm();
      (isNew() ? newName : pick).focus();
    }
  });

  return { show };
}
