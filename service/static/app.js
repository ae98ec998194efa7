// cmhash search page: plain JS, no build step, no external resources.
// Talks to the service's JSON API (POST /search/text-to-image, POST /search/image-to-text,
// GET /gallery/images, GET /gallery/texts, GET /gallery/images/{id}/file).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  const els = {
    galleryImages: $("gallery-images"),
    galleryTexts: $("gallery-texts"),
    k: $("k"),
    status: $("status"),
    error: $("error"),
    textForm: $("text-form"),
    query: $("query"),
    textSubmit: $("text-submit"),
    imageResults: $("image-results"),
    dropzone: $("dropzone"),
    file: $("image-file"),
    preview: $("preview"),
    previewImg: $("preview-img"),
    previewName: $("preview-name"),
    textResults: $("text-results"),
  };

  // One request in flight per direction: a new search cancels the previous one.
  const inflight = { image: null, text: null };
  let previewUrl = null;
  let lastFile = null; // the last uploaded or dropped image, re-searched when k changes

  /** An Error whose message is fit to show (from the API's error body, or a plain one). */
  class ApiError extends Error {}

  /** Fetch `url` and return its JSON body; throw ApiError with a readable message otherwise. */
  async function requestJson(url, options) {
    let response;
    try {
      response = await fetch(url, Object.assign({ headers: { Accept: "application/json" } }, options));
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("Could not reach the service. Is it running?");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && typeof body.error.message === "string" && body.error.message
        ? body.error.message
        : `Request failed (HTTP ${response.status}).`;
      const error = new ApiError(message);
      error.status = response.status;
      error.code = body && body.error ? body.error.code : undefined;
      throw error;
    }
    if (body === null) throw new ApiError("The service sent a response that is not JSON.");
    return body;
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

  function distanceBadge(distance, bits) {
    const title = bits ? `Hamming distance ${distance} of ${bits} bits` : `Hamming distance ${distance}`;
    return el("span", { class: "distance", title, "data-distance": String(distance) }, [
      el("span", { class: "visually-hidden", text: "Distance " }),
      document.createTextNode(`d ${distance}`),
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
    if (loading) {
      const spinner = el("p", { class: "loading-note" }, [
        el("span", { class: "spinner", "aria-hidden": "true" }),
        document.createTextNode(message),
      ]);
      const old = container.querySelector(".loading-note");
      if (old) old.remove();
      container.prepend(spinner);
    } else {
      const old = container.querySelector(".loading-note");
      if (old) old.remove();
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

  // ---- text -> images -------------------------------------------------------------------

  function renderImageHits(data) {
    els.imageResults.replaceChildren();
    if (!data.results.length) {
      els.imageResults.append(el("p", { class: "placeholder", text: "No images found." }));
      return;
    }
    const grid = el("ol", { class: "image-grid", id: "image-grid", "aria-label": "Matching images" });
    data.results.forEach((hit, i) => {
      const meta = hit.metadata || {};
      const caption = typeof meta.text === "string" && meta.text ? meta.text : null;
      const img = el("img", {
        src: `/gallery/images/${encodeURIComponent(hit.id)}/file`,
        alt: caption ? `Image ${hit.id}: ${caption}` : `Image ${hit.id}`,
        decoding: "async",
        width: 160,
        height: 160,
      });
      img.addEventListener("error", () => {
        img.classList.add("broken");
        img.alt = `Image ${hit.id} could not be loaded`;
      });
      const card = el("li", { class: "hit image-hit", "data-id": hit.id, "data-distance": String(hit.distance) }, [
        el("div", { class: "thumb" }, [img, el("span", { class: "rank", text: `#${i + 1}` })]),
        el("div", { class: "hit-body" }, [
          el("div", { class: "hit-head" }, [
            distanceBadge(hit.distance, data.bits),
            el("code", { class: "hit-id", text: hit.id, title: hit.id }),
          ]),
          caption ? el("p", { class: "hit-text", text: caption, title: caption }) : null,
          labelList(labelsOf(meta)),
        ]),
      ]);
      grid.append(card);
    });
    els.imageResults.append(grid);
  }

  async function searchText(event) {
    if (event) event.preventDefault();
    const text = els.query.value.trim();
    if (!text) {
      els.query.focus();
      showError("Type some text to search for.");
      return;
    }
    clearError();
    if (inflight.image) inflight.image.abort();
    const controller = new AbortController();
    inflight.image = controller;
    els.textSubmit.disabled = true;
    setLoading(els.imageResults, true, "Searching images…");
    setStatus("Searching images…");
    try {
      const data = await requestJson("/search/text-to-image", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ text, k: Number(els.k.value) }),
        signal: controller.signal,
      });
      renderImageHits(data);
      setStatus(`Text → images: ${summary(data, "result")}`);
    } catch (err) {
      if (err.name === "AbortError") return;
      setLoading(els.imageResults, false);
      showFailed(els.imageResults);
      showError(err instanceof ApiError ? err.message : "Something went wrong while searching.");
      setStatus("Search failed.");
    } finally {
      if (inflight.image === controller) {
        inflight.image = null;
        els.textSubmit.disabled = false;
        setLoading(els.imageResults, false);
      }
    }
  }

  // ---- image -> texts -------------------------------------------------------------------

  function renderTextHits(data) {
    els.textResults.replaceChildren();
    if (!data.results.length) {
      els.textResults.append(el("p", { class: "placeholder", text: "No texts found." }));
      return;
    }
    const list = el("ol", { class: "text-list", id: "text-list", "aria-label": "Matching texts" });
    data.results.forEach((hit) => {
      const meta = hit.metadata || {};
      const text = typeof meta.text === "string" && meta.text ? meta.text : hit.id;
      list.append(el("li", { class: "hit text-hit", "data-id": hit.id, "data-distance": String(hit.distance) }, [
        distanceBadge(hit.distance, data.bits),
        el("div", { class: "hit-body" }, [
          el("p", { class: "hit-text", text }),
          el("div", { class: "hit-meta" }, [
            el("code", { class: "hit-id", text: hit.id, title: hit.id }),
            labelList(labelsOf(meta)),
          ]),
        ]),
      ]));
    });
    els.textResults.append(list);
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    els.previewName.textContent = file.name || "uploaded image";
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

  async function searchImage(file) {
    if (!file) return;
    lastFile = file;
    clearError();
    showPreview(file);
    if (inflight.text) inflight.text.abort();
    const controller = new AbortController();
    inflight.text = controller;
    els.dropzone.classList.add("busy");
    setLoading(els.textResults, true, "Searching texts…");
    setStatus("Searching texts…");
    const form = new FormData();
    form.append("file", file, file.name || "image");
    form.append("k", els.k.value);
    try {
      const data = await requestJson("/search/image-to-text", {
        method: "POST",
        body: form,
        signal: controller.signal,
      });
      renderTextHits(data);
      setStatus(`Image → texts: ${summary(data, "result")}`);
    } catch (err) {
      if (err.name === "AbortError") return;
      setLoading(els.textResults, false);
      showFailed(els.textResults);
      showError(err instanceof ApiError ? err.message : "Something went wrong while searching.");
      setStatus("Search failed.");
    } finally {
      if (inflight.text === controller) {
        inflight.text = null;
        els.dropzone.classList.remove("busy");
        setLoading(els.textResults, false);
      }
    }
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

  // Changing k re-runs the last searches so the lists match the selector.
  els.k.addEventListener("change", () => {
    if (els.query.value.trim() && els.imageResults.querySelector(".hit")) searchText();
    if (lastFile && els.textResults.querySelector(".hit")) searchImage(lastFile);
  });

  loadGallery("images", els.galleryImages);
  loadGallery("texts", els.galleryTexts);
})();
