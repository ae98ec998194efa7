"""Request and response bodies (pydantic v2); they make the OpenAPI schema at /docs.

Ranges (k, offset, radius, text length) are checked by the routes, not here, so that an out
of range value is a 400 naming the limit rather than a generic 422."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


from index.search import Hit

class TextQuery(BaseModel):
    """A text search."""

    model_config = ConfigDict(extra="forbid")

    text: str  # the query text (non-empty, at most max_text_chars)
    k: int = 10  # page size: results returned (1..max_k)
    radius: int | None = None  # hash lookup: every item within this Hamming distance (0..bits), paginated
    offset: int = 0  # results skipped before the page (0..max_offset)


class SearchResponse(BaseModel):
    """One page of results, ordered by (distance, insertion order)."""

    results: list[Hit]  # the page
    bits: int  # code length
    took_ms: float  # server time for this request, encoding and search included
    total: int | None = None  # with radius: how many items lie within it (all pages); else None


class TextBody(BaseModel):
    """A text to encode."""

    model_config = ConfigDict(extra="forbid")

    text: str  # non-empty, at most max_text_chars


class CodeResponse(BaseModel):
    """A binary code."""

    code: str  # the packed code as hex (bits / 4 digits, first bit in the high bit of the first byte)
    bits: int  # code length


class TextItem(BaseModel):
    """A text to add to the text gallery."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None  # item id (default: derived from the text, as `cmhash index` does)
    text: str  # the text (non-empty, at most max_text_chars)
    metadata: dict[str, Any] | None = None  # stored beside the code (the text is added as "text")


class TextItems(BaseModel):
    """Texts to add to the text gallery (all or none)."""

    model_config = ConfigDict(extra="forbid")

    items: list[TextItem] = Field(min_length=1)  # 1..max_items texts


class Added(BaseModel):
    """Items added to a gallery."""

    ids: list[str]  # the new items' ids, in request order
    count: int  # gallery size afterwards


class Deleted(BaseModel):
    """An item removed from a gallery."""

    id: str  # the removed id
    count: int  # gallery size afterwards


class Item(BaseModel):
    """One stored gallery item."""

    id: str  # item id
    code: str  # its packed code as hex
    metadata: dict[str, Any]  # what was stored with it


class GalleryStatus(BaseModel):
    """A gallery's summary."""

    kind: Literal["image", "text"]  # modality of the items
    count: int  # number of items
    bits: int  # code length
    model_checksum: str  # checksum of the model whose codes it holds
    backend: str  # code store backend (faiss, milvus)
    device: str  # where k-NN searches run (cpu, cuda)
    pending: int  # journaled changes not yet folded into a snapshot


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "loading", "failed"]  # ok, still loading, or loading failed
    detail: str | None = None  # what failed, or what is loaded
