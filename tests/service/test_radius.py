"""The radius bounds of every search route: radius == bits (the code length) is accepted and
returns every item of the gallery (no two codes are further apart than L bits); bits + 1 and -1
are refused with 400 bad_request. Brute-force oracle: the gallery's own ids and codes."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.gallery import Gallery
from model.runtime.codes import hamming_distance_matrix
from model.runtime.encoder import Encoder
from service.settings import Settings
from tests.service.conftest import N_IMAGES, N_TEXTS, png_bytes

ROUTES = {  # route -> (query kind, target gallery)
    "/search/text-to-image": ("text", "image"),
    "/search/text-to-text": ("text", "text"),
    "/search/image-to-text": ("image", "text"),
    "/search/image-to-image": ("image", "image"),
}
QUERY_TEXT = "a small red square"
QUERY_IMAGE = png_bytes(2, seed=21)


def search(client: TestClient, route: str, radius: int, k: int = 100):
    if ROUTES[route][0] == "text":
        return client.post(route, json={"text": QUERY_TEXT, "k": k, "radius": radius})
    return client.post(
        route, files={"file": ("q.png", QUERY_IMAGE, "image/png")}, data={"k": str(k), "radius": str(radius)}
    )


def everything(settings: Settings, encoder: Encoder, route: str) -> list[tuple[str, int]]:
    """(id, distance) of every item of the route's gallery, by (distance, insertion order)."""
    query_kind, target = ROUTES[route]
    store = Gallery.open(settings.image_gallery if target == "image" else settings.text_gallery).store  # type: ignore[arg-type]
    ids = store.ids()
    code = encoder.encode_texts([QUERY_TEXT]) if query_kind == "text" else encoder.encode_images([QUERY_IMAGE])
    d = hamming_distance_matrix(code, np.stack([store.get(i)["code"] for i in ids]))[0]
    return sorted(((i, int(d[j])) for j, i in enumerate(ids)), key=lambda p: (p[1], ids.index(p[0])))


@pytest.mark.parametrize("route", list(ROUTES))
def test_radius_equal_to_bits_returns_every_item(
    client: TestClient, module_settings: Settings, encoder: Encoder, route: str
) -> None:
    bits = encoder.bits
    r = search(client, route, bits)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = everything(module_settings, encoder, route)
    assert len(expected) == (N_IMAGES if ROUTES[route][1] == "image" else N_TEXTS)
    assert body["total"] == len(expected)
    assert [(h["id"], h["distance"]) for h in body["results"]] == expected
    assert [h["rank"] for h in body["results"]] == list(range(1, len(expected) + 1))
    # a page of it: the same ranking, offset into it
    if ROUTES[route][0] == "text":
        r = client.post(route, json={"text": QUERY_TEXT, "k": 3, "offset": 2, "radius": bits})
    else:
        r = client.post(
            route,
            files={"file": ("q.png", QUERY_IMAGE, "image/png")},
            data={"k": "3", "offset": "2", "radius": str(bits)},
        )
    assert r.status_code == 200 and r.json()["total"] == len(expected)
    assert [(h["id"], h["distance"]) for h in r.json()["results"]] == expected[2:5]
    assert [h["rank"] for h in r.json()["results"]] == [3, 4, 5]  # ranks in the whole ranking, not the page


@pytest.mark.parametrize("route", list(ROUTES))
def test_radius_below_bits_returns_exactly_those_within(
    client: TestClient, module_settings: Settings, encoder: Encoder, route: str
) -> None:
    expected = everything(module_settings, encoder, route)
    radius = sorted(d for _, d in expected)[len(expected) // 2]  # about half the gallery
    r = search(client, route, radius)
    assert r.status_code == 200, r.text
    within = [p for p in expected if p[1] <= radius]
    assert r.json()["total"] == len(within)
    assert [(h["id"], h["distance"]) for h in r.json()["results"]] == within


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("offset_from_bits", [1, 2])
def test_radius_beyond_bits_is_refused(client: TestClient, encoder: Encoder, route: str, offset_from_bits: int) -> None:
    r = search(client, route, encoder.bits + offset_from_bits)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"
    assert str(encoder.bits) in r.json()["error"]["message"]


@pytest.mark.parametrize("route", list(ROUTES))
def test_negative_radius_is_refused(client: TestClient, route: str) -> None:
    r = search(client, route, -1)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
