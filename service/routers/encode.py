"""Binary codes of one text or image (no gallery involved)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, UploadFile

from service.deps import get_state, require_read
from service.queries import image_array, image_bytes, text_query
from service.schemas import CodeResponse, TextBody
from service.state import ServiceState

router = APIRouter(prefix="/encode", tags=["encode"], dependencies=[Depends(require_read)])


@router.post("/text", response_model=CodeResponse)
async def encode_text(body: TextBody, state: ServiceState = Depends(get_state)) -> CodeResponse:
    """The packed code of a text, as hex."""
    text = text_query(state, body.text)
    codes = await asyncio.to_thread(state.encode, "text", [text])
    return CodeResponse(code=bytes(codes[0]).hex(), bits=state.require_encoder().bits)


@router.post("/image", response_model=CodeResponse)
async def encode_image(file: UploadFile = File(..., description="the image"),
                       state: ServiceState = Depends(get_state)) -> CodeResponse:
    """The packed code of an uploaded image, as hex."""
    data, _ = await image_bytes(state, file)
    array = await image_array(state, data, repr(file.filename or "upload"))
    codes = await asyncio.to_thread(state.encode, "image", [array])
    return CodeResponse(code=bytes(codes[0]).hex(), bits=state.require_encoder().bits)
