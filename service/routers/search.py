"""Cross-modal and same-modality search: text or image queries over either gallery."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, File, Form, UploadFile

from index.gallery import Kind
from service.deps import check_page, get_state, require_read
from service.queries import image_array, image_bytes, run_search, text_query
from service.schemas import SearchResponse, TextQuery
from service.state import ServiceState

router = APIRouter(prefix="/search", tags=["search"], dependencies=[Depends(require_read)])


async def _text(state: ServiceState, body: TextQuery, target: Kind) -> SearchResponse:
    started = time.perf_counter()
    text = text_query(state, body.text)
    return await run_search(state, "text", text, target, body.k, body.offset, body.radius, started)


async def _image(state: ServiceState, file: UploadFile, target: Kind, k: int, offset: int, radius: int | None) -> SearchResponse:
    started = time.perf_counter()
    check_page(state, k, offset, radius)  # before the upload is read and decoded
    state.gallery(target)
    data, _ = await image_bytes(state, file)
    array = await image_array(state, data, repr(file.filename or "upload"))
    return await run_search(state, "image", array, target, k, offset, radius, started)


@router.post("/text-to-image", response_model=SearchResponse)
async def text_to_image(body: TextQuery, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Images nearest to a text, by (Hamming distance, insertion order); with `radius`, every
    image within it (inclusive), paginated by offset / k."""
    return await _text(state, body, "image")


@router.post("/text-to-text", response_model=SearchResponse)
async def text_to_text(body: TextQuery, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Texts nearest to a text."""
    return await _text(state, body, "text")


@router.post("/image-to-text", response_model=SearchResponse)
async def image_to_text(
    file: UploadFile = File(..., description="the query image"),
    k: int = Form(10, description="page size"),
    offset: int = Form(0, description="results skipped"),
    radius: int | None = Form(None, description="hash lookup radius"),
    state: ServiceState = Depends(get_state),
) -> SearchResponse:
    """Texts nearest to an uploaded image."""
    return await _image(state, file, "text", k, offset, radius)


@router.post("/image-to-image", response_model=SearchResponse)
async def image_to_image(
    file: UploadFile = File(..., description="the query image"),
    k: int = Form(10, description="page size"),
    offset: int = Form(0, description="results skipped"),
    radius: int | None = Form(None, description="hash lookup radius"),
    state: ServiceState = Depends(get_state),
) -> SearchResponse:
    """Images nearest to an uploaded image."""
    return await _image(state, file, "image", k, offset, radius)
