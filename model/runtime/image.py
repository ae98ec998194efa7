"""The one image preprocessing shared by training, serving and ONNX export, so they cannot drift:
decode (RGB, EXIF orientation, strict truncation check), resize the shorter side, centre crop and
scale to [-1, 1] as EfficientNet-Lite expects. `load_for_model` is the bounded path from an encoded
image to the model input: size and aspect ratio checked from the header, JPEG decoded at reduced
scale (draft) and other formats reduced by the same scale, so decoding costs bounded memory and
time whatever the image's shape."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from model.runtime.errors import UserError

# ImageFile.LOAD_TRUNCATED_IMAGES is process-wide; pixel decoding forces it off under this lock.
_STRICT_DECODE = threading.Lock()


# Default bound on longer side / shorter side in `load_for_model` (the service passes its own, stricter
# setting): resizing the shorter side to `resize` makes an image of resize^2 * aspect pixels, so a
# thin strip (1 x 39,000,000) would otherwise need terabytes (or overflow) before the crop.
MAX_ASPECT = 100.0
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SCALES = (8, 4, 2)  # the reduced scales (1/8, 1/4, 1/2) of JPEG's DCT decoding, used for every format


class ImageDecodeError(UserError, ValueError):
    """An input that is not a complete, decodable image; the message names the source.
    (Also a ValueError, which callers such as the indexing pipeline catch.)"""


class ImageTooLargeError(ImageDecodeError):
    """An image over a size limit (pixels, aspect ratio or decoded size), refused from its header
    before its pixels are decoded; the message names the source and the limit."""


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side to `resize`, centre crop `size` x `size`, scale to [-1, 1].

    `resize` defaults to round(size / 0.875) (the usual 87.5% centre crop) and is resolved at
    construction, so equal settings compare, hash and serialise identically."""

    size: int = 224
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.resize is None:
            object.__setattr__(self, "resize", round(self.size / 0.875))
        elif self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")

    def to_json(self) -> dict[str, int]:
        """JSON-ready dict, e.g. to store beside a checkpoint or an exported model."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImagePreprocess:
        """Inverse of `to_json`; unknown keys are rejected rather than silently ignored."""
        unknown = set(data) - {"size", "resize"}
        if unknown:
            raise ValueError(f"unknown ImagePreprocess keys: {sorted(unknown)}")
        return cls(**data)


def _describe(source: Path | bytes | Image.Image) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes in memory>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return str(source)


def load_image(source: Path | bytes | Image.Image) -> Image.Image:
    """Fully decode an image to RGB with its EXIF orientation applied.

    Raises ImageDecodeError naming the source for unreadable, truncated or non-image content
    (truncation is never silently padded, whatever ImageFile.LOAD_TRUNCATED_IMAGES says);
    a missing or unreadable *path* raises the usual OSError."""
    name = _describe(source)
    if isinstance(source, (str, Path)):
        source = Path(source).read_bytes()
    try:
        img = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
        _strict_load(img)
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA")
        return img.convert("RGB")
    except Exception as e:
        raise ImageDecodeError(f"cannot decode image {name}: {e}") from e


def to_array(img: Image.Image, pre: ImagePreprocess) -> np.ndarray:
    """3 x size x size float32 in [-1, 1] (numpy, so an onnxruntime server needs no torch).

    The shorter side is resized to `pre.resize` with PIL bilinear (antialiased when shrinking),
    then the centre `pre.size` square is cropped and (x / 255) * 2 - 1 applied."""
    img = img.convert("RGB")
    w, h = img.size
    resize = _resize(pre)
    scale = resize / min(w, h)
    new_w, new_h = max(resize, round(w * scale)), max(resize, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - pre.size) / 2), round((new_h - pre.size) / 2)
    img = img.crop((left, top, left + pre.size, top + pre.size))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray((x / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0))


def check_dimensions(
    width: int, height: int, *, max_pixels: int | None = None, max_aspect: float | None = None, name: str = "image"
) -> None:
    """Raise ImageTooLargeError when a width x height (read from a header) is over `max_pixels` or
    its longer side is more than `max_aspect` times its shorter side; ImageDecodeError when it has
    no pixels. None: that limit is off."""
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name} is {width}x{height} pixels: no pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"{name} is {width}x{height} pixels, more than the {max_pixels}-pixel limit")
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        ratio = max(width, height) / min(width, height)
        raise ImageTooLargeError(
            f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.4g}:1, "
            f"more than the {max_aspect:g}:1 aspect-ratio limit"
        )


def reduced_scale(width: int, height: int, pre: ImagePreprocess) -> int:
    """The largest of 8, 4, 2 (else 1) that leaves the shorter side at least `pre.resize` after
    dividing both sides by it: the scale JPEG draft mode decodes at, and the `Image.reduce`
    factor applied to other formats, so every format takes the same path."""
    room = min(width, height) // _resize(pre)  # the rule of PIL's JpegImageFile.draft
    return next((s for s in _SCALES if room >= s), 1)


def load_for_model(
    source: Path | bytes | Image.Image,
    pre: ImagePreprocess,
    *,
    max_pixels: int | None = None,
    max_aspect: float | None = MAX_ASPECT,
    max_decoded_pixels: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """The 3 x size x size model input of an image, in bounded memory and time whatever its shape.

    The header's width x height is checked against `max_pixels` and `max_aspect` before anything
    is decoded (ImageTooLargeError). A JPEG is then decoded at reduced scale (draft mode: 1/2, 1/4
    or 1/8 from the DCT, the largest keeping the shorter side >= pre.resize), and the size to be
    decoded is checked against `max_decoded_pixels`. Decoding is strict as in `load_image`;
    other formats are reduced (`Image.reduce`, box average) by the same scale after decoding;
    the EXIF orientation is applied to the reduced image and `to_array` does the rest.

    Images whose shorter side is under 2 * pre.resize take exactly the path of
    `to_array(load_image(source), pre)`; larger ones differ from it only by the reduction before
    the bilinear resize (deterministic, identical wherever this function is used)."""
    name = name or _describe(source)
    if isinstance(source, (str, Path)):
        source = Path(source).read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from e
    except Exception as e:
        raise ImageDecodeError(f"cannot decode image {name}: {e}") from e
    check_dimensions(*img.size, max_pixels=max_pixels, max_aspect=max_aspect, name=name)
    scale = reduced_scale(*img.size, pre)
    try:
        # JPEG only (None for other formats): decode at 1/scale from the DCT coefficients
        drafted = scale > 1 and img.draft("RGB", (_resize(pre), _resize(pre))) is not None
        width, height = img.size
        if max_decoded_pixels is not None and width * height > max_decoded_pixels:
            raise ImageTooLargeError(
                f"{name} decodes to {width}x{height} pixels, more than the {max_decoded_pixels}-pixel decoding limit"
            )
        _strict_load(img)
        orientation = img.getexif().get(0x0112, 1)
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode != "RGB":
            img = img.convert("RGB")
        if scale > 1 and not drafted:
            img = img.reduce(scale)
        method = _ORIENTATION.get(orientation)
        if method is not None:
            img = img.transpose(method)
    except ImageDecodeError:
        raise
    except Exception as e:
        raise ImageDecodeError(f"cannot decode image {name}: {e}") from e
    return to_array(img, pre)


def _resize(pre: ImagePreprocess) -> int:
    assert pre.resize is not None  # resolved in ImagePreprocess.__post_init__
    return pre.resize


def _strict_load(img: Image.Image) -> None:
    """Decode `img`'s pixels; a truncated file raises whatever ImageFile.LOAD_TRUNCATED_IMAGES says."""
    with _STRICT_DECODE:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
