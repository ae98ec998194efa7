"""Gallery management: add images or texts, read, delete, and serve stored image files.

Changes go through the gallery's journal (`index.journal`): visible to searches at once and
durable when the response is sent; a write that is refused (a 4xx, or 507/503 when the disk is
full or failing) leaves nothing behind. Uploaded images are kept under the upload directory
(named by a hash of their id, never by the client's file name) so the search page can show them.
Metadata is bounded (max_metadata_bytes, max_metadata_depth) and must round-trip through JSON,
so whatever is stored can be read back by GET and by every search."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import mimetypes
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from index.errors import DuplicateIdError
from index.journal import JournaledGallery
from index.sources import text_id
from model.runtime.choices import Modality
from model.runtime.errors import UserError
from service.deps import get_state, require_read, require_write
from service.errors import ApiError, bad_request, not_found, storage_error
from service.queries import image_array, image_bytes, public_metadata, text_query
from service.schemas import Added, Deleted, GalleryStatus, Item, ItemPage, ItemSummary, TextItems
from service.settings import Settings
from service.state import ServiceState, gallery_kind
from service.uploads import SUFFIXES, write_upload

router = APIRouter(prefix="/gallery", tags=["gallery"])
log = logging.getLogger("cmhash.service")
MAX_ID_CHARS = 256
RESERVED_IDS = ("items",)  # GET /gallery/{kind}/items lists the gallery: an item of that id could not be read
# metadata integers must survive any JSON reader (and Python's 4300-digit str limit): 64 bits
MIN_METADATA_INT, MAX_METADATA_INT = -(2**63), 2**64 - 1


def upload_dir(state: ServiceState) -> Path:
    """Where uploaded images are stored."""
    s = state.settings
    assert s.image_gallery is not None  # only called once the image gallery exists
    return s.upload_dir or s.image_gallery / "uploads"


def _check_unicode(value: str, what: str) -> None:
    """400 for a string that is not storable text (a lone surrogate has no UTF-8 form)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None


def _metadata_problem(meta: dict[str, Any], max_depth: int) -> str | None:
    """Why `meta` cannot be stored and read back, or None. Walked without recursion, so any
    depth is safe to inspect: nesting beyond `max_depth`, a value JSON has no form for (NaN,
    infinities, integers beyond 64 bits, lone surrogates, non-JSON types)."""
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                return f"is nested more than {max_depth} levels deep (the max_metadata_depth limit)"
            children = value.values() if isinstance(value, dict) else value
            if isinstance(value, dict):
                for key in value:
                    if not isinstance(key, str):
                        return "has a key that is not a string"
                    stack.append((key, depth))
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not MIN_METADATA_INT <= value <= MAX_METADATA_INT:
                return "holds an integer beyond 64 bits, which JSON readers cannot round-trip"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return "holds a non-finite number (NaN or infinity), which JSON cannot represent"
        else:
            return f"holds a {type(value).__name__}, which is not a JSON value"
    return None


def _check_metadata(metas: list[dict[str, Any]], settings: Settings) -> None:
    """400 naming the limit for metadata that could not be read back as stored: too deep, too
    large as JSON (max_metadata_bytes), or holding values JSON cannot represent."""
    for n, meta in enumerate(metas):
        problem = _metadata_problem(meta, settings.max_metadata_depth)
        if problem is None:
            size = len(json.dumps(meta, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8"))
            if size > settings.max_metadata_bytes:
                limit = settings.max_metadata_bytes
                problem = f"is {size} bytes as JSON, more than the max_metadata_bytes limit of {limit}"
        if problem is not None:
            raise bad_request(f"the metadata of item {n} {problem}")


def _check_ids(ids: list[str], journaled: JournaledGallery) -> None:
    for item_id in ids:
        _check_unicode(item_id, "an id")
        if (
            not item_id
            or len(item_id) > MAX_ID_CHARS
            or any(ord(c) < 32 for c in item_id)
            or item_id != item_id.strip()
        ):
            raise bad_request(
                f"id {item_id!r} must be 1-{MAX_ID_CHARS} printable characters without surrounding spaces"
            )
        if item_id in RESERVED_IDS:
            raise bad_request(
                f"id {item_id!r} is reserved: GET /gallery/{{kind}}/{item_id} lists the gallery, so an "
                "item of that id could not be read back; choose another id"
            )
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ApiError(409, f"id {item_id!r} appears twice in the request")
        seen.add(item_id)
        if item_id in journaled:
            raise ApiError(409, f"id {item_id!r} is already in the gallery")


def _parse_metadata(raw: list[str] | None, n: int) -> list[dict[str, Any]]:
    if raw is None:
        return [{} for _ in range(n)]
    if len(raw) != n:
        raise bad_request(f"{n} files but {len(raw)} metadata fields")
    out = []
    for text in raw:
        try:
            value = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise bad_request(f"metadata must be a JSON object: {exc.msg}") from None
        except RecursionError:
            raise bad_request("metadata is nested too deeply") from None
        except ValueError:  # an integer of more digits than Python converts (4300)
            raise bad_request("metadata holds a number too large to store") from None
        if not isinstance(value, dict):
            raise bad_request("metadata must be a JSON object")
        out.append(value)
    return out


def _note_compactions(state: ServiceState, kind: Modality, journaled: JournaledGallery) -> None:
    """Count the gallery's failed compactions (logged by the journal, retried by a later write)."""
    failures = journaled.take_compaction_failures()
    if failures:
        state.metrics.compaction_failures.labels(kind).inc(failures)


def _add(state: ServiceState, kind: Modality, ids: list[str], codes: Any, metas: list[dict[str, Any]]) -> int:
    """Add to the journaled gallery: 409 only for a duplicate id, 400 for another UserError,
    507/503 for a failed disk write (nothing stored then); anything else is a bug (500)."""
    journaled = state.gallery(kind)
    try:
        journaled.add(ids, codes, metas)
    except DuplicateIdError as exc:
        raise ApiError(409, str(exc)) from None
    except UserError as exc:
        raise bad_request(str(exc)) from None
    except OSError as exc:
        raise storage_error(exc, f"adding to the {kind} gallery") from None
    finally:
        _note_compactions(state, kind, journaled)
    return len(journaled)


def _remove(state: ServiceState, kind: Modality, item_id: str) -> list[dict[str, Any]]:
    """The items removed (as stored, read under the journal's lock); 507/503 for a failed write."""
    journaled = state.gallery(kind)
    try:
        return journaled.remove([item_id])
    except OSError as exc:
        raise storage_error(exc, f"deleting from the {kind} gallery", "nothing was deleted") from None
    finally:
        _note_compactions(state, kind, journaled)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("could not remove the upload %s: %s", path, exc)


@router.post("/images", response_model=Added, status_code=201, dependencies=[Depends(require_write)])
async def add_images(
    files: list[UploadFile] = File(..., description="one or more images"),
    ids: list[str] | None = Form(None, description="an id per file (default: the file name without extension)"),
    metadata: list[str] | None = Form(None, description="a JSON object per file, stored with it"),
    state: ServiceState = Depends(get_state),
) -> Added:
    """Encode and add images (all or none); 409 when an id exists."""
    journaled = state.gallery("image")
    if len(files) > state.settings.max_items:
        raise bad_request(f"at most {state.settings.max_items} files per request, got {len(files)}")
    if ids is not None and len(ids) != len(files):
        raise bad_request(f"{len(files)} files but {len(ids)} ids")
    item_ids = ids if ids is not None else [Path(f.filename or "").stem for f in files]
    _check_ids(item_ids, journaled)
    metas = _parse_metadata(metadata, len(files))
    _check_metadata(metas, state.settings)
    folder = upload_dir(state)
    room = str(folder / f"{'0' * 24}-{'0' * 12}.webp")  # as long as any stored path (checked before storing)
    stored = [{**m, "path": room, "filename": f.filename or ""} for m, f in zip(metas, files, strict=True)]
    _check_metadata(stored, state.settings)  # with the path and file name the server adds
    blobs, arrays, suffixes = [], [], []
    for file in files:
        data, fmt = await image_bytes(state, file)
        arrays.append(await image_array(state, data, repr(file.filename or "upload")))
        blobs.append(data)
        suffixes.append(SUFFIXES.get(fmt, ".img"))
    codes = await asyncio.to_thread(state.encode, "image", arrays)
    # One file name per upload request (id hash + random part): concurrent uploads of one id,
    # or an upload racing a delete, never write, rename or clean up each other's files.
    paths = [
        folder / f"{hashlib.sha256(i.encode('utf-8')).hexdigest()[:24]}-{uuid.uuid4().hex[:12]}{s}"
        for i, s in zip(item_ids, suffixes)
    ]
    stored = [{**m, "path": str(p)} for m, p in zip(stored, paths, strict=True)]
    try:
        for path, data in zip(paths, blobs, strict=True):
            await asyncio.to_thread(write_upload, path, data)
        count = await asyncio.to_thread(_add, state, "image", item_ids, codes, stored)
    except Exception as exc:  # refused: none of this request's files may stay behind
        for path in paths:
            _unlink_quietly(path)
        if isinstance(exc, OSError):
            raise storage_error(exc, "storing the uploaded images") from None
        raise
    return Added(ids=item_ids, count=count)


@router.post("/texts", response_model=Added, status_code=201, dependencies=[Depends(require_write)])
async def add_texts(body: TextItems, state: ServiceState = Depends(get_state)) -> Added:
    """Encode and add texts (all or none); an id defaults to one derived from the text."""
    journaled = state.gallery("text")
    if len(body.items) > state.settings.max_items:
        raise bad_request(f"at most {state.settings.max_items} items per request, got {len(body.items)}")
    texts = [text_query(state, item.text, known_words=False) for item in body.items]
    for text in texts:
        _check_unicode(text, "a text")
    item_ids = [item.id if item.id is not None else text_id(item.text) for item in body.items]
    _check_ids(item_ids, journaled)
    metas = [{**(item.metadata or {}), "text": item.text} for item in body.items]
    _check_metadata(metas, state.settings)
    codes = await asyncio.to_thread(state.encode, "text", texts)
    count = await asyncio.to_thread(_add, state, "text", item_ids, codes, metas)
    return Added(ids=item_ids, count=count)


@router.get(
    "/images/{item_id:path}/file",
    dependencies=[Depends(require_read)],
    responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such item or file"}},
)
async def image_file(item_id: str, state: ServiceState = Depends(get_state)) -> FileResponse:
    """The stored image file of an image item (its metadata "path")."""
    item = state.gallery("image").get(item_id)
    path = Path(str(item["metadata"].get("path", ""))) if item else None
    if path is None or not path.name or not path.is_file():
        raise not_found(f"no image file for {item_id!r}")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)


@router.get("/{kind}", response_model=GalleryStatus, dependencies=[Depends(require_read)])
async def status(kind: str, state: ServiceState = Depends(get_state)) -> GalleryStatus:
    """Size, code length, model checksum and backend of a gallery (images or texts)."""
    journaled = state.gallery(gallery_kind(kind))
    info = journaled.info
    return GalleryStatus(
        kind=info.kind,
        count=len(journaled),
        bits=info.bits,
        model_checksum=info.model_checksum,
        backend=info.backend,
        device=journaled.device,
        pending=journaled.pending,
    )


def _page_of_items(journaled: JournaledGallery, offset: int, limit: int) -> ItemPage:
    ids = journaled.ids()
    items = []
    for item_id in ids[offset : offset + limit]:
        item = journaled.get(item_id)
        if item is not None:  # removed since ids() was read
            items.append(ItemSummary(id=item_id, metadata=public_metadata(item["metadata"])))
    return ItemPage(items=items, count=len(ids))


# Declared before /{kind}/{item_id:path}, which would otherwise take "items" for an id.
@router.get("/{kind}/items", response_model=ItemPage, dependencies=[Depends(require_read)])
async def list_items(
    kind: str,
    offset: int = Query(0, description="items skipped (0 or more)"),
    limit: int | None = Query(None, description="page size (1..max_k; default 100, or max_k when smaller)"),
    state: ServiceState = Depends(get_state),
) -> ItemPage:
    """A page of the gallery's items (id and metadata), in insertion order, with the gallery's
    size as `count`: page through it with offset += limit."""
    journaled = state.gallery(gallery_kind(kind))
    if limit is None:
        limit = min(100, state.settings.max_k)
    if not 1 <= limit <= state.settings.max_k:
        raise bad_request(f"limit must be between 1 and {state.settings.max_k}, got {limit}")
    if offset < 0:
        raise bad_request(f"offset must not be negative, got {offset}")
    return await asyncio.to_thread(_page_of_items, journaled, offset, limit)


@router.get("/{kind}/{item_id:path}", response_model=Item, dependencies=[Depends(require_read)])
async def get_item(kind: str, item_id: str, state: ServiceState = Depends(get_state)) -> Item:
    """One item: id, code (hex) and metadata (an uploaded image's "path" as its file name)."""
    item = state.gallery(gallery_kind(kind)).get(item_id)
    if item is None:
        raise not_found(f"no item {item_id!r} in the {kind} gallery")
    return Item(id=item_id, code=bytes(item["code"]).hex(), metadata=public_metadata(item["metadata"]))


@router.delete("/{kind}/{item_id:path}", response_model=Deleted, dependencies=[Depends(require_write)])
async def delete_item(kind: str, item_id: str, state: ServiceState = Depends(get_state)) -> Deleted:
    """Remove an item (and its uploaded file); 404 when absent. The answer and the file removed
    come from what this call removed under the journal's lock, never from an earlier read."""
    gkind: Modality = gallery_kind(kind)
    journaled = state.gallery(gkind)
    removed = await asyncio.to_thread(_remove, state, gkind, item_id)
    if not removed:
        raise not_found(f"no item {item_id!r} in the {kind} gallery")
    if gkind == "image":
        for item in removed:
            path = Path(str(item["metadata"].get("path", "")))
            if path.name and path.parent.resolve() == upload_dir(state).resolve():
                await asyncio.to_thread(_unlink_quietly, path)
    return Deleted(id=item_id, count=len(journaled))
