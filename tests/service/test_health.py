"""/healthz, /readyz (503 while loading or after a failed load) and /metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.state import ServiceState
from tests.service.conftest import open_client, wait_ready


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    assert ready.json()["encoder_device"] == "cpu" and ready.json()["galleries"] == {"image": 12, "text": 12}
    assert ready.json()["degraded"] == {} and ready.json()["error"] is None
    client.post("/search/text-to-image", json={"text": "a red square", "k": 3})
    client.post("/search/text-to-image", json={"text": "", "k": 3})
    text = client.get("/metrics").text
    assert 'cmhash_http_requests_total{method="POST",route="/search/text-to-image",status="200"}' in text
    assert 'cmhash_http_requests_total{method="POST",route="/search/text-to-image",status="400"}' in text
    assert 'cmhash_http_request_duration_seconds_count{method="POST",route="/search/text-to-image"}' in text
    assert 'cmhash_encode_seconds_count{modality="text"}' in text
    assert 'cmhash_search_seconds_count{gallery="image"}' in text
    assert 'cmhash_gallery_items{gallery="image"} 12.0' in text
    assert 'cmhash_gallery_items{gallery="text"} 12.0' in text
    assert 'cmhash_encoder_device{device="cpu"} 1.0' in text


def test_not_ready_while_loading_then_ready(make_settings, monkeypatch) -> None:
    gate = threading.Event()
    real_load = ServiceState.load

    def slow_load(self: ServiceState) -> None:
        gate.wait(30)
        real_load(self)

    monkeypatch.setattr(ServiceState, "load", slow_load)
    with TestClient(create_app(make_settings())) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert client.get("/healthz").status_code == 200
        search = client.post("/search/text-to-image", json={"text": "a red square"})
        assert search.status_code == 503 and search.json()["error"]["code"] == "not_ready"
        gate.set()
        wait_ready(client)
        assert client.post("/search/text-to-image", json={"text": "a red square"}).status_code == 200


def test_failed_load_is_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path / "missing", device="cpu")
    with TestClient(create_app(settings)) as client:
        for _ in range(200):
            r = client.get("/readyz")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "missing" in r.json()["detail"]
        assert client.post("/encode/text", json={"text": "x"}).status_code == 503


def test_unconfigured_gallery_is_503(make_settings) -> None:
    with open_client(make_settings(text_gallery=None)) as client:
        r = client.post("/search/text-to-text", json={"text": "a red square"})
        assert r.status_code == 503 and "CMHASH_TEXT_GALLERY" in r.json()["error"]["message"]
        assert client.get("/gallery/texts").status_code == 503
        assert client.get("/gallery/images").json()["count"] == 12
