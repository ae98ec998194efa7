"""Image uploads are decoded in bounded memory and time whatever their shape (issue 10, finding 1):
thin strips and one-pixel lines are refused with 413 naming the aspect-ratio limit, images too big
to decode with 413 naming the decoding limit, huge JPEGs are decoded at reduced scale, and at most
max_concurrent_decodes uploads are decoded at once."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.runtime.encoder import Encoder
from service.errors import ApiError
from service.settings import Settings
from service.uploads import check_image
from tests.model.runtime.test_image import streamed_png
from tests.service.conftest import open_client, png_bytes

ROUTES = ("/search/image-to-text", "/search/image-to-image", "/encode/image")


def post(client: TestClient, route: str, data: bytes, name: str):
    return client.post(route, files={"file": (name, data, "image/png")}, data={"k": "3"} if "search" in route else {})


def refused(r, needle: str) -> str:
    """Assert a 413 with the error body whose message contains `needle`; return the message."""
    assert r.status_code == 413, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "payload_too_large"
    assert needle in body["error"]["message"], body
    return body["error"]["message"]


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    """The issue's images: a 96 x 400,000 strip and a 1 x 39,000,000 line (both under the
    40-Mpixel limit, both tiny files), and a 5000 x 5000 PNG (25 Mpixels, over the decoding limit)."""
    return {
        "strip.png": streamed_png(96, 400_000),
        "line.png": streamed_png(1, 39_000_000),
        "square.png": streamed_png(5000, 5000),
    }


def test_defaults() -> None:
    s = Settings(model_dir="m")  # type: ignore[arg-type]
    assert (s.max_image_aspect, s.max_decoded_pixels, s.max_concurrent_decodes) == (20.0, 16_000_000, 2)


def test_thin_and_huge_images_are_refused_naming_the_limit(client: TestClient, hostile: dict[str, bytes]) -> None:
    for route in ROUTES:
        message = refused(post(client, route, hostile["strip.png"], "strip.png"), "20:1 aspect-ratio limit")
        assert "'strip.png'" in message and "96x400000" in message
        refused(post(client, route, hostile["line.png"], "line.png"), "20:1 aspect-ratio limit")
        refused(post(client, route, hostile["square.png"], "square.png"), "16000000-pixel decoding limit")
    added = client.post("/gallery/images", files=[("files", ("strip.png", hostile["strip.png"], "image/png"))])
    refused(added, "aspect-ratio limit")
    assert client.get("/gallery/images/strip").status_code == 404


def test_a_huge_jpeg_is_answered_from_a_reduced_decode(client: TestClient, encoder: Encoder) -> None:
    data = jpeg(6000, 4000)  # 24 Mpixels: under the 40-Mpixel limit; decoded at 1/8 (750 x 500)
    r = post(client, "/encode/image", data, "big.jpg")
    assert r.status_code == 200, r.text
    assert r.json()["code"] == bytes(encoder.encode_image_arrays(encoder.preprocess_image(data)[None])[0]).hex()
    r = post(client, "/search/image-to-text", data, "big.jpg")
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_limits_come_from_the_settings(make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMHASH_MAX_IMAGE_ASPECT", "3")
    monkeypatch.setenv("CMHASH_MAX_DECODED_PIXELS", "100000")
    settings = make_settings()
    assert (settings.max_image_aspect, settings.max_decoded_pixels) == (3.0, 100_000)
    buf = io.BytesIO()
    Image.new("RGB", (400, 100), (9, 9, 9)).save(buf, "PNG")
    with open_client(settings) as c:
        refused(post(c, "/encode/image", buf.getvalue(), "wide.png"), "3:1 aspect-ratio limit")
        refused(post(c, "/encode/image", jpeg(3000, 3000), "j.jpg"), "100000-pixel decoding limit")  # 1/8: 375^2
        assert post(c, "/encode/image", jpeg(2400, 2400), "k.jpg").status_code == 200  # 1/8: 300^2 = 90000
        assert post(c, "/encode/image", png_bytes(1), "ok.png").status_code == 200


def test_check_image_bounds_the_aspect_from_the_header() -> None:
    strip = streamed_png(96, 400_000)
    assert check_image(strip, 40_000_000, "'s.png'") == "PNG"  # the service checks the aspect when decoding
    with pytest.raises(ApiError) as info:
        check_image(strip, 40_000_000, "'s.png'", max_aspect=20)
    assert info.value.status == 413 and "aspect-ratio limit" in info.value.message
    with pytest.raises(ApiError) as info:
        check_image(strip, 1_000_000, "'s.png'")
    assert info.value.status == 413 and "1000000-pixel limit" in info.value.message


def test_at_most_max_concurrent_decodes_run_at_once(make_settings) -> None:
    with open_client(make_settings(max_concurrent_decodes=2)) as c:
        encoder = c.app.state.cmhash.encoder
        real = encoder.preprocess_image
        lock, running, peak = threading.Lock(), [0], [0]

        def slow(*args, **kwargs):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                time.sleep(0.15)
                return real(*args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1

        encoder.preprocess_image = slow
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: post(c, "/encode/image", png_bytes(i % 4, seed=i), f"{i}.png"), range(6)))
        assert [a.status_code for a in answers] == [200] * 6
        assert peak[0] == 2  # six at once, two decoding at a time
        assert running[0] == 0


def test_refused_images_do_not_leak_decode_slots(make_settings, hostile: dict[str, bytes]) -> None:
    with open_client(make_settings(max_concurrent_decodes=1)) as c:
        for _ in range(3):
            refused(post(c, "/encode/image", hostile["strip.png"], "strip.png"), "aspect-ratio limit")
            assert post(c, "/encode/image", b"\x89PNG\r\n\x1a\n not a png", "bad.png").status_code == 415
        r = post(c, "/encode/image", png_bytes(2), "ok.png")
        assert r.status_code == 200 and np.asarray(bytearray.fromhex(r.json()["code"])).size > 0
