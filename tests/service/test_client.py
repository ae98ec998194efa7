"""service.client against a real `cmhash serve` process on 127.0.0.1: every method, sync and
async, the error exception (400, 401, 403, 404, 409) and the retry on the service's 503.

Two servers: one with both galleries and an API key (writes need it), one without an image
gallery (its image searches and uploads are the service's own 503, retried then raised)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from model.runtime.encoder import Encoder
from service.client import AsyncClient, Client, CmhashError, ImageFile, Readiness
from tests.servers import free_port, wait_ready
from tests.service.conftest import N_IMAGES, N_TEXTS, png_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "client-test-key"
BITS = 16


@contextmanager
def serve(*args: str | Path) -> Iterator[str]:
    """Base URL of `cmhash serve ARGS` on a free 127.0.0.1 port (no CMHASH_* variable of the
    tests leaks in: default hosts, loopback writes), stopped with SIGINT afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
    cmd = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        *map(str, args),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--encoder-threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, alive=lambda: proc.poll() is None)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, gallery_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Both galleries (copies: the tests add and delete), writes need KEY."""
    root = tmp_path_factory.mktemp("client_server")
    shutil.copytree(gallery_templates / "images", root / "images")
    shutil.copytree(gallery_templates / "texts", root / "texts")
    with serve(
        "--model",
        tiny_model_dir,
        "--image-gallery",
        root / "images",
        "--text-gallery",
        root / "texts",
        "--api-key",
        KEY,
    ) as base:
        yield base


@pytest.fixture(scope="module")
def texts_only(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """No image gallery and no key: image searches and image uploads are the service's 503."""
    with serve("--model", tiny_model_dir, "--text-gallery", tmp_path_factory.mktemp("client_texts") / "texts") as base:
        yield base


def test_reads(server: str, encoder: Encoder, tmp_path: Path) -> None:
    with Client(server) as cm:
        assert cm.health().status == "ok"
        readiness = cm.ready()
        assert isinstance(readiness, Readiness) and readiness.ready and readiness.status == "ok"
        images, texts = cm.gallery_status("images"), cm.gallery_status("texts")
        assert (images.kind, images.count, images.bits) == ("image", N_IMAGES, BITS)
        assert (texts.kind, texts.count, texts.backend) == ("text", N_TEXTS, "faiss")

        page = cm.search_text_to_image("a small red square", k=3)
        assert [h.rank for h in page.results] == [1, 2, 3] and page.bits == BITS and page.total is None
        assert page.took_ms >= 0 and all(h.id.startswith("i") for h in page.results)
        later = cm.search_text_to_image("a small red square", k=3, offset=3)
        assert [h.rank for h in later.results] == [4, 5, 6]
        everything = cm.search_text_to_image("a small red square", k=5, radius=BITS)
        assert everything.total == N_IMAGES and len(everything.results) == 5
        assert cm.search_text_to_text("a small red square", k=2).results[0].metadata["text"]

        path = tmp_path / "query.png"
        path.write_bytes(png_bytes(1))
        by_bytes = cm.search_image_to_text(png_bytes(1), k=4)
        by_path = cm.search_image_to_text(path, k=4)
        with path.open("rb") as file:
            by_file = cm.search_image_to_text(file, k=4)
        assert by_bytes.results == by_path.results == by_file.results and len(by_bytes.results) == 4
        near = cm.search_image_to_image(("q.png", png_bytes(2)), k=2, radius=BITS)
        assert near.total == N_IMAGES and len(near.results) == 2

        assert cm.encode_text("a blue stripes").code == bytes(encoder.encode_texts(["a blue stripes"])[0]).hex()
        code = cm.encode_image(path)
        assert code.bits == BITS and len(code.code) == BITS // 4

        item = cm.get_item("texts", "t00")
        assert item.id == "t00" and len(item.code) == BITS // 4 and "text" in item.metadata

        listed = cm.list_items("texts", offset=2, limit=3)
        assert listed.count == N_TEXTS and [i.id for i in listed.items] == ["t02", "t03", "t04"]
        assert [i.id for i in cm.list_items("images").items] == [f"i{n:02d}" for n in range(N_IMAGES)]
        assert cm.get_item("images", "i01").metadata["path"] == "i01.png"  # no server path
        one = cm.get_item("texts", "t01").metadata["text"]
        filtered = cm.search_text_to_text("a small red square", k=5, filter={"text": one})
        assert [h.id for h in filtered.results] == ["t01"]
        assert [h.id for h in cm.search_image_to_text(png_bytes(1), k=5, filter={"text": one}).results] == ["t01"]


def test_writes_with_the_key(server: str) -> None:
    with Client(server, api_key=KEY) as cm:
        added = cm.add_images(
            [("new-a.png", png_bytes(0, seed=5)), ("new-b.png", png_bytes(3, seed=6))],
            ids=["new a/1", "new-b"],
            metadata=[{"label": "red"}, None],
        )
        assert added.ids == ["new a/1", "new-b"] and added.count == N_IMAGES + 2
        item = cm.get_item("images", "new a/1")
        assert item.metadata["label"] == "red" and item.metadata["filename"] == "new-a.png"
        stored = cm.image_file("new a/1")
        assert stored == ImageFile(png_bytes(0, seed=5), "image/png")
        assert cm.search_image_to_image(png_bytes(0, seed=5), k=1).results[0].distance == 0

        texts = cm.add_texts(["a green circle", "a pale dot?"], ids=["c 1", None], metadata=[{"n": 1}, None])
        assert texts.ids[0] == "c 1" and texts.count == N_TEXTS + 2
        assert cm.get_item("texts", texts.ids[1]).metadata == {"text": "a pale dot?"}

        assert cm.delete_item("images", "new a/1").count == N_IMAGES + 1
        assert cm.delete_item("images", "new-b").count == N_IMAGES
        for item_id in texts.ids:
            cm.delete_item("texts", item_id)
        assert cm.gallery_status("texts").count == N_TEXTS
        with pytest.raises(CmhashError) as gone:
            cm.image_file("new a/1")
        assert (gone.value.status, gone.value.code) == (404, "not_found")


def test_errors(server: str) -> None:
    with Client(server) as anonymous, Client(server, api_key="wrong") as wrong, Client(server, api_key=KEY) as cm:
        with pytest.raises(CmhashError) as caught:
            anonymous.get_item("texts", "no such id")
        assert (caught.value.status, caught.value.code) == (404, "not_found")
        assert "no such id" in caught.value.message
        with pytest.raises(CmhashError) as caught:
            anonymous.search_text_to_image("a red square", k=0)
        assert (caught.value.status, caught.value.code) == (400, "bad_request") and "k must be" in caught.value.message
        with pytest.raises(CmhashError) as caught:
            anonymous.search_text_to_text("a red square", radius=BITS + 1)
        assert caught.value.status == 400 and "radius" in caught.value.message
        with pytest.raises(CmhashError) as caught:
            anonymous.add_texts("a red square")
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        with pytest.raises(CmhashError) as caught:
            wrong.delete_item("texts", "t00")
        assert (caught.value.status, caught.value.code) == (403, "forbidden")
        with pytest.raises(CmhashError) as caught:
            cm.add_texts("a red square", ids=["t00"])
        assert (caught.value.status, caught.value.code) == (409, "conflict")
        with pytest.raises(CmhashError) as caught:
            cm.encode_image(("not-an-image.png", b"plain text"))
        assert caught.value.status == 415
        with pytest.raises(CmhashError) as caught:
            cm.add_images([("x.png", png_bytes(0))], ids=["x"], metadata=[{"n": float("1e999")}])  # not JSON
        assert caught.value.status == 400
        assert cm.gallery_status("texts").count == N_TEXTS  # nothing was added


class Counting(httpx.HTTPTransport):
    """A real transport that counts what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_the_services_503_is_retried_then_raised(texts_only: str) -> None:
    transport = Counting()
    with Client(texts_only, retries=2, backoff=0.01, transport=transport) as cm:
        with pytest.raises(CmhashError) as caught:
            cm.search_text_to_image("a red square")
        assert (caught.value.status, caught.value.code) == (503, "not_ready")
        assert "image gallery" in caught.value.message
        assert transport.sent == ["POST /search/text-to-image"] * 3
        # a refused write stores nothing, so the service's own 503 is retried for writes too
        transport.sent.clear()
        with pytest.raises(CmhashError) as caught:
            cm.add_images([("a.png", png_bytes(0))])
        assert caught.value.status == 503 and transport.sent == ["POST /gallery/images"] * 3
        assert cm.gallery_status("texts").count == 0
        assert cm.add_texts("a red square").count == 1  # loopback writes need no key without one configured


def test_async_client(server: str, texts_only: str) -> None:
    async def main() -> None:
        async with AsyncClient(server, api_key=KEY) as cm, AsyncClient(texts_only, retries=1, backoff=0.01) as other:
            assert (await cm.health()).status == "ok" and (await cm.ready()).ready
            pages = await asyncio.gather(
                cm.search_text_to_image("a small red square", k=3),
                cm.search_text_to_text("a small red square", k=3),
                cm.search_image_to_text(png_bytes(1), k=3),
                cm.search_image_to_image(png_bytes(1), k=3, radius=BITS),
            )
            assert [len(p.results) for p in pages] == [3, 3, 3, 3] and pages[3].total == N_IMAGES
            assert (await cm.encode_text("x")).bits == BITS and (await cm.encode_image(png_bytes(2))).bits == BITS
            added = await cm.add_images(("async.png", png_bytes(2, seed=9)))
            assert added.ids == ["async"]
            assert (await cm.image_file("async")).content == png_bytes(2, seed=9)
            assert (await cm.get_item("images", "async")).id == "async"
            assert (await cm.delete_item("images", "async")).count == N_IMAGES
            text = await cm.add_texts("an async text", ids=["async-t"])
            assert (await cm.gallery_status("texts")).count == text.count == N_TEXTS + 1
            await cm.delete_item("texts", "async-t")
            with pytest.raises(CmhashError) as caught:
                await cm.get_item("images", "async")
            assert caught.value.status == 404
            with pytest.raises(CmhashError) as caught:
                await other.search_image_to_image(png_bytes(1))
            assert (caught.value.status, caught.value.code) == (503, "not_ready")

    asyncio.run(main())
