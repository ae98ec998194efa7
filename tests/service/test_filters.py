"""Filtered searches through the API against a brute-force oracle: the gallery's items filtered
in Python, then ranked by (Hamming distance, insertion order); k-NN pages, radius pages, the
multipart and JSON image bodies, and the refusals (nested values, bad JSON, a backend without
filters)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.search import matches
from model.runtime.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import N_TEXTS, open_client, png_bytes
from tests.tiny_data import item_text

LABELS = ["dog", "cat", "bird"]


def labelled(i: int) -> dict[str, Any]:
    """Metadata of added text i: a label, a list of labels, or none; a number; a flag."""
    meta: dict[str, Any] = {"n": i % 3, "odd": bool(i % 2)}
    if i % 3 == 0:
        meta["labels"] = LABELS[i % 2]
    elif i % 3 == 1:
        meta["labels"] = [LABELS[i % 3], LABELS[(i + 1) % 3]]
    return meta


@pytest.fixture(scope="module")
def api(module_settings: Settings) -> Iterator[TestClient]:
    """The module's app with 24 labelled texts added (their captions repeat: many ties)."""
    with open_client(module_settings) as client:
        items = [{"id": f"L{i:02d}", "text": item_text(i % 8), "metadata": labelled(i)} for i in range(24)]
        r = client.post("/gallery/texts", json={"items": items})
        assert r.status_code == 201, r.text
        yield client


def stored(client: TestClient) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """Every text item (id, code, metadata) in insertion order, read through the API."""
    listing = client.get("/gallery/texts/items", params={"limit": 1000}).json()
    out = []
    for item in listing["items"]:
        code = bytes.fromhex(client.get(f"/gallery/texts/{item['id']}").json()["code"])
        out.append((item["id"], np.unpackbits(np.frombuffer(code, dtype=np.uint8)), item["metadata"]))
    assert len(out) == listing["count"] == N_TEXTS + 24
    return out


def oracle(
    items: list[tuple[str, np.ndarray, dict[str, Any]]], code: np.ndarray, flt: dict[str, Any]
) -> list[tuple[str, int]]:
    bits = np.unpackbits(np.asarray(code, dtype=np.uint8).reshape(-1))
    kept = [(i, int((c != bits).sum()), pos) for pos, (i, c, m) in enumerate(items) if matches(m, flt)]
    return [(i, d) for i, d, _ in sorted(kept, key=lambda t: (t[1], t[2]))]


def pairs(r) -> list[tuple[str, int]]:
    assert r.status_code == 200, r.text
    return [(h["id"], h["distance"]) for h in r.json()["results"]]


FILTERS = [
    {"labels": "dog"},
    {"labels": "cat", "odd": True},
    {"n": 2},
    {"n": 1.0, "labels": "bird"},
    {"odd": False},
    {"labels": "fish"},
    {"text": item_text(3)},
]


@pytest.mark.parametrize("flt", FILTERS)
def test_text_knn_and_pages_match_the_oracle(api: TestClient, encoder: Encoder, flt: dict[str, Any]) -> None:
    items = stored(api)
    for text in ("a small red square", "a plain green circle"):
        want = oracle(items, encoder.encode_texts([text]), flt)
        for offset, k in ((0, 5), (3, 4), (0, 100), (20, 5)):
            r = api.post("/search/text-to-text", json={"text": text, "k": k, "offset": offset, "filter": flt})
            assert pairs(r) == want[offset : offset + k], (flt, offset, k)
            ranks = [h["rank"] for h in r.json()["results"]]
            assert ranks == list(range(offset + 1, offset + 1 + len(ranks)))
            assert r.json()["total"] is None


@pytest.mark.parametrize("radius", [0, 2, 6])
def test_radius_pages_match_the_oracle(api: TestClient, encoder: Encoder, radius: int) -> None:
    items = stored(api)
    text = "a bright blue stripes"
    for flt in FILTERS:
        want = [(i, d) for i, d in oracle(items, encoder.encode_texts([text]), flt) if d <= radius]
        for offset in (0, 2):
            r = api.post(
                "/search/text-to-text", json={"text": text, "k": 3, "offset": offset, "radius": radius, "filter": flt}
            )
            assert pairs(r) == want[offset : offset + 3] and r.json()["total"] == len(want), (flt, radius)


def test_ties_are_ordered_by_insertion(api: TestClient, encoder: Encoder) -> None:
    text = item_text(3)  # L03, L11, L19 have this caption: distance 0, in insertion order
    r = api.post("/search/text-to-text", json={"text": text, "k": 30, "filter": {"odd": True}})
    got = pairs(r)
    assert [i for i, d in got if d == 0][:3] == ["L03", "L11", "L19"]
    assert got == oracle(stored(api), encoder.encode_texts([text]), {"odd": True})[:30]


def test_image_queries_filter_by_form_field_and_by_json(api: TestClient, encoder: Encoder) -> None:
    image = png_bytes(1, seed=8)
    want = oracle(stored(api), encoder.encode_images([image]), {"labels": "cat"})
    form = api.post(
        "/search/image-to-text",
        files={"file": ("q.png", image, "image/png")},
        data={"k": "6", "offset": "1", "filter": json.dumps({"labels": "cat"})},
    )
    assert pairs(form) == want[1:7]
    body = {"image_base64": base64.b64encode(image).decode(), "k": 6, "offset": 1, "filter": {"labels": "cat"}}
    assert pairs(api.post("/search/image-to-text", json=body)) == want[1:7]
    empty = api.post("/search/image-to-text", files={"file": ("q.png", image, "image/png")}, data={"filter": ""})
    assert pairs(empty) == oracle(stored(api), encoder.encode_images([image]), {})[:10]  # "" is no filter


def test_image_gallery_filter_on_upload_metadata(api: TestClient) -> None:
    image = png_bytes(2, seed=1)
    r = api.post(
        "/search/image-to-image",
        files={"file": ("q.png", image, "image/png")},
        data={"k": "20", "filter": json.dumps({"filename": "nothing.png"})},
    )
    assert pairs(r) == []
    r = api.post("/search/text-to-image", json={"text": "a red square", "k": 20, "filter": {"path": "i03.png"}})
    assert pairs(r) == []  # stored paths are absolute: the shown file name is not what is matched


@pytest.mark.parametrize(
    "flt, status, words",
    [
        ({"labels": {"a": 1}}, 400, "nested"),
        ({"labels": ["dog"]}, 400, "nested"),
        ({"labels": None}, 400, "null"),
        ({"": "x"}, 400, "non-empty"),
        (["labels"], 422, "filter"),
        ("labels=dog", 422, "filter"),
    ],
)
def test_bad_filters_are_refused(api: TestClient, flt: Any, status: int, words: str) -> None:
    r = api.post("/search/text-to-text", json={"text": "a red square", "filter": flt})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == ("bad_request" if status == 400 else "validation_error")
    assert "filter" in error["message"] and words in error["message"]


def test_bad_form_filters_are_refused(api: TestClient) -> None:
    image = png_bytes(1, seed=8)
    for raw in ("{not json", "[1, 2]", '"dog"', '{"labels": {"x": 1}}'):
        r = api.post("/search/image-to-image", files={"file": ("q.png", image, "image/png")}, data={"filter": raw})
        assert r.status_code == 400, (raw, r.text)
        assert "filter" in r.json()["error"]["message"]


def test_a_backend_without_filters_is_a_400(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store without `candidates` (as the Milvus one) refuses a filter with a clear 400 before
    the query joins a batch; unfiltered searches still run."""
    journaled = api.app.state.cmhash.galleries["text"]  # type: ignore[attr-defined]

    class NoFilters:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "candidates":
                raise AttributeError(name)
            return getattr(self._inner, name)

        def __len__(self) -> int:
            return len(self._inner)

        def __contains__(self, item: object) -> bool:
            return item in self._inner

    monkeypatch.setattr(journaled.gallery, "store", NoFilters(journaled.gallery.store))
    r = api.post("/search/text-to-text", json={"text": "a red square", "filter": {"labels": "dog"}})
    assert r.status_code == 400 and "does not support filtered search" in r.json()["error"]["message"]
    assert api.post("/search/text-to-text", json={"text": "a red square"}).status_code == 200


def test_filtered_and_plain_queries_in_one_batch(make_settings, encoder: Encoder) -> None:
    """Concurrent queries with different filters share micro-batches but never filters."""
    import concurrent.futures

    settings: Settings = make_settings(batch_window_ms=50)
    with open_client(settings) as client:
        items = [{"id": f"L{i:02d}", "text": item_text(i % 8), "metadata": labelled(i)} for i in range(24)]
        assert client.post("/gallery/texts", json={"items": items}).status_code == 201
        everything = stored(client)
        queries = [
            (text, flt)
            for text in ("a small red square", "a plain green circle")
            for flt in ({"labels": "dog"}, {"labels": "cat"}, {}, {"odd": True})
        ]

        def ask(query: tuple[str, dict[str, Any]]) -> list[tuple[str, int]]:
            return pairs(client.post("/search/text-to-text", json={"text": query[0], "k": 8, "filter": query[1]}))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, queries))
        for (text, flt), got in zip(queries, answers, strict=True):
            assert got == oracle(everything, encoder.encode_texts([text]), flt)[:8], flt
