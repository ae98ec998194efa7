"""Binary codes of one text or image (no gallery involved)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from service.deps import get_state, require_read
from service.queries import image_array, image_openapi, image_request, text_query
from service.schemas import CodeResponse, ImageJson, NoFields, TextBody
from service.state import ServiceState

router = APIRouter(prefix="/encode", tags=["encode"], dependencies=[Depends(require_read)])


@router.post("/text", response_model=CodeResponse)
async def encode_text(body: TextBody, state: ServiceState = Depends(get_state)) -> CodeResponse:
    """The packed code of a text, as hex."""
    text = text_query(state, body.text, known_words=False)
    codes = await asyncio.to_thread(state.encode, "text", [text])
    return CodeResponse(code=bytes(codes[0]).hex(), bits=state.require_encoder().bits)


@router.post("/image", response_model=CodeResponse, openapi_extra=image_openapi(NoFields, ImageJson, "the image"))
async def encode_image(request: Request, state: ServiceState = Depends(get_state)) -> CodeResponse:
    """The packed code of an image, as hex: a multipart upload (field file) or JSON with the
    image's bytes as image_base64 (URLs are not fetched)."""
    _, data, name = await image_request(request, state, NoFields, ImageJson)
    array = await image_array(state, data, name)
    codes = await asyncio.to_thread(state.encode, "image", [array])
    return CodeResponse(code=bytes(codes[0]).hex(), bits=state.require_encoder().bits)
