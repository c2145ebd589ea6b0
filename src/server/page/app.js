// lookalike's page: upload (picker, drag and drop, paste), optional crop, results, facets,
// "more like this" and product details. Plain browser JavaScript, no build step, no libraries.
"use strict";

const PAGE_SIZE = 24;

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), dropzone: $("dropzone"), photoPanel: $("photo-panel"), cropArea: $("crop-area"),
  preview: $("preview"), cropBox: $("crop-box"), clearCrop: $("clear-crop"), newPhoto: $("new-photo"),
  error: $("error"), status: $("status"), grid: $("grid"), loadMore: $("load-more"),
  facetForm: $("facet-form"), details: $("details"), detailsImage: $("details-image"),
  detailsTitle: $("details-title"), detailsMeta: $("details-meta"), detailsLike: $("details-like"),
  queryColour: $("query-colour"), colourMode: $("colour-mode"),
};

// What the results show. `query` is {kind: "photo", vector, label} once a photo has been
// encoded (paging and filtering then reuse its vector: the photo is uploaded once per crop), or
// {kind: "like", id} for "more like this".
// `colour` is how results treat colour: "match" (same colour as the photo) or "any".
const state = { photo: null, photoUrl: null, crop: null, query: null, offset: 0, filters: new Map(), busy: false, colour: "match" };

// ---------------------------------------------------------------------------------------------
// API

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const isJson = (response.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await response.json() : null;
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `The server answered ${response.status}.`;
    const retry = response.headers.get("retry-after");
    throw new Error(retry ? `${message} (retry in ${retry} s)` : message);
  }
  return body;
}

function filtersObject() {
  const out = {};
  for (const [column, values] of state.filters) if (values.size) out[column] = [...values];
  return out;
}

/** Runs the current query at `offset`; appends to the grid when paging. */
async function runSearch(offset) {
  if (!state.query && !state.photo) return;
  setBusy(true);
  showError(null);
  try {
    let result;
    if (!state.query) {
      // A new photo (or crop): upload it once, keep its vector for paging and filters.
      const form = new FormData();
      form.append("image", state.photo, state.photo.name || "photo");
      form.append("k", String(PAGE_SIZE));
      form.append("offset", "0");
      form.append("include_vector", "true");
      form.append("colour", state.colour);
      const crop = state.crop ? state.crop.map((v) => v.toFixed(4)).join(",") : "";
      if (crop) form.append("crop", crop);
      els.cropArea.dataset.crop = crop; // What was sent, for tests and curious developers.
      for (const [column, values] of state.filters) for (const v of values) form.append("filter", `${column}=${v}`);
      result = await api("/api/search", { method: "POST", body: form });
      const colour = result.query_colour || null;
      state.query = { kind: "photo", vector: result.query_vector, colourVector: colour && colour.descriptor, label: state.crop ? "the part of your photo you picked" : "your photo" };
      showQueryColour(colour);
      offset = 0;
    } else {
      const body = { k: PAGE_SIZE, offset, filters: filtersObject(), colour: state.colour };
      if (state.query.kind === "like") body.product_id = state.query.id;
      else {
        body.vector = state.query.vector;
        if (state.query.colourVector) body.colour_vector = state.query.colourVector;
      }
      result = await api("/api/search", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    }
    state.offset = offset + result.hits.length;
    renderHits(result.hits, offset > 0);
    const shown = els.grid.children.length;
    const t = result.timings;
    const stages = t.encode_ms > 0 ? ` (encoding ${t.encode_ms.toFixed(0)} ms, search ${t.search_ms.toFixed(0)} ms)` : "";
    els.status.textContent = shown
      ? `${shown} products like ${state.query.label}, best first. Query time ${t.total_ms.toFixed(0)} ms${stages}.`
      : "No products match these filters.";
    els.loadMore.hidden = result.hits.length < PAGE_SIZE;
  } catch (err) {
    showError(err.message);
    if (!state.query) els.status.textContent = "The search did not run.";
  } finally {
    setBusy(false);
  }
}

/** The colour found in the shopper's photo, as a swatch beside it. */
function showQueryColour(colour) {
  els.queryColour.hidden = !colour;
  if (!colour) return;
  els.queryColour.querySelector(".swatch").style.background = colour.rgb;
  els.queryColour.querySelector(".colour-name").textContent = colour.name;
}

function setBusy(busy) {
  state.busy = busy;
  els.loadMore.disabled = busy;
  document.body.classList.toggle("busy", busy);
  if (busy) els.status.textContent = "Searching…";
}

function showError(message) {
  els.error.hidden = !message;
  els.error.textContent = message || "";
}

// ---------------------------------------------------------------------------------------------
// Results

function renderHits(hits, append) {
  if (!append) els.grid.replaceChildren();
  for (const hit of hits) els.grid.append(card(hit));
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function card(hit) {
  const details = [hit.category, hit.colour].filter(Boolean).join(" · ");
  const swatch = el("span", { className: "swatch" });
  swatch.setAttribute("aria-hidden", "true");
  if (hit.colour_rgb) swatch.style.background = hit.colour_rgb;
  else swatch.hidden = true;
  const open = el("button", { type: "button", className: "open", title: `Details of ${hit.name}` },
    el("img", { src: hit.image_url, alt: hit.name, loading: "lazy", width: 160, height: 160 }),
    el("div", { className: "info" },
      el("div", { className: "name" }, hit.name),
      el("div", { className: "sub" }, swatch, details || "\u00a0"),
      el("div", { className: "sub score" }, `similarity ${hit.score.toFixed(3)}`)));
  open.addEventListener("click", () => openDetails(hit.id));
  const like = el("button", { type: "button", className: "like" }, "More like this");
  like.setAttribute("aria-label", `More like ${hit.name}`);
  like.addEventListener("click", () => moreLike(hit.id, hit.name));
  const item = el("li", { className: "card" }, open, like);
  item.dataset.id = hit.id;
  item.dataset.category = hit.category || "";
  return item;
}

function moreLike(id, name) {
  if (els.details.open) els.details.close();
  state.query = { kind: "like", id, label: name };
  runSearch(0);
}

async function openDetails(id) {
  try {
    const product = await api(`/api/products/${encodeURIComponent(id)}`);
    els.detailsTitle.textContent = product.name;
    els.detailsImage.src = product.image_url;
    els.detailsImage.alt = product.name;
    const rows = [["id", product.id], ...Object.entries(product.metadata)];
    els.detailsMeta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    els.detailsLike.onclick = () => moreLike(product.id, product.name);
    els.details.showModal();
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Facets

async function loadFacets() {
  try {
    const { facets } = await api("/api/facets");
    const groups = facets.map((facet) => {
      const legend = el("legend", {}, facet.column);
      const options = facet.values.map(({ value, count }) => {
        const box = el("input", { type: "checkbox", name: facet.column, value });
        box.addEventListener("change", () => {
          const set = state.filters.get(facet.column) || new Set();
          box.checked ? set.add(value) : set.delete(value);
          state.filters.set(facet.column, set);
          refilter();
        });
        return el("label", {}, box, el("span", {}, value), el("span", { className: "count" }, String(count)));
      });
      return el("fieldset", {}, legend, ...options);
    });
    const clear = el("button", { type: "button", className: "clear-filters" }, "Clear filters");
    clear.addEventListener("click", () => {
      state.filters.clear();
      els.facetForm.querySelectorAll("input[type=checkbox]").forEach((b) => (b.checked = false));
      refilter();
    });
    els.facetForm.replaceChildren(...(groups.length ? [...groups, clear] : [el("p", { className: "help" }, "This catalog has no filterable columns.")]));
  } catch (err) {
    els.facetForm.replaceChildren(el("p", { className: "help" }, `Filters unavailable: ${err.message}`));
  }
}

function refilter() {
  if (state.query) runSearch(0);
}

// ---------------------------------------------------------------------------------------------
// Photo input: picker, drag and drop, paste

function usePhoto(file) {
  if (!file) return;
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = file;
  state.photoUrl = URL.createObjectURL(file);
  state.crop = null;
  state.query = null;
  els.preview.src = state.photoUrl;
  els.cropBox.hidden = true;
  els.clearCrop.disabled = true;
  els.photoPanel.hidden = false;
  els.dropzone.hidden = true;
  runSearch(0);
}

els.file.addEventListener("change", () => {
  usePhoto(els.file.files[0]);
  // Forget the selection, so choosing the same photo again still counts as a change.
  els.file.value = "";
});
els.newPhoto.addEventListener("click", () => {
  els.dropzone.hidden = false;
  els.file.value = "";
  els.file.click();
});
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
// Crop: drag a box on the photo; the search reruns on the box (fractions of the photo)

let drag = null;

function fractionAt(e) {
  const r = els.preview.getBoundingClientRect();
  return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
}

function showCrop([x, y, w, h]) {
  Object.assign(els.cropBox.style, { left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%` });
  els.cropBox.hidden = false;
}

function boxOf(a, b) {
  const x = Math.min(a[0], b[0]), y = Math.min(a[1], b[1]);
  return [x, y, Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
}

els.cropArea.addEventListener("pointerdown", (e) => {
  if (!state.photo) return;
  e.preventDefault();
  els.cropArea.setPointerCapture(e.pointerId);
  drag = fractionAt(e);
  showCrop([...drag, 0, 0]);
});
els.cropArea.addEventListener("pointermove", (e) => {
  if (drag) showCrop(boxOf(drag, fractionAt(e)));
});
els.cropArea.addEventListener("pointerup", (e) => {
  if (!drag) return;
  const box = boxOf(drag, fractionAt(e));
  drag = null;
  if (box[2] < 0.03 || box[3] < 0.03) {
    // A click, not a box: keep the previous crop.
    if (state.crop) showCrop(state.crop); else els.cropBox.hidden = true;
    return;
  }
  if (box[0] >= 1) box[0] = 0.999;
  if (box[1] >= 1) box[1] = 0.999;
  setCrop(box);
});

function setCrop(box) {
  state.crop = box;
  state.query = null;
  if (box) showCrop(box); else els.cropBox.hidden = true;
  els.clearCrop.disabled = !box;
  runSearch(0);
}

els.clearCrop.addEventListener("click", () => setCrop(null));

// Keyboard: with the photo focused, "c" proposes a centred box and arrow keys move it
// (Shift+arrows resize); Enter searches on it. Escape drops it.
let keyboardBox = null;
els.cropArea.addEventListener("keydown", (e) => {
  if (!state.photo) return;
  const step = 0.05;
  if (e.key === "c" && !keyboardBox) keyboardBox = [0.25, 0.25, 0.5, 0.5];
  else if (!keyboardBox) return;
  const [x, y, w, h] = keyboardBox;
  const moves = {
    ArrowLeft: e.shiftKey ? [x, y, w - step, h] : [x - step, y, w, h],
    ArrowRight: e.shiftKey ? [x, y, w + step, h] : [x + step, y, w, h],
    ArrowUp: e.shiftKey ? [x, y, w, h - step] : [x, y - step, w, h],
    ArrowDown: e.shiftKey ? [x, y, w, h + step] : [x, y + step, w, h],
  };
  if (moves[e.key]) {
    e.preventDefault();
    let [nx, ny, nw, nh] = moves[e.key];
    nw = Math.min(1, Math.max(0.1, nw)); nh = Math.min(1, Math.max(0.1, nh));
    nx = Math.min(1 - nw, Math.max(0, nx)); ny = Math.min(1 - nh, Math.max(0, ny));
    keyboardBox = [nx, ny, nw, nh];
  } else if (e.key === "Enter") {
    e.preventDefault();
    setCrop(keyboardBox);
    keyboardBox = null;
    return;
  } else if (e.key === "Escape") {
    keyboardBox = null;
    if (state.crop) showCrop(state.crop); else els.cropBox.hidden = true;
    return;
  }
  showCrop(keyboardBox);
});

els.loadMore.addEventListener("click", () => runSearch(state.offset));

// While `lookalike index` is still adding products (the demo indexes in the background), say
// how far it is: searches already cover what it has added. Checked every few seconds until done.
async function showIndexing() {
  const banner = document.getElementById("indexing");
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

// Same colour / any colour: re-rank what is shown (the photo is not uploaded again).
els.colourMode.addEventListener("change", (e) => {
  if (e.target.name !== "colour") return;
  state.colour = e.target.value;
  refilter();
});

loadFacets();
showIndexing();
