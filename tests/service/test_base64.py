"""Images as base64 in JSON (for clients that cannot send multipart): the same answers as a
multipart upload, the same limits and image checks, 400 for invalid base64 naming the field,
400 for URLs (never fetched), and both bodies in the OpenAPI document."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from model.runtime.encoder import Encoder
from service.errors import ApiError
from service.queries import decode_base64_image
from service.settings import Settings
from tests.service.conftest import open_client, png_bytes

IMAGE_ROUTES = ("/search/image-to-text", "/search/image-to-image", "/encode/image")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def error(r, status: int) -> str:
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/search/image-to-text", "/search/image-to-image"])
def test_json_search_answers_as_multipart(client: TestClient, route: str) -> None:
    image = png_bytes(3, seed=21)
    for fields in ({"k": 5}, {"k": 3, "offset": 2}, {"k": 4, "radius": 6}):
        form = client.post(
            route,
            files={"file": ("q.png", image, "image/png")},
            data={key: str(value) for key, value in fields.items()},
        )
        as_json = client.post(route, json={"image_base64": b64(image), **fields})
        assert form.status_code == as_json.status_code == 200, as_json.text
        assert form.json()["results"] == as_json.json()["results"] and form.json()["total"] == as_json.json()["total"]


def test_json_encode_answers_as_multipart(client: TestClient, encoder: Encoder) -> None:
    image = png_bytes(0, seed=4)
    want = bytes(encoder.encode_images([image])[0]).hex()
    assert client.post("/encode/image", files={"file": ("q.png", image, "image/png")}).json()["code"] == want
    assert client.post("/encode/image", json={"image_base64": b64(image)}).json()["code"] == want
    # a data: URL prefix and MIME line breaks are accepted (nothing is fetched)
    wrapped = "\n".join(b64(image)[i : i + 76] for i in range(0, len(b64(image)), 76))
    r = client.post("/encode/image", json={"image_base64": "data:image/png;base64," + wrapped})
    assert r.status_code == 200 and r.json()["code"] == want


@pytest.mark.parametrize("route", IMAGE_ROUTES)
@pytest.mark.parametrize("value", ["not base64!", "aGVsbG8", "aGVs bG8=x", "////\u00e9=="])
def test_invalid_base64_is_a_400_naming_the_field(client: TestClient, route: str, value: str) -> None:
    message = error(client.post(route, json={"image_base64": value}), 400)
    assert "image_base64" in message and "base64" in message


@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_decoded_non_images_get_the_upload_errors(client: TestClient, route: str) -> None:
    assert (
        client.post(route, json={"image_base64": b64(b"hello, not an image")}).json()["error"]["code"]
        == "unsupported_media_type"
    )
    assert client.post(route, json={"image_base64": ""}).status_code == 415  # empty, as an empty upload
    cut = png_bytes(2, seed=5)
    r = client.post(route, json={"image_base64": b64(cut[: len(cut) // 2])})
    assert r.status_code == 415, r.text


@pytest.mark.parametrize("route", IMAGE_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://example.com/a.png"},
        {"image_url": "https://example.com/a.png"},
        {"image_base64": "https://example.com/a.png"},
        {"image_base64": "aGVsbG8=", "imageUrl": "x"},
    ],
)
def test_urls_are_not_fetched(client: TestClient, route: str, body: dict[str, str]) -> None:
    assert "URLs are not fetched" in error(client.post(route, json=body), 400)


@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_url_form_fields_are_refused_too(client: TestClient, route: str) -> None:
    r = client.post(route, files={"file": ("q.png", png_bytes(1), "image/png")}, data={"url": "http://example.com/x"})
    assert "URLs are not fetched" in error(r, 400)


@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_missing_or_unknown_fields_are_validation_errors(client: TestClient, route: str) -> None:
    assert client.post(route, json={}).status_code == 422
    assert client.post(route, json={"image_base64": b64(png_bytes(1)), "colour": "red"}).status_code == 422
    assert client.post(route, json=[b64(png_bytes(1))]).status_code == 422
    r = client.post(route, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("route", ["/search/image-to-text", "/search/image-to-image"])
def test_page_fields_are_checked_before_the_image(client: TestClient, route: str) -> None:
    """Out of range values are the same 400s as the form's, before the image is decoded."""
    assert "k must be" in error(client.post(route, json={"image_base64": "!!!", "k": 0}), 400)
    assert "radius must be" in error(client.post(route, json={"image_base64": "!!!", "radius": 10**6}), 400)
    assert client.post(route, json={"image_base64": b64(png_bytes(1)), "k": "many"}).status_code == 422


def test_size_limits_hold_for_base64(make_settings) -> None:
    image = png_bytes(1, seed=2)
    settings: Settings = make_settings(max_upload_bytes=len(image) - 1)
    with open_client(settings) as api:
        for route in IMAGE_ROUTES:
            r = api.post(route, json={"image_base64": b64(image)})
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", (route, r.text)
    with pytest.raises(ApiError) as caught:  # the decoded size itself (the body limit aside)
        decode_base64_image(b64(b"x" * 101), 100)
    assert caught.value.status == 413 and "image_base64" in caught.value.message
    with pytest.raises(ApiError) as caught:  # refused from its length, before decoding
        decode_base64_image("A" * 1000, 100)
    assert caught.value.status == 413
    assert decode_base64_image(b64(b"x" * 100), 100) == b"x" * 100


def test_huge_dimensions_are_refused_before_decoding(client: TestClient) -> None:
    from tests.service.test_hostile import huge_header_png

    for route in IMAGE_ROUTES:
        assert client.post(route, json={"image_base64": b64(huge_header_png())}).status_code == 413


def test_openapi_describes_both_bodies(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for route in IMAGE_ROUTES:
        content = doc["paths"][route]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}, route
        assert content["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
        assert "image_base64" in content["application/json"]["schema"]["required"]
        assert all(p.get("description") for p in content["application/json"]["schema"]["properties"].values())
    search = doc["paths"]["/search/image-to-text"]["post"]["requestBody"]["content"]
    assert {"k", "offset", "radius", "filter"} <= set(search["application/json"]["schema"]["properties"])
    assert {"file", "k", "offset", "radius", "filter"} <= set(search["multipart/form-data"]["schema"]["properties"])
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
