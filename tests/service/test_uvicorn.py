"""The app behind a real uvicorn on 127.0.0.1 (a thread), and `cmhash serve` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from index.gallery import Gallery
from model.runtime.encoder import Encoder
from service.app import create_app
from service.settings import Settings
from tests.servers import free_port, wait_ready
from tests.service.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(module_settings: Settings) -> Iterator[str]:
    """Base URL of a uvicorn server in a thread, stopped (and its lifespan shut down) after the module."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(module_settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, alive=thread.is_alive)
    yield base
    srv.should_exit = True
    thread.join(30)
    assert not thread.is_alive()


def test_endpoints_over_http(server: str, encoder: Encoder) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        r = http.post("/search/text-to-image", json={"text": "a small red square", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        r = http.post("/search/image-to-text", files={"file": ("q.png", png_bytes(0), "image/png")}, data={"k": "2"})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        code = http.post("/encode/text", json={"text": "a blue stripes"}).json()["code"]
        assert code == bytes(encoder.encode_texts(["a blue stripes"])[0]).hex()
        assert http.get("/gallery/images").json()["count"] == 12
        assert "/search/text-to-image" in http.get("/openapi.json").json()["paths"]
        assert http.get("/docs").status_code == 200
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert http.get("/static/app.js").status_code == 200
        assert "cmhash_http_requests_total" in http.get("/metrics").text
        bad = http.post("/search/text-to-image", content=b"\xff\xfe", headers={"Content-Type": "application/json"})
        assert bad.status_code in (400, 422) and "error" in bad.json()


def test_cmhash_serve_process(module_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
    env["CMHASH_ENCODER_THREADS"] = "1"  # flags come from their CMHASH_ variables too
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--model",
        str(module_settings.model_dir),
        "--text-gallery",
        str(tmp_path / "new_texts"),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--api-key",
        "k",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        assert httpx.get(f"{base}/gallery/texts").json()["count"] == 0  # a new, empty gallery
        added = httpx.post(
            f"{base}/gallery/texts", json={"items": [{"id": "a", "text": "a red square"}]}, headers={"X-API-Key": "k"}
        )
        assert added.status_code == 201
        assert httpx.post(f"{base}/gallery/texts", json={"items": [{"text": "x"}]}).status_code == 401
        assert httpx.post(f"{base}/search/text-to-image", json={"text": "a red square"}).status_code == 503
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output
    assert (tmp_path / "new_texts" / "gallery.json").is_file()
    assert Gallery.open(tmp_path / "new_texts").store.ids() == ["a"]  # compacted at shutdown
