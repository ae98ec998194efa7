"""Gallery management: adds and deletes visible to searches at once, durable across a restart
(and across a crash: see tests/index/test_journal.py), duplicates, stored files, the API key."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi.testclient import TestClient

from index.gallery import Gallery
from model.runtime.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import open_client, png_bytes
from tests.tiny_data import draw_item


def ids_of(r) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_add_and_delete_images_are_visible_and_persist(make_settings, encoder: Encoder) -> None:
    settings: Settings = make_settings()
    image = png_bytes(1, seed=42)
    code_hex = bytes(encoder.encode_images([image])[0]).hex()
    with open_client(settings) as client:
        _add_then_delete(client, settings, image, code_hex)
    store = Gallery.open(settings.image_gallery).store  # type: ignore[arg-type]
    assert "new_one" in store and "i03" not in store and len(store) == 12  # shutdown compacted the journal
    np.testing.assert_array_equal(store.get("new_one")["code"], encoder.encode_images([image])[0])
    with open_client(settings) as client:  # a new app on the same directories
        assert client.get("/gallery/images/new_one").json()["code"] == code_hex
        assert client.get("/gallery/images/i03").status_code == 404
        stored = settings.image_gallery / "uploads" / client.get("/gallery/images/new_one").json()["metadata"]["path"]  # type: ignore[operator]
        assert client.delete("/gallery/images/new_one").status_code == 200
        assert not stored.exists()


def _add_then_delete(client: TestClient, settings: Settings, image: bytes, code_hex: str) -> None:
    r = client.post(
        "/gallery/images",
        files=[("files", ("new_one.png", image, "image/png"))],
        data={"metadata": json.dumps({"caption": "blue"})},
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"ids": ["new_one"], "count": 13}
    item = client.get("/gallery/images/new_one").json()
    assert item["code"] == code_hex and item["metadata"]["caption"] == "blue"
    assert "/" not in item["metadata"]["path"]  # the file name only: the server's layout is not shown
    stored = settings.image_gallery / "uploads" / item["metadata"]["path"]  # type: ignore[operator]
    assert stored.read_bytes() == image
    file = client.get("/gallery/images/new_one/file")
    assert file.status_code == 200 and file.content == image and file.headers["content-type"] == "image/png"
    hits = client.post(
        "/search/image-to-image", files={"file": ("q.png", image, "image/png")}, data={"k": "20", "radius": "0"}
    )
    assert "new_one" in ids_of(hits)
    assert client.get("/gallery/images").json()["count"] == 13

    deleted = client.delete("/gallery/images/i03")
    assert deleted.status_code == 200 and deleted.json() == {"id": "i03", "count": 12}
    assert client.get("/gallery/images/i03").status_code == 404
    assert "i03" not in ids_of(client.post("/search/text-to-image", json={"text": "a red square", "k": 50}))
    assert client.delete("/gallery/images/i03").status_code == 404


def test_add_texts_several_and_duplicates(make_settings, encoder: Encoder) -> None:
    with open_client(make_settings()) as client:
        r = client.post(
            "/gallery/texts",
            json={
                "items": [
                    {"id": "n1", "text": "a plain purple thing", "metadata": {"source": "test"}},
                    {"text": "another red thing"},
                ]
            },
        )
        assert r.status_code == 201, r.text
        new_ids = r.json()["ids"]
        assert new_ids[0] == "n1" and new_ids[1].startswith("t-") and r.json()["count"] == 14
        item = client.get("/gallery/texts/n1").json()
        assert item["metadata"] == {"source": "test", "text": "a plain purple thing"}
        assert item["code"] == bytes(encoder.encode_texts(["a plain purple thing"])[0]).hex()
        hits = client.post("/search/text-to-text", json={"text": "a plain purple thing", "k": 14})
        assert "n1" in ids_of(hits) and hits.json()["results"][0]["distance"] == 0
        dup = client.post("/gallery/texts", json={"items": [{"id": "t00", "text": "a red square"}]})
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
        twice = client.post(
            "/gallery/texts",
            json={"items": [{"id": "z", "text": "a red square"}, {"id": "z", "text": "a blue square"}]},
        )
        assert twice.status_code == 409
        dup_image = client.post("/gallery/images", files=[("files", ("i00.png", png_bytes(0), "image/png"))])
        assert dup_image.status_code == 409
        assert (
            client.get("/gallery/texts").json()["count"] == 14 and client.get("/gallery/images").json()["count"] == 12
        )


def test_many_images_with_ids_all_or_none(make_settings) -> None:
    with open_client(make_settings()) as client:
        files = [("files", (f"f{i}.png", png_bytes(i % 4, seed=i), "image/png")) for i in range(3)]
        r = client.post("/gallery/images", files=files, data={"ids": ["a", "b", "c"]})
        assert r.status_code == 201 and r.json()["ids"] == ["a", "b", "c"], r.text
        buf = io.BytesIO()
        draw_item(2, np.random.default_rng(3)).save(buf, "JPEG")
        disguised = client.post("/gallery/images", files=[("files", ("photo.png", buf.getvalue(), "image/png"))])
        assert disguised.json()["ids"] == ["photo"]
        served = client.get("/gallery/images/photo/file")  # stored by its real format, not its name
        assert served.content == buf.getvalue() and served.headers["content-type"] == "image/jpeg"
        bad = [*files[:1], ("files", ("bad.png", b"not an image at all", "image/png"))]
        r = client.post("/gallery/images", files=bad, data={"ids": ["d", "e"]})
        assert r.status_code == 415
        assert (
            client.get("/gallery/images/d").status_code == 404 and client.get("/gallery/images").json()["count"] == 16
        )


def test_api_key_guards_writes_and_optionally_reads(make_settings) -> None:
    body = {"items": [{"id": "k1", "text": "a red square"}]}
    with open_client(make_settings(api_key="s3cret")) as client:
        assert client.post("/gallery/texts", json=body).status_code == 401
        wrong = client.post("/gallery/texts", json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        assert client.delete("/gallery/texts/t00").status_code == 401
        assert client.post("/gallery/texts", json=body, headers={"X-API-Key": "s3cret"}).status_code == 201
        assert client.delete("/gallery/texts/k1", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/search/text-to-text", json={"text": "a red square"}).status_code == 200
    with open_client(make_settings(api_key="s3cret", protect_reads=True)) as client:
        assert client.post("/search/text-to-text", json={"text": "a red square"}).status_code == 401
        assert client.get("/gallery/texts/t00").status_code == 401
        ok = client.post("/search/text-to-text", json={"text": "a red square"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200
    with open_client(make_settings(api_key="")) as client:  # an empty variable (compose `CMHASH_API_KEY:`) is unset
        assert client.post("/gallery/texts", json=body).status_code == 201
