"""Reading uploads within limits and vetting images before they are decoded."""

from __future__ import annotations

import io
import warnings

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from service.errors import too_large, unsupported

# PIL format -> file suffix for stored uploads
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The bytes of `file`; 413 when it holds more than `limit`."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"file {file.filename or ''!r} is larger than the {limit}-byte limit")
    return data


def check_image(data: bytes, max_pixels: int, name: str = "upload") -> str:
    """The PIL format of encoded image `data`, read from its header only; 415 when it is not
    an image, 413 when width x height exceeds `max_pixels` (before anything is decoded)."""
    if not data:
        raise unsupported(f"{name} is empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = img.format or ""
    except Image.DecompressionBombError as exc:
        raise too_large(f"{name}: image too large ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise unsupported(f"{name} is not an image this service can read ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise too_large(f"{name} is {width}x{height} pixels, more than the {max_pixels}-pixel limit")
    return fmt
