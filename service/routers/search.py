"""Cross-modal and same-modality search: text or image queries over either gallery."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, File, Form, UploadFile

from model.runtime.choices import Modality
from service.deps import check_page, get_state, require_read
from service.queries import image_array, image_bytes, run_search, text_query
from service.schemas import SearchResponse, TextQuery
from service.state import ServiceState

router = APIRouter(prefix="/search", tags=["search"], dependencies=[Depends(require_read)])


async def _text(state: ServiceState, body: TextQuery, target: Modality) -> SearchResponse:
    started = time.perf_counter()
    text = text_query(state, body.text)
    return await run_search(state, "text", text, target, body.k, body.offset, body.radius, started)


@dataclass
class ImageQuery:
    """The multipart fields of an image search."""

    file: UploadFile  # the query image
    k: int  # page size
    offset: int  # results skipped
    radius: int | None  # hash lookup radius, or None for k-NN


def image_query(
    file: UploadFile = File(..., description="the query image"),
    k: int = Form(10, description="page size"),
    offset: int = Form(0, description="results skipped"),
    radius: int | None = Form(None, description="hash lookup radius"),
) -> ImageQuery:
    """The form of both image searches, declared once."""
    return ImageQuery(file, k, offset, radius)


async def _image(state: ServiceState, query: ImageQuery, target: Modality) -> SearchResponse:
    started = time.perf_counter()
    check_page(state, query.k, query.offset, query.radius)  # before the upload is read and decoded
    state.gallery(target)
    data, _ = await image_bytes(state, query.file)
    array = await image_array(state, data, repr(query.file.filename or "upload"))
    return await run_search(state, "image", array, target, query.k, query.offset, query.radius, started)


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
async def image_to_text(query: ImageQuery = Depends(image_query), state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Texts nearest to an uploaded image."""
    return await _image(state, query, "text")


@router.post("/image-to-image", response_model=SearchResponse)
async def image_to_image(query: ImageQuery = Depends(image_query), state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Images nearest to an uploaded image."""
    return await _image(state, query, "image")
