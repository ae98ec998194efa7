"""Re-ranked searches through the API (`rerank`: R or "all") against an oracle: the gallery's
codes read through the API, ranked by (Hamming distance, insertion order), the first R (or all)
re-sorted by h . b of the query's continuous representation (stable); JSON and multipart bodies,
radius and filter, the client's mirror, and the refusals."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.runtime.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import open_client, png_bytes
from tests.tiny_data import item_text


@pytest.fixture(scope="module")
def api(module_settings: Settings) -> Iterator[TestClient]:
    with open_client(module_settings.model_copy(update={"max_rerank": 50})) as client:
        items = [{"id": f"R{i:02d}", "text": item_text(i % 8), "metadata": {"odd": bool(i % 2)}} for i in range(16)]
        assert client.post("/gallery/texts", json={"items": items}).status_code == 201
        yield client


def stored(client: TestClient, kind: str) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    listing = client.get(f"/gallery/{kind}/items", params={"limit": 1000}).json()
    out = []
    for item in listing["items"]:
        code = bytes.fromhex(client.get(f"/gallery/{kind}/{item['id']}").json()["code"])
        out.append((item["id"], np.unpackbits(np.frombuffer(code, dtype=np.uint8)), item["metadata"]))
    return out


def oracle(
    items: list, h: np.ndarray, rerank: Any, radius: int | None = None, flt: dict[str, Any] | None = None
) -> list[tuple[str, int]]:
    q = (h >= 0).astype(np.uint8)
    rows = []
    for pos, (i, bits, meta) in enumerate(items):
        if any(meta.get(k) != v for k, v in (flt or {}).items()):
            continue
        d = int((bits != q).sum())
        if radius is None or d <= radius:
            rows.append((i, d, float(h.astype(np.float64) @ (bits.astype(np.float64) * 2 - 1)), pos))
    hamming = sorted(rows, key=lambda r: (r[1], r[3]))
    if rerank == "all":
        ranked = sorted(rows, key=lambda r: (-r[2], r[3]))
    else:
        ranked = sorted(hamming[:rerank], key=lambda r: -r[2]) + hamming[rerank:]
    return [(i, d) for i, d, _, _ in ranked]


def pairs(r) -> list[tuple[str, int]]:
    assert r.status_code == 200, r.text
    return [(h["id"], h["distance"]) for h in r.json()["results"]]


@pytest.mark.parametrize("rerank", [3, 10, "all"])
def test_text_searches_match_the_oracle(api: TestClient, encoder: Encoder, rerank: Any) -> None:
    texts = stored(api, "texts")
    for text in ("a small red square", "a plain green circle"):
        h = encoder.text_representations([text])[0]
        want = oracle(texts, h, rerank)
        for offset, k in ((0, 5), (2, 6), (0, 100)):
            r = api.post("/search/text-to-text", json={"text": text, "k": k, "offset": offset, "rerank": rerank})
            assert pairs(r) == want[offset : offset + k], (text, offset, k)
        r = api.post(
            "/search/text-to-text", json={"text": text, "k": 4, "radius": 6, "rerank": rerank, "filter": {"odd": True}}
        )
        assert pairs(r) == oracle(texts, h, rerank, 6, {"odd": True})[:4]
        assert r.json()["total"] == len(oracle(texts, h, rerank, 6, {"odd": True}))
        r = api.post("/search/text-to-image", json={"text": text, "k": 8, "rerank": rerank})
        assert pairs(r) == oracle(stored(api, "images"), h, rerank)[:8]


def test_scores_are_h_dot_b_over_bits(api: TestClient, encoder: Encoder) -> None:
    text = "a bright blue stripes"
    h = encoder.text_representations([text])[0].astype(np.float64)
    codes = {i: bits.astype(np.float64) * 2 - 1 for i, bits, _ in stored(api, "texts")}
    hits = api.post("/search/text-to-text", json={"text": text, "k": 8, "rerank": 5}).json()["results"]
    for hit in hits[:5]:
        assert hit["score"] == pytest.approx(float(h @ codes[hit["id"]]) / encoder.bits, abs=1e-6)
    assert all(hit["score"] is None for hit in hits[5:])  # past the re-ranked top R
    scores = [hit["score"] for hit in hits[:5]]
    assert scores == sorted(scores, reverse=True)
    plain = api.post("/search/text-to-text", json={"text": text, "k": 8}).json()["results"]
    assert all(hit["score"] is None for hit in plain)


def test_image_searches_by_form_field_and_json(api: TestClient, encoder: Encoder) -> None:
    image = png_bytes(1, seed=8)
    h = encoder.image_representations(encoder.preprocess_image(image)[None])[0]
    for rerank in (4, "all"):
        want = oracle(stored(api, "texts"), h, rerank)
        form = api.post(
            "/search/image-to-text",
            files={"file": ("q.png", image, "image/png")},
            data={"k": "6", "offset": "1", "rerank": str(rerank)},
        )
        assert pairs(form) == want[1:7]
        body = {"image_base64": base64.b64encode(image).decode(), "k": 6, "offset": 1, "rerank": rerank}
        assert pairs(api.post("/search/image-to-text", json=body)) == want[1:7]
        r = api.post(
            "/search/image-to-image",
            files={"file": ("q.png", image, "image/png")},
            data={"k": "5", "rerank": str(rerank)},
        )
        assert pairs(r) == oracle(stored(api, "images"), h, rerank)[:5]


def test_the_client_passes_rerank(api: TestClient, encoder: Encoder) -> None:
    from service.client import Client

    client = Client("http://testserver")
    client.http.close()
    client.http = api  # the TestClient is an httpx.Client
    text = "a plain green circle"
    got = [(h.id, h.distance) for h in client.search_text_to_text(text, k=5, rerank="all").results]
    assert got == oracle(stored(api, "texts"), encoder.text_representations([text])[0], "all")[:5]


@pytest.mark.parametrize("rerank, status", [(0, 400), (51, 400), (-3, 400), ("some", 422), (2.5, 422)])
def test_bad_rerank_is_refused(api: TestClient, rerank: Any, status: int) -> None:
    r = api.post("/search/text-to-text", json={"text": "a red square", "rerank": rerank})
    assert r.status_code == status, r.text
    if status == 400:
        assert "rerank" in r.json()["error"]["message"] and "50" in r.json()["error"]["message"]
    form = api.post(
        "/search/image-to-text", files={"file": ("q.png", png_bytes(1), "image/png")}, data={"rerank": str(rerank)}
    )
    assert form.status_code == status, form.text
