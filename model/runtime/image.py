"""The one image preprocessing shared by training, serving and ONNX export, so they cannot drift:
decode (RGB, EXIF orientation, strict truncation check), resize the shorter side, centre crop and
scale to [-1, 1] as EfficientNet-Lite expects."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

# ImageFile.LOAD_TRUNCATED_IMAGES is process-wide; pixel decoding forces it off under this lock.
_STRICT_DECODE = threading.Lock()


class ImageDecodeError(ValueError):
    """An input that is not a complete, decodable image; the message names the source."""


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
        with _STRICT_DECODE:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
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
    scale = pre.resize / min(w, h)
    new_w, new_h = max(pre.resize, round(w * scale)), max(pre.resize, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - pre.size) / 2), round((new_h - pre.size) / 2)
    img = img.crop((left, top, left + pre.size, top + pre.size))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray((x / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0))
