"""Request and response bodies (pydantic v2); they make the OpenAPI schema at /docs.

Every field carries a description (tests/service/test_openapi.py checks the response side).
Ranges (k, offset, radius, text length) are checked by the routes, not here, so that an out
of range value is a 400 naming the limit rather than a generic 422."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from index.search import Hit

FILTER_DESCRIPTION = (
    "restrict the search to items whose metadata match: every key's value (a string, number or "
    "boolean; nested values are refused) must equal metadata[key] or be an element of it when it "
    'is a list, e.g. {"labels": "dog"}; ranking, ties and pagination as without a filter; '
    "null or {}: every item"
)


def FILTER_SCHEMA(schema: dict[str, Any]) -> None:
    """What the OpenAPI document says a filter holds: an object of strings, numbers and booleans
    (the model accepts any object, so the route can answer a nested value with a 400)."""
    values = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    schema["anyOf"] = [{"type": "object", "additionalProperties": values}, {"type": "null"}]


RERANK_DESCRIPTION = (
    "asymmetric re-ranking by h . b (the query's continuous representation h against each "
    "item's code b in {-1,+1}; each hit then carries its score h . b / bits): an integer R "
    "(1..max_rerank) re-ranks the Hamming top R (the first R by distance then insertion "
    'order), the rest staying in Hamming order; "all" ranks every item by h . b, ties by '
    "insertion order; with radius, the items within it are re-ranked; null: Hamming order"
)
IMAGE_BASE64_DESCRIPTION = (
    "the image file's bytes in base64 (standard alphabet; a data: URL prefix is allowed); "
    "the decoded size counts against max_upload_bytes. URLs are never fetched"
)


class TextQuery(BaseModel):
    """A text search."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the query text (non-empty, at most max_text_chars characters)")
    k: int = Field(10, description="page size: how many results to return (1..max_k)")
    radius: int | None = Field(
        None,
        description="hash lookup: every item within this Hamming distance (0..bits), "
        "paginated by offset / k; null: the k nearest (k-NN)",
    )
    offset: int = Field(0, description="results skipped before the page (0..max_offset)")
    filter: dict[str, Any] | None = Field(None, description=FILTER_DESCRIPTION, json_schema_extra=FILTER_SCHEMA)
    rerank: int | Literal["all"] | None = Field(None, description=RERANK_DESCRIPTION)


class ImageSearchFields(BaseModel):
    """The fields of an image search besides the image (multipart form fields or JSON)."""

    k: int = Field(10, description="page size: how many results to return (1..max_k)")
    offset: int = Field(0, description="results skipped before the page (0..max_offset)")
    radius: int | None = Field(
        None,
        description="hash lookup: every item within this Hamming distance (0..bits), "
        "paginated by offset / k; null: the k nearest (k-NN)",
    )
    filter: dict[str, Any] | None = Field(None, description=FILTER_DESCRIPTION, json_schema_extra=FILTER_SCHEMA)
    rerank: int | Literal["all"] | None = Field(None, description=RERANK_DESCRIPTION)


class ImageSearchJson(ImageSearchFields):
    """An image search as JSON, for clients that cannot send multipart."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(description=IMAGE_BASE64_DESCRIPTION)


class NoFields(BaseModel):
    """A request whose only part is its image (the multipart form of /encode/image)."""


class ImageJson(BaseModel):
    """An image to encode, as JSON."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(description=IMAGE_BASE64_DESCRIPTION)


class ItemSummary(BaseModel):
    """One stored item in a listing."""

    id: str = Field(description="item id")
    metadata: dict[str, Any] = Field(description='what was stored with it (an image\'s "path" as its file name)')


class ItemPage(BaseModel):
    """A page of a gallery's items, in insertion order."""

    items: list[ItemSummary] = Field(description="the page: at most limit items, from offset")
    count: int = Field(description="items in the gallery (over all pages)")


class SearchResponse(BaseModel):
    """One page of results, ordered by (distance, insertion order), or re-ranked by score (`rerank`)."""

    results: list[Hit] = Field(description="the page: at most k hits, ranked offset + 1, offset + 2, ...")
    bits: int = Field(description="code length in bits")
    took_ms: float = Field(description="server time for this request in milliseconds, encoding and search included")
    total: int | None = Field(
        None,
        description="radius search: how many items lie within the radius, over all "
        "pages (page through them with offset); null for a k-NN search",
    )
    unknown_words: list[str] = Field(
        default_factory=list,
        description="words of a text query outside the model's vocabulary, which the "
        "search could not use; empty for image queries and subword text "
        "encoders (MiniLM)",
    )


class TextBody(BaseModel):
    """A text to encode."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the text (non-empty, at most max_text_chars characters)")


class CodeResponse(BaseModel):
    """A binary code."""

    code: str = Field(
        description="the packed code as hex (bits / 4 digits, first bit in the high bit of the first byte)"
    )
    bits: int = Field(description="code length in bits")


class TextItem(BaseModel):
    """A text to add to the text gallery."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="item id (default: derived from the text, as `cmhash index` does)")
    text: str = Field(description="the text (non-empty, at most max_text_chars characters)")
    metadata: dict[str, Any] | None = Field(
        None, description='a JSON object stored beside the code (the text is added to it as "text")'
    )


class TextItems(BaseModel):
    """Texts to add to the text gallery (all or none)."""

    model_config = ConfigDict(extra="forbid")

    items: list[TextItem] = Field(min_length=1, description="1..max_items texts")


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
    metadata: dict[str, Any] = Field(
        description="what was stored with it (for an uploaded image: its stored "
        '"path" and original "filename"; for a text: "text")'
    )


class GalleryStatus(BaseModel):
    """A gallery's summary."""

    kind: Literal["image", "text"] = Field(description="modality of the items")
    count: int = Field(description="number of items")
    bits: int = Field(description="code length in bits")
    model_checksum: str = Field(description="checksum of the model whose codes the gallery holds")
    backend: str = Field(description="code store backend (faiss, milvus)")
    device: str = Field(description="where k-NN searches run (cpu, cuda)")
    pending: int = Field(description="journaled changes not yet folded into a snapshot")


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "loading", "failed"] = Field(
        description="ok; loading (the model or galleries are still loading: 503); failed (loading failed: 503). "
        '/readyz also answers "degraded" (200) with a "degraded" object (gallery kind -> reason) '
        "when a configured gallery could not be opened but another one serves"
    )
    detail: str | None = Field(None, description="what is loaded, or what failed")


class Readiness(BaseModel):
    """What /readyz reports: whether the service can answer, and what it runs on."""

    status: Literal["ok", "degraded", "loading", "failed"] = Field(
        description="ok; degraded (200: a configured gallery could not be opened, another one serves); "
        "loading (503: the model or galleries are still loading); failed (503: loading failed, or "
        "every configured gallery is degraded)"
    )
    detail: str | None = Field(None, description="what is loaded, or what failed (no server paths)")
    encoder_device: Literal["cpu", "cuda"] | None = Field(
        None,
        description="where the encoder runs (cuda only when its sessions really run on the CUDA provider); "
        "null until the model is loaded",
    )
    galleries: dict[str, int] = Field(default_factory=dict, description="items in each gallery that serves, by kind")
    degraded: dict[str, str] = Field(
        default_factory=dict, description="configured galleries that could not be opened: kind -> reason"
    )
    error: ErrorDetail | None = Field(None, description="with a 503: the error body's code and message")


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(
        description="stable machine-readable code (bad_request, unauthorized, forbidden, not_found, "
        "conflict, payload_too_large, unsupported_media_type, validation_error, "
        "not_ready, storage_unavailable, insufficient_storage, internal_error, ...)"
    )
    message: str = Field(description="a message fit to show to the caller (never a server path)")
    details: list[dict[str, Any]] | None = Field(
        None, description="validation_error only: each invalid field's loc (where), msg and type"
    )


class ErrorResponse(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    error: ErrorDetail = Field(description="the error's code and message")


Readiness.model_rebuild()  # it names ErrorDetail, defined after it
