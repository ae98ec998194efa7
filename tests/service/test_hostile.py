"""Hostile input against every endpoint: each bad request gets its exact expected status and
error code (a 400 that turns into a 409 fails), the service stays healthy, and the galleries (ids,
counts, every item's code and metadata, stored upload files) do not change.

Part 1 is a hand-made sweep (broken and disguised images, empty and huge bodies, out-of-range
and wrongly typed numbers, non-UTF-8 bytes, ids with path characters) that extends
test_errors.py; part 2 fuzzes every operation of the OpenAPI schema with schemathesis
(bounded and derandomized, so CI is reproducible)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes

JSON = {"Content-Type": "application/json"}
TEXT_ROUTES = ("/search/text-to-image", "/search/text-to-text")
JSON_ROUTES = (*TEXT_ROUTES, "/encode/text")
IMAGE_SEARCHES = ("/search/image-to-text", "/search/image-to-image")


# ----------------------------------------------------------------------------- hostile payloads


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_header_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims `side` x `side` pixels and which holds no pixel data at all."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]  # header intact, scan data cut


def truncated_png() -> bytes:
    data = png_bytes(2, seed=5)
    return data[: len(data) // 2]  # a valid IHDR (Image.open succeeds), IDAT cut off


BAD_IMAGES: dict[str, Callable[[], tuple[str, bytes]]] = {
    "truncated-jpeg": lambda: ("cut.jpg", truncated_jpeg()),
    "truncated-png": lambda: ("cut.png", truncated_png()),
    "zero-bytes": lambda: ("empty.jpg", b""),
    "huge-dimensions": lambda: ("huge.png", huge_header_png()),
    "pdf-as-jpg": lambda: ("photo.jpg", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"),
    "zip-as-jpg": lambda: ("photo.jpg", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40),
}


# ----------------------------------------------------------------------------- fixtures, checks

# The error code each status must carry, written here (not read from service.errors): a refusal is
# checked against its exact status AND code, so a 409 "conflict" where a 400 is due fails.
ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}
BAD = 400  # a value the service refuses (range, encoding, unstorable text or metadata)
MISSING = 404  # no such item or gallery
METHOD = 405
CONFLICT = 409  # an id that exists, or twice in one request
TOO_LARGE = 413  # over a size limit
NOT_IMAGE = 415  # bytes that are not a decodable image
INVALID = 422  # the request does not fit the schema (type, missing field)


@pytest.fixture(scope="module")
def api(client: TestClient) -> TestClient:
    """The module's ready app, with 500s returned as responses rather than raised."""
    return TestClient(client.app, raise_server_exceptions=False)


def stored_items(api: TestClient) -> dict[str, dict[str, tuple[str, str]]]:
    """kind -> id -> (code hex, metadata as canonical JSON) of every stored item."""
    state = api.app.state.cmhash  # type: ignore[attr-defined]
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for kind, g in state.galleries.items():
        items = {}
        for item_id in g.ids():
            item = g.get(item_id)
            items[item_id] = (bytes(item["code"]).hex(), json.dumps(item["metadata"], sort_keys=True))
        out[kind] = items
    return out


def snapshot(api: TestClient) -> dict[str, Any]:
    """What bad input must never change: gallery counts, id lists (in order), every item's code
    and metadata, stored upload files."""
    state = api.app.state.cmhash  # type: ignore[attr-defined]
    counts = {}
    for kind in ("images", "texts"):
        r = api.get(f"/gallery/{kind}")
        assert r.status_code == 200, r.text
        counts[kind] = r.json()["count"]
    ids = {kind: list(g.gallery.store.ids()) for kind, g in state.galleries.items()}
    uploads = state.settings.upload_dir or state.settings.image_gallery / "uploads"
    files = sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []
    return {"counts": counts, "ids": ids, "items": stored_items(api), "uploads": files}


def assert_error(r: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx (never a 5xx) with the taxonomy's body and a non-empty message; with `status`,
    exactly that status and its error code."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"].strip(), body
    if status is not None:
        assert (r.status_code, error["code"]) == (status, ERROR_CODES[status]), f"{r.status_code}: {r.text[:500]}"
    return error


def assert_healthy(api: TestClient) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    assert api.get("/readyz").status_code == 200
    r = api.post("/search/text-to-image", json={"text": "a red square", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text


def check_hostile(api: TestClient, send: Callable[[TestClient], httpx.Response], status: int) -> dict[str, Any]:
    before = snapshot(api)
    error = assert_error(send(api), status)
    assert_healthy(api)
    assert snapshot(api) == before, "a refused request changed a gallery"
    return error


def upload(route: str, name: str, data: bytes, **form: Any) -> Callable[[TestClient], httpx.Response]:
    field = "files" if route == "/gallery/images" else "file"
    return lambda c: c.post(route, files=[(field, (name, data, "application/octet-stream"))], data=form)


def raw_multipart(route: str, filename: bytes, data: bytes) -> Callable[[TestClient], httpx.Response]:
    """One file part whose file name is sent as these exact bytes (httpx would re-encode a str)."""
    boundary = b"hostile-boundary-7c1e"
    body = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="files"; filename="'
        + filename
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + data
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    return lambda c: c.post(route, content=body, headers=headers)


def raw_json(route: str, body: bytes, method: str = "POST") -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.request(method, route, content=body, headers=JSON)


def post_json(route: str, body: Any) -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post(route, json=body)


# ----------------------------------------------------------------------------- the sweep

BAD_IMAGE_STATUS = {
    "truncated-jpeg": NOT_IMAGE,
    "truncated-png": NOT_IMAGE,
    "zero-bytes": NOT_IMAGE,
    "huge-dimensions": TOO_LARGE,
    "pdf-as-jpg": NOT_IMAGE,
    "zip-as-jpg": NOT_IMAGE,
}


def _cases() -> Iterator[Any]:
    """(route, send, expected status) per hostile request."""
    # images: every image-reading endpoint x every broken or disguised file
    for route in (*IMAGE_SEARCHES, "/encode/image", "/gallery/images"):
        for label, make in BAD_IMAGES.items():
            yield pytest.param(
                route,
                (lambda r, m: lambda c: upload(r, *m())(c))(route, make),
                BAD_IMAGE_STATUS[label],
                id=f"{route}:{label}",
            )
        yield pytest.param(route, lambda c, r=route: c.post(r, data={"k": "3"}), INVALID, id=f"{route}:no-file")
        field = "files" if route == "/gallery/images" else "file"
        yield pytest.param(
            route, lambda c, r=route, f=field: c.post(r, data={f: "not a file"}), INVALID, id=f"{route}:file-as-text"
        )
        yield pytest.param(
            route, lambda c, r=route: c.post(r, json={"file": "aGVsbG8="}), INVALID, id=f"{route}:json-not-multipart"
        )

    # page fields of the image searches (multipart form): out of range -> 400, not an integer -> 422
    good = png_bytes(1, seed=3)
    for route in IMAGE_SEARCHES:
        for label, (form, status) in {
            "k-negative": ({"k": "-1"}, BAD),
            "k-huge": ({"k": str(10**30)}, BAD),
            "k-float": ({"k": "2.5"}, INVALID),
            "k-exponent": ({"k": "1e3"}, INVALID),
            "k-non-utf8": ({"k": b"\xff\xfe"}, BAD),
            "k-nul": ({"k": "3\x00"}, INVALID),
            "offset-huge": ({"offset": str(10**30)}, BAD),
            "offset-negative-huge": ({"offset": str(-(10**30))}, BAD),
            "radius-negative": ({"radius": "-1"}, BAD),
            "radius-huge": ({"radius": str(10**30)}, BAD),
            "radius-above-bits": ({"radius": "17"}, BAD),
            "radius-text": ({"radius": "far"}, INVALID),
        }.items():
            yield pytest.param(route, upload(route, "q.png", good, **form), status, id=f"{route}:{label}")

    # the JSON text endpoints: encoding, size, numbers, types, missing fields
    for route in JSON_ROUTES:
        yield pytest.param(route, raw_json(route, b'{"text": "caf\xe9 \xff\xfe"}'), BAD, id=f"{route}:non-utf8-text")
        yield pytest.param(route, post_json(route, {"text": "a" * 10_000_000}), TOO_LARGE, id=f"{route}:10MB-text")
        yield pytest.param(
            route, raw_json(route, b'{"text": "' + b"b" * (11 * 2**20) + b'"}'), TOO_LARGE, id=f"{route}:11MB-body"
        )
        yield pytest.param(route, post_json(route, {}), INVALID, id=f"{route}:missing-text")
        yield pytest.param(route, raw_json(route, b""), INVALID, id=f"{route}:empty-body")
        for label, text in {"int": 123, "null": None, "list": ["a red square"], "object": {"t": "a"}}.items():
            yield pytest.param(route, post_json(route, {"text": text}), INVALID, id=f"{route}:text-{label}")
        for label, body in {"array": b"[]", "string": b'"a red square"', "null": b"null", "number": b"7"}.items():
            yield pytest.param(route, raw_json(route, body), INVALID, id=f"{route}:body-{label}")
        yield pytest.param(route, raw_json(route, b"[" * 100_000 + b"]" * 100_000), BAD, id=f"{route}:deeply-nested")
        yield pytest.param(
            route,
            lambda c, r=route: c.post(r, content=b'{"text": "x"}', headers={"Content-Type": "text/plain"}),
            INVALID,
            id=f"{route}:text-plain",
        )
    for route in TEXT_ROUTES:
        for label, (extra, status) in {
            "k-negative-huge": ({"k": -(10**30)}, BAD),
            "k-huge": ({"k": 10**30}, BAD),
            "k-float": ({"k": 2.5}, INVALID),
            "k-string": ({"k": "ten"}, INVALID),
            "k-null": ({"k": None}, INVALID),
            "k-list": ({"k": [3]}, INVALID),
            "offset-huge": ({"offset": 10**30}, BAD),
            "offset-negative-huge": ({"offset": -(10**30)}, BAD),
            "radius-huge": ({"radius": 10**30}, BAD),
            "radius-negative-huge": ({"radius": -(10**30)}, BAD),
            "radius-above-bits": ({"radius": 17}, BAD),
            "radius-float": ({"radius": 1.5}, INVALID),
        }.items():
            yield pytest.param(
                route, post_json(route, {"text": "a red square", **extra}), status, id=f"{route}:{label}"
            )
        literals = {
            "k-Infinity": b'"k": Infinity',
            "radius-NaN": b'"radius": NaN',
            "offset--Infinity": b'"offset": -Infinity',
        }
        for label, literal in literals.items():
            yield pytest.param(
                route, raw_json(route, b'{"text": "a red square", ' + literal + b"}"), INVALID, id=f"{route}:{label}"
            )

    # adding texts: encodings, ids, sizes, types, conflicts
    route = "/gallery/texts"
    for label, (body, status) in {
        "non-utf8-text": (b'{"items": [{"id": "h1", "text": "caf\xe9 \xff"}]}', BAD),
        "non-utf8-id": (b'{"items": [{"id": "h\xff\xfe", "text": "a red square"}]}', BAD),
        "non-utf8-metadata": (b'{"items": [{"id": "h1", "text": "a red square", "metadata": {"k": "\xff"}}]}', BAD),
        "lone-surrogate-text": (b'{"items": [{"id": "h1", "text": "a \\ud800 red square"}]}', BAD),
        "surrogate-bytes-text": (b'{"items": [{"id": "h1", "text": "a \xed\xa0\x80 red square"}]}', BAD),
        "lone-surrogate-metadata-key": (
            b'{"items": [{"id": "h1", "text": "a red square", "metadata": {"\\udfff": 1}}]}',
            BAD,
        ),
        "nan-metadata": (b'{"items": [{"id": "h1", "text": "a red square", "metadata": {"score": NaN}}]}', BAD),
        "deeply-nested": (b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", BAD),
        "11MB-body": (b'{"items": [{"text": "' + b"c" * (11 * 2**20) + b'"}]}', TOO_LARGE),
        "empty-body": (b"", INVALID),
        "body-array": (b"[]", INVALID),
    }.items():
        yield pytest.param(route, raw_json(route, body), status, id=f"{route}:{label}")
    for label, (body, status) in {
        "10MB-text": ({"items": [{"id": "h1", "text": "a" * 10_000_000}]}, TOO_LARGE),
        "id-nul": ({"items": [{"id": "h1\x00", "text": "a red square"}]}, BAD),
        "id-dotdot-nul": ({"items": [{"id": "../\x00etc/passwd", "text": "a red square"}]}, BAD),
        "id-newline": ({"items": [{"id": "a\nb", "text": "a red square"}]}, BAD),
        "id-empty": ({"items": [{"id": "", "text": "a red square"}]}, BAD),
        "id-spaces": ({"items": [{"id": " t99 ", "text": "a red square"}]}, BAD),
        "id-too-long": ({"items": [{"id": "x" * 257, "text": "a red square"}]}, BAD),
        "id-int": ({"items": [{"id": 5, "text": "a red square"}]}, INVALID),
        "id-existing": ({"items": [{"id": "t00", "text": "a red square"}]}, CONFLICT),
        "ids-twice": ({"items": [{"id": "h1", "text": "one"}, {"id": "h1", "text": "two"}]}, CONFLICT),
        "valid-then-empty": ({"items": [{"id": "h1", "text": "a red square"}, {"id": "h2", "text": "  "}]}, BAD),
        "too-many-items": ({"items": [{"text": f"text {i}"} for i in range(257)]}, BAD),
        "missing-items": ({}, INVALID),
        "missing-text": ({"items": [{"id": "h1"}]}, INVALID),
        "items-object": ({"items": {"id": "h1", "text": "x"}}, INVALID),
        "items-of-strings": ({"items": ["a red square"]}, INVALID),
        "metadata-list": ({"items": [{"id": "h1", "text": "x", "metadata": [1, 2]}]}, INVALID),
        "extra-field": ({"items": [{"id": "h1", "text": "x", "path": "/etc/passwd"}]}, INVALID),
    }.items():
        yield pytest.param(route, post_json(route, body), status, id=f"{route}:{label}")

    # adding images: form fields around a valid image, and all-or-none with a broken one
    route = "/gallery/images"
    img = png_bytes(3, seed=9)
    for label, (form, status) in {
        "id-nul": ({"ids": "h\x00"}, BAD),
        "id-newline": ({"ids": "a\nb"}, BAD),
        "id-spaces": ({"ids": " h "}, BAD),
        "id-too-long": ({"ids": "y" * 257}, BAD),
        "id-existing": ({"ids": "i00"}, CONFLICT),
        "ids-count": ({"ids": ["a", "b"]}, BAD),
        "metadata-not-json": ({"metadata": "{nope"}, BAD),
        "metadata-list": ({"metadata": "[1, 2]"}, BAD),
        "metadata-nan": ({"metadata": '{"score": NaN}'}, BAD),
        "metadata-infinity": ({"metadata": '{"score": -Infinity}'}, BAD),
        "metadata-lone-surrogate": ({"metadata": '{"s": "\\ud800"}'}, BAD),
        "metadata-count": ({"metadata": ["{}", "{}"]}, BAD),
    }.items():
        yield pytest.param(route, upload(route, "h.png", img, **form), status, id=f"{route}:{label}")
    yield pytest.param(
        route,
        lambda c: c.post(
            route,
            files=[("files", ("h.png", img, "image/png")), ("files", ("cut.jpg", truncated_jpeg(), "image/jpeg"))],
            data={"ids": ["../../etc/passwd", "h2"]},
        ),
        NOT_IMAGE,
        id=f"{route}:valid-then-truncated",
    )
    yield pytest.param(
        route,
        lambda c: c.post(route, files=[("files", (f"e{i}.png", b"", "image/png")) for i in range(257)]),
        BAD,
        id=f"{route}:too-many-files",
    )
    yield pytest.param(route, raw_multipart(route, b"", img), BAD, id=f"{route}:filename-empty")

    # reading, deleting, serving: ids with path characters, NUL, near-misses of real ids
    for label, path in {
        "dotdot-encoded": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "dotdot-double-encoded": "%252e%252e%252fetc",
        "nul": "%00",
        "near-nul": "t00%00",
        "near-slash": "t00%2f..",
        "near-space": "%20t00",
        "non-utf8": "%ff%fe",
        "long": "z" * 20_000,
    }.items():
        for kind, real in (("texts", "t00"), ("images", "i00")):  # near misses of a real id of that gallery
            url = f"/gallery/{kind}/{path.replace('t00', real)}"
            yield pytest.param("/gallery/{kind}/{id}", lambda c, u=url: c.get(u), MISSING, id=f"GET-{kind}:{label}")
            yield pytest.param(
                "/gallery/{kind}/{id}", lambda c, u=url: c.delete(u), MISSING, id=f"DELETE-{kind}:{label}"
            )
        url = f"/gallery/images/{path.replace('t00', 'i00')}/file"
        yield pytest.param("/gallery/images/{id}/file", lambda c, u=url: c.get(u), MISSING, id=f"file:{label}")
    for label, path in {
        "dotdot": "%2e%2e",
        "nul": "images%00",
        "non-utf8": "%ff",
        "etc-passwd": "..%2f..%2fetc%2fpasswd",
        "singular": "image",
    }.items():
        yield pytest.param(
            "/gallery/{kind}", lambda c, u=f"/gallery/{path}": c.get(u), MISSING, id=f"GET-gallery:{label}"
        )
        yield pytest.param(
            "/gallery/{kind}/{id}", lambda c, u=f"/gallery/{path}/t00": c.delete(u), MISSING, id=f"DELETE-kind:{label}"
        )
    yield pytest.param(
        "/gallery/{kind}/{id}", lambda c: c.patch("/gallery/texts/t00", json={"text": "x"}), METHOD, id="PATCH-item"
    )
    yield pytest.param("/gallery/{kind}", lambda c: c.delete("/gallery/texts"), METHOD, id="DELETE-gallery")


@pytest.mark.parametrize(("route", "send", "status"), list(_cases()))
def test_hostile_request_is_refused_cleanly(
    api: TestClient, route: str, send: Callable[[TestClient], httpx.Response], status: int
) -> None:
    check_hostile(api, send, status)


# Cases that once gave 500s (fixed): nested metadata, lone-surrogate ids and texts. All are 400s.
FIXED = [
    pytest.param(
        upload("/gallery/images", "h.png", png_bytes(3, seed=9), metadata="[" * 100_000),
        id="images:metadata-deeply-nested",
    ),
    pytest.param(
        raw_json("/gallery/texts", b'{"items": [{"id": "\\ud800", "text": "a red square"}]}'),
        id="texts:id-lone-surrogate",
    ),
    pytest.param(
        raw_json("/gallery/texts", b'{"items": [{"id": "h\xed\xa0\x80", "text": "a red square"}]}'),
        id="texts:id-surrogate-bytes",
    ),
    pytest.param(
        raw_json("/gallery/texts", b'{"items": [{"text": "a \\ud800 red square"}]}'),
        id="texts:default-id-of-lone-surrogate-text",
    ),
    # Starlette decodes non-UTF-8 multipart text as latin-1: ids and metadata of invalid bytes were stored
    pytest.param(upload("/gallery/images", "h.png", png_bytes(3, seed=9), ids=b"h\xff\xfe"), id="images:id-non-utf8"),
    pytest.param(
        raw_multipart("/gallery/images", b"h\xff\xfe.png", png_bytes(3, seed=9)), id="images:filename-non-utf8"
    ),
    pytest.param(
        upload("/gallery/images", "h.png", png_bytes(3, seed=9), metadata=b'{"note": "caf\xe9"}'),
        id="images:metadata-non-utf8",
    ),
]


@pytest.mark.parametrize("send", FIXED)
def test_once_buggy_inputs_are_refused_cleanly(api: TestClient, send: Callable[[TestClient], httpx.Response]) -> None:
    check_hostile(api, send, BAD)


def test_stored_items_are_those_of_the_built_galleries(api: TestClient, gallery_templates: Path) -> None:
    """Whatever of the module ran before, every stored item (id, order, code, metadata) is still the
    one `build_gallery` wrote: no refused request, and no accepted-then-deleted one, left a trace."""
    from index.gallery import Gallery

    expected = {}
    for kind, folder in (("image", "images"), ("text", "texts")):
        store = Gallery.open(gallery_templates / folder).store
        expected[kind] = {
            i: (bytes(store.get(i)["code"]).hex(), json.dumps(store.get(i)["metadata"], sort_keys=True))
            for i in store.ids()
        }
    got = stored_items(api)
    assert {k: list(v) for k, v in got.items()} == {k: list(v) for k, v in expected.items()}
    assert got == expected


# ----------------------------------------------------------------------------- safe acceptances


def test_accepted_oddities_are_harmless(api: TestClient) -> None:
    """Inputs that are odd but valid are answered 200 and change nothing (search and encode only)."""
    before = snapshot(api)
    for route in JSON_ROUTES:
        # a \\ud800 escape, and the invalid-UTF-8 bytes ED A0 80 that json.loads decodes with
        # "surrogatepass", both give a query text with a lone surrogate: it is searched like any text
        for body in (b'{"text": "a \\ud800 red square"}', b'{"text": "a \xed\xa0\x80 red square"}'):
            r = api.post(route, content=body, headers=JSON)
            assert r.status_code == 200, r.text
    for route in IMAGE_SEARCHES:  # a JPEG named .png is read by its content
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (0, 0, 255)).save(buf, "JPEG")
        r = api.post(route, files={"file": ("x.png", buf.getvalue(), "image/png")}, data={"k": "2"})
        assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
    assert_healthy(api)
    assert snapshot(api) == before


def test_client_paths_and_metadata_never_reach_the_file_system(api: TestClient) -> None:
    """A path-like id and a "path" in metadata are data: the file is stored under the upload
    folder by a hash of the id, and the file route serves only that file."""
    state = api.app.state.cmhash  # type: ignore[attr-defined]
    image = png_bytes(0, seed=77)
    r = api.post(
        "/gallery/images",
        files=[("files", ("x.png", image, "image/png"))],
        data={"ids": "../../etc/passwd", "metadata": '{"path": "/etc/passwd"}'},
    )
    assert r.status_code == 201, r.text
    try:
        name = api.get("/gallery/images/..%2f..%2fetc%2fpasswd").json()["metadata"]["path"]
        uploads = state.settings.upload_dir or state.settings.image_gallery / "uploads"
        stored = uploads / name
        assert "/" not in name and stored.read_bytes() == image
        served = api.get("/gallery/images/..%2f..%2fetc%2fpasswd/file")
        assert served.status_code == 200 and served.content == image
        t = api.post(
            "/gallery/texts",
            json={"items": [{"id": "p1", "text": "a red square", "metadata": {"path": "/etc/passwd"}}]},
        )
        assert t.status_code == 201
        assert_error(
            api.get("/gallery/images/p1/file"), MISSING
        )  # text items have no file, whatever their metadata says
        assert api.delete("/gallery/texts/p1").status_code == 200
    finally:
        assert api.delete("/gallery/images/..%2f..%2fetc%2fpasswd").status_code == 200
    assert not stored.exists()
    assert Path("/etc/passwd").exists()  # deleting the item removed its upload, not the path it was named after


# ----------------------------------------------------------------------------- schemathesis

try:
    import schemathesis
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir

    # Hypothesis' caches (e.g. .hypothesis/constants) go to the temp dir, not into the checkout
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cmhash-hypothesis")
except ImportError:  # the `test` extra installs it; without it only part 2 is skipped
    schemathesis = None


@pytest.fixture(scope="module")
def fuzz_app(
    tiny_model_dir: Path, gallery_templates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """A ready app over its own gallery copies (fuzzed adds and deletes may change them), its
    lifespan run by schemathesis' ASGI client, which keeps it for every case."""
    from schemathesis.python import asgi

    root = tmp_path_factory.mktemp("service_fuzz")
    shutil.copytree(gallery_templates / "images", root / "images")
    shutil.copytree(gallery_templates / "texts", root / "texts")
    # small limits keep the generated bodies (and the 413 paths) cheap
    app = create_app(
        Settings(
            model_dir=tiny_model_dir,
            image_gallery=root / "images",
            text_gallery=root / "texts",
            device="cpu",
            encoder_threads=1,
            max_upload_bytes=200_000,
            max_text_chars=200,
        )
    )
    try:
        with asgi.get_client(app):  # starts the lifespan; the model loads in the background
            deadline = time.monotonic() + 60
            while not app.state.cmhash.ready:
                assert app.state.cmhash.error is None and time.monotonic() < deadline, app.state.cmhash.error
                time.sleep(0.02)
        yield app
    finally:
        asgi.shutdown_lifespans()  # drains the batchers and folds the journals, as a server shutdown does


if schemathesis is not None:
    # The schema is read from an app that is never started (the OpenAPI document needs no model and
    # `model_construct` reads no CMHASH_* variables); cases are sent to `fuzz_app`.
    # (`schemathesis.pytest.from_fixture` would load it lazily, but schemathesis 4.32's lazy loader
    # sets `Node._nodeid`, which pytest 9 no longer has.)
    schema = schemathesis.openapi.from_dict(
        create_app(Settings.model_construct(model_dir=Path("unused"), static_dir=None)).openapi()
    )

    @schema.parametrize()
    @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def test_fuzzed_requests_never_5xx(case: Any, fuzz_app: FastAPI) -> None:
        """Every operation (positive and negative cases, and the other HTTP methods) answers
        below 500, and every error carries the taxonomy's body."""
        response = case.call(app=fuzz_app)
        where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], where
else:

    @pytest.mark.skip(reason="schemathesis is not installed (pip install -e '.[test]')")
    def test_fuzzed_requests_never_5xx() -> None:
        pass
