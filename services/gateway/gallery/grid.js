// The grid of latest images: cards built from `GET /api/images/latest` items (small WebP thumbnails
// only; the full PNG is fetched by the viewer), cursor pages loaded as the end of the grid nears.
// Filters (find.js) narrow the listing; each card carries a favourite star and a link to its job's images.

import { api, keyPath } from "./api.js";
import { excerpt, formatAge, formatSize, h, parseTime, safeUrl } from "./dom.js";

/** Characters of the prompt a card shows; the rest is in its title and the viewer. */
const PROMPT_EXCERPT_CHARS = 140;

/** Load the next page when the end of the grid is this close below the viewport. */
const PREFETCH_MARGIN_PX = 600;

/** Ages ("3 min ago") are refreshed this often. */
const AGE_REFRESH_MS = 30_000;

/** Star or unstar an image for the caller (`PUT`/`DELETE /api/images/favourites/{key}`). */
export function saveFavourite(key, isFavourite) {
  return api(`/api/images/favourites/${keyPath(key)}`, { method: isFavourite ? "PUT" : "DELETE" });
}

export function createGrid({ list, sentinel, empty, routes, onOpen, onError, pageSize, onShowJob = () => {}, compareButton = () => null }) {
  const items = new Map(); // key -> LatestItem, in grid order
  let filters = {}; // query parameters of `latest` besides limit and cursor (find.js sets them)
  const emptyText = empty.textContent;
  let cursor = null;
  let isLoading = false;
  let isExhausted = false;
  let hasListed = false; // a page came back: an empty grid then means no images, not a failure
  let generation = 0; // bumps on reload, so a page of a previous listing is dropped

  function card(item) {
    const created = parseTime(item.last_modified);
    const thumbUrl = safeUrl(item.thumb_url);
    const meta = [
      item.model ? h("span", { class: "meta-model", text: item.model }) : null,
      item.preset || item.quality
        ? h("span", { class: "meta-preset", text: [item.preset, item.quality].filter(Boolean).join(" · ") })
        : null,
      item.seed !== undefined && item.seed !== null ? h("span", { text: `seed ${item.seed}` }) : null,
      item.width ? h("span", { text: formatSize(item.width, item.height) }) : null,
      h("time", { datetime: created.toISOString(), dataset: { age: "" }, text: formatAge(created) }),
    ];
    const button = h(
      "button",
      { type: "button", class: "card", title: item.prompt || item.key, onclick: () => onOpen(item, button) },
      h(
        "span",
        { class: "thumb" },
        thumbUrl
          ? h("img", { src: thumbUrl, alt: "", loading: "lazy", decoding: "async", width: 256, height: 256 })
          : h("span", { class: "thumb-missing", text: "no preview" }),
      ),
      h(
        "span",
        { class: "card-body" },
        h("span", { class: "card-prompt", text: excerpt(item.prompt || item.key, PROMPT_EXCERPT_CHARS) }),
        h("span", { class: "card-meta" }, meta),
      ),
    );
    const star = h("button", {
      type: "button",
      class: "card-star",
      "aria-pressed": item.favourite ? "true" : "false",
      "aria-label": "Favourite",
      title: "Favourite",
      text: item.favourite ? "★" : "☆",
      onclick: () => setFavourite(item.key, !items.get(item.key)?.favourite),
    });
    const job = item.job_id
      ? h("button", {
          type: "button",
          class: "card-job",
          title: "This job's images",
          "aria-label": "This job's images",
          text: "▣",  // Geometric Shapes: in the fonts Debian's chromium and most systems carry (⧉ was a blank box)
          onclick: () => onShowJob(item.job_id),
        })
      : null;
    return h("li", { class: "card-item", dataset: { key: item.key } }, button, h("span", { class: "card-tools" }, star, job, compareButton(item))); // compareButton: issue 20 part 3, compare.js
  }

  /** Show `key`'s star as on or off wherever it is listed (the dialog may call this too). */
  function markFavourite(key, isFavourite) {
    const listed = items.get(key);
    if (listed) listed.favourite = isFavourite;
    const star = list.querySelector(`li[data-key="${CSS.escape(key)}"] .card-star`);
    if (!star) return;
    star.setAttribute("aria-pressed", isFavourite ? "true" : "false");
    star.textContent = isFavourite ? "★" : "☆";
  }

  /** The card's star: star or unstar `key`; failures go to onError. */
  async function setFavourite(key, isFavourite) {
    try {
      await star(key, isFavourite);
    } catch (error) {
      onError(error);
    }
  }

  /** Star or unstar `key` for the caller, then show it (the image dialog's star); rejects on a refusal. */
  async function star(key, isFavourite) {
    await saveFavourite(key, isFavourite);
    markFavourite(key, isFavourite);
    // Unstarred while only favourites are listed: it no longer belongs here.
    if (!isFavourite && filters.favourite) remove(key);
  }

  function updateEmpty() {
    empty.textContent = Object.keys(filters).length ? "No images match these filters." : emptyText;
    empty.hidden = items.size > 0 || isLoading || !hasListed;
  }

  function setExhausted(value) {
    isExhausted = value;
    sentinel.hidden = value;
  }

  function append(page) {
    hasListed = true;
    const fresh = page.items.filter((item) => !items.has(item.key));
    for (const item of fresh) items.set(item.key, item);
    list.append(...fresh.map(card));
    cursor = page.next_cursor || null;
    setExhausted(!cursor);
  }

  async function fetchPage(pageCursor) {
    const query = new URLSearchParams({ ...filters, limit: String(pageSize) });
    if (pageCursor) query.set("cursor", pageCursor);
    return api(`${routes.latest}?${query}`);
  }

  function isSentinelNear() {
    return !sentinel.hidden && sentinel.getBoundingClientRect().top < window.innerHeight + PREFETCH_MARGIN_PX;
  }

  async function loadMore() {
    if (isLoading || isExhausted) return;
    const mine = generation;
    isLoading = true;
    sentinel.disabled = true;
    let page = null;
    try {
      page = await fetchPage(cursor);
    } catch (error) {
      if (mine === generation) onError(error);
    }
    if (mine !== generation) return; // a reload started meanwhile and owns the state now
    isLoading = false;
    sentinel.disabled = false;
    if (page) append(page);
    updateEmpty();
    // The observer only reports changes: if the end is still in sight, keep filling the screen.
    if (page && isSentinelNear()) requestAnimationFrame(loadMore);
  }

  async function reload() {
    generation += 1;
    items.clear();
    list.replaceChildren();
    cursor = null;
    isLoading = false;
    hasListed = false;
    setExhausted(false);
    sentinel.hidden = true; // until the first page says whether there are older ones
    await loadMore();
  }

  /** Put images newer than the top card at the top (after a job is done); returns their keys. */
  async function refreshTop() {
    if (filters.sort === "oldest") return []; // new images belong at the end, where scrolling finds them
    const page = await fetchPage(null);
    const fresh = [];
    for (const item of page.items) {
      if (items.has(item.key)) break;
      fresh.push(item);
    }
    if (items.size && fresh.length === page.items.length && page.next_cursor) {
      await reload(); // more arrived than a page holds: start over rather than leave a gap
      return fresh.map((item) => item.key);
    }
    if (!items.size) {
      append(page);
    } else {
      for (const item of fresh) items.set(item.key, item);
      const cards = fresh.map(card);
      for (const element of cards) element.classList.add("is-new");
      list.prepend(...cards);
    }
    updateEmpty();
    return fresh.map((item) => item.key);
  }

  /** Drop a card; returns the card that took its place (the next, else the previous), if any. */
  function remove(key) {
    items.delete(key);
    const element = list.querySelector(`li[data-key="${CSS.escape(key)}"]`);
    const neighbour = element && (element.nextElementSibling || element.previousElementSibling);
    if (element) element.remove();
    updateEmpty();
    return neighbour ? neighbour.querySelector(".card") : null;
  }

  function refreshAges() {
    const now = new Date();
    for (const time of list.querySelectorAll("time[data-age]")) {
      time.textContent = formatAge(new Date(time.dateTime), now);
    }
  }

  new IntersectionObserver((entries) => entries.some((entry) => entry.isIntersecting) && loadMore(), {
    rootMargin: `0px 0px ${PREFETCH_MARGIN_PX}px 0px`,
  }).observe(sentinel);
  sentinel.addEventListener("click", loadMore);
  setInterval(refreshAges, AGE_REFRESH_MS);

  /** The listed item of `key`, or null when the grid has not listed it. */
  function item(key) {
    return items.get(key) || null;
  }

  /** List only what `next` (latest's query parameters, e.g. {q, model, favourite}) selects; {} for all. */
  function setFilters(next) {
    filters = Object.fromEntries(Object.entries(next).filter(([, value]) => value !== "" && value != null));
    return reload();
  }

  return { reload, refreshTop, remove, loadMore, item, setFilters, setFavourite, star, markFavourite };
}
