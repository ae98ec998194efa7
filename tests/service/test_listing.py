"""GET /gallery/{kind}/items: pages of the stored items in insertion order, the limits, read
protection; the id "items" is reserved on add; and GET of one item shows no server path."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from index.gallery import Gallery
from service.settings import Settings
from tests.service.conftest import N_IMAGES, N_TEXTS, open_client, png_bytes


@pytest.mark.parametrize("kind, n", [("texts", N_TEXTS), ("images", N_IMAGES)])
def test_pages_concatenate_to_the_gallery_in_insertion_order(
    client: TestClient, module_settings: Settings, kind: str, n: int
) -> None:
    folder = module_settings.text_gallery if kind == "texts" else module_settings.image_gallery
    store = Gallery.open(folder).store  # type: ignore[arg-type]
    whole = client.get(f"/gallery/{kind}/items")
    assert whole.status_code == 200, whole.text
    assert whole.json()["count"] == n and [i["id"] for i in whole.json()["items"]] == store.ids()
    seen = []
    for offset in range(0, n + 5, 5):
        page = client.get(f"/gallery/{kind}/items", params={"offset": offset, "limit": 5}).json()
        assert page["count"] == n and len(page["items"]) == max(0, min(5, n - offset))
        seen += page["items"]
    assert seen == whole.json()["items"]
    for item in seen[:3]:
        assert client.get(f"/gallery/{kind}/{item['id']}").json()["metadata"] == item["metadata"]


def test_listed_metadata_shows_no_server_path(client: TestClient) -> None:
    items = client.get("/gallery/images/items").json()["items"]
    assert items and all(i["metadata"]["path"] == f"{i['id']}.png" for i in items)
    texts = client.get("/gallery/texts/items", params={"limit": 2}).json()["items"]
    assert all(set(i) == {"id", "metadata"} and i["metadata"]["text"] for i in texts)


def test_one_item_shows_no_server_path(client: TestClient) -> None:
    """GET /gallery/images/{id} shows the stored file's name, as searches do (the file itself is
    served by /gallery/images/{id}/file)."""
    item = client.get("/gallery/images/i03").json()
    assert item["metadata"]["path"] == "i03.png"
    hit = client.post("/search/text-to-image", json={"text": "a red square", "k": 12}).json()["results"]
    assert {h["id"]: h["metadata"] for h in hit}["i03"] == item["metadata"]
    assert client.get("/gallery/images/i03/file").status_code == 200


@pytest.mark.parametrize(
    "params, message", [({"limit": 0}, "limit"), ({"limit": 10**6}, "limit"), ({"offset": -1}, "offset")]
)
def test_limits(client: TestClient, params: dict[str, int], message: str) -> None:
    r = client.get("/gallery/texts/items", params=params)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert client.get("/gallery/texts/items", params={"limit": "many"}).status_code == 422
    far = client.get("/gallery/texts/items", params={"offset": 10**9}).json()
    assert far == {"items": [], "count": N_TEXTS}
    assert client.get("/gallery/audio/items").status_code == 404


def test_limit_is_capped_by_max_k(make_settings) -> None:
    with open_client(make_settings(max_k=4)) as api:
        assert len(api.get("/gallery/texts/items", params={"limit": 4}).json()["items"]) == 4
        r = api.get("/gallery/texts/items", params={"limit": 5})
        assert r.status_code == 400 and "between 1 and 4" in r.json()["error"]["message"]
        assert len(api.get("/gallery/texts/items").json()["items"]) == 4  # the default (100) is capped too


def test_listing_is_protected_like_other_reads(make_settings) -> None:
    with open_client(make_settings(api_key="s3cret", protect_reads=True)) as api:
        assert api.get("/gallery/texts/items").status_code == 401
        r = api.get("/gallery/texts/items", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["count"] == N_TEXTS


def test_items_is_a_reserved_id(make_settings) -> None:
    with open_client(make_settings()) as api:
        r = api.post("/gallery/texts", json={"items": [{"id": "items", "text": "a red square"}]})
        assert r.status_code == 400 and "reserved" in r.json()["error"]["message"]
        r = api.post("/gallery/images", files=[("files", ("items.png", png_bytes(1), "image/png"))])
        assert r.status_code == 400 and "reserved" in r.json()["error"]["message"]
        r = api.post("/gallery/images", files=[("files", ("x.png", png_bytes(1), "image/png"))], data={"ids": "items"})
        assert r.status_code == 400
        assert api.get("/gallery/images/items").json()["count"] == N_IMAGES  # nothing was added
        # other ids holding the word are fine, and the listing sees new items last
        r = api.post(
            "/gallery/texts",
            json={"items": [{"id": "items/2", "text": "a red square", "metadata": {"k": json.dumps([1])}}]},
        )
        assert r.status_code == 201, r.text
        page = api.get("/gallery/texts/items", params={"offset": N_TEXTS}).json()
        assert page["count"] == N_TEXTS + 1 and page["items"][0]["id"] == "items/2"
        assert api.get("/gallery/texts/items/2").json()["id"] == "items/2"
