"""Text queries report the words the model could not use, and a query of none but unknown
words is refused instead of ranking the gallery arbitrarily (the tiny model's bag of words
knows its 40 training captions: colours, patterns, a few adjectives)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from model.runtime.encoder import Encoder


def test_known_words_give_an_empty_list(client: TestClient) -> None:
    r = client.post("/search/text-to-image", json={"text": "a red square", "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_words"] == []


def test_unknown_words_are_listed_and_the_rest_is_searched(client: TestClient, encoder: Encoder) -> None:
    r = client.post("/search/text-to-image", json={"text": "a red xyzzy square plugh", "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_words"] == ["xyzzy", "plugh"]
    # the known words alone give the same ranking: unknown words add nothing to the code
    same = client.post("/search/text-to-image", json={"text": "a red square", "k": 5}).json()
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in same["results"]]
    assert encoder.unknown_words("a red xyzzy square plugh") == ["xyzzy", "plugh"]


def test_a_query_of_only_unknown_words_is_refused(client: TestClient) -> None:
    for path in ("/search/text-to-image", "/search/text-to-text"):
        r = client.post(path, json={"text": "xyzzy plugh", "k": 3})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_request" and "xyzzy" in error["message"] and "no word" in error["message"]
    r = client.post("/search/text-to-image", json={"text": "!!! ...", "k": 3})
    assert r.status_code == 400 and "no word" in r.json()["error"]["message"]


def test_image_queries_have_no_unknown_words(client: TestClient) -> None:
    from tests.service.conftest import png_bytes

    r = client.post("/search/image-to-text", files={"file": ("q.png", png_bytes(1), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_words"] == []


def test_stored_and_encoded_texts_need_no_known_word(make_settings) -> None:
    """Only a search needs a known word; a gallery text is stored whatever its words."""
    from tests.service.conftest import open_client

    with open_client(make_settings()) as client:
        r = client.post("/gallery/texts", json={"items": [{"id": "odd", "text": "xyzzy plugh"}]})
        assert r.status_code == 201, r.text
        assert client.get("/gallery/texts/odd").json()["metadata"]["text"] == "xyzzy plugh"
        assert client.post("/encode/text", json={"text": "xyzzy plugh"}).status_code == 200
