"""Turning request inputs into encoder inputs, and running a search through the batcher."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import UploadFile

from model.runtime.choices import Modality
from model.runtime.image import ImageDecodeError
from service.deps import check_page, check_text
from service.errors import bad_request, unsupported
from service.schemas import SearchResponse
from service.state import SearchJob, ServiceState
from service.uploads import check_image, read_upload


def text_query(state: ServiceState, text: str) -> str:
    """A checked query text (400 when the model cannot read raw text)."""
    encoder = state.require_encoder()
    if encoder.info.text.kind == "features":
        raise bad_request("this model reads text feature vectors, not raw text")
    return check_text(text, state.settings.max_text_chars)


async def image_bytes(state: ServiceState, file: UploadFile) -> tuple[bytes, str]:
    """The bytes and PIL format of an uploaded image, size-checked and vetted from its header."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    return data, check_image(data, state.settings.max_image_pixels, repr(file.filename or "upload"))


async def image_array(state: ServiceState, data: bytes, name: str = "upload") -> np.ndarray:
    """The encoder input (3 x S x S) of vetted image bytes, decoded in a thread (415 if undecodable)."""
    encoder = state.require_encoder()
    if encoder.info.image.kind != "pixels":
        raise bad_request("this model reads image feature vectors, not image files")
    try:
        return await asyncio.to_thread(encoder.preprocess_image, data)
    except ImageDecodeError as exc:
        raise unsupported(f"{name}: {exc}") from None


async def run_search(state: ServiceState, modality: Modality, query: np.ndarray | str, target: Modality,
                     k: int, offset: int, radius: int | None, started: float) -> SearchResponse:
    """One page of `target` results for `query` (k-NN after `offset`, or the radius lookup's page)."""
    check_page(state, k, offset, radius)
    journaled = state.gallery(target)
    outcome = await state.batchers[modality].submit(SearchJob(query, target, offset, k, radius))
    return SearchResponse(results=outcome.hits, bits=journaled.bits,
                          took_ms=(time.perf_counter() - started) * 1000.0,
                          total=outcome.found if radius is not None else None)
