"""A Python client of the cmhash HTTP API, on httpx: `Client` (sync) and `AsyncClient` (async).

    from service.client import Client, CmhashError

    with Client("http://127.0.0.1:8000", api_key=None) as cm:
        page = cm.search_text_to_image("a small red square", k=5)
        for hit in page.results:
            print(hit.rank, hit.id, hit.distance, hit.metadata)

Every endpoint is declared once, as a method of `_Api` that builds a `_Request` (method, path,
body, parser, retry rule) and does no I/O; `Client` and `AsyncClient` differ only in how they
send one (`_send`), so both have the same methods with the same signatures: `Client`'s return
the result, `AsyncClient`'s a coroutine of it.

Errors: any answer that is not a success is raised as `CmhashError` (HTTP status, the service's
error code and message, from its `{"error": {"code", "message"}}` body). Network failures are
httpx's own exceptions (`httpx.TransportError`), never retried.

Retries on 503 (at most `retries` more tries, waiting `backoff` x 2^attempt seconds with jitter,
or the answer's Retry-After when it has one; a Retry-After longer than `max_wait` is not waited
for: the 503 is raised at once):
  * reads (GET, searches and encodings, which POST but change nothing): on every 503;
  * writes (adding images or texts, deleting an item) are not idempotent, so they are retried only
    when the 503 is the service's own error body (`{"error": ...}`: still loading, gallery not
    available, storage failing): the service answers those before changing anything, or after
    undoing its change (a refused write leaves nothing behind). A 503 without that body (a proxy,
    a load balancer, the server's connection limit) may come from a request that went through, so
    it is raised, never re-sent;
  * `ready()` is never retried: a 503 there is the answer (`Readiness.ready` is False).

This module imports nothing from the rest of the service (no FastAPI, no numpy, no model): its
result models mirror service/schemas.py (tests/service/test_client.py checks they match) and
ignore fields a newer server adds."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import json
import mimetypes
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, cast, overload
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

__all__ = [
    "Added",
    "AsyncClient",
    "Client",
    "CmhashError",
    "CodeResponse",
    "Deleted",
    "GalleryStatus",
    "Health",
    "Hit",
    "ImageFile",
    "ImageInput",
    "Item",
    "ItemPage",
    "ItemSummary",
    "Readiness",
    "SearchResponse",
]

# ----------------------------------------------------------------------------- results


class Hit(BaseModel):
    """One search result."""

    rank: int = Field(description="1-based position in the whole ranking (offset + position in the page)")
    id: str = Field(description="gallery item id")
    distance: int = Field(description="Hamming distance between the query code and the item's code")
    score: float | None = Field(None, description="re-ranked searches: h . b / bits (higher is nearer); else None")
    metadata: dict[str, Any] = Field(default_factory=dict, description="what was stored with the item")


class SearchResponse(BaseModel):
    """One page of results, ordered by (distance, insertion order)."""

    results: list[Hit] = Field(description="the page")
    bits: int = Field(description="code length in bits")
    took_ms: float = Field(description="server time for the request in milliseconds")
    total: int | None = Field(None, description="radius search: items within the radius (all pages); None for k-NN")
    unknown_words: list[str] = Field(
        default_factory=list, description="query words outside the model's vocabulary (not used by the search)"
    )


class CodeResponse(BaseModel):
    """A binary code."""

    code: str = Field(description="the packed code as hex")
    bits: int = Field(description="code length in bits")


class Added(BaseModel):
    """Items added to a gallery."""

    ids: list[str] = Field(description="the new items' ids, in request order")
    count: int = Field(description="gallery size afterwards")


class Deleted(BaseModel):
    """An item removed from a gallery."""

    id: str = Field(description="the removed item's id")
    count: int = Field(description="gallery size afterwards")


class Item(BaseModel):
    """One stored gallery item."""

    id: str = Field(description="item id")
    code: str = Field(description="its packed code as hex")
    metadata: dict[str, Any] = Field(description="what was stored with it")


class ItemSummary(BaseModel):
    """One stored item in a listing."""

    id: str = Field(description="item id")
    metadata: dict[str, Any] = Field(description="what was stored with it")


class ItemPage(BaseModel):
    """A page of a gallery's items, in insertion order."""

    items: list[ItemSummary] = Field(description="the page: at most limit items, from offset")
    count: int = Field(description="items in the gallery (over all pages)")


class GalleryStatus(BaseModel):
    """A gallery's summary."""

    kind: str = Field(description="modality of the items: image or text")
    count: int = Field(description="number of items")
    bits: int = Field(description="code length in bits")
    model_checksum: str = Field(description="checksum of the model whose codes the gallery holds")
    backend: str = Field(description="code store backend (faiss, milvus)")
    device: str = Field(description="where k-NN searches run (cpu, cuda)")
    pending: int = Field(description="journaled changes not yet folded into a snapshot")


class Health(BaseModel):
    """Liveness (/healthz)."""

    status: str = Field(description="ok")
    detail: str | None = Field(None, description="what is loaded, or what failed")


class Readiness(Health):
    """Readiness (/readyz): status ok or degraded (ready), loading or failed (not ready)."""

    degraded: dict[str, str] = Field(default_factory=dict, description="gallery kind -> why it could not be opened")

    @property
    def ready(self) -> bool:
        """Whether the service answers searches (ok, or degraded with at least one gallery)."""
        return self.status in ("ok", "degraded")


@dataclass(frozen=True)
class ImageFile:
    """A stored image file."""

    content: bytes  # the file's bytes
    media_type: str  # its content type (image/png, image/jpeg, ...)


class CmhashError(Exception):
    """An error answer of the service: `status` (HTTP), `code` (the service's stable error code,
    e.g. not_found, bad_request, unauthorized, not_ready; `http_<status>` when the answer has no
    error body, e.g. from a proxy), `message`, and `details` (validation errors only)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def from_response(cls, response: httpx.Response) -> CmhashError:
        """The error an answer carries (its JSON error body, or its status and text)."""
        error = _error_body(response)
        if error is not None:
            details = error.get("details")
            return cls(
                response.status_code,
                str(error.get("code") or f"http_{response.status_code}"),
                str(error.get("message") or response.reason_phrase),
                details if isinstance(details, list) else None,
            )
        text = response.text.strip()[:300] if response.content else ""
        return cls(response.status_code, f"http_{response.status_code}", text or response.reason_phrase)


def _error_body(response: httpx.Response) -> dict[str, Any] | None:
    """The service's `{"error": {...}}` object of an answer, or None (not JSON, or another body)."""
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


# ----------------------------------------------------------------------------- requests

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound=BaseModel)

# An image to send: its bytes, a file path, an open binary file, or (file name, bytes).
ImageInput = bytes | str | os.PathLike[str] | IO[bytes] | tuple[str, bytes]
Kind = Literal["images", "texts", "image", "text"]
Retry = Literal["always", "refusals", "never"]


@dataclass(frozen=True)
class _Request(Generic[T]):
    """One API call, ready to send any number of times (uploads are read into bytes once)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    params: dict[str, Any] | None = None  # the query string
    retry: Retry = "always"  # which 503s may be re-sent: all, the service's own refusals, none
    accept: frozenset[int] = frozenset()  # error statuses parsed as results (readyz's 503)

    def send_args(self) -> dict[str, Any]:
        """The keyword arguments of `httpx.Client.request` besides method and URL."""
        args: dict[str, Any] = {}
        if self.json is not None:
            args["json"] = self.json
        if self.data is not None:
            args["data"] = self.data
        if self.files is not None:
            args["files"] = self.files
        if self.params is not None:
            args["params"] = self.params
        return args


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate(response.json())


def _image_file(response: httpx.Response) -> ImageFile:
    return ImageFile(response.content, response.headers.get("content-type", "application/octet-stream"))


def _upload(image: ImageInput) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of an image to upload."""
    if isinstance(image, tuple):
        name, content = image[0], bytes(image[1])
    elif isinstance(image, bytes | bytearray | memoryview):
        name, content = "image", bytes(image)
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        name, content = path.name, path.read_bytes()
    else:
        name, content = Path(str(getattr(image, "name", "image"))).name, image.read()
    return name, content, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _is_one_image(images: object) -> bool:
    """Whether `images` is one image rather than a sequence of them."""
    if isinstance(images, tuple):
        return len(images) == 2 and isinstance(images[0], str) and isinstance(images[1], bytes | bytearray)
    return isinstance(images, bytes | bytearray | memoryview | str | os.PathLike) or hasattr(images, "read")


def _gallery(kind: Kind) -> str:
    names = {"images": "images", "image": "images", "texts": "texts", "text": "texts"}
    if kind not in names:
        raise ValueError(f"kind must be images or texts, got {kind!r}")
    return names[kind]


def _item_path(item_id: str) -> str:
    return quote(item_id, safe="")


# A metadata filter: key -> value (str, number or bool); an item matches when metadata[key] equals
# the value or is a list holding it, for every key.
Filter = Mapping[str, str | int | float | bool]


def _text_search(
    path: str,
    text: str,
    k: int,
    offset: int,
    radius: int | None,
    filter: Filter | None,
    rerank: int | str | None = None,
) -> _Request[SearchResponse]:
    body: dict[str, Any] = {"text": text, "k": k, "offset": offset}
    if radius is not None:
        body["radius"] = radius
    if rerank is not None:
        body["rerank"] = rerank
    if filter:
        body["filter"] = dict(filter)
    return _Request("POST", path, _model(SearchResponse), json=body)


def _image_search(
    path: str,
    image: ImageInput,
    k: int,
    offset: int,
    radius: int | None,
    filter: Filter | None,
    rerank: int | str | None = None,
) -> _Request[SearchResponse]:
    data = {"k": str(k), "offset": str(offset)}
    if radius is not None:
        data["radius"] = str(radius)
    if rerank is not None:
        data["rerank"] = str(rerank)
    if filter:
        data["filter"] = json.dumps(dict(filter))
    return _Request("POST", path, _model(SearchResponse), data=data, files=[("file", _upload(image))])


class _Endpoint(Generic[P, T]):
    """An endpoint, declared once by its request builder: on a `Client` it is a method returning
    the result, on an `AsyncClient` a method returning a coroutine of it (signature and docstring
    are the builder's, for help() and editors)."""

    def __init__(self, build: Callable[Concatenate[Any, P], _Request[T]]) -> None:
        self.build = build

    def _method(self, owner: type[Any], bound: Any = None) -> Callable[..., Any]:
        build = self.build

        def method(client: Any, *args: Any, **kwargs: Any) -> Any:
            return client._send(build(client, *args, **kwargs))

        functools.update_wrapper(method, build)
        signature = inspect.signature(build)
        result = str(signature.return_annotation).removeprefix("_Request[").removesuffix("]")
        if issubclass(owner, AsyncClient):
            result = f"Coroutine[Any, Any, {result}]"
        params = list(signature.parameters.values())
        method.__signature__ = signature.replace(parameters=params, return_annotation=result)  # type: ignore[attr-defined]
        if bound is None:
            return method
        call = functools.partial(method, bound)
        functools.update_wrapper(call, method)
        call.__signature__ = signature.replace(parameters=params[1:], return_annotation=result)  # type: ignore[attr-defined]
        return call

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Callable[..., Any]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        return self._method(owner, client)


class _Api:
    """The endpoints (request builders) and what both clients share: settings and retry rule."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        max_wait: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        if retries < 0 or backoff < 0 or max_wait < 0:
            raise ValueError("retries, backoff and max_wait must not be negative")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self.headers = {"Accept": "application/json", **(headers or {})}
        if api_key:
            self.headers["X-API-Key"] = api_key

    # -- search

    @_Endpoint
    def search_text_to_image(
        self,
        text: str,
        *,
        k: int = 10,
        offset: int = 0,
        radius: int | None = None,
        filter: Filter | None = None,
        rerank: int | str | None = None,
    ) -> _Request[SearchResponse]:
        """Images nearest to `text` (k-NN), or with `radius` every image within that Hamming
        distance (`total` counts them), paginated by `offset` / `k`; with `filter` (e.g.
        {"labels": "dog"}), only over the images whose metadata match; with `rerank` (R or "all"),
        re-ranked by the query's continuous representation (hits carry `score`)."""
        return _text_search("/search/text-to-image", text, k, offset, radius, filter, rerank)

    @_Endpoint
    def search_text_to_text(
        self,
        text: str,
        *,
        k: int = 10,
        offset: int = 0,
        radius: int | None = None,
        filter: Filter | None = None,
        rerank: int | str | None = None,
    ) -> _Request[SearchResponse]:
        """Texts nearest to `text` (see `search_text_to_image` for k, offset, radius, filter)."""
        return _text_search("/search/text-to-text", text, k, offset, radius, filter, rerank)

    @_Endpoint
    def search_image_to_text(
        self,
        image: ImageInput,
        *,
        k: int = 10,
        offset: int = 0,
        radius: int | None = None,
        filter: Filter | None = None,
        rerank: int | str | None = None,
    ) -> _Request[SearchResponse]:
        """Texts nearest to an image (bytes, a path, a binary file, or (file name, bytes))."""
        return _image_search("/search/image-to-text", image, k, offset, radius, filter, rerank)

    @_Endpoint
    def search_image_to_image(
        self,
        image: ImageInput,
        *,
        k: int = 10,
        offset: int = 0,
        radius: int | None = None,
        filter: Filter | None = None,
        rerank: int | str | None = None,
    ) -> _Request[SearchResponse]:
        """Images nearest to an image."""
        return _image_search("/search/image-to-image", image, k, offset, radius, filter, rerank)

    # -- encode

    @_Endpoint
    def encode_text(self, text: str) -> _Request[CodeResponse]:
        """The packed binary code of a text, as hex."""
        return _Request("POST", "/encode/text", _model(CodeResponse), json={"text": text})

    @_Endpoint
    def encode_image(self, image: ImageInput) -> _Request[CodeResponse]:
        """The packed binary code of an image, as hex."""
        return _Request("POST", "/encode/image", _model(CodeResponse), files=[("file", _upload(image))])

    # -- gallery

    @_Endpoint
    def add_images(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> _Request[Added]:
        """Encode and add images to the image gallery (all or none): one image or a list, an id
        per image (default: the file name without extension), a metadata object per image."""
        many = [cast(ImageInput, images)] if _is_one_image(images) else list(cast(Sequence[ImageInput], images))
        data: dict[str, Any] = {}
        if ids is not None:
            data["ids"] = list(ids)
        if metadata is not None:
            data["metadata"] = [json.dumps(dict(m or {})) for m in metadata]
        return _Request(
            "POST",
            "/gallery/images",
            _model(Added),
            data=data,
            files=[("files", _upload(image)) for image in many],
            retry="refusals",
        )

    @_Endpoint
    def add_texts(
        self,
        texts: str | Sequence[str],
        *,
        ids: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> _Request[Added]:
        """Encode and add texts to the text gallery (all or none): one text or a list, an id per
        text (default: derived from the text), a metadata object per text."""
        many = [texts] if isinstance(texts, str) else list(texts)
        for name, values in (("ids", ids), ("metadata", metadata)):
            if values is not None and len(values) != len(many):
                raise ValueError(f"{len(many)} texts but {len(values)} {name}")
        items: list[dict[str, Any]] = []
        for n, text in enumerate(many):
            item: dict[str, Any] = {"text": text}
            if ids is not None and ids[n] is not None:
                item["id"] = ids[n]
            if metadata is not None and metadata[n] is not None:
                item["metadata"] = dict(metadata[n] or {})
            items.append(item)
        return _Request("POST", "/gallery/texts", _model(Added), json={"items": items}, retry="refusals")

    @_Endpoint
    def get_item(self, kind: Kind, item_id: str) -> _Request[Item]:
        """One item of the images or texts gallery: id, code (hex) and metadata."""
        return _Request("GET", f"/gallery/{_gallery(kind)}/{_item_path(item_id)}", _model(Item))

    @_Endpoint
    def list_items(self, kind: Kind, *, offset: int = 0, limit: int | None = None) -> _Request[ItemPage]:
        """A page of the images or texts gallery's items (id, metadata) in insertion order, and
        the gallery's size (`count`); page on with offset += limit (limit: 1 to the server's
        max_k; None: the server's default, 100 or max_k when smaller)."""
        params: dict[str, Any] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        return _Request("GET", f"/gallery/{_gallery(kind)}/items", _model(ItemPage), params=params)

    @_Endpoint
    def delete_item(self, kind: Kind, item_id: str) -> _Request[Deleted]:
        """Remove an item from the images or texts gallery (and its uploaded file)."""
        return _Request("DELETE", f"/gallery/{_gallery(kind)}/{_item_path(item_id)}", _model(Deleted), retry="refusals")

    @_Endpoint
    def gallery_status(self, kind: Kind) -> _Request[GalleryStatus]:
        """Size, code length, model checksum and backend of the images or texts gallery."""
        return _Request("GET", f"/gallery/{_gallery(kind)}", _model(GalleryStatus))

    @_Endpoint
    def image_file(self, item_id: str) -> _Request[ImageFile]:
        """The stored image file of an image item."""
        return _Request("GET", f"/gallery/images/{_item_path(item_id)}/file", _image_file)

    # -- health

    @_Endpoint
    def health(self) -> _Request[Health]:
        """Liveness: the process answers (also while the model loads)."""
        return _Request("GET", "/healthz", _model(Health))

    @_Endpoint
    def ready(self) -> _Request[Readiness]:
        """Readiness, never raised for a 503 nor retried: see `Readiness.ready`."""
        return _Request("GET", "/readyz", _model(Readiness), retry="never", accept=frozenset({503}))

    # -- what both clients do around a send

    def _retry_wait(self, request: _Request[Any], response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before re-sending `request` after `response` (the `attempt`-th retry
        would follow, from 0), or None to return or raise `response`."""
        if response.status_code != 503 or attempt >= self.retries or request.retry == "never":
            return None
        if request.retry == "refusals" and _error_body(response) is None:
            return None
        asked = retry_after(response.headers.get("retry-after"))
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return min(self.backoff * 2.0**attempt, self.max_wait) * random.uniform(0.5, 1.0)

    @staticmethod
    def _result(request: _Request[T], response: httpx.Response) -> T:
        if response.is_success or response.status_code in request.accept:
            return request.parse(response)
        raise CmhashError.from_response(response)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delay seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


DEFAULTS: dict[str, Any] = {"timeout": 30.0, "retries": 3, "backoff": 0.25, "max_wait": 30.0}


class Client(_Api):
    """The API over a blocking httpx client. `api_key` is sent as X-API-Key; `retries` 503s are
    retried (see the module's rule), waiting `backoff` x 2^attempt seconds or the Retry-After
    asked (at most `max_wait`). `transport` replaces httpx's (tests: `httpx.MockTransport`)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULTS["timeout"],
        retries: int = DEFAULTS["retries"],
        backoff: float = DEFAULTS["backoff"],
        max_wait: float = DEFAULTS["max_wait"],
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_wait=max_wait,
            headers=headers,
        )
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport)
        self._sleep: Callable[[float], None] = time.sleep

    def _send(self, request: _Request[T]) -> T:
        attempt = 0
        while True:
            response = self.http.request(request.method, request.path, **request.send_args())
            wait = self._retry_wait(request, response, attempt)
            if wait is None:
                return self._result(request, response)
            self._sleep(wait)
            attempt += 1

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Api):
    """The API over an asynchronous httpx client (the same methods as `Client`, to await)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = DEFAULTS["timeout"],
        retries: int = DEFAULTS["retries"],
        backoff: float = DEFAULTS["backoff"],
        max_wait: float = DEFAULTS["max_wait"],
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_wait=max_wait,
            headers=headers,
        )
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep

    async def _send(self, request: _Request[T]) -> T:
        attempt = 0
        while True:
            response = await self.http.request(request.method, request.path, **request.send_args())
            wait = self._retry_wait(request, response, attempt)
            if wait is None:
                return self._result(request, response)
            await self._sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
