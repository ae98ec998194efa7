"""Reading uploads within limits and vetting images before they are decoded."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from index.snapshots import fsync_path
from model.runtime.image import ImageDecodeError, ImageTooLargeError, check_dimensions
from service.errors import too_large, unsupported

# PIL format -> file suffix for stored uploads
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The bytes of `file`; 413 when it holds more than `limit`."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"file {file.filename or ''!r} is larger than the {limit}-byte limit")
    return data


def check_image(data: bytes, max_pixels: int, name: str = "upload", max_aspect: float | None = None) -> str:
    """The PIL format of encoded image `data`, read from its header only; 415 when it is not
    an image, 413 when width x height exceeds `max_pixels` or the longer side is more than
    `max_aspect` times the shorter (before anything is decoded)."""
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
    try:
        check_dimensions(width, height, max_pixels=max_pixels, max_aspect=max_aspect, name=name)
    except ImageTooLargeError as exc:
        raise too_large(str(exc)) from None
    except ImageDecodeError as exc:
        raise unsupported(str(exc)) from None
    return fmt


def write_upload(path: Path, data: bytes) -> None:
    """Store `data` durably at `path` (a name unique to one request): written to ``<name>.tmp``,
    fsync'd, renamed, the directory fsync'd. Raises the OSError of any step, and then leaves
    neither the temp file nor `path` behind."""
    folder = path.parent
    tmp = path.with_name(path.name + ".tmp")
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_path(folder.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_path(folder)
    except BaseException:
        for leftover in (tmp, path):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        raise
