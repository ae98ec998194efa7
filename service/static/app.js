// cmhash search page: plain JS, no build step, no external resources (the page's
// Content-Security-Policy allows only this server: no inline script or style).
// Talks to the service's JSON API: POST /search/{text,image}-to-{image,text},
// GET /gallery/images, GET /gallery/texts, GET /gallery/images/{id}/file.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  const els = {
    galleryImages: $("gallery-images"),
    galleryTexts: $("gallery-texts"),
    k: $("k"),
    rerank: $("rerank"),
    status: $("status"),
    error: $("error"),
    textForm: $("text-form"),
    query: $("query"),
    textSubmit: $("text-submit"),
    unknownWords: $("unknown-words"),
    dropzone: $("dropzone"),
    file: $("image-file"),
    preview: $("preview"),
    previewImg: $("preview-img"),
    previewName: $("preview-name"),
  };

  const NOUN = { image: "images", text: "texts" };
  const ARROW_NAME = { image: "Image", text: "Text" };

  // The two query panels: one searches with a text, one with an image; each finds images or
  // texts (its "Find" switch). One request in flight per panel: a new search cancels the last;
  // `searched`: the last search succeeded (changing k or the target re-runs it).
  const panels = {
    text: { source: "text", results: $("text-query-results"), radios: "text-target", inflight: null, searched: false },
    image: { source: "image", results: $("image-query-results"), radios: "image-target", inflight: null, searched: false },
  };
  let previewUrl = null;
  let lastFile = null; // the image last searched with, re-searched when k or the target changes
  let lastCaption = null;

  function targetOf(panel) {
    const checked = document.querySelector(`input[name="${panel.radios}"]:checked`);
    return checked ? checked.value : (panel.source === "text" ? "image" : "text");
  }

  function setTarget(panel, target) {
    const radio = document.querySelector(`input[name="${panel.radios}"][value="${target}"]`);
    if (radio) radio.checked = true;
  }

  /** An Error whose message is fit to show (from the API's error body, or a plain one). */
  class ApiError extends Error {}

  async function errorFrom(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const message = body && body.error && typeof body.error.message === "string" && body.error.message
      ? body.error.message
      : `Request failed (HTTP ${response.status}).`;
    const error = new ApiError(message);
    error.status = response.status;
    error.code = body && body.error ? body.error.code : undefined;
    return error;
  }

  async function send(url, options) {
    try {
      return await fetch(url, Object.assign({ headers: { Accept: "application/json" } }, options));
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("Could not reach the service. Is it running?");
    }
  }

  /** Fetch `url` and return its JSON body; throw ApiError with a readable message otherwise. */
  async function requestJson(url, options) {
    const response = await send(url, options);
    if (!response.ok) throw await errorFrom(response);
    try {
      return await response.json();
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("The service sent a response that is not JSON.");
    }
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  function imageUrl(id) {
    return `/gallery/images/${encodeURIComponent(id)}/file`;
  }

  function labelsOf(metadata) {
    const labels = metadata && metadata.labels;
    if (!Array.isArray(labels)) return [];
    return labels.filter((l) => l !== null && l !== undefined).map(String);
  }

  function labelList(labels) {
    if (!labels.length) return null;
    return el("ul", { class: "labels", "aria-label": "Labels" },
      labels.map((label) => el("li", { class: "label", text: label })));
  }

  /** Similarity in whole percent: 1 - distance / bits, rounded down (100 % only for distance 0). */
  function similarity(distance, bits) {
    if (!bits || typeof distance !== "number") return null;
    return Math.max(0, Math.floor(((bits - distance) * 100) / bits));
  }

  function distanceBadge(distance, bits) {
    const title = bits ? `Hamming distance ${distance} of ${bits} bits` : `Hamming distance ${distance}`;
    return el("span", { class: "distance", title, "data-distance": String(distance) }, [
      el("span", { class: "visually-hidden", text: "Distance " }),
      document.createTextNode(`d ${distance}`),
    ]);
  }

  function similarityBadge(distance, bits) {
    const percent = similarity(distance, bits);
    if (percent === null) return null;
    return el("span", {
      class: "similarity",
      title: `Similarity 1 − ${distance} / ${bits} bits`,
      "data-similarity": String(percent),
    }, [
      el("span", { class: "visually-hidden", text: "Similarity " }),
      document.createTextNode(`${percent}%`),
    ]);
  }

  // ---- status, errors, loading ----------------------------------------------------------

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
  }

  function showUnknownWords(words) {
    if (Array.isArray(words) && words.length) {
      els.unknownWords.textContent = `Not in the model's vocabulary: ${words.join(", ")}. ` +
        "The search used the other words.";
      els.unknownWords.hidden = false;
    } else {
      els.unknownWords.hidden = true;
      els.unknownWords.textContent = "";
    }
  }

  /** Replace a panel's (now stale) results after a failed search. */
  function showFailed(container) {
    container.replaceChildren(el("p", { class: "placeholder", text: "No results: the search failed (see the message above)." }));
  }

  function setStatus(message) {
    els.status.textContent = message;
  }

  function setLoading(container, loading, message) {
    container.setAttribute("aria-busy", loading ? "true" : "false");
    container.classList.toggle("loading", loading);
    const old = container.querySelector(".loading-note");
    if (old) old.remove();
    if (loading) {
      container.prepend(el("p", { class: "loading-note" }, [
        el("span", { class: "spinner", "aria-hidden": "true" }),
        document.createTextNode(message),
      ]));
    }
  }

  function summary(data, what) {
    const n = data.results.length;
    const took = typeof data.took_ms === "number" ? `${data.took_ms.toFixed(1)} ms` : "? ms";
    const bits = data.bits ? ` · ${data.bits}-bit codes` : "";
    return `${n} ${what}${n === 1 ? "" : "s"} in ${took}${bits}`;
  }

  // ---- gallery sizes --------------------------------------------------------------------

  async function loadGallery(kind, target) {
    try {
      const info = await requestJson(`/gallery/${kind}`);
      const count = Number(info.count);
      const noun = kind === "images" ? "image" : "text";
      target.textContent = `${count.toLocaleString("en")} ${noun}${count === 1 ? "" : "s"}` +
        (info.bits ? ` · ${info.bits} bits` : "");
      target.dataset.state = "loaded";
      target.dataset.count = String(count);
    } catch (err) {
      target.textContent = err.status === 503 ? "not loaded" : "unavailable";
      target.dataset.state = err.status === 503 ? "missing" : "error";
      if (err.message) target.title = err.message;
    }
  }

  // ---- results --------------------------------------------------------------------------

  function scores(hit, bits) {
    return [distanceBadge(hit.distance, bits), similarityBadge(hit.distance, bits)];
  }

  function imageHit(hit, rank, bits) {
    const meta = hit.metadata || {};
    const caption = typeof meta.text === "string" && meta.text ? meta.text : null;
    const img = el("img", {
      src: imageUrl(hit.id),
      alt: "",
      decoding: "async",
      width: 160,
      height: 160,
    });
    const name = caption ? `Image ${hit.id}: ${caption}` : `Image ${hit.id}`;
    img.addEventListener("error", () => img.classList.add("broken"));
    const open = el("button", {
      type: "button",
      class: "hit-open",
      title: "Find similar images",
      "aria-label": `${name}. Find similar images`,
    }, [el("span", { class: "thumb" }, [img, el("span", { class: "rank", "aria-hidden": "true", text: `#${rank}` })])]);
    open.addEventListener("click", () => browseImage(hit.id));
    return el("li", {
      class: "hit image-hit",
      "data-id": hit.id,
      "data-distance": String(hit.distance),
    }, [
      open,
      el("div", { class: "hit-body" }, [
        el("div", { class: "hit-head" }, [
          ...scores(hit, bits),
          el("code", { class: "hit-id", text: hit.id, title: hit.id }),
        ]),
        caption ? el("p", { class: "hit-text", text: caption, title: caption }) : null,
        labelList(labelsOf(meta)),
      ]),
    ]);
  }

  function textHit(hit, bits) {
    const meta = hit.metadata || {};
    const hasText = typeof meta.text === "string" && meta.text;
    const shown = el("span", { class: "hit-text", text: hasText ? meta.text : hit.id });
    let main = shown;
    if (hasText) {
      main = el("button", { type: "button", class: "hit-open", title: "Find similar texts" }, [
        shown,
        el("span", { class: "visually-hidden", text: ". Find similar texts" }),
      ]);
      main.addEventListener("click", () => browseText(meta.text));
    }
    return el("li", { class: "hit text-hit", "data-id": hit.id, "data-distance": String(hit.distance) }, [
      el("div", { class: "scores" }, scores(hit, bits)),
      el("div", { class: "hit-body" }, [
        main,
        el("div", { class: "hit-meta" }, [
          el("code", { class: "hit-id", text: hit.id, title: hit.id }),
          labelList(labelsOf(meta)),
        ]),
      ]),
    ]);
  }

  function renderHits(panel, target, data) {
    const container = panel.results;
    container.replaceChildren();
    if (!data.results.length) {
      container.append(el("p", { class: "placeholder", text: `No ${NOUN[target]} found.` }));
      return;
    }
    const label = `Matching ${NOUN[target]}`;
    const list = target === "image"
      ? el("ol", { class: "image-grid", "aria-label": label })
      : el("ol", { class: "text-list", "aria-label": label });
    data.results.forEach((hit, i) => {
      list.append(target === "image" ? imageHit(hit, i + 1, data.bits) : textHit(hit, data.bits));
    });
    container.append(list);
  }

  /** Run one search of `panel` (request built by `makeRequest`); cancels the panel's last one. */
  async function runSearch(panel, makeRequest, hooks) {
    const target = targetOf(panel);
    if (panel.inflight) panel.inflight.abort();
    const controller = new AbortController();
    panel.inflight = controller;
    const what = `${ARROW_NAME[panel.source]} → ${NOUN[target]}`;
    clearError();
    if (hooks.start) hooks.start();
    setLoading(panel.results, true, `Searching ${NOUN[target]}…`);
    setStatus(`Searching ${NOUN[target]}…`);
    try {
      const request = await makeRequest(controller.signal);
      const data = await requestJson(`/search/${panel.source}-to-${target}`,
        Object.assign({ method: "POST", signal: controller.signal }, request));
      if (panel.inflight !== controller) return;
      renderHits(panel, target, data);
      panel.searched = true;
      if (hooks.done) hooks.done(data);
      setStatus(`${what}: ${summary(data, "result")}`);
    } catch (err) {
      if (err && err.name === "AbortError") return;
      if (panel.inflight !== controller) return;
      setLoading(panel.results, false);
      showFailed(panel.results);
      panel.searched = false;
      if (hooks.failed) hooks.failed(err);
      showError(err instanceof ApiError ? err.message : "Something went wrong while searching.");
      setStatus("Search failed.");
    } finally {
      if (panel.inflight === controller) {
        panel.inflight = null;
        setLoading(panel.results, false);
        if (hooks.end) hooks.end();
      }
    }
  }

  // ---- search with text -----------------------------------------------------------------

  /** The API's `rerank` from the Order selector: null (Hamming order), a count, or "all". */
  function rerankValue() {
    const value = els.rerank.value;
    return value === "" ? null : value === "all" ? "all" : Number(value);
  }

  function searchText(event) {
    if (event) event.preventDefault();
    const text = els.query.value.trim();
    if (!text) {
      els.query.focus();
      showError("Type some text to search for.");
      return Promise.resolve();
    }
    return runSearch(panels.text, async () => ({
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ text, k: Number(els.k.value), rerank: rerankValue() }),
    }), {
      start: () => {
        els.textSubmit.disabled = true;
        showUnknownWords([]);
      },
      done: (data) => showUnknownWords(data.unknown_words),
      end: () => { els.textSubmit.disabled = false; },
    });
  }

  /** A text result was activated: search texts with its text. */
  function browseText(text) {
    els.query.value = text;
    setTarget(panels.text, "text");
    els.query.focus();
    searchText();
  }

  // ---- search with an image -------------------------------------------------------------

  function showPreview(file, caption) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    els.previewName.textContent = caption || file.name || "uploaded image";
    if (file.type && file.type.startsWith("image/")) {
      previewUrl = URL.createObjectURL(file);
      els.previewImg.src = previewUrl;
      els.previewImg.hidden = false;
    } else {
      els.previewImg.removeAttribute("src");
      els.previewImg.hidden = true;
    }
    els.preview.classList.toggle("no-image", els.previewImg.hidden);
    els.preview.hidden = false;
  }

  /** Search with an image: a File, or a promise of one (a gallery image being fetched). */
  function searchImage(file, caption) {
    if (!file) return Promise.resolve();
    return runSearch(panels.image, async (signal) => {
      const query = await file;
      if (signal.aborted) throw new DOMException("superseded", "AbortError");
      lastFile = query;
      lastCaption = caption || null;
      showPreview(query, caption);
      const form = new FormData();
      form.append("file", query, query.name || "image");
      form.append("k", els.k.value);
      if (els.rerank.value) form.append("rerank", els.rerank.value);
      return { body: form };
    }, {
      start: () => els.dropzone.classList.add("busy"),
      end: () => els.dropzone.classList.remove("busy"),
    });
  }

  const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp" };

  /** The stored file of gallery image `id`, as a File to upload. */
  async function galleryImage(id) {
    const response = await send(imageUrl(id), { headers: { Accept: "image/*" } });
    if (!response.ok) throw await errorFrom(response);
    const blob = await response.blob();
    const ext = EXTENSIONS[blob.type] || "img";
    const base = id.replace(/[^A-Za-z0-9._-]+/g, "_").slice(-80) || "image";
    return new File([blob], `${base}.${ext}`, { type: blob.type || "application/octet-stream" });
  }

  /** An image result was activated: search images with its file. */
  function browseImage(id) {
    setTarget(panels.image, "image");
    els.file.value = "";
    els.file.focus();
    return searchImage(galleryImage(id), `Image ${id}`);
  }

  // ---- wiring ---------------------------------------------------------------------------

  els.textForm.addEventListener("submit", searchText);

  els.file.addEventListener("change", () => {
    const file = els.file.files && els.file.files[0];
    if (file) searchImage(file);
  });

  ["dragenter", "dragover"].forEach((type) =>
    els.dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
      els.dropzone.classList.add("dragging");
    }));
  ["dragleave", "dragend"].forEach((type) =>
    els.dropzone.addEventListener(type, (event) => {
      if (event.type === "dragleave" && els.dropzone.contains(event.relatedTarget)) return;
      els.dropzone.classList.remove("dragging");
    }));
  els.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    els.dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) searchImage(file);
  });
  // A file dropped outside the drop zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  function rerunText() {
    if (els.query.value.trim() && panels.text.searched) searchText();
  }

  function rerunImage() {
    if (lastFile && panels.image.searched) searchImage(lastFile, lastCaption);
  }

  // Changing k or the order re-runs the last searches so the lists match the selectors.
  [els.k, els.rerank].forEach((select) => select.addEventListener("change", () => {
    rerunText();
    rerunImage();
  }));

  // Switching what a panel finds re-runs its last search.
  document.querySelectorAll('input[name="text-target"]').forEach((radio) =>
    radio.addEventListener("change", rerunText));
  document.querySelectorAll('input[name="image-target"]').forEach((radio) =>
    radio.addEventListener("change", rerunImage));

  loadGallery("images", els.galleryImages);
  loadGallery("texts", els.galleryTexts);
})();
