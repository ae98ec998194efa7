"""Turning request inputs into encoder inputs, and running a search through the batcher."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any, TypeVar

import numpy as np
from fastapi import Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile as FormFile

from index.search import Hit, Rerank, check_filter, supports_filter
from model.runtime.choices import Modality
from model.runtime.errors import UserError
from model.runtime.image import ImageDecodeError, ImageTooLargeError
from service.deps import check_page, check_text
from service.errors import bad_request, too_large, unsupported
from service.schemas import SearchResponse
from service.state import SearchJob, ServiceState
from service.uploads import check_image, read_upload


def text_query(state: ServiceState, text: str, *, known_words: bool = True) -> str:
    """A checked text (400 when the model cannot read raw text). A search query (`known_words`)
    must also hold a word the model knows: a bag-of-words code of nothing would rank the gallery
    arbitrarily. A stored or encoded text need not (its code is what the model makes of it)."""
    encoder = state.require_encoder()
    if encoder.info.text.kind == "features":
        raise bad_request("this model reads text feature vectors, not raw text")
    text = check_text(text, state.settings.max_text_chars)
    if known_words and not encoder.reads_words(text):
        unknown = encoder.unknown_words(text)
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise bad_request(
            f"no word of the query is known to the model ({shown or 'no words'}); its vocabulary "
            "is the words of its training texts"
        )
    return text


async def image_bytes(state: ServiceState, file: UploadFile) -> tuple[bytes, str]:
    """The bytes and PIL format of an uploaded image, size-checked and vetted from its header."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    return data, check_image(data, state.settings.max_image_pixels, repr(file.filename or "upload"))


# One semaphore per service state: at most settings.max_concurrent_decodes uploads are decoded at once.
_DECODE_SLOTS: weakref.WeakKeyDictionary[ServiceState, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def image_array(state: ServiceState, data: bytes, name: str = "upload") -> np.ndarray:
    """The encoder input (3 x S x S) of vetted image bytes, decoded in a thread within the image
    limits (413 naming the limit: aspect ratio, pixels, decoded size), at most
    settings.max_concurrent_decodes at a time (415 if undecodable)."""
    encoder = state.require_encoder()
    if encoder.info.image.kind != "pixels":
        raise bad_request("this model reads image feature vectors, not image files")
    settings = state.settings
    slots = _DECODE_SLOTS.get(state)
    if slots is None:
        slots = _DECODE_SLOTS.setdefault(state, asyncio.Semaphore(settings.max_concurrent_decodes))
    await slots.acquire()
    try:
        decode = asyncio.ensure_future(
            asyncio.to_thread(
                encoder.preprocess_image,
                data,
                max_pixels=settings.max_image_pixels,
                max_aspect=settings.max_image_aspect,
                max_decoded_pixels=settings.max_decoded_pixels,
                name=name,
            )
        )
    except BaseException:
        slots.release()
        raise

    def finished(done: asyncio.Future[np.ndarray]) -> None:
        """Free the slot when the decoding thread ends, even if this request was cancelled first
        (and retrieve its error, which then nobody awaits)."""
        slots.release()
        if not done.cancelled():
            done.exception()

    decode.add_done_callback(finished)
    try:
        return await asyncio.shield(decode)
    except ImageTooLargeError as exc:
        raise too_large(str(exc)) from None
    except ImageDecodeError as exc:
        raise unsupported(f"{name}: {exc}") from None


def check_rerank(state: ServiceState, rerank: int | str | None) -> Rerank:
    """`rerank` as index.search takes it; 400 unless null, "all" or an integer 1..max_rerank."""
    limit = state.settings.max_rerank
    if rerank is None or rerank == "all":
        return "all" if rerank else None
    if isinstance(rerank, bool) or not isinstance(rerank, int) or not 1 <= rerank <= limit:
        raise bad_request(f'rerank must be null, "all" or between 1 and {limit} (max_rerank), got {rerank!r}')
    return rerank


async def run_search(
    state: ServiceState,
    modality: Modality,
    query: np.ndarray | str,
    target: Modality,
    k: int,
    offset: int,
    radius: int | None,
    started: float,
    filter: Mapping[str, Any] | None = None,
    rerank: int | str | None = None,
) -> SearchResponse:
    """One page of `target` results for `query` (k-NN after `offset`, or the radius lookup's page),
    over the items matching `filter` when one is given, re-ranked by h . b with `rerank`."""
    check_page(state, k, offset, radius)
    checked = check_rerank(state, rerank)
    journaled = state.gallery(target)
    flt = check_search_filter(state, target, filter)
    outcome = await state.batchers[modality].submit(SearchJob(query, target, offset, k, radius, flt or None, checked))
    return SearchResponse(
        results=[public_hit(hit) for hit in outcome.hits],
        bits=journaled.bits,
        took_ms=(time.perf_counter() - started) * 1000.0,
        total=outcome.found if radius is not None else None,
        unknown_words=state.require_encoder().unknown_words(query) if isinstance(query, str) else [],
    )


# An absolute POSIX path in a message: "/" not preceded by a word character, ":", "/" or "." (so
# URLs and relative paths are left alone), up to whitespace, a quote or punctuation.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/[^\s'\"<>|,;:()\[\]{}]+")


def hide_paths(message: str) -> str:
    """`message` with each absolute path shortened to its last component ("/srv/x/model.json"
    -> "…/model.json"): errors shown to callers name the file without revealing the server's
    layout (the server log keeps the full message)."""

    def short(match: re.Match[str]) -> str:
        name = PurePosixPath(match.group()).name
        return f"…/{name}" if name else "…"

    return ABSOLUTE_PATH.sub(short, message)


def public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Item metadata as the API shows it: an absolute "path" (where `cmhash index` or an upload
    stored the image on the server) becomes its file name; the stored metadata is unchanged."""
    path = metadata.get("path")
    if isinstance(path, str) and (path.startswith("/") or re.match(r"[A-Za-z]:[\\/]", path)):
        return {**metadata, "path": PurePosixPath(path.replace("\\", "/")).name}
    return metadata


def public_hit(hit: Hit) -> Hit:
    """A search hit with `public_metadata`."""
    shown = public_metadata(hit.metadata)
    return hit if shown is hit.metadata else hit.model_copy(update={"metadata": shown})


# ----------------------------------------------------------------------------- filters, JSON images


def check_search_filter(state: ServiceState, target: Modality, filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """A search's metadata filter, checked (400 naming the problem: a nested value, a null...)
    before it joins a batch; 400 too when the target gallery's backend cannot filter."""
    try:
        flt = check_filter(filter)
    except UserError as exc:
        raise bad_request(f"filter: {exc}") from None
    if flt and not supports_filter(state.gallery(target)):
        raise bad_request(
            f"filter: the {target} gallery's backend ({state.gallery(target).info.backend}) "
            "does not support filtered search"
        )
    return flt


def form_filter(raw: str | None) -> dict[str, Any] | None:
    """The multipart `filter` field: a JSON object as text (empty: none); 400 otherwise."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise bad_request('filter must be a JSON object, e.g. {"labels": "dog"}') from None
    if not isinstance(value, dict):
        raise bad_request('filter must be a JSON object, e.g. {"labels": "dog"}')
    return value


_URL_NAMES = re.compile(r"(?:url|uri|href|link)s?$", re.IGNORECASE)  # url, image_url, imageUrl, uris...
_URL_VALUE = re.compile(r"^\s*(?:https?|ftp|file|s3|gs)://", re.IGNORECASE)
URLS_REFUSED = (
    "URLs are not fetched (the server makes no outgoing requests): send the image itself, as "
    "image_base64 in JSON or as a multipart file upload"
)


def refuse_urls(fields: Mapping[str, Any]) -> None:
    """400 for a request that names an image by URL (a field like url / image_url, or a URL where
    the image should be): the service never fetches, so it says so rather than ignore the field."""
    for name, value in fields.items():
        if isinstance(name, str) and _URL_NAMES.search(name):
            raise bad_request(f"{name}: {URLS_REFUSED}")
        if name == "image_base64" and isinstance(value, str) and _URL_VALUE.match(value):
            raise bad_request(f"image_base64 holds a URL; {URLS_REFUSED}")


_DATA_URL = re.compile(r"^data:[\w.+/-]*(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


def decode_base64_image(value: str, limit: int, field: str = "image_base64") -> bytes:
    """The bytes of a base64 image field (standard alphabet, padding required, whitespace and a
    data: URL prefix allowed); 400 naming the field when it is not base64, 413 when it decodes to
    more than `limit` bytes (refused before decoding when its length already says so)."""
    text = _DATA_URL.sub("", value.strip(), count=1)
    text = "".join(text.split())
    if len(text) // 4 * 3 - 2 > limit:
        raise too_large(f"{field} decodes to more than the {limit}-byte limit (max_upload_bytes)")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise bad_request(f"{field} is not valid base64 (standard alphabet A-Z a-z 0-9 + /, with = padding)") from None
    if len(data) > limit:
        raise too_large(f"{field} decodes to {len(data)} bytes, more than the {limit}-byte limit (max_upload_bytes)")
    return data


Fields = TypeVar("Fields", bound=BaseModel)


def _validated(model: type[Fields], values: Mapping[str, Any]) -> Fields:
    """`values` as `model`, or the usual 422 naming each invalid field (loc body.<field>)."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        errors = [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _missing_file(field: str, got: object) -> RequestValidationError:
    msg = "Field required" if got is None else "Expected UploadFile, received: " + type(got).__name__
    kind = "missing" if got is None else "value_error"
    return RequestValidationError([{"loc": ("body", field), "msg": msg, "type": kind}])


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def image_request(
    request: Request,
    state: ServiceState,
    form_model: type[Fields],
    json_model: type[BaseModel],
    check: Callable[[Fields], None] = lambda _: None,
) -> tuple[Fields, bytes, str]:
    """The fields (as `form_model`), vetted image bytes and a name for messages of a request that
    carries one image either as a multipart upload (form field "file"; a "filter" field is a JSON
    object as text) or as JSON (`json_model`: "image_base64" and the same fields). `check(fields)`
    runs before the image is read or decoded. Limits and errors are the same for both: the
    (decoded) size against max_upload_bytes (413), the image header checks (415 / 413), 422 for
    a missing or mistyped field, 400 for a URL instead of an image."""
    limit = state.settings.max_upload_bytes
    if _is_json(request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError):
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "JSON decode error", "type": "json_invalid"}]
            ) from None
        if not isinstance(body, dict):
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "Input should be a JSON object", "type": "dict_type"}]
            )
        refuse_urls(body)
        parsed = _validated(json_model, body)
        fields = form_model.model_validate(parsed.model_dump(include=set(form_model.model_fields)))
        check(fields)
        data = decode_base64_image(str(parsed.image_base64), limit)  # type: ignore[attr-defined]
        name = "image_base64"
    else:
        async with request.form() as form:
            refuse_urls({key: None for key in form})
            values: dict[str, Any] = {}
            for key in form_model.model_fields:
                value = form.get(key)
                if value is None or value == "":
                    continue  # an empty form field is an absent one (FastAPI's rule)
                values[key] = form_filter(value) if key == "filter" and isinstance(value, str) else value
            fields = _validated(form_model, values)
            file = form.get("file")
            if not isinstance(file, FormFile):
                raise _missing_file("file", file)
            check(fields)
            data = await read_upload(file, limit)  # type: ignore[arg-type]
            name = repr(file.filename or "upload")
    check_image(data, state.settings.max_image_pixels, name)
    return fields, data, name


def image_openapi(fields: type[BaseModel], json_model: type[BaseModel], what: str) -> dict[str, Any]:
    """`openapi_extra` of a route that reads `image_request`: both request bodies (a multipart
    upload with `fields` as form fields, or `json_model`)."""
    form = fields.model_json_schema()
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": what}}
    for name, schema in form.get("properties", {}).items():
        if name == "filter":
            schema = {"type": "string", "description": "a JSON object as text: " + schema.get("description", "")}
        properties[name] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": properties}},
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }
