"""The error taxonomy: every bad input gets its status and the JSON error body, never a 500."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.settings import Settings
from tests.service.conftest import open_client, png_bytes

LIMIT = 100_000


@pytest.fixture(scope="module")
def strict(module_settings: Settings) -> Iterator[TestClient]:
    """A client with small limits: 100 kB bodies, 50-character texts, k <= 100, 1 Mpixel images."""
    settings = module_settings.model_copy(
        update={"max_upload_bytes": LIMIT, "max_text_chars": 50, "max_k": 100, "max_image_pixels": 1_000_000}
    )
    with open_client(settings) as client:
        yield client


def expect(r, status: int, code: str) -> dict:
    """Assert `r` is the taxonomy's error body with `status` and `code`; return the error."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000) -> bytes:
    """A valid all-black 1-bit `side` x `side` PNG: tiny on disk, huge decoded."""
    row = b"\x00" * (1 + side // 8)
    idat = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def upload(client: TestClient, route: str, data: bytes, name: str = "x.png", **form: str):
    return client.post(route, files={"file": (name, data, "image/png")}, data=form)


def test_bad_images(strict: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 30, 30)).save(buf, "JPEG")
    truncated = buf.getvalue()[:300]
    for route in ("/search/image-to-text", "/search/image-to-image", "/encode/image"):
        expect(upload(strict, route, truncated, "cut.jpg"), 415, "unsupported_media_type")
        expect(upload(strict, route, b"just some words\n", "notes.txt"), 415, "unsupported_media_type")
        expect(upload(strict, route, b"", "empty.png"), 415, "unsupported_media_type")
    bomb = bomb_png()
    assert len(bomb) < LIMIT
    assert "pixels" in expect(upload(strict, "/search/image-to-text", bomb), 413, "payload_too_large")["message"]
    expect(upload(strict, "/encode/image", bomb_png(1200)), 413, "payload_too_large")  # over our 1 Mpixel limit only
    added = strict.post("/gallery/images", files=[("files", ("b.png", bomb, "image/png"))])
    expect(added, 413, "payload_too_large")
    assert strict.get("/gallery/images/b").status_code == 404


def test_oversized_bodies(strict: TestClient) -> None:
    big = png_bytes(0) + b"\x00" * LIMIT
    error = expect(upload(strict, "/search/image-to-text", big), 413, "payload_too_large")
    assert str(LIMIT) in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b'{"text": "' + b"a" * 5000

    r = strict.post("/search/text-to-image", content=chunks(), headers={"Content-Type": "application/json"})
    expect(r, 413, "payload_too_large")
    expect(strict.post("/encode/text", json={"text": "word " * 20}), 413, "payload_too_large")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": ""}, "empty"),
        ({"text": "  \n\t "}, "empty"),
        ({"text": "a red square", "k": 0}, "k must"),
        ({"text": "a red square", "k": 101}, "k must"),
        ({"text": "a red square", "k": 10**12}, "k must"),
        ({"text": "a red square", "offset": -1}, "offset"),
        ({"text": "a red square", "radius": -1}, "radius"),
        ({"text": "a red square", "radius": 17}, "radius"),
    ],
)
def test_bad_fields_are_400(strict: TestClient, body: dict, needle: str) -> None:
    assert needle in expect(strict.post("/search/text-to-image", json=body), 400, "bad_request")["message"]


def test_bad_form_fields(strict: TestClient) -> None:
    expect(upload(strict, "/search/image-to-image", png_bytes(1), k="0"), 400, "bad_request")
    expect(upload(strict, "/search/image-to-image", png_bytes(1), offset="-3"), 400, "bad_request")
    expect(upload(strict, "/search/image-to-image", png_bytes(1), k="many"), 422, "validation_error")
    expect(strict.post("/search/image-to-image", data={"k": "3"}), 422, "validation_error")


def test_validation_and_framework_errors_use_the_body(strict: TestClient) -> None:
    error = expect(strict.post("/search/text-to-image", json={"k": 3}), 422, "validation_error")
    assert "text" in error["message"]
    expect(strict.post("/search/text-to-image", json={"text": ["a"]}), 422, "validation_error")
    expect(strict.post("/search/text-to-image", json={"text": "a", "extra": 1}), 422, "validation_error")
    expect(
        strict.post("/search/text-to-image", content=b"{not json", headers={"Content-Type": "application/json"}),
        422,
        "validation_error",
    )
    r = strict.post(
        "/search/text-to-image", content=b'{"text": "\xff\xfe red"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422) and r.json()["error"]["code"] in ("bad_request", "validation_error")
    expect(strict.get("/no/such/route"), 404, "not_found")
    expect(strict.get("/gallery/images/nope"), 404, "not_found")
    expect(strict.get("/gallery/images/nope/file"), 404, "not_found")
    expect(strict.get("/gallery/texts/t00/file"), 404, "not_found")
    expect(strict.get("/gallery/videos"), 404, "not_found")
    expect(strict.delete("/gallery/videos/x"), 404, "not_found")
    expect(strict.put("/search/text-to-image", json={}), 405, "method_not_allowed")
    expect(strict.post("/gallery/texts", json={"items": []}), 422, "validation_error")
    expect(
        strict.post("/gallery/images", files=[("files", ("a.png", png_bytes(0)))], data={"metadata": "[1]"}),
        400,
        "bad_request",
    )
    expect(strict.post("/gallery/texts", json={"items": [{"id": "bad\nid", "text": "x"}]}), 400, "bad_request")


def test_a_real_bug_is_a_logged_500_with_the_body(make_settings, caplog: pytest.LogCaptureFixture) -> None:
    with open_client(make_settings()) as ready:
        state = ready.app.state.cmhash  # type: ignore[attr-defined]

        def broken(jobs):
            raise RuntimeError("a bug")

        state.batchers["text"].fn = broken
        client = TestClient(ready.app, raise_server_exceptions=False)
        r = client.post("/search/text-to-image", json={"text": "a red square"})
        expect(r, 500, "internal_error")
        assert "a bug" not in r.text and "a bug" in caplog.text
        assert 'route="/search/text-to-image",status="500"' in client.get("/metrics").text
