// lookalike's page: a photo (picker, drag and drop, paste; made smaller on the device before
// it is sent), the products found in it, an area to search, results with filters and colour,
// "more like this" and product details. Every state has a URL, so Back and Forward work and a
// "more like this" page can be shared. Plain browser JavaScript, no build step, no libraries.
"use strict";

const PAGE_SIZE = 24;
/** Most results one request may ask for (the API's `k` limit), when a page is restored. */
const MAX_K = 96;
/** Photos are sent at most this long on their long side: the model sees 224 px, and a camera
 * photo of 30 MB then searches in about a second on a slow link. */
const SEND_SIDE = 1024;
/** JPEG quality of a shrunk photo: at 1,024 px the model (224 px) sees no difference, and the
 * upload is a third smaller than at 0.9. */
const SEND_QUALITY = 0.8;
/** Photos smaller than this (and no longer than SEND_SIDE) are sent as they are. */
const SEND_AS_IS_BYTES = 1.5 * 1024 * 1024;
const MAX_UPLOAD_BYTES = Number(document.querySelector('meta[name="lookalike-max-upload-bytes"]')?.content) || 20 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), dropzone: $("dropzone"), photoPanel: $("photo-panel"), cropArea: $("crop-area"),
  preview: $("preview"), noPreview: $("no-preview"), markers: $("markers"), cropBox: $("crop-box"),
  cropAnnounce: $("crop-announce"), cropMode: $("crop-mode"), wholePhoto: $("whole-photo"), newPhoto: $("new-photo"),
  likePanel: $("like-panel"), likeImage: $("like-image"), likeName: $("like-name"), likeBack: $("like-back"), likeNewPhoto: $("like-new-photo"),
  facets: $("facets"), facetsToggle: $("facets-toggle"), facetForm: $("facet-form"), keepFilters: $("keep-filters"),
  resultsHeading: $("results-heading"), status: $("status"), chips: $("chips"), busy: $("busy"), cancel: $("cancel"),
  error: $("error"), errorText: $("error-text"), errorRetry: $("error-retry"), errorPhoto: $("error-photo"),
  grid: $("grid"), loadMore: $("load-more"), end: $("end"),
  details: $("details"), detailsImage: $("details-image"), detailsTitle: $("details-title"), detailsPrice: $("details-price"),
  detailsMeta: $("details-meta"), detailsLink: $("details-link"), detailsLike: $("details-like"),
  detailsOptions: $("details-options"), detailsOptionsList: $("details-options-list"),
  queryColour: $("query-colour"), colourMode: $("colour-mode"),
};

// ---------------------------------------------------------------------------------------------
// Words: the catalog's columns as a shopper reads them

const LABELS = {
  articleType: "Category", baseColour: "Colour", colour: "Colour", color: "Colour", masterCategory: "Department",
  subCategory: "Type", gender: "For", season: "Season", usage: "Occasion", year: "Year", brand: "Brand",
  size: "Size", material: "Material", category: "Category",
};
/** Columns that are shown another way (name, price, link) or are the catalog's own bookkeeping. */
const NOT_SHOWN = new Set(["index", "split", "id", "productDisplayName", "name", "title", "price", "Price", "url", "link", "productUrl", "image", "filename", "image_url", "imageUrl", "image_link"]);
const LIKENESS = { very_similar: "Very similar", similar: "Similar", related: "Related" };

function label(column) {
  return LABELS[column] || column.replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").replace(/^./, (c) => c.toUpperCase());
}

function megabytes(bytes) {
  const mb = bytes / 1048576;
  return Number.isInteger(mb) ? `${mb} MB` : `${mb.toFixed(1)} MB`;
}

// ---------------------------------------------------------------------------------------------
// Views: what the results show, and what the URL says
//
// {kind: "empty"} | {kind: "photo", photo, crop, item} | {kind: "like", id}, each with
// `filters` (["column=value", ...]), `colour` ("match" | "any") and `shown` (results loaded).
// A photo lives in `photos` (this tab's memory, never the URL): a URL with `photo=N` from
// another visit finds nothing there and asks for the photo again.

const photos = new Map();
let nextPhoto = 1;
let view = { kind: "empty", filters: [], colour: "match", shown: PAGE_SIZE };

function viewFromUrl() {
  const q = new URLSearchParams(location.search);
  const base = { filters: q.getAll("filter"), colour: q.get("colour") === "any" ? "any" : "match", shown: Math.max(PAGE_SIZE, Number(q.get("shown")) || PAGE_SIZE) };
  if (q.get("like")) return { ...base, kind: "like", id: q.get("like") };
  if (q.get("photo")) {
    const crop = (q.get("crop") || "").split(",").map(Number);
    const item = q.get("item") === null ? null : Number(q.get("item"));
    return { ...base, kind: "photo", photo: Number(q.get("photo")), crop: crop.length === 4 && crop.every(Number.isFinite) ? crop : null, item: Number.isInteger(item) ? item : null };
  }
  return { ...base, kind: "empty" };
}

function urlOf(v) {
  const q = new URLSearchParams();
  if (v.kind === "like") q.set("like", v.id);
  if (v.kind === "photo") {
    q.set("photo", String(v.photo));
    if (v.item !== null && v.item !== undefined) q.set("item", String(v.item));
    if (v.crop) q.set("crop", v.crop.map((x) => x.toFixed(4)).join(","));
  }
  for (const f of v.filters) q.append("filter", f);
  if (v.colour !== "match") q.set("colour", v.colour);
  if (v.shown > PAGE_SIZE) q.set("shown", String(v.shown));
  const s = q.toString();
  return s ? `?${s}` : location.pathname;
}

/** Goes to `next`: a new history entry (or this one replaced) and its results. */
function navigate(next, { replace = false, focus = true } = {}) {
  view = next;
  // `depth`: how many of this page's own states lie behind this one (Back stays on the page).
  const depth = history.state?.depth || 0;
  if (replace) history.replaceState({ depth }, "", urlOf(next));
  else history.pushState({ depth: depth + 1 }, "", urlOf(next));
  show({ focus });
}

window.addEventListener("popstate", () => {
  view = viewFromUrl();
  show({ focus: true });
});

/** Brings the page in line with `view` and runs its search. */
function show({ focus }) {
  if (els.details.open) els.details.close();
  const photo = syncPage();
  if (view.kind === "photo" && !photo) {
    // A photo from an earlier visit: it is not kept, so ask for it again.
    clearResults();
    els.status.textContent = "Choose your photo again: photos are not kept when the page is reloaded.";
    return;
  }
  if (view.kind === "like") showLikeOrigin(view.id);
  if (view.kind === "empty") {
    clearResults();
    els.status.textContent = "Choose a photo to see products like it.";
    els.queryColour.hidden = true;
    return;
  }
  runSearch({ append: false, focus });
}

/** Controls and panels as `view` says (no search); returns the view's photo, if any. */
function syncPage() {
  syncControls();
  const photo = view.kind === "photo" ? photos.get(view.photo) : null;
  els.dropzone.hidden = !!photo;
  els.photoPanel.hidden = !photo;
  els.likePanel.hidden = view.kind !== "like";
  if (photo) showPhoto(photo);
  return photo;
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(code, message, retryAfter) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("network", err.message);
  }
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(error.code || `http_${response.status}`, error.message || `status ${response.status}`, response.headers.get("retry-after"));
  }
  return body;
}

function filtersObject(filters) {
  const out = {};
  for (const f of filters) {
    const at = f.indexOf("=");
    if (at <= 0) continue;
    (out[f.slice(0, at)] ||= []).push(f.slice(at + 1));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Searching

let running = null; // {controller, previous}: the search in flight, and the results it replaces.
let lastRun = null; // What "Try again" repeats.
let shownView = null; // The view whose results are on the page (what Cancel goes back to).

/** Runs the current view's search: a new list, or the next page appended. */
async function runSearch({ append, focus }) {
  if (running) running.controller.abort();
  const controller = new AbortController();
  const mine = { controller, previous: append ? null : [...els.grid.children] };
  running = mine;
  lastRun = { append, focus };
  const v = view;
  const offset = append ? els.grid.querySelectorAll("li.card").length : 0;
  const k = append ? PAGE_SIZE : Math.min(MAX_K, v.shown);
  setBusy(true, append);
  try {
    const result = await search(v, offset, k, controller.signal);
    if (running !== mine) return;
    if (result === null) return; // Another view took over (the main item of a photo of several).
    renderHits(result.hits, append);
    shownView = v;
    const shown = els.grid.querySelectorAll("li.card").length;
    els.loadMore.hidden = result.hits.length < k;
    els.end.hidden = !els.loadMore.hidden || shown <= PAGE_SIZE;
    els.end.textContent = `That is all: ${shown} products.`;
    // When even the best result is only "Related", say so rather than "products like".
    const best = els.grid.querySelector("li.card")?.dataset.likeness;
    els.status.textContent = !shown
      ? emptyMessage(v, result.why_nothing_matches)
      : best === "related"
        ? `No close matches for ${queryName(v)}${v.filters.length ? " with these filters" : ""}: these ${shown} are the nearest.`
        : `${shown} products like ${queryName(v)}, most alike first.`;
    if (append && v.shown !== shown) {
      view = { ...v, shown };
      history.replaceState({ depth: history.state?.depth || 0 }, "", urlOf(view));
    }
    if (focus) {
      // After the next layout: on phones the text sizes settle then, and the heading moves.
      await new Promise((resolve) => requestAnimationFrame(resolve));
      if (running === mine) focusResults();
    }
  } catch (err) {
    if (err.name === "AbortError") {
      if (running === mine && mine.previous) {
        // Cancelled: the page goes back to the results it had, controls and URL included.
        els.grid.replaceChildren(...mine.previous);
        view = shownView || { kind: "empty", filters: [], colour: "match", shown: PAGE_SIZE };
        history.replaceState({ depth: history.state?.depth || 0 }, "", urlOf(view));
        syncPage();
        els.status.textContent = "Search cancelled.";
      }
      return;
    }
    if (running === mine) showError(err, v);
  } finally {
    if (running === mine) {
      running = null;
      setBusy(false, append);
    }
  }
}

/** One page of `v`'s results (null when `v` handed over to another view). */
async function search(v, offset, k, signal) {
  const body = { k, offset, filters: filtersObject(v.filters), colour: v.colour };
  const json = (extra) => api("/api/search", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...body, ...extra }), signal });
  if (v.kind === "like") return json({ product_id: v.id });
  const photo = photos.get(v.photo);
  const key = v.crop ? v.crop.map((x) => x.toFixed(4)).join(",") : "whole";
  const known = photo.vectors.get(key);
  if (known) {
    showQueryColour(known.colour);
    return json({ vector: known.vector, ...(known.colour?.descriptor ? { colour_vector: known.colour.descriptor } : {}) });
  }
  // The photo (or this part of it) has not been searched yet: upload it once and keep its
  // vector, so paging, filters and Back reuse it.
  const form = new FormData();
  form.append("image", photo.blob, photo.name);
  form.append("k", String(k));
  form.append("offset", String(offset));
  form.append("include_vector", "true");
  form.append("colour", v.colour);
  if (v.crop) form.append("crop", key);
  for (const f of v.filters) form.append("filter", f);
  // What was sent, for tests and curious developers (browsers do not show multipart bodies).
  els.cropArea.dataset.crop = v.crop ? key : "";
  els.cropArea.dataset.sentBytes = String(photo.blob.size);
  const result = await api("/api/search", { method: "POST", body: form, signal });
  photo.vectors.set(key, { vector: result.query_vector, colour: result.query_colour || null });
  showQueryColour(result.query_colour || null);
  if (!v.crop) {
    photo.detections = result.detections || [];
    showPhoto(photo);
    // Several products in the photo: search the main one, as a shopper pointing at it would.
    if (photo.detections.length >= 2 && !photo.pickedItem) {
      photo.pickedItem = true;
      navigate({ ...v, crop: photo.detections[0].box, item: 0 }, { replace: true, focus: lastRun.focus });
      return null;
    }
  }
  return result;
}

function queryName(v) {
  if (v.kind === "like") return likeName || "this product";
  const photo = photos.get(v.photo);
  if (v.item !== null && v.item !== undefined && photo?.detections.length) return `item ${v.item + 1} of ${photo.detections.length} in your photo`;
  return v.crop ? "the area you selected" : "your photo";
}

// `why`: the API's word on which filter no product has (a link shared with a stale filter).
function emptyMessage(v, why) {
  if (!v.filters.length) return "No products found.";
  return why ? `No products match these filters: ${why}. Remove a filter to see more.` : "No products match these filters. Remove a filter to see more.";
}

function setBusy(busy, append) {
  document.body.classList.toggle("searching", busy);
  els.loadMore.disabled = busy;
  els.loadMore.textContent = busy && append ? "Loading…" : "Show more";
  els.busy.hidden = !busy || append;
  if (busy && !append) {
    els.error.hidden = true;
    els.end.hidden = true;
    els.loadMore.hidden = true;
    els.status.textContent = "Searching…";
    // Skeleton cards where the results will be.
    els.grid.replaceChildren(...Array.from({ length: 8 }, () => {
      const li = el("li", { className: "skeleton" });
      li.setAttribute("aria-hidden", "true");
      return li;
    }));
  }
}

function clearResults() {
  if (running) {
    // Stopped for good: nothing of it is restored (that is what Cancel does).
    running.controller.abort();
    running = null;
  }
  setBusy(false, false);
  els.grid.replaceChildren();
  els.loadMore.hidden = true;
  els.end.hidden = true;
  els.error.hidden = true;
}

/** Results heading into view (a phone shows the photo above it) and focus on it. */
function focusResults() {
  els.resultsHeading.scrollIntoView({ block: "start", behavior: "instant" });
  els.resultsHeading.focus({ preventScroll: true });
}

/** What went wrong, in a shopper's words, with what to do; the results go. */
function showError(err, v) {
  clearResults();
  const photoProblem = ["unsupported_type", "unreadable_image", "too_large"].includes(err.code);
  const messages = {
    unsupported_type: "That file is not a photo this shop can read. Choose a JPEG, PNG, WebP, GIF, BMP or TIFF photo.",
    unreadable_image: "That photo could not be opened: it may be damaged or cut short. Choose another photo.",
    too_large: `That photo is too large to send: the limit is ${megabytes(MAX_UPLOAD_BYTES)}. Choose a smaller photo.`,
    busy: `Many people are searching right now. Try again in ${err.retryAfter || "a few"} seconds.`,
    timeout: "The search took too long. Try again.",
    not_found: "That product is no longer in the catalog.",
    network: "The shop's search could not be reached. Check your connection and try again.",
  };
  els.errorText.textContent = messages[err.code] || "Something went wrong on our side. Try again in a moment.";
  els.errorRetry.hidden = photoProblem || err.code === "not_found";
  els.errorPhoto.hidden = !photoProblem && v.kind !== "like";
  els.error.hidden = false;
  els.status.textContent = "The search did not run.";
  if (photoProblem && v.kind === "photo") {
    // The photo cannot be searched: back to choosing one, and no way Back to it.
    photos.delete(v.photo);
    view = { ...v, kind: "empty" };
    history.replaceState({ depth: history.state?.depth || 0 }, "", urlOf(view));
    els.photoPanel.hidden = true;
    els.dropzone.hidden = false;
    els.queryColour.hidden = true;
  }
}

els.cancel.addEventListener("click", () => running?.controller.abort());
els.errorRetry.addEventListener("click", () => runSearch(lastRun || { append: false, focus: true }));
els.errorPhoto.addEventListener("click", () => els.file.click());
els.loadMore.addEventListener("click", () => runSearch({ append: true, focus: false }));

// ---------------------------------------------------------------------------------------------
// Results

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

/** A product's colour as a dot beside its kind: its named colour's, or for a patterned product
 * ("Multi", no one colour) its main colours in the shares its photo has them (a stock pattern
 * where the server knows none), so the shopper sees "patterned" and which colours at a glance.
 * The words beside it name the colour, so the dot is hidden from screen readers. */
function swatch(rgb, name, mix) {
  const s = el("span", { className: name === "Multi" ? "swatch multi" : "swatch" });
  s.setAttribute("aria-hidden", "true");
  if (rgb) s.style.background = rgb;
  else if (name === "Multi" && mix && mix.length) s.style.background = `conic-gradient(${mixStops(mix)})`;
  else if (name !== "Multi") s.hidden = true;
  return s;
}

/** Conic-gradient stops giving each colour of `mix` its share of the circle. */
function mixStops(mix) {
  const total = mix.reduce((sum, c) => sum + c.share, 0) || 1;
  let at = 0;
  return mix.map((c) => {
    const from = at;
    at += (100 * c.share) / total;
    return `${c.rgb} ${from.toFixed(1)}% ${at.toFixed(1)}%`;
  }).join(", ");
}

function renderHits(hits, append) {
  if (!append) els.grid.replaceChildren();
  for (const hit of hits) els.grid.append(card(hit));
}

/** What to call a product: its name, or for a catalog without names (the name is then the
 * id), its colour and kind ("Grey Pullover"); the id stays in the details. */
function title(product) {
  if (product.name !== product.id) return product.name;
  return [product.colour, product.category].filter(Boolean).join(" ") || product.name;
}

/** What a product photo that cannot load shows (a file gone from the shop's server, the shop's
 * image server down): a grey picture sign, not the browser's broken-image box. */
const NO_PHOTO = "data:image/svg+xml," + encodeURIComponent(
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100"><rect width="100" height="100" fill="#f1f3f4"/>' +
  '<g fill="none" stroke="#80868b" stroke-width="3" stroke-linejoin="round"><rect x="30" y="34" width="40" height="32" rx="3"/>' +
  '<path d="M33 62l11-12 8 8 6-6 9 10"/><circle cx="59" cy="43" r="3.5"/></g></svg>');

/** `img` with the placeholder for a photo that cannot load; the class `no-photo` says which
 * it shows (a later photo in the same element clears it), `data-photo` which photo failed,
 * tried again when the device is back online (a photo lost to a network blip). */
function withPlaceholder(img) {
  img.addEventListener("error", () => {
    if (img.src === NO_PHOTO) return;
    img.dataset.photo = img.src;
    img.src = NO_PHOTO;
    img.classList.add("no-photo");
  });
  img.addEventListener("load", () => {
    if (img.src !== NO_PHOTO) img.classList.remove("no-photo");
  });
  return img;
}
withPlaceholder(els.detailsImage);
withPlaceholder(els.likeImage);
window.addEventListener("online", () => {
  for (const img of document.querySelectorAll("img.no-photo[data-photo]")) img.src = img.dataset.photo;
});

function card(hit) {
  const details = [hit.category, hit.colour].filter(Boolean).join(" · ");
  // The button's name is its text: the product's name, price, kind and how alike it is. The
  // photo beside the name says nothing more, so it has no text of its own.
  const open = el("button", { type: "button", className: "open" },
    withPlaceholder(el("img", { src: hit.image_url, alt: "", loading: "lazy", width: 170, height: 170 })),
    el("span", { className: "info" },
      el("span", { className: "name" }, title(hit)),
      ...(hit.price ? [el("span", { className: "price" }, hit.price)] : []),
      ...(hit.variants ? [el("span", { className: "options" }, optionsLine(hit))] : []),
      el("span", { className: "sub" }, swatch(hit.colour_rgb, hit.colour, hit.colour_mix), details || "\u00a0"),
      el("span", { className: `likeness ${hit.likeness}` }, LIKENESS[hit.likeness] || "")));
  open.addEventListener("click", () => openDetails(hit.id, hit));
  const like = el("button", { type: "button", className: "like" }, "More like this");
  like.setAttribute("aria-label", `More like ${title(hit)}`);
  like.addEventListener("click", () => moreLike(hit.id));
  const actions = el("div", { className: "actions" }, like);
  if (hit.link) {
    const shop = el("a", { className: "button", href: hit.link, target: "_blank", rel: "noopener noreferrer" }, "Shop");
    shop.setAttribute("aria-label", `${title(hit)} in the shop (opens a new tab)`);
    actions.append(shop);
  }
  const item = el("li", { className: "card" }, open, actions);
  item.dataset.id = hit.id;
  item.dataset.category = hit.category || "";
  item.dataset.score = String(hit.score);
  item.dataset.likeness = hit.likeness;
  return item;
}

/** A listing's size, from the shop's `size` column. */
function sizeOf(product) {
  return product.metadata.size || product.metadata.Size;
}

/** A hit that stands for products the shop lists with the very same photo (size variants):
 * their sizes where the catalog has a size column, else how many there are. */
function optionsLine(hit) {
  const listings = [hit, ...hit.variants];
  const sizes = listings.map(sizeOf).filter(Boolean);
  if (sizes.length === listings.length) return `Sizes ${[...new Set(sizes)].join(" · ")}`;
  return `${listings.length} options`;
}

/** The other listings of a product's photo in its details: each one's name, size and price,
 * and its page in the shop. */
function showOptions(product) {
  const variants = product.variants || [];
  els.detailsOptions.hidden = variants.length === 0;
  els.detailsOptionsList.replaceChildren(...variants.map((v) => {
    const size = sizeOf(v);
    const text = [title(v), size && `size ${size}`, v.price].filter(Boolean).join(" · ");
    const item = el("li", {}, el("span", {}, text));
    if (v.link) {
      const shop = el("a", { className: "button", href: v.link, target: "_blank", rel: "noopener noreferrer" }, "Shop");
      shop.setAttribute("aria-label", `${text} in the shop (opens a new tab)`);
      item.append(shop);
    }
    return item;
  }));
}

function moreLike(id) {
  navigate({ kind: "like", id, filters: view.filters, colour: view.colour, shown: PAGE_SIZE });
}

async function openDetails(id, hit) {
  try {
    const product = await api(`/api/products/${encodeURIComponent(id)}`);
    els.detailsTitle.textContent = title(product);
    els.detailsImage.src = product.image_url;
    els.detailsPrice.textContent = product.price || "";
    els.detailsPrice.hidden = !product.price;
    els.detailsLink.hidden = !product.link;
    if (product.link) els.detailsLink.href = product.link;
    const rows = Object.entries(product.metadata)
      .filter(([column, value]) => value && !NOT_SHOWN.has(column))
      .map(([column, value]) => [label(column), value]);
    if (hit) rows.push(["Match", `${LIKENESS[hit.likeness] || ""} (score ${hit.score.toFixed(3)})`]);
    rows.push(["Product number", product.id]);
    els.detailsMeta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    // The product's own listing of its photo's other sizes: all of them, whatever filter
    // the search that found it had.
    showOptions(product);
    els.detailsLike.onclick = () => moreLike(product.id);
    els.details.showModal();
  } catch (err) {
    showError(err, view);
  }
}

// "More like this" shows the product it started from where the shopper's photo was.
let likeName = null;
async function showLikeOrigin(id) {
  likeName = null;
  els.likeName.textContent = "this product";
  els.likeImage.src = `/api/products/${encodeURIComponent(id)}/image`;
  try {
    const product = await api(`/api/products/${encodeURIComponent(id)}`);
    if (view.kind !== "like" || view.id !== id) return;
    likeName = title(product);
    els.likeName.textContent = likeName;
    if (!els.status.textContent.startsWith("Searching")) els.status.textContent = els.status.textContent.replace("this product", likeName);
  } catch (err) {
    /* The search itself says when the product is gone. */
  }
}
// Back to where "more like this" came from; a shared link opened here has nothing behind it
// on this page, so it goes to the start instead of leaving the shop.
els.likeBack.addEventListener("click", () => {
  if ((history.state?.depth || 0) > 0) history.back();
  else navigate({ kind: "empty", filters: [], colour: view.colour, shown: PAGE_SIZE });
});
els.likeNewPhoto.addEventListener("click", () => els.file.click());

/** The colour found in the shopper's photo, as a swatch beside it. */
function showQueryColour(colour) {
  els.queryColour.hidden = !colour;
  if (!colour) return;
  const patterned = colour.name === "Multi" && colour.mix && colour.mix.length;
  els.queryColour.querySelector(".swatch").style.background = patterned ? `conic-gradient(${mixStops(colour.mix)})` : colour.rgb;
  els.queryColour.querySelector(".colour-name").textContent = colour.name;
}

// ---------------------------------------------------------------------------------------------
// Filters and colour

let facetColumns = [];

async function loadFacets() {
  try {
    const { facets } = await api("/api/facets");
    facetColumns = facets.filter((f) => !NOT_SHOWN.has(f.column));
    const groups = facetColumns.map((facet) => {
      const options = facet.values.map(({ value, count }) => {
        const box = el("input", { type: "checkbox", name: facet.column, value });
        box.addEventListener("change", () => setFilter(`${facet.column}=${value}`, box.checked));
        const countText = el("span", { className: "count" }, count.toLocaleString("en"), el("span", { className: "visually-hidden" }, " in the catalog"));
        return el("label", {}, box, el("span", {}, value), countText);
      });
      return el("fieldset", {}, el("legend", {}, label(facet.column)), ...options);
    });
    const note = el("p", { className: "facet-note" }, "Numbers count the products in the whole catalog.");
    els.facetForm.replaceChildren(...(groups.length ? [...groups, note] : [el("p", { className: "help" }, "This catalog has no filters.")]));
    syncControls();
  } catch (err) {
    els.facetForm.replaceChildren(el("p", { className: "help" }, "Filters are not available right now."));
  }
}

function setFilter(filter, on) {
  const filters = view.filters.filter((f) => f !== filter);
  if (on) filters.push(filter);
  if (view.kind === "empty" || (view.kind === "photo" && !photos.has(view.photo))) {
    view = { ...view, filters };
    history.replaceState({ depth: history.state?.depth || 0 }, "", urlOf(view));
    syncControls();
    return;
  }
  navigate({ ...view, filters, shown: PAGE_SIZE }, { focus: false });
}

/** Checkboxes, chips and the colour toggle as `view` says. */
function syncControls() {
  const on = new Set(view.filters);
  for (const box of els.facetForm.querySelectorAll("input[type=checkbox]")) box.checked = on.has(`${box.name}=${box.value}`);
  for (const radio of els.colourMode.querySelectorAll("input[name=colour]")) radio.checked = radio.value === view.colour;
  els.chips.replaceChildren(...view.filters.map((f) => {
    const at = f.indexOf("=");
    const text = `${label(f.slice(0, at))}: ${f.slice(at + 1)}`;
    const remove = el("button", { type: "button" }, text, el("span", { className: "x", ariaHidden: "true" }, "✕"));
    remove.setAttribute("aria-label", `Remove filter ${text}`);
    remove.addEventListener("click", () => {
      setFilter(f, false);
      els.resultsHeading.focus({ preventScroll: true });
    });
    return el("li", {}, remove);
  }));
  els.chips.hidden = view.filters.length === 0;
  const count = view.filters.length;
  els.facetsToggle.textContent = count ? `Filters (${count})` : "Show filters";
}

els.facetsToggle.addEventListener("click", () => {
  const expanded = !els.facets.classList.contains("expanded");
  els.facets.classList.toggle("expanded", expanded);
  els.facetsToggle.setAttribute("aria-expanded", String(expanded));
});

// Same colour / any colour: re-rank (the photo is not uploaded again).
els.colourMode.addEventListener("change", (e) => {
  if (e.target.name !== "colour") return;
  if (view.kind === "empty") {
    view = { ...view, colour: e.target.value };
    return;
  }
  navigate({ ...view, colour: e.target.value, shown: PAGE_SIZE }, { focus: false });
});

// ---------------------------------------------------------------------------------------------
// The photo: picker, drag and drop, paste; made smaller before it is sent

async function usePhoto(file) {
  if (!file) return;
  let prepared;
  try {
    prepared = await preparePhoto(file);
  } catch (err) {
    showError(err, { kind: "empty", filters: [] });
    return;
  }
  const id = nextPhoto++;
  photos.set(id, { ...prepared, vectors: new Map(), detections: [], pickedItem: false });
  setCropMode(false);
  // A new photo is seen at the top of the side column, however far down its filters it was
  // scrolled (desktop: the column scrolls on its own; on a phone it does not scroll).
  document.querySelector(".side").scrollTop = 0;
  const filters = els.keepFilters.checked ? view.filters : [];
  navigate({ kind: "photo", photo: id, crop: null, item: null, filters, colour: view.colour, shown: PAGE_SIZE });
}

/** The photo as it will be sent: a camera photo shrunk to SEND_SIDE as JPEG; what the browser
 * cannot decode (TIFF, a text file) as it is, for the server to read or refuse. */
async function preparePhoto(file) {
  const name = file.name || "photo";
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (err) {
    bitmap = null;
  }
  if (!bitmap) {
    if (file.size > MAX_UPLOAD_BYTES) throw new ApiError("too_large", "too large");
    return { blob: file, name, previewable: false };
  }
  const long = Math.max(bitmap.width, bitmap.height);
  if (long <= SEND_SIDE && file.size <= SEND_AS_IS_BYTES) {
    bitmap.close();
    return { blob: file, name, previewable: true };
  }
  const scale = Math.min(1, SEND_SIDE / long);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; // Transparent PNGs: white, as JPEG has no transparency.
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", SEND_QUALITY));
  if (!blob) throw new ApiError("unreadable_image", "could not shrink");
  if (blob.size > MAX_UPLOAD_BYTES) throw new ApiError("too_large", "too large");
  return { blob, name: name.replace(/\.[^.]*$/, "") + ".jpg", previewable: true };
}

function showPhoto(photo) {
  if (!photo.url) photo.url = URL.createObjectURL(photo.blob);
  if (els.preview.dataset.photo !== photo.url) {
    els.preview.dataset.photo = photo.url;
    els.preview.hidden = !photo.previewable;
    els.noPreview.hidden = photo.previewable;
    if (photo.previewable) els.preview.src = photo.url;
    else els.preview.removeAttribute("src");
  }
  drawMarkers(photo);
  const picked = view.item !== null && view.item !== undefined;
  if (view.crop && !picked) showCropBox(view.crop); else els.cropBox.hidden = true;
  els.wholePhoto.hidden = !view.crop;
}

els.preview.addEventListener("error", () => {
  // The browser cannot show it after all: say so instead of a broken image.
  if (!els.preview.getAttribute("src")) return;
  els.preview.hidden = true;
  els.noPreview.hidden = false;
});

/** A numbered, tappable marker on each product found in the photo (two or more). */
function drawMarkers(photo) {
  const found = photo.detections.length >= 2 ? photo.detections : [];
  els.markers.replaceChildren(...found.flatMap((d, i) => {
    const [x, y, w, h] = d.box;
    const selected = view.item === i;
    const outline = el("div", { className: `item-box${selected ? " selected" : ""}` });
    Object.assign(outline.style, { left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%` });
    const marker = el("button", { type: "button", className: "marker" }, String(i + 1));
    marker.setAttribute("aria-label", `Item ${i + 1} of ${found.length}`);
    marker.setAttribute("aria-pressed", String(selected));
    Object.assign(marker.style, { left: `${(x + w / 2) * 100}%`, top: `${(y + h / 2) * 100}%` });
    marker.addEventListener("click", () => {
      if (view.item !== i) navigate({ ...view, crop: d.box, item: i, shown: PAGE_SIZE });
    });
    return [outline, marker];
  }));
}

els.file.addEventListener("change", () => {
  const file = els.file.files[0];
  // Forget the selection, so choosing the same photo again still counts as a change.
  els.file.value = "";
  usePhoto(file);
});
els.newPhoto.addEventListener("click", () => els.file.click());
els.wholePhoto.addEventListener("click", () => navigate({ ...view, crop: null, item: null, shown: PAGE_SIZE }));
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (e) => {
    e.preventDefault();
    els.dropzone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "dragend"]) document.addEventListener(type, () => els.dropzone.classList.remove("dragging"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  els.dropzone.classList.remove("dragging");
  const file = [...(e.dataTransfer?.files || [])][0];
  if (file) usePhoto(file);
});
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])][0];
  if (file) {
    e.preventDefault();
    usePhoto(file);
  }
});

// ---------------------------------------------------------------------------------------------
// Selecting an area: draw a box (mouse, pen; touch in "Select an area" mode), drag it or its
// corner handles, or use the keyboard. The search reruns on the box (fractions of the photo).

const MIN_SIDE = 0.05;
let drag = null; // {mode: "draw" | "move" | corner, start, box}
let draft = null; // The box being placed with the keyboard.

function setCropMode(on) {
  els.cropMode.setAttribute("aria-pressed", String(on));
  els.cropArea.classList.toggle("cropping", on);
}
els.cropMode.addEventListener("click", () => setCropMode(els.cropMode.getAttribute("aria-pressed") !== "true"));

function fractionAt(e) {
  const r = els.cropArea.getBoundingClientRect();
  return [clamp((e.clientX - r.left) / r.width, 0, 1), clamp((e.clientY - r.top) / r.height, 0, 1)];
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function showCropBox([x, y, w, h]) {
  Object.assign(els.cropBox.style, { left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%` });
  els.cropBox.hidden = false;
}

/** The box spanning two points. */
function boxOf(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
}

/** `box` kept inside the photo and at least MIN_SIDE on each side. */
function fit([x, y, w, h]) {
  w = clamp(w, MIN_SIDE, 1);
  h = clamp(h, MIN_SIDE, 1);
  return [clamp(x, 0, 1 - w), clamp(y, 0, 1 - h), w, h];
}

function dragged(e) {
  const p = fractionAt(e);
  const [sx, sy] = drag.start;
  const [x, y, w, h] = drag.box;
  if (drag.mode === "draw") return boxOf(drag.start, p);
  if (drag.mode === "move") return fit([x + p[0] - sx, y + p[1] - sy, w, h]);
  // A corner: the opposite corner stays put.
  const fixed = [drag.mode.includes("w") ? x + w : x, drag.mode.includes("n") ? y + h : y];
  return boxOf(fixed, p);
}

els.cropArea.addEventListener("pointerdown", (e) => {
  if (view.kind !== "photo" || e.button > 0 || e.target.closest(".marker")) return;
  const handle = e.target.closest(".handle");
  const inBox = e.target.closest(".crop-box");
  const cropping = els.cropMode.getAttribute("aria-pressed") === "true";
  let mode;
  if (handle) mode = handle.dataset.handle;
  else if (inBox) mode = "move";
  else if (e.pointerType !== "touch" || cropping) mode = "draw";
  else return; // A finger on the photo scrolls the page.
  e.preventDefault();
  try {
    els.cropArea.setPointerCapture(e.pointerId);
  } catch (err) {
    /* The pointer is already gone (lifted): the drag ends at once. */
  }
  const start = fractionAt(e);
  drag = { mode, start, box: view.crop && !els.cropBox.hidden ? view.crop : [...start, 0, 0] };
  if (mode === "draw") showCropBox([...start, 0, 0]);
});
els.cropArea.addEventListener("pointermove", (e) => {
  if (drag) showCropBox(dragged(e));
});
els.cropArea.addEventListener("pointerup", (e) => {
  if (!drag) return;
  const box = dragged(e);
  const mode = drag.mode;
  drag = null;
  if (box[2] < 0.03 || box[3] < 0.03) {
    // A tap, not a box: keep what was there.
    if (view.crop && view.item === null) showCropBox(view.crop); else els.cropBox.hidden = true;
    return;
  }
  const moved = mode !== "draw" && view.crop && box.every((v, i) => Math.abs(v - view.crop[i]) < 0.005);
  if (moved) return;
  setCropMode(false);
  navigate({ ...view, crop: fit(box), item: null, shown: PAGE_SIZE });
});
els.cropArea.addEventListener("pointercancel", () => {
  drag = null;
  if (view.crop && view.item === null) showCropBox(view.crop); else els.cropBox.hidden = true;
});

function announce(box) {
  const pct = (v) => `${Math.round(v * 100)} %`;
  els.cropAnnounce.textContent = `Area ${pct(box[0])} from the left, ${pct(box[1])} from the top, ${pct(box[2])} wide, ${pct(box[3])} high. Enter searches it, Escape cancels.`;
}

// Keyboard: with the photo focused, C places a box (the current one, or a centred one); arrow
// keys move it, Shift+arrows resize it; Enter searches it, Escape drops it.
els.cropArea.addEventListener("keydown", (e) => {
  if (view.kind !== "photo") return;
  const step = 0.05;
  if ((e.key === "c" || e.key === "C") && !draft) {
    draft = view.crop ? [...view.crop] : [0.25, 0.25, 0.5, 0.5];
    showCropBox(draft);
    announce(draft);
    e.preventDefault();
    return;
  }
  if (!draft) return;
  const [x, y, w, h] = draft;
  const moves = {
    ArrowLeft: e.shiftKey ? [x, y, w - step, h] : [x - step, y, w, h],
    ArrowRight: e.shiftKey ? [x, y, w + step, h] : [x + step, y, w, h],
    ArrowUp: e.shiftKey ? [x, y, w, h - step] : [x, y - step, w, h],
    ArrowDown: e.shiftKey ? [x, y, w, h + step] : [x, y + step, w, h],
  };
  if (moves[e.key]) {
    e.preventDefault();
    draft = fit(moves[e.key]);
    showCropBox(draft);
    announce(draft);
  } else if (e.key === "Enter") {
    e.preventDefault();
    const box = draft;
    draft = null;
    navigate({ ...view, crop: box, item: null, shown: PAGE_SIZE });
  } else if (e.key === "Escape") {
    e.preventDefault();
    draft = null;
    els.cropAnnounce.textContent = "Area cancelled.";
    if (view.crop && view.item === null) showCropBox(view.crop); else els.cropBox.hidden = true;
  }
});

// ---------------------------------------------------------------------------------------------
// While `lookalike index` is still adding products (the demo indexes in the background), say
// how far it is: searches already cover what it has added. Checked every few seconds until done.

async function showIndexing() {
  const banner = $("indexing");
  try {
    const { indexing, products } = await api("/readyz");
    if (indexing) {
      const n = (x) => x.toLocaleString("en");
      banner.textContent = `Indexing the catalog: ${n(indexing.done)} of ${n(indexing.total)} products so far. Search covers the ${n(products)} already indexed.`;
      banner.hidden = false;
      setTimeout(showIndexing, 3000);
    } else if (!banner.hidden) {
      banner.hidden = true;
      loadFacets();
    }
  } catch (e) {
    setTimeout(showIndexing, 10000);
  }
}

view = viewFromUrl();
show({ focus: false });
loadFacets();
showIndexing();
