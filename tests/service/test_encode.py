"""/encode: the hex code equals the encoder's own packed code."""

from __future__ import annotations

from fastapi.testclient import TestClient

from model.runtime.encoder import Encoder
from tests.service.conftest import png_bytes


def test_encode_text_gives_the_encoders_code(client: TestClient, encoder: Encoder) -> None:
    r = client.post("/encode/text", json={"text": "a bright green circle"})
    assert r.status_code == 200, r.text
    assert r.json() == {"code": bytes(encoder.encode_texts(["a bright green circle"])[0]).hex(), "bits": encoder.bits}
    assert len(r.json()["code"]) == encoder.bits // 4


def test_encode_image_gives_the_encoders_code(client: TestClient, encoder: Encoder) -> None:
    image = png_bytes(3, seed=5)
    r = client.post("/encode/image", files={"file": ("x.png", image, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json() == {"code": bytes(encoder.encode_images([image])[0]).hex(), "bits": encoder.bits}
