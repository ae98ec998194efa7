"""Fixtures of the service tests: the tiny model's encoder, a folder of drawn images, an image
and a text gallery built once with `build_gallery`, and apps over fresh copies of them."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.commands import build_gallery
from model.runtime.encoder import Encoder
from service.app import create_app
from service.settings import Settings
from tests.tiny_data import draw_item, item_text

N_IMAGES = 12
N_TEXTS = 12


# The TestClient sends Host "testserver" from client "testclient" (schemathesis' ASGI client too):
# the tests' apps serve that name and let that client write without a key, as a deployment would
# configure CMHASH_ALLOWED_HOSTS / CMHASH_ANONYMOUS_WRITE_CLIENTS (the defaults admit neither).
TEST_ACCESS = {
    "allowed_hosts": ["127.0.0.1", "localhost", "[::1]", "testserver"],
    "anonymous_write_clients": ["127.0.0.0/8", "::1", "testclient"],
}
TEST_ENV = {f"CMHASH_{name.upper()}": ",".join(values) for name, values in TEST_ACCESS.items()}


@pytest.fixture(scope="session", autouse=True)
def test_client_access() -> Iterator[None]:
    """TEST_ACCESS as environment variables, for apps that tests build from `Settings(...)` directly."""
    import os

    saved = {name: os.environ.get(name) for name in TEST_ENV}
    os.environ.update(TEST_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def no_cmhash_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the tests, never from the environment (but for TEST_ENV)."""
    import os

    for name in list(os.environ):
        if name.startswith("CMHASH_") and name not in TEST_ENV:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path) -> Encoder:
    """The tiny model on the CPU (the oracle the service's answers are checked against)."""
    return Encoder.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_IMAGES drawn PNGs (i00..i11, class i % 4)."""
    root = tmp_path_factory.mktemp("service_images")
    rng = np.random.default_rng(11)
    for i in range(N_IMAGES):
        draw_item(i % 4, rng).save(root / f"i{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def gallery_templates(tiny_model_dir: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/ and texts/ galleries built once; tests work on copies."""
    root = tmp_path_factory.mktemp("service_galleries")
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"id": f"t{i:02d}", "text": item_text(i)}) + "\n" for i in range(N_TEXTS)))
    build_gallery(tiny_model_dir, root / "images", images=image_folder, device="cpu", progress=False)
    build_gallery(tiny_model_dir, root / "texts", texts=texts, device="cpu", progress=False)
    return root


@pytest.fixture
def make_settings(
    tiny_model_dir: Path, gallery_templates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Settings over fresh copies of the template galleries (keyword arguments override fields)."""

    def make(**overrides: object) -> Settings:
        root = tmp_path_factory.mktemp("service_run")
        shutil.copytree(gallery_templates / "images", root / "images")
        shutil.copytree(gallery_templates / "texts", root / "texts")
        fields: dict[str, object] = {
            "model_dir": tiny_model_dir,
            "image_gallery": root / "images",
            "text_gallery": root / "texts",
            "device": "cpu",
            "encoder_threads": 1,
            **TEST_ACCESS,
        }
        return Settings(**{**fields, **overrides})  # type: ignore[arg-type]

    return make


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Poll /readyz until 200 (the model loads in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        assert r.json()["status"] == "loading", r.text
        time.sleep(0.02)
    raise AssertionError("the service did not become ready")


@contextmanager
def open_client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient of a ready app over `settings` (lifespan run: shutdown compacts journals)."""
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def module_settings(
    tiny_model_dir: Path, gallery_templates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings over copies of the template galleries, one copy per test module."""
    root = tmp_path_factory.mktemp("service_module")
    shutil.copytree(gallery_templates / "images", root / "images")
    shutil.copytree(gallery_templates / "texts", root / "texts")
    return Settings(
        model_dir=tiny_model_dir,
        image_gallery=root / "images",
        text_gallery=root / "texts",
        device="cpu",
        encoder_threads=1,
        **TEST_ACCESS,
    )


@pytest.fixture(scope="module")
def client(module_settings: Settings) -> Iterator[TestClient]:
    """A ready client shared by a module (its tests must not change the galleries)."""
    with open_client(module_settings) as ready:
        yield ready


def png_bytes(cls: int, seed: int = 0) -> bytes:
    """A drawn image of class `cls` as PNG bytes."""
    buf = io.BytesIO()
    draw_item(cls, np.random.default_rng(seed)).save(buf, "PNG")
    return buf.getvalue()
