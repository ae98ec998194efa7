"""Multipart text checks: names, file names and text fields must decode in the body's charset;
file contents are bytes and never checked. Bodies are encoded by httpx, independently."""

from __future__ import annotations

import httpx
import pytest

from service.forms import non_text_part

PNG_LIKE = b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"


def encoded(data: dict[str, bytes | str], files: dict[str, tuple[str, bytes]] | None = None) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://x/", data=data, files=files or {"file": ("q.png", PNG_LIKE)})
    return request.read(), request.headers["content-type"].encode()


def test_valid_text_and_binary_files_pass() -> None:
    body, content_type = encoded({"ids": "café ☕", "metadata": '{"note": "naïve"}'})
    assert non_text_part(body, content_type) is None


@pytest.mark.parametrize("field", ["ids", "metadata"])
def test_a_non_utf8_field_is_named(field: str) -> None:
    body, content_type = encoded({field: b"caf\xe9", "k": "3"})
    problem = non_text_part(body, content_type)
    assert problem is not None and repr(field) in problem and "utf-8" in problem


def test_a_non_utf8_file_name_is_refused() -> None:
    body, content_type = encoded({}, {"files": ("h.png", PNG_LIKE)})
    body = body.replace(b'filename="h.png"', b'filename="h\xff\xfe.png"')
    problem = non_text_part(body, content_type)
    assert problem is not None and "file name" in problem and "'files'" in problem


def test_a_declared_charset_is_honoured_and_an_unknown_one_refused() -> None:
    body, content_type = encoded({"ids": b"caf\xe9"})
    assert non_text_part(body, content_type + b"; charset=latin-1") is None
    problem = non_text_part(body, content_type + b"; charset=no-such-codec")
    assert problem is not None and "no-such-codec" in problem


def test_other_bodies_are_left_to_their_parsers() -> None:
    body, content_type = encoded({"ids": b"caf\xe9"})
    assert non_text_part(body, b"application/json") is None
    assert non_text_part(body, b"multipart/form-data") is None  # no boundary: the form parser's 400
    assert non_text_part(b"--garbage", content_type) is None
