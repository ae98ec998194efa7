"""Search endpoints against a brute-force oracle: Hamming distances of the encoder's own codes
to every stored code, ties by insertion order; pagination and radius lookups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.gallery import Gallery
from model.runtime.codes import hamming_distance_matrix
from model.runtime.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import png_bytes


def oracle(gallery_dir: Path, code: np.ndarray) -> list[tuple[str, int]]:
    """(id, distance) of every stored item, by (distance, insertion order)."""
    store = Gallery.open(gallery_dir).store
    ids = store.ids()
    codes = np.stack([store.get(i)["code"] for i in ids])
    d = hamming_distance_matrix(code.reshape(1, -1), codes)[0]
    order = sorted(range(len(ids)), key=lambda j: (int(d[j]), j))
    return [(ids[j], int(d[j])) for j in order]


def pairs(response) -> list[tuple[str, int]]:
    assert response.status_code == 200, response.text
    return [(h["id"], h["distance"]) for h in response.json()["results"]]


@pytest.mark.parametrize("text", ["a small red square", "a bright blue stripes", "plain green circle"])
def test_text_to_image_matches_brute_force(
    client: TestClient, module_settings: Settings, encoder: Encoder, text: str
) -> None:
    expected = oracle(module_settings.image_gallery, encoder.encode_texts([text]))  # type: ignore[arg-type]
    r = client.post("/search/text-to-image", json={"text": text, "k": 5})
    assert pairs(r) == expected[:5]
    body = r.json()
    assert body["bits"] == encoder.bits and body["took_ms"] >= 0 and body["total"] is None
    assert body["results"][0]["metadata"]["path"].endswith(f"{body['results'][0]['id']}.png")


def test_text_to_text_and_image_queries_match_brute_force(
    client: TestClient, module_settings: Settings, encoder: Encoder
) -> None:
    text = "a large yellow checks"
    r = client.post("/search/text-to-text", json={"text": text, "k": 12})
    assert pairs(r) == oracle(module_settings.text_gallery, encoder.encode_texts([text]))  # type: ignore[arg-type]
    assert r.json()["results"][0]["metadata"]["text"]
    image = png_bytes(2, seed=99)
    code = encoder.encode_images([image])
    for route, gallery in (
        ("image-to-text", module_settings.text_gallery),
        ("image-to-image", module_settings.image_gallery),
    ):
        r = client.post(f"/search/{route}", files={"file": ("q.png", image, "image/png")}, data={"k": "7"})
        assert pairs(r) == oracle(gallery, code)[:7]  # type: ignore[arg-type]


def test_pages_concatenate_to_one_big_page(client: TestClient) -> None:
    text = "a simple blue stripes"
    whole = pairs(client.post("/search/text-to-image", json={"text": text, "k": 12}))
    assert len(whole) == 12
    pages = []
    for offset in range(0, 12, 5):
        pages += pairs(client.post("/search/text-to-image", json={"text": text, "k": 5, "offset": offset}))
    assert pages == whole
    beyond = client.post("/search/text-to-image", json={"text": text, "k": 5, "offset": 20})
    assert pairs(beyond) == []


def test_radius_lookup_is_inclusive_and_paginated(
    client: TestClient, module_settings: Settings, encoder: Encoder
) -> None:
    text = "a small red square"
    expected = oracle(module_settings.image_gallery, encoder.encode_texts([text]))  # type: ignore[arg-type]
    radius = expected[5][1]  # a distance that occurs: items at exactly it must be included
    within = [p for p in expected if p[1] <= radius]
    assert any(d == radius for _, d in within) and len(within) >= 6
    got, offset = [], 0
    while True:
        r = client.post("/search/text-to-image", json={"text": text, "k": 4, "offset": offset, "radius": radius})
        page = pairs(r)
        assert r.json()["total"] == len(within)
        if not page:
            break
        got += page
        offset += 4
    assert got == within
    r = client.post(
        "/search/image-to-image", files={"file": ("q.png", png_bytes(0), "image/png")}, data={"k": "50", "radius": "0"}
    )
    assert all(d == 0 for _, d in pairs(r))


def test_concurrent_mixed_searches_each_get_their_own_answer(
    client: TestClient, module_settings: Settings, encoder: Encoder
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = [
        f"a {adj} {colour}" for adj in ("small", "large") for colour in ("red square", "blue stripes", "green circle")
    ]
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda t: client.post("/search/text-to-image", json={"text": t, "k": 3 + len(t) % 4}), texts)
        )
    for text, r in zip(texts, answers):
        expected = oracle(module_settings.image_gallery, encoder.encode_texts([text]))  # type: ignore[arg-type]
        assert pairs(r) == expected[: 3 + len(text) % 4]
