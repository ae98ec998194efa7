"""Turning request inputs into encoder inputs, and running a search through the batcher."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from fastapi import UploadFile

from index.search import Hit
from model.runtime.choices import Modality
from model.runtime.image import ImageDecodeError, ImageTooLargeError
from service.deps import check_page, check_text
from service.errors import bad_request, too_large, unsupported
from service.schemas import SearchResponse
from service.state import SearchJob, ServiceState
from service.uploads import check_image, read_upload


def text_query(state: ServiceState, text: str) -> str:
    """A checked query text (400 when the model cannot read raw text, or when it knows none of
    the text's words: a bag-of-words code of nothing would rank the gallery arbitrarily)."""
    encoder = state.require_encoder()
    if encoder.info.text.kind == "features":
        raise bad_request("this model reads text feature vectors, not raw text")
    text = check_text(text, state.settings.max_text_chars)
    if not encoder.reads_words(text):
        unknown = encoder.unknown_words(text)
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise bad_request(f"no word of the query is known to the model ({shown or 'no words'}); its vocabulary "
                          "is the words of its training texts")
    return text


async def image_bytes(state: ServiceState, file: UploadFile) -> tuple[bytes, str]:
    """The bytes and PIL format of an uploaded image, size-checked and vetted from its header."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    return data, check_image(data, state.settings.max_image_pixels, repr(file.filename or "upload"))


# One semaphore per service state: at most settings.max_concurrent_decodes uploads are decoded at once.
_DECODE_SLOTS: weakref.WeakKeyDictionary[ServiceState, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def image_array(state: ServiceState, data: bytes, name: str = "upload") -> np.ndarray:
    """The encoder input (3 x S x S) of vetted image bytes, decoded in a thread within the image
    limits (413 naming the limit: aspect ratio, pixels, decoded size), at most
    settings.max_concurrent_decodes at a time (415 if undecodable)."""
    encoder = state.require_encoder()
    if encoder.info.image.kind != "pixels":
        raise bad_request("this model reads image feature vectors, not image files")
    settings = state.settings
    slots = _DECODE_SLOTS.get(state)
    if slots is None:
        slots = _DECODE_SLOTS.setdefault(state, asyncio.Semaphore(settings.max_concurrent_decodes))
    await slots.acquire()
    try:
        decode = asyncio.ensure_future(asyncio.to_thread(
            encoder.preprocess_image, data, max_pixels=settings.max_image_pixels,
            max_aspect=settings.max_image_aspect, max_decoded_pixels=settings.max_decoded_pixels, name=name))
    except BaseException:
        slots.release()
        raise
    def finished(done: asyncio.Future[np.ndarray]) -> None:
        """Free the slot when the decoding thread ends, even if this request was cancelled first
        (and retrieve its error, which then nobody awaits)."""
        slots.release()
        if not done.cancelled():
            done.exception()

    decode.add_done_callback(finished)
    try:
        return await asyncio.shield(decode)
    except ImageTooLargeError as exc:
        raise too_large(str(exc)) from None
    except ImageDecodeError as exc:
        raise unsupported(f"{name}: {exc}") from None


async def run_search(state: ServiceState, modality: Modality, query: np.ndarray | str, target: Modality,
                     k: int, offset: int, radius: int | None, started: float) -> SearchResponse:
    """One page of `target` results for `query` (k-NN after `offset`, or the radius lookup's page)."""
    check_page(state, k, offset, radius)
    journaled = state.gallery(target)
    outcome = await state.batchers[modality].submit(SearchJob(query, target, offset, k, radius))
    return SearchResponse(results=[public_hit(hit) for hit in outcome.hits], bits=journaled.bits,
                          took_ms=(time.perf_counter() - started) * 1000.0,
                          total=outcome.found if radius is not None else None,
                          unknown_words=state.require_encoder().unknown_words(query) if isinstance(query, str) else [])


# An absolute POSIX path in a message: "/" not preceded by a word character, ":", "/" or "." (so
# URLs and relative paths are left alone), up to whitespace, a quote or punctuation.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/[^\s'\"<>|,;:()\[\]{}]+")


def hide_paths(message: str) -> str:
    """`message` with each absolute path shortened to its last component ("/srv/x/model.json"
    -> "…/model.json"): errors shown to callers name the file without revealing the server's
    layout (the server log keeps the full message)."""
    def short(match: re.Match[str]) -> str:
        name = PurePosixPath(match.group()).name
        return f"…/{name}" if name else "…"

    return ABSOLUTE_PATH.sub(short, message)


def public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Item metadata as the API shows it: an absolute "path" (where `cmhash index` or an upload
    stored the image on the server) becomes its file name; the stored metadata is unchanged."""
    path = metadata.get("path")
    if isinstance(path, str) and (path.startswith("/") or re.match(r"[A-Za-z]:[\\/]", path)):
        return {**metadata, "path": PurePosixPath(path.replace("\\", "/")).name}
    return metadata


def public_hit(hit: Hit) -> Hit:
    """A search hit with `public_metadata`."""
    shown = public_metadata(hit.metadata)
    return hit if shown is hit.metadata else hit.model_copy(update={"metadata": shown})
