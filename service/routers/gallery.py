"""Gallery management: add images or texts, read, delete, and serve stored image files.

Changes go through the gallery's journal (`index.journal`): visible to searches at once and
durable when the response is sent. Uploaded images are kept under the upload directory (named
by a hash of their id, never by the client's file name) so the search page can show them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse

from index.journal import JournaledGallery
from index.snapshots import fsync_path
from index.sources import text_id
from model.runtime.choices import Modality
from service.deps import get_state, require_read, require_write
from service.errors import ApiError, bad_request, not_found
from service.queries import image_array, image_bytes, text_query
from service.schemas import Added, Deleted, GalleryStatus, Item, TextItems
from service.state import ServiceState, gallery_kind
from service.uploads import SUFFIXES

router = APIRouter(prefix="/gallery", tags=["gallery"])
MAX_ID_CHARS = 256


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


def _check_metadata(metas: list[dict[str, Any]]) -> None:
    """400 for metadata that cannot be stored as JSON text (NaN, lone surrogates, deep nesting)."""
    for meta in metas:
        try:
            json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError, RecursionError) as exc:
            raise bad_request(f"metadata cannot be stored as JSON: {type(exc).__name__}") from None


def _check_ids(ids: list[str], journaled: JournaledGallery) -> None:
    for item_id in ids:
        _check_unicode(item_id, "an id")
        if not item_id or len(item_id) > MAX_ID_CHARS or any(ord(c) < 32 for c in item_id) or item_id != item_id.strip():
            raise bad_request(f"id {item_id!r} must be 1-{MAX_ID_CHARS} printable characters without surrounding spaces")
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
        if not isinstance(value, dict):
            raise bad_request("metadata must be a JSON object")
        out.append(value)
    return out


def _write_file(path: Path, data: bytes) -> None:
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_path(path.parent.parent)
    tmp = path.with_name(path.name + ".tmp")  # the final name is unique per request, so is this
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _add(journaled: JournaledGallery, ids: list[str], codes: Any, metas: list[dict[str, Any]]) -> int:
    try:
        journaled.add(ids, codes, metas)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    return len(journaled)


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
    _check_metadata(metas)
    blobs, arrays, suffixes = [], [], []
    for file in files:
        data, fmt = await image_bytes(state, file)
        arrays.append(await image_array(state, data, repr(file.filename or "upload")))
        blobs.append(data)
        suffixes.append(SUFFIXES.get(fmt, ".img"))
    codes = await asyncio.to_thread(state.encode, "image", arrays)
    folder = upload_dir(state)
    # One file name per upload request (id hash + random part): concurrent uploads of one id,
    # or an upload racing a delete, never write, rename or clean up each other's files.
    paths = [folder / f"{hashlib.sha256(i.encode('utf-8')).hexdigest()[:24]}-{uuid.uuid4().hex[:12]}{s}"
             for i, s in zip(item_ids, suffixes)]
    for path, data in zip(paths, blobs):
        await asyncio.to_thread(_write_file, path, data)
    stored = [{**m, "path": str(p), "filename": f.filename or ""} for m, p, f in zip(metas, paths, files)]
    try:
        count = await asyncio.to_thread(_add, journaled, item_ids, codes, stored)
    except ApiError:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    return Added(ids=item_ids, count=count)


@router.post("/texts", response_model=Added, status_code=201, dependencies=[Depends(require_write)])
async def add_texts(body: TextItems, state: ServiceState = Depends(get_state)) -> Added:
    """Encode and add texts (all or none); an id defaults to one derived from the text."""
    journaled = state.gallery("text")
    if len(body.items) > state.settings.max_items:
        raise bad_request(f"at most {state.settings.max_items} items per request, got {len(body.items)}")
    texts = [text_query(state, item.text) for item in body.items]
    for text in texts:
        _check_unicode(text, "a text")
    item_ids = [item.id if item.id is not None else text_id(item.text) for item in body.items]
    _check_ids(item_ids, journaled)
    metas = [{**(item.metadata or {}), "text": item.text} for item in body.items]
    _check_metadata(metas)
    codes = await asyncio.to_thread(state.encode, "text", texts)
    count = await asyncio.to_thread(_add, journaled, item_ids, codes, metas)
    return Added(ids=item_ids, count=count)


@router.get("/images/{item_id:path}/file", dependencies=[Depends(require_read)],
            responses={200: {"content": {"image/*": {}}}, 404: {"description": "no such item or file"}})
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
    return GalleryStatus(kind=info.kind, count=len(journaled), bits=info.bits, model_checksum=info.model_checksum,
                         backend=info.backend, device=journaled.device, pending=journaled.pending)


@router.get("/{kind}/{item_id:path}", response_model=Item, dependencies=[Depends(require_read)])
async def get_item(kind: str, item_id: str, state: ServiceState = Depends(get_state)) -> Item:
    """One item: id, code (hex) and metadata."""
    item = state.gallery(gallery_kind(kind)).get(item_id)
    if item is None:
        raise not_found(f"no item {item_id!r} in the {kind} gallery")
    return Item(id=item_id, code=bytes(item["code"]).hex(), metadata=item["metadata"])


@router.delete("/{kind}/{item_id:path}", response_model=Deleted, dependencies=[Depends(require_write)])
async def delete_item(kind: str, item_id: str, state: ServiceState = Depends(get_state)) -> Deleted:
    """Remove an item (and its uploaded file); 404 when absent."""
    gkind: Modality = gallery_kind(kind)
    journaled = state.gallery(gkind)
    item = journaled.get(item_id)
    removed = await asyncio.to_thread(journaled.remove, [item_id])
    if not removed or item is None:
        raise not_found(f"no item {item_id!r} in the {kind} gallery")
    if gkind == "image":
        path = Path(str(item["metadata"].get("path", "")))
        if path.name and path.parent.resolve() == upload_dir(state).resolve():
            path.unlink(missing_ok=True)
    return Deleted(id=item_id, count=len(journaled))
