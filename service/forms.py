"""Multipart text must be text: Starlette's form parser decodes a field name, a file name or a
text field that is not valid in the body's charset as latin-1 instead of refusing it, so
invalid bytes would become stored ids and metadata. `StrictFormText` refuses such a body with
400 before the form is parsed (`service.middleware.StrictFormText`)."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only


class _PartTexts:
    """python-multipart callbacks that record the first part whose name, file name or (for a
    field without a file name) value does not decode in `charset`."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.problem: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        """The callbacks argument of `MultipartParser`."""
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_header_name", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, attr: str, chunk: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + chunk)

    def _part_begin(self) -> None:
        self._disposition, self._data, self._is_file = b"", bytearray(), False

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = self._decode(options.get(b"name", b""), "a form field name") or ""
        self._is_file = b"filename" in options
        if self._is_file:
            self._decode(options[b"filename"], f"the file name of form field {self._name!r}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            self._data.extend(data[start:end])

    def _part_end(self) -> None:
        if not self._is_file:
            self._decode(bytes(self._data), f"form field {self._name!r}")

    def _decode(self, raw: bytes, what: str) -> str | None:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError as exc:
            self.problem = self.problem or f"{what} is not valid {self.charset} text (byte {exc.start})"
            return None


def non_text_part(body: bytes, content_type: bytes) -> str | None:
    """Why the multipart `body` is refused (a name, file name or text field that is not valid
    text in its charset, UTF-8 by default), or None; a body that does not parse is left to the
    form parser, which answers it with its own 400."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        texts = _PartTexts(codecs.lookup(charset).name)
    except LookupError:
        return f"unknown multipart charset {charset!r}"
    parser = MultipartParser(boundary, texts.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        return None
    return texts.problem
