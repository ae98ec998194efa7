"""Cross-modal and same-modality search: text or image queries over either gallery."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from model.runtime.choices import Modality
from service.deps import check_page, get_state, require_read
from service.queries import (
    check_rerank,
    check_search_filter,
    image_array,
    image_openapi,
    image_request,
    run_search,
    text_query,
)
from service.schemas import ImageSearchFields, ImageSearchJson, SearchResponse, TextQuery
from service.state import ServiceState

router = APIRouter(prefix="/search", tags=["search"], dependencies=[Depends(require_read)])

# Image searches take a multipart upload (field "file") or JSON with "image_base64".
IMAGE_BODY = image_openapi(ImageSearchFields, ImageSearchJson, "the query image")


async def _text(state: ServiceState, body: TextQuery, target: Modality) -> SearchResponse:
    started = time.perf_counter()
    check_search_filter(state, target, body.filter)
    check_rerank(state, body.rerank)
    text = text_query(state, body.text)
    return await run_search(
        state, "text", text, target, body.k, body.offset, body.radius, started, body.filter, body.rerank
    )


async def _image(request: Request, state: ServiceState, target: Modality) -> SearchResponse:
    started = time.perf_counter()

    def check(fields: ImageSearchFields) -> None:  # before the image is read and decoded
        check_page(state, fields.k, fields.offset, fields.radius)
        state.gallery(target)
        check_search_filter(state, target, fields.filter)
        check_rerank(state, fields.rerank)

    query, data, name = await image_request(request, state, ImageSearchFields, ImageSearchJson, check)
    array = await image_array(state, data, name)
    return await run_search(
        state, "image", array, target, query.k, query.offset, query.radius, started, query.filter, query.rerank
    )


@router.post("/text-to-image", response_model=SearchResponse)
async def text_to_image(body: TextQuery, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Images nearest to a text, by (Hamming distance, insertion order); with `radius`, every
    image within it (inclusive), paginated by offset / k; with `filter`, over the images whose
    metadata match only; with `rerank`, re-ranked by the query's h . b (R candidates or "all")."""
    return await _text(state, body, "image")


@router.post("/text-to-text", response_model=SearchResponse)
async def text_to_text(body: TextQuery, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Texts nearest to a text."""
    return await _text(state, body, "text")


@router.post("/image-to-text", response_model=SearchResponse, openapi_extra=IMAGE_BODY)
async def image_to_text(request: Request, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Texts nearest to an image: a multipart upload (file, and k, offset, radius, filter, rerank
    as form fields; filter as JSON text), or JSON with the image's bytes as image_base64. URLs are not fetched."""
    return await _image(request, state, "text")


@router.post("/image-to-image", response_model=SearchResponse, openapi_extra=IMAGE_BODY)
async def image_to_image(request: Request, state: ServiceState = Depends(get_state)) -> SearchResponse:
    """Images nearest to an image (multipart upload or JSON image_base64, as image-to-text)."""
    return await _image(request, state, "image")
