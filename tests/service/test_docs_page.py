"""/docs renders Swagger UI in headless Chromium with every request to another host blocked: its
assets come from this server (fastapi-offline's copies), not from a CDN.

The app runs in a real uvicorn server on 127.0.0.1 without its lifespan (the docs need no model).
Skipped only when Chromium or the playwright package is missing, as tests/service/test_page.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

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

pytestmark = pytest.mark.browser

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

import httpx  # noqa: E402 - after the genuine skips above
import uvicorn  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings.model_construct(model_dir=Path("unused"), static_dir=None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(30)


def test_swagger_ui_renders_offline(base_url: str, tmp_path: Path) -> None:
    local, blocked, failed, errors = [], [], [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()

            def route(r: sync_api.Route) -> None:
                if urlsplit(r.request.url).hostname == "127.0.0.1":
                    local.append(r.request.url)
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base_url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").first.inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
            # an operation expands to its description and responses
            page.locator(".opblock-summary-path", has_text="/search/text-to-image").first.click()
            page.wait_for_selector(".opblock-body .responses-table", timeout=10_000)
            responses = page.locator(".opblock-body .responses-table").first.inner_text()
        finally:
            browser.close()
    assert blocked == [] and failed == [] and errors == [], (blocked, failed, errors)
    assert f"{base_url}/openapi.json" in local and any("/static-docs/swagger-ui-bundle.js" in u for u in local)
    assert title.startswith("cmhash")
    paths = {p.replace("\u200b", "").strip() for p in operations}
    assert {
        "/search/text-to-image",
        "/search/image-to-text",
        "/encode/text",
        "/gallery/images",
        "/healthz",
        "/readyz",
    } <= paths, paths
    assert "4XX" in responses and "5XX" in responses
