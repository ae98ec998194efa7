"""The search page (service/static/) driven in headless Chromium against the real app.

A tiny image gallery and text gallery are built with the tiny exported model, the app runs in
a real uvicorn server on 127.0.0.1, and Playwright (sync API) drives Debian's Chromium
(/usr/bin/chromium; no browser download). Screenshots land in each test's tmp dir and in
bench/out/page-*.png (gitignored) for reviewers.

Skipped, with the reason, only when Chromium or the playwright package is missing: the service,
httpx and uvicorn are plain imports, so a broken service fails these tests instead of skipping them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
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
from tests.servers import wait_ready  # noqa: E402

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
        images.append(
            {
                "id": f"{CLASSES[cls][0]}/item#{i:02d}",
                "image": f"img/{i:02d}.png",
                "text": item_text(i),
                "labels": [CLASSES[cls][0]],
            }
        )
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
    return {
        "model": tiny_model_dir,
        "images": root / "gallery-images",
        "texts": root / "gallery-texts",
        "queries": queries,
    }


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
            model_dir=galleries["model"],
            image_gallery=galleries["images"],
            text_gallery=galleries["texts"],
            device="cpu",
        )
        app = service_app.create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="page-test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=thread.is_alive)
    except AssertionError:
        server.should_exit = True
        raise
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class PageLog:
    """What a page did: console errors and warnings, Content-Security-Policy violations (as the
    page's `securitypolicyviolation` events report them), and every response and failed request."""

    console: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    responses: list[tuple[str, str, int, str]] = field(default_factory=list)  # method, path, status, type
    failed: list[str] = field(default_factory=list)

    def bad(self) -> list[tuple[str, str, int, str]]:
        return [r for r in self.responses if r[2] >= 400]

    def requested(self, method: str, path: str) -> list[tuple[str, str, int, str]]:
        return [r for r in self.responses if r[0] == method and r[1] == path]


# Runs in the page before its own script (playwright injects it past the CSP): records CSP violations.
CSP_WATCH = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`));"""


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser, base_url, page_log):
    """A fresh page on the app's `/`; fails the test on any uncaught page error, any CSP
    violation, and a 404 for the favicon or a static file."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on(
        "console",
        lambda msg: page_log.console.append(f"{msg.type}: {msg.text}") if msg.type in ("error", "warning") else None,
    )
    pg.on(
        "response",
        lambda r: page_log.responses.append(
            (r.request.method, urlsplit(r.url).path, r.status, (r.headers.get("content-type") or "").split(";")[0])
        ),
    )
    pg.on("requestfailed", lambda r: page_log.failed.append(f"{r.method} {r.url}: {r.failure}"))
    pg.add_init_script(CSP_WATCH)
    pg.goto(f"{base_url}/")
    yield pg
    with contextlib.suppress(sync_api.Error):  # the page may be gone (closed by the test)
        page_log.csp.extend(pg.evaluate("window.__csp || []"))
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not page_log.csp, f"Content-Security-Policy violations: {page_log.csp}"
    assert not [c for c in page_log.console if "Content Security Policy" in c], page_log.console
    missing = [r for r in page_log.responses if r[2] == 404 and (r[1] == "/favicon.ico" or r[1].startswith("/static/"))]
    assert not missing, f"not found: {missing}"


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


def _pairs(shown: list[dict], distances: list[int]) -> list[tuple[str, int]]:
    """(id, distance) of each shown hit, to compare with the API's results."""
    return [(s["id"], d) for s, d in zip(shown, distances, strict=True)]


def _shown(pg, selector: str) -> list[dict]:
    return pg.eval_on_selector_all(
        f"{selector} .hit",
        """els => els.map(e => ({
        id: e.dataset.id,
        idText: e.querySelector('.hit-id').textContent,
        labels: [...e.querySelectorAll('.label')].map(l => l.textContent),
    }))""",
    )


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
    page.wait_for_selector("#text-query-results .image-grid .hit")
    hits = page.locator("#text-query-results .image-grid .hit")
    assert hits.count() == K
    # every thumbnail has loaded (naturalWidth > 0)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#text-query-results .image-grid img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=15_000,
    )
    assert page.locator("#text-query-results .image-grid img").count() == K
    srcs = page.eval_on_selector_all(
        "#text-query-results .image-grid img", "els => els.map(e => e.getAttribute('src'))"
    )
    assert all(re.fullmatch(r"/gallery/images/[a-z]+%2Fitem%23\d\d/file", s) for s in srcs), srcs  # ids encoded

    shown = _shown(page, "#text-query-results .image-grid")
    distances = _shown_distances(page, "#text-query-results .image-grid")
    assert distances == sorted(distances)
    api = httpx.post(f"{base_url}/search/text-to-image", json={"text": QUERY, "k": K}, timeout=30).json()
    assert [(h["id"], h["distance"]) for h in api["results"]] == _pairs(shown, distances)
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
    page.wait_for_selector("#text-query-results .loading-note")
    assert held, "the search request was not sent"
    assert page.get_attribute("#text-query-results", "aria-busy") == "true"
    assert page.locator("#text-submit").is_disabled()
    sync_api.expect(page.locator("#status")).to_have_text("Searching images…")
    _shot(page, tmp_path, "loading")
    held[0].continue_()
    page.wait_for_selector("#text-query-results .image-grid .hit")
    assert page.get_attribute("#text-query-results", "aria-busy") == "false"
    assert page.locator("#text-submit").is_enabled()
    assert page.locator("#text-query-results .loading-note").count() == 0


def test_image_upload_lists_texts_matching_the_api(page, base_url, galleries, tmp_path):
    red = galleries["queries"] / "red.png"
    page.set_input_files("#image-file", str(red))
    page.wait_for_selector("#image-query-results .text-list .hit")
    k = int(page.locator("#k").input_value())
    assert page.locator("#image-query-results .text-list .hit").count() == min(k, N_TEXTS)
    page.wait_for_function(
        "() => { const i = document.getElementById('preview-img');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; }"
    )
    distances = _shown_distances(page, "#image-query-results .text-list")
    assert distances == sorted(distances)
    with red.open("rb") as f:
        api = httpx.post(
            f"{base_url}/search/image-to-text",
            files={"file": ("red.png", f, "image/png")},
            data={"k": str(k)},
            timeout=30,
        ).json()
    shown = _shown(page, "#image-query-results .text-list")
    assert [(h["id"], h["distance"]) for h in api["results"]] == _pairs(shown, distances)
    texts = page.locator("#image-query-results .text-list .hit .hit-text").all_text_contents()
    assert texts == [h["metadata"]["text"] for h in api["results"]]
    _shot(page, tmp_path, "image-to-text")

    # drag and drop another image onto the drop zone: the list is replaced
    blue = (galleries["queries"] / "blue.png").read_bytes()
    page.evaluate(
        """async (bytes) => {
        const file = new File([new Uint8Array(bytes)], 'blue.png', {type: 'image/png'});
        const dt = new DataTransfer();
        dt.items.add(file);
        const zone = document.getElementById('dropzone');
        for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""",
        list(blue),
    )
    sync_api.expect(page.locator("#preview-name")).to_have_text("blue.png")
    page.wait_for_function(
        "() => document.getElementById('image-query-results').getAttribute('aria-busy') === 'false'"
        " && document.querySelectorAll('#image-query-results .text-list .hit').length > 0"
    )
    with (galleries["queries"] / "blue.png").open("rb") as f:
        api = httpx.post(
            f"{base_url}/search/image-to-text",
            files={"file": ("blue.png", f, "image/png")},
            data={"k": str(k)},
            timeout=30,
        ).json()
    assert page.eval_on_selector_all("#image-query-results .text-list .hit", "els => els.map(e => e.dataset.id)") == [
        h["id"] for h in api["results"]
    ]


def test_order_selector_re_ranks_both_searches_as_the_api_does(page, base_url, galleries):
    """The Order selector sends `rerank`: a text search and an image upload then list exactly
    the API's re-ranked pages (h . b order, no longer sorted by distance), and switching it back
    re-runs them in Hamming order."""
    page.select_option("#k", str(K))
    page.select_option("#rerank", "all")
    page.fill("#query", QUERY)
    with page.expect_request(lambda r: r.url.endswith("/search/text-to-image")) as sent:
        page.press("#query", "Enter")
    assert json.loads(sent.value.post_data or "{}")["rerank"] == "all"  # the selector reached the request
    page.wait_for_selector("#text-query-results .image-grid .hit")
    api = httpx.post(
        f"{base_url}/search/text-to-image", json={"text": QUERY, "k": K, "rerank": "all"}, timeout=30
    ).json()
    shown = _shown(page, "#text-query-results .image-grid")
    assert [s["idText"] for s in shown] == [h["id"] for h in api["results"]]
    assert all(h["score"] is not None for h in api["results"])

    red = galleries["queries"] / "red.png"
    page.set_input_files("#image-file", str(red))
    page.wait_for_selector("#image-query-results .text-list .hit")
    with red.open("rb") as f:
        api = httpx.post(
            f"{base_url}/search/image-to-text",
            files={"file": ("red.png", f, "image/png")},
            data={"k": str(K), "rerank": "all"},
            timeout=30,
        ).json()
    ids = "els => els.map(e => e.dataset.id)"
    assert page.eval_on_selector_all("#image-query-results .text-list .hit", ids) == [h["id"] for h in api["results"]]

    page.select_option("#rerank", "")  # back to Hamming order: the text search re-runs
    plain = httpx.post(f"{base_url}/search/text-to-image", json={"text": QUERY, "k": K}, timeout=30).json()
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll('#text-query-results .image-grid .hit')]"
        ".map(e => e.dataset.id)) === JSON.stringify(want)",
        arg=[h["id"] for h in plain["results"]],
        timeout=15_000,
    )


def test_error_message_from_the_api_is_shown(page, base_url, galleries, tmp_path):
    notes = galleries["queries"] / "notes.txt"
    with notes.open("rb") as f:
        r = httpx.post(f"{base_url}/search/image-to-text", files={"file": ("notes.txt", f, "text/plain")}, timeout=30)
    assert 400 <= r.status_code < 600, r.text
    message = r.json()["error"]["message"]
    page.set_input_files("#image-file", str(galleries["queries"] / "red.png"))
    page.wait_for_selector("#image-query-results .text-list .hit")
    page.set_input_files("#image-file", str(notes))
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_have_text(message)
    assert "Traceback" not in error.text_content()
    sync_api.expect(page.locator("#image-query-results .text-list .hit")).to_have_count(0)  # stale results are cleared
    sync_api.expect(page.locator("#status")).to_have_text("Search failed.")
    _shot(page, tmp_path, "error")


# ---- browsing: a result searches with itself ---------------------------------------------------


def _text_search(pg, text: str) -> None:
    pg.fill("#query", text)
    pg.press("#query", "Enter")
    _settled(pg, "#text-query-results")


def _settled(pg, container: str) -> None:
    """Wait until `container`'s search has finished (not busy, and hits or a placeholder shown)."""
    pg.wait_for_function(
        """(sel) => { const c = document.querySelector(sel);
                      return c.getAttribute('aria-busy') === 'false' && !c.querySelector('.loading-note')
                             && c.querySelector('.hit, .placeholder') !== null; }""",
        arg=container,
    )


def _checked(pg, name: str) -> str:
    return pg.eval_on_selector(f'input[name="{name}"]:checked', "e => e.value")


def _similarities(pg, selector: str) -> list[int]:
    """The similarity badges as shown ("91%"), checked against their data attribute."""
    badges = pg.eval_on_selector_all(
        f"{selector} .hit .similarity", "els => els.map(e => [e.textContent, e.dataset.similarity])"
    )
    out = []
    for text, data in badges:
        m = re.fullmatch(r"Similarity (\d+)%", text)
        assert m and m.group(1) == data, (text, data)
        out.append(int(data))
    return out


def _image_file_search(base_url: str, image_id: str, target: str, k: int) -> dict:
    """The API's answer to searching `target` with gallery image `image_id`'s stored file."""
    data = httpx.get(f"{base_url}/gallery/images/{quote(image_id, safe='')}/file", timeout=30).content
    r = httpx.post(
        f"{base_url}/search/image-to-{target}",
        files={"file": ("q.png", data, "image/png")},
        data={"k": str(k)},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_clicking_an_image_result_finds_similar_images(page, page_log, base_url, tmp_path):
    page.select_option("#k", str(K))
    _text_search(page, QUERY)
    ids = page.eval_on_selector_all("#text-query-results .image-grid .hit", "els => els.map(e => e.dataset.id)")
    assert len(ids) == K
    # a result that is its own first hit (an earlier image with the very same code would tie at
    # distance 0 and come first): the second or a later one, so the click is not just "the top"
    picks = [i for i in ids[1:] if _image_file_search(base_url, i, "image", K)["results"][0]["id"] == i]
    assert picks, f"no result of {ids} is its own first hit"
    pick = picks[0]
    assert _checked(page, "image-target") == "text"  # the image panel's default: images find texts

    page.locator(f'#text-query-results .hit[data-id="{pick}"] .hit-open').click()
    _settled(page, "#image-query-results")
    assert _checked(page, "image-target") == "image"
    shown = _shown(page, "#image-query-results .image-grid")
    distances = _shown_distances(page, "#image-query-results .image-grid")
    assert shown[0]["id"] == pick and distances[0] == 0, (shown, distances)
    api = _image_file_search(base_url, pick, "image", K)
    assert [(h["id"], h["distance"]) for h in api["results"]] == _pairs(shown, distances)
    # the stored file was fetched and uploaded as the query; the preview shows it
    assert page_log.requested("GET", f"/gallery/images/{quote(pick, safe='')}/file")
    assert [r[2] for r in page_log.requested("POST", "/search/image-to-image")] == [200]
    sync_api.expect(page.locator("#preview-name")).to_have_text(f"Image {pick}")
    page.wait_for_function(
        "() => { const i = document.getElementById('preview-img');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; }"
    )
    sync_api.expect(page.locator("#status")).to_contain_text(f"Image → images: {K} results")
    assert page.locator("#error").is_hidden()
    # focus moved to the image panel's query control, whose panel now shows the search
    assert page.evaluate("document.activeElement.id") == "image-file"

    # the image panel's own results browse too: clicking its third hit searches with that one
    third = shown[2]["id"]
    page.locator(f'#image-query-results .hit[data-id="{third}"] .hit-open').click()
    page.wait_for_function("(id) => document.getElementById('preview-name').textContent === `Image ${id}`", arg=third)
    _settled(page, "#image-query-results")
    api = _image_file_search(base_url, third, "image", K)
    assert _shown_distances(page, "#image-query-results .image-grid")[0] == 0
    assert [s["id"] for s in _shown(page, "#image-query-results .image-grid")] == [h["id"] for h in api["results"]]
    _shot(page, tmp_path, "image-to-image")
    assert not page_log.bad(), page_log.bad()


def test_a_text_result_finds_similar_texts_by_keyboard(page, page_log, base_url, galleries, tmp_path):
    page.set_input_files("#image-file", str(galleries["queries"] / "red.png"))
    _settled(page, "#image-query-results")
    hits = page.eval_on_selector_all(
        "#image-query-results .text-list .hit",
        "els => els.map(e => [e.dataset.id, e.querySelector('.hit-text').textContent])",
    )
    assert len(hits) >= 3
    pick_id, pick_text = hits[2]
    assert _checked(page, "text-target") == "image"
    # results are buttons: focus one and press Enter (keyboard activation, no mouse)
    button = page.locator(f'#image-query-results .hit[data-id="{pick_id}"] .hit-open')
    assert button.evaluate("e => e.tagName") == "BUTTON"
    button.focus()
    page.keyboard.press("Enter")
    _settled(page, "#text-query-results")
    assert _checked(page, "text-target") == "text"
    assert page.input_value("#query") == pick_text
    assert page.evaluate("document.activeElement.id") == "query"
    k = int(page.locator("#k").input_value())
    api = httpx.post(f"{base_url}/search/text-to-text", json={"text": pick_text, "k": k}, timeout=30).json()
    shown = _shown(page, "#text-query-results .text-list")
    distances = _shown_distances(page, "#text-query-results .text-list")
    assert [(h["id"], h["distance"]) for h in api["results"]] == _pairs(shown, distances)
    assert distances[0] == 0  # the text itself (or a copy of it) comes first
    assert pick_id in [s["id"] for s, d in zip(shown, distances, strict=True) if d == 0]
    sent = page_log.requested("POST", "/search/text-to-text")
    assert [r[2] for r in sent] == [200]
    sync_api.expect(page.locator("#status")).to_contain_text("Text → texts:")
    # a text result of the text panel browses as well; space activates a button too
    other_id = shown[-1]["id"]
    other = page.locator(f'#text-query-results .hit[data-id="{other_id}"] .hit-open')
    other_text = other.locator(".hit-text").text_content()
    other.focus()
    page.keyboard.press(" ")
    page.wait_for_function("(t) => document.getElementById('query').value === t", arg=other_text)
    _settled(page, "#text-query-results")
    assert _shown_distances(page, "#text-query-results .text-list")[0] == 0
    _shot(page, tmp_path, "text-to-text")
    assert not page_log.bad(), page_log.bad()


def test_focus_order_of_a_panel(page, tmp_path):
    """Query box, Search, the Find switch (one stop; arrows pick), then the results' buttons."""
    _text_search(page, QUERY)
    page.focus("#query")
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(
            page.evaluate("""() => { const e = document.activeElement;
            return e.id || (e.name ? `${e.name}=${e.value}` : e.className); }""")
        )
    assert order[:3] == ["text-submit", "text-target=image", "hit-open"], order
    _shot(page, tmp_path, "focus")  # the focused result's ring (and the next Tab's) are visible
    page.focus('input[name="text-target"][value="image"]')
    page.keyboard.press("ArrowRight")  # switches to "Texts" and re-runs the search
    assert _checked(page, "text-target") == "text"
    page.wait_for_selector("#text-query-results .text-list .hit")
    _settled(page, "#text-query-results")


def test_similarity_is_shown_and_consistent_with_distance(page, base_url, galleries):
    page.select_option("#k", "20")  # the whole galleries: a spread of distances
    _text_search(page, QUERY)
    page.set_input_files("#image-file", str(galleries["queries"] / "blue.png"))
    _settled(page, "#image-query-results")
    bits = httpx.post(f"{base_url}/search/text-to-image", json={"text": QUERY, "k": 1}, timeout=30).json()["bits"]
    assert bits > 0
    for selector in ("#text-query-results .image-grid", "#image-query-results .text-list"):
        distances = _shown_distances(page, selector)
        similarities = _similarities(page, selector)
        assert len(distances) == len(similarities) == page.locator(f"{selector} .hit").count() > 1
        # 1 - distance / bits, in whole percent rounded down: 100 % only for distance 0
        assert similarities == [(bits - d) * 100 // bits for d in distances], (distances, similarities)
        assert similarities == sorted(similarities, reverse=True)
        titles = page.eval_on_selector_all(f"{selector} .hit .distance", "els => els.map(e => e.title)")
        assert titles == [f"Hamming distance {d} of {bits} bits" for d in distances]


def test_unknown_words_are_reported_near_the_query(page, base_url, tmp_path):
    notice = page.locator("#unknown-words")
    assert notice.is_hidden()
    _text_search(page, "a red xyzzy square")
    sync_api.expect(notice).to_be_visible()
    sync_api.expect(notice).to_contain_text("not in the model's vocabulary: xyzzy", ignore_case=True)
    assert page.locator("#text-query-results .hit").count() > 0  # the other words were searched
    assert page.locator("#error").is_hidden()
    _shot(page, tmp_path, "unknown-words")

    _text_search(page, "a red square")
    sync_api.expect(notice).to_be_hidden()
    assert page.locator("#text-query-results .hit").count() > 0

    # only unknown words: the API refuses with 400, whose message is the page's error
    r = httpx.post(f"{base_url}/search/text-to-image", json={"text": "xyzzy plugh", "k": 5}, timeout=30)
    assert r.status_code == 400
    _text_search(page, "xyzzy plugh")
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_have_text(r.json()["error"]["message"])
    assert error.get_attribute("role") == "alert"
    sync_api.expect(notice).to_be_hidden()
    sync_api.expect(page.locator("#text-query-results .hit")).to_have_count(0)
    sync_api.expect(page.locator("#status")).to_have_text("Search failed.")
    # the text-to-text direction reports the same way
    page.check('input[name="text-target"][value="text"]')
    _text_search(page, "a blue xyzzy")
    sync_api.expect(notice).to_contain_text("xyzzy")
    assert page.locator("#text-query-results .text-list .hit").count() > 0
    assert page.locator("#error").is_hidden()


def test_favicon_is_served_as_svg(page, page_log, base_url):
    href = page.eval_on_selector('link[rel="icon"]', "e => e.href")
    assert urlsplit(href).path == "/static/favicon.svg"
    assert page.eval_on_selector('link[rel="icon"]', "e => e.type") == "image/svg+xml"
    r = page.request.get(href)
    assert r.status == 200 and r.headers["content-type"].startswith("image/svg+xml"), r.headers
    assert b"<svg" in r.body()
    # the header's logo is the same file: it loads, so the page's network log holds it
    page.wait_for_function(
        "() => { const i = document.querySelector('.logo'); return i.complete && i.naturalWidth > 0; }"
    )
    svg = [x for x in page_log.responses if x[1] == "/static/favicon.svg"]
    assert svg and all(x[2] in (200, 304) for x in svg) and svg[0][3] == "image/svg+xml", svg
    assert not page_log.bad(), page_log.bad()
    assert not page_log.requested("GET", "/favicon.ico")


def test_a_browse_session_is_clean(page, page_log, galleries, tmp_path):
    """Every interaction, without a console error or warning, a CSP violation, a failed request
    or an error response; the layout holds on a phone-sized screen."""
    _text_search(page, QUERY)
    page.locator("#text-query-results .hit .hit-open").first.click()
    _settled(page, "#image-query-results")
    page.check('input[name="image-target"][value="text"]')  # the switch re-runs the image query
    page.wait_for_selector("#image-query-results .text-list .hit")
    _settled(page, "#image-query-results")
    page.locator("#image-query-results .hit .hit-open").first.click()
    _settled(page, "#text-query-results")
    page.select_option("#k", "5")  # re-runs both
    page.wait_for_function(
        "() => document.querySelectorAll('#text-query-results .hit').length === 5"
        " && document.querySelectorAll('#image-query-results .hit').length === 5"
    )
    page.set_input_files("#image-file", str(galleries["queries"] / "blue.png"))
    _settled(page, "#image-query-results")
    page.wait_for_load_state("networkidle")
    _shot(page, tmp_path, "browse")
    page.set_viewport_size({"width": 375, "height": 800})
    _shot(page, tmp_path, "browse-narrow")
    page.emulate_media(color_scheme="dark")
    _shot(page, tmp_path, "browse-narrow-dark")
    page.emulate_media(color_scheme="light")
    # nothing sticks out sideways on a small screen
    overflow = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
                     && !e.closest('.visually-hidden') && getComputedStyle(e).position !== 'absolute')
        .map(e => e.id || e.className)""")
    assert not overflow, overflow
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert not page_log.console, page_log.console
    assert not page_log.failed, page_log.failed
    assert not page_log.bad(), page_log.bad()
    assert page_log.requested("POST", "/search/image-to-image") and page_log.requested("POST", "/search/text-to-text")


def test_page_structure_is_accessible(page):
    """Labelled controls; the count and the errors are announced; results are not live regions."""
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#error", "role") == "alert"
    assert page.get_attribute("#unknown-words", "role") == "status"
    for sel in ("#text-query-results", "#image-query-results"):
        assert page.get_attribute(sel, "aria-live") is None  # whole lists are not read out on every search
    for name in ("text-target", "image-target"):
        legend = page.eval_on_selector(
            f'input[name="{name}"]', "e => e.closest('fieldset').querySelector('legend').textContent"
        )
        assert legend == "Find"
        labels = page.eval_on_selector_all(
            f'input[name="{name}"]', "els => els.map(e => e.labels[0].textContent.trim())"
        )
        assert sorted(labels) == ["Images", "Texts"]
    assert page.eval_on_selector("#query", "e => e.labels[0].textContent") == "Text to search with"
    assert page.eval_on_selector("#image-file", "e => e.labels.length") == 1
    # an image result's button is named by the image and what it does
    _text_search(page, QUERY)
    name = page.locator("#text-query-results .hit .hit-open").first.get_attribute("aria-label")
    assert re.fullmatch(r"Image \S+: .+\. Find similar images", name), name
