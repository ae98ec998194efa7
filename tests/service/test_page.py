"""The search page (service/static/) driven in headless Chromium against the real app.

A tiny image gallery and text gallery are built with the tiny exported model, the app runs in
a real uvicorn server on 127.0.0.1, and Playwright (sync API) drives Debian's Chromium
(/usr/bin/chromium; no browser download). Screenshots land in each test's tmp dir and in
bench/out/page-*.png (gitignored) for reviewers.

Skipped, with the reason, only when Chromium or the playwright package is missing: the service,
httpx and uvicorn are plain imports, so a broken service fails these tests instead of skipping them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "bench" / "out"
N_IMAGES = 12  # 3 per class
N_TEXTS = 12
QUERY = "a small red square"
K = 5  # picked in the page's k selector; the image gallery holds more than this

pytestmark = pytest.mark.browser

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

import httpx  # noqa: E402 - after the genuine skips above
import uvicorn  # noqa: E402

import service.app as service_app  # noqa: E402
import service.settings as service_settings  # noqa: E402

# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def galleries(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """An image gallery (manifest: drawn images with text and labels) and a text gallery
    (JSONL captions with labels), both encoded with the tiny model."""
    from index.commands import build_gallery
    from tests.tiny_data import CLASSES, draw_item, item_class, item_text

    root = tmp_path_factory.mktemp("page_galleries")
    (root / "img").mkdir()
    rng = np.random.default_rng(7)
    images = []
    for i in range(N_IMAGES):
        cls = item_class(i)
        draw_item(cls, rng, size=128).save(root / "img" / f"{i:02d}.png")
        # ids with "/" and "#" (as folder listings make): the page must encodeURIComponent them
        images.append({"id": f"{CLASSES[cls][0]}/item#{i:02d}", "image": f"img/{i:02d}.png", "text": item_text(i),
                       "labels": [CLASSES[cls][0]]})
    (root / "images.jsonl").write_text("".join(json.dumps(x) + "\n" for x in images))
    texts = [{"id": f"t{i:02d}", "text": item_text(i), "labels": [CLASSES[item_class(i)][0]]} for i in range(N_TEXTS)]
    (root / "texts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in texts))
    # query images that are not in the gallery: one red square, one blue stripes
    queries = root / "queries"
    queries.mkdir()
    draw_item(0, rng).save(queries / "red.png")
    draw_item(1, rng).save(queries / "blue.png")
    (queries / "notes.txt").write_text("this is not an image\n")

    build_gallery(tiny_model_dir, root / "gallery-images", images=root / "images.jsonl", progress=False, device="cpu")
    build_gallery(tiny_model_dir, root / "gallery-texts", texts=root / "texts.jsonl", progress=False, device="cpu")
    return {"model": tiny_model_dir, "images": root / "gallery-images", "texts": root / "gallery-texts",
            "queries": queries}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(galleries):
    """The real app (service.app.create_app) in a uvicorn server on a free local port."""
    with pytest.MonkeyPatch.context() as mp:  # CMHASH_* variables of the environment must not leak in
        for name in list(os.environ):
            if name.upper().startswith("CMHASH_"):
                mp.delenv(name)
        settings = service_settings.Settings(
            model_dir=galleries["model"], image_gallery=galleries["images"], text_gallery=galleries["texts"],
            device="cpu")
        app = service_app.create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="page-test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    last: object = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            pytest.fail("the uvicorn server thread exited before /readyz answered")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                break
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.2)
    else:
        server.should_exit = True
        pytest.fail(f"the app never became ready on {url}/readyz: {last}")
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh page on the app's `/`; fails the test on any uncaught page error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{base_url}/")
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _shot(pg, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"page-{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SHOTS / path.name)
    except OSError:  # a read-only checkout still passes; the tmp copy is kept
        pass


def _shown_distances(pg, selector: str) -> list[int]:
    """The distances as the page shows them (badge text, e.g. "d 3")."""
    texts = pg.locator(f"{selector} .hit .distance").all_text_contents()
    return [int(re.search(r"(\d+)\s*$", t).group(1)) for t in texts]


def _shown(pg, selector: str) -> list[dict]:
    return pg.eval_on_selector_all(f"{selector} .hit", """els => els.map(e => ({
        id: e.dataset.id,
        idText: e.querySelector('.hit-id').textContent,
        labels: [...e.querySelectorAll('.label')].map(l => l.textContent),
    }))""")


# ---- tests ------------------------------------------------------------------------------------

def test_header_shows_gallery_sizes(page):
    sync_api.expect(page.locator("#gallery-images")).to_contain_text(f"{N_IMAGES} images")
    sync_api.expect(page.locator("#gallery-texts")).to_contain_text(f"{N_TEXTS} texts")


def test_header_says_not_loaded_on_503(page, base_url):
    """A missing gallery answers 503 with an error body: the header says "not loaded"."""
    body = json.dumps({"error": {"code": "gallery_missing", "message": "no text gallery is loaded"}})
    page.route("**/gallery/texts", lambda route: route.fulfill(status=503, content_type="application/json", body=body))
    page.goto(f"{base_url}/")
    sync_api.expect(page.locator("#gallery-texts")).to_have_text("not loaded")
    sync_api.expect(page.locator("#gallery-images")).to_contain_text(f"{N_IMAGES} images")


def test_text_query_shows_thumbnails_matching_the_api(page, base_url, tmp_path):
    page.select_option("#k", str(K))
    page.fill("#query", QUERY)
    page.press("#query", "Enter")
    page.wait_for_selector("#image-grid .hit")
    hits = page.locator("#image-grid .hit")
    assert hits.count() == K
    # every thumbnail has loaded (naturalWidth > 0)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#image-grid img')]"
        ".every(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
    assert page.locator("#image-grid img").count() == K
    srcs = page.eval_on_selector_all("#image-grid img", "els => els.map(e => e.getAttribute('src'))")
    assert all(re.fullmatch(r"/gallery/images/[a-z]+%2Fitem%23\d\d/file", s) for s in srcs), srcs  # ids encoded

    shown = _shown(page, "#image-grid")
    distances = _shown_distances(page, "#image-grid")
    assert distances == sorted(distances)
    api = httpx.post(f"{base_url}/search/text-to-image", json={"text": QUERY, "k": K}, timeout=30).json()
    assert [(h["id"], h["distance"]) for h in api["results"]] == list(zip([s["id"] for s in shown], distances))
    assert [s["idText"] for s in shown] == [h["id"] for h in api["results"]]
    assert [s["labels"] for s in shown] == [h["metadata"].get("labels", []) for h in api["results"]]
    status = page.locator("#status").text_content()
    assert f"{K} results" in status and "ms" in status, status
    assert page.locator("#error").is_hidden()
    _shot(page, tmp_path, "text-to-image")
    page.set_viewport_size({"width": 420, "height": 860})  # the grid reflows on a phone-sized screen
    _shot(page, tmp_path, "text-to-image-narrow")


def test_loading_state_while_a_search_runs(page, tmp_path):
    """While the request is held back the results are marked busy and the button is disabled."""
    held = []
    page.route("**/search/text-to-image", lambda route: held.append(route))
    page.fill("#query", QUERY)
    page.click("#text-submit")
    page.wait_for_selector("#image-results .loading-note")
    assert held, "the search request was not sent"
    assert page.get_attribute("#image-results", "aria-busy") == "true"
    assert page.locator("#text-submit").is_disabled()
    sync_api.expect(page.locator("#status")).to_have_text("Searching images…")
    _shot(page, tmp_path, "loading")
    held[0].continue_()
    page.wait_for_selector("#image-grid .hit")
    assert page.get_attribute("#image-results", "aria-busy") == "false"
    assert page.locator("#text-submit").is_enabled()
    assert page.locator("#image-results .loading-note").count() == 0


def test_image_upload_lists_texts_matching_the_api(page, base_url, galleries, tmp_path):
    red = galleries["queries"] / "red.png"
    page.set_input_files("#image-file", str(red))
    page.wait_for_selector("#text-list .hit")
    k = int(page.locator("#k").input_value())
    assert page.locator("#text-list .hit").count() == min(k, N_TEXTS)
    page.wait_for_function("() => { const i = document.getElementById('preview-img');"
                           " return !i.hidden && i.complete && i.naturalWidth > 0; }")
    distances = _shown_distances(page, "#text-list")
    assert distances == sorted(distances)
    with red.open("rb") as f:
        api = httpx.post(f"{base_url}/search/image-to-text", files={"file": ("red.png", f, "image/png")},
                         data={"k": str(k)}, timeout=30).json()
    shown = _shown(page, "#text-list")
    assert [(h["id"], h["distance"]) for h in api["results"]] == list(zip([s["id"] for s in shown], distances))
    texts = page.locator("#text-list .hit .hit-text").all_text_contents()
    assert texts == [h["metadata"]["text"] for h in api["results"]]
    _shot(page, tmp_path, "image-to-text")

    # drag and drop another image onto the drop zone: the list is replaced
    blue = (galleries["queries"] / "blue.png").read_bytes()
    page.evaluate("""async (bytes) => {
        const file = new File([new Uint8Array(bytes)], 'blue.png', {type: 'image/png'});
        const dt = new DataTransfer();
        dt.items.add(file);
        const zone = document.getElementById('dropzone');
        for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", list(blue))
    sync_api.expect(page.locator("#preview-name")).to_have_text("blue.png")
    page.wait_for_function("() => document.getElementById('text-results').getAttribute('aria-busy') === 'false'"
                           " && document.querySelectorAll('#text-list .hit').length > 0")
    with (galleries["queries"] / "blue.png").open("rb") as f:
        api = httpx.post(f"{base_url}/search/image-to-text", files={"file": ("blue.png", f, "image/png")},
                         data={"k": str(k)}, timeout=30).json()
    assert page.eval_on_selector_all("#text-list .hit", "els => els.map(e => e.dataset.id)") == \
        [h["id"] for h in api["results"]]


def test_error_message_from_the_api_is_shown(page, base_url, galleries, tmp_path):
    notes = galleries["queries"] / "notes.txt"
    with notes.open("rb") as f:
        r = httpx.post(f"{base_url}/search/image-to-text", files={"file": ("notes.txt", f, "text/plain")}, timeout=30)
    assert 400 <= r.status_code < 600, r.text
    message = r.json()["error"]["message"]
    page.set_input_files("#image-file", str(galleries["queries"] / "red.png"))
    page.wait_for_selector("#text-list .hit")
    page.set_input_files("#image-file", str(notes))
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_have_text(message)
    assert "Traceback" not in error.text_content()
    sync_api.expect(page.locator("#text-list .hit")).to_have_count(0)  # stale results are cleared
    sync_api.expect(page.locator("#status")).to_have_text("Search failed.")
    _shot(page, tmp_path, "error")
