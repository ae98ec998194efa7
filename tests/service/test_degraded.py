"""One damaged gallery does not take the service down: the other gallery serves, requests to
the damaged one answer 503 naming it (no server path), /readyz lists it, and the startup sweep
removes orphan uploads and leftovers while keeping live files."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import open_client


def _current(path: Path) -> Path:
    return path / (path / "CURRENT").read_text().strip()


def test_damaged_image_gallery_degrades_only_itself(make_settings) -> None:
    settings = make_settings()
    index = _current(settings.image_gallery) / "index.faissbin"
    index.write_bytes(index.read_bytes()[:50])  # truncated; the template was built without a journal
    with open_client(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "degraded" and list(body["degraded"]) == ["image"]
        assert str(settings.image_gallery) not in ready.text and "/tmp" not in ready.text
        ok = client.post("/search/text-to-text", json={"text": "a red square", "k": 3})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3
        refused = client.post("/search/text-to-image", json={"text": "a red square", "k": 3})
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "gallery_unavailable" and "image gallery" in error["message"]
        assert str(settings.image_gallery) not in refused.text
        assert client.get("/gallery/images/i00").status_code == 503
        assert client.get("/gallery/texts/t00").status_code == 200
        metrics = client.get("/metrics").text
        assert 'cmhash_gallery_degraded{gallery="image"} 1.0' in metrics
        assert 'cmhash_gallery_degraded{gallery="text"} 0.0' in metrics


def test_every_gallery_damaged_makes_readyz_fail(make_settings) -> None:
    settings = make_settings()
    for g in (settings.image_gallery, settings.text_gallery):
        (_current(g) / "metadata.sqlite").write_bytes(b"")
    with TestClient(create_app(settings)) as client:
        for _ in range(3000):
            r = client.get("/readyz")
            if r.json()["status"] != "loading":
                break
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert set(r.json()["degraded"]) == {"image", "text"}
        assert client.get("/healthz").status_code == 200


def test_bad_current_falls_back_and_serves(make_settings) -> None:
    settings = make_settings()
    (settings.text_gallery / "CURRENT").write_text("garbage")
    with open_client(settings) as client:
        assert client.get("/readyz").json()["status"] == "ok"
        assert client.post("/search/text-to-text", json={"text": "a red square", "k": 3}).status_code == 200
        assert 'cmhash_gallery_fallbacks_total{gallery="text"} 1.0' in client.get("/metrics").text


def test_startup_sweep_removes_orphans_and_keeps_live_uploads(make_settings) -> None:
    from tests.service.conftest import png_bytes

    settings = make_settings()
    with open_client(settings) as client:
        r = client.post("/gallery/images", files=[("files", ("x.png", png_bytes(1), "image/png"))], data={"ids": "up1"})
        assert r.status_code == 201, r.text
    uploads = settings.image_gallery / "uploads"
    live = [p.name for p in uploads.iterdir()]
    assert len(live) == 1
    orphan = uploads / "fedcba9876543210fedcba98-ba9876543210.jpg"
    orphan.write_bytes(b"orphan")
    (uploads / "00000000000000000000aaaa-000000000000.png.tmp").write_bytes(b"half")
    (settings.image_gallery / "CURRENT.tmp").write_text("x")
    with open_client(settings) as client:
        assert client.get("/gallery/images/up1").status_code == 200
        assert 'cmhash_swept_files_total{kind="upload"} 2.0' in client.get("/metrics").text
    assert sorted(p.name for p in uploads.iterdir()) == live
    assert not (settings.image_gallery / "CURRENT.tmp").exists()
