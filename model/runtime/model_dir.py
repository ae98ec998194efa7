"""An exported model directory: its files, model.json (`ModelInfo`) and their checksums.

A model directory holds image.onnx, text.onnx, model.json and, for MiniLM text,
tokenizer.json. Reading verifies every file against the sha256 recorded in model.json, so a
tampered or half-replaced directory is refused instead of silently giving other codes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from model.runtime.errors import UserError

FORMAT_VERSION = 1
INFO_FILE = "model.json"
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
OUTPUT_NAME = "h"  # the one output of both graphs: B x bits continuous representations


class ModelDirError(UserError):
    """A model directory that is incomplete, altered after export, or of another format version."""


class TokenizerSettings(BaseModel):
    """How the runtime tokenises text for the MiniLM graph (as MiniLMTextEmbedder does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str  # tokenizer file in the model directory (Hugging Face `tokenizers` JSON)
    sha256: str  # sha256 of that file
    max_length: int  # tokens kept per text, [CLS] and [SEP] included (MiniLM max_seq_length)
    pad_id: int  # id of the padding token
    pad_token: str  # the padding token


class ImageInput(BaseModel):
    """What image.onnx reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pixels", "features"]  # pixels through the backbone, or given feature vectors
    dim: int  # width of the vector the image head reads (the backbone output for pixels)
    preprocess: dict[str, int] | None = None  # ImagePreprocess.to_json() (pixels only)
    backbone: str | None = None  # backbone inside image.onnx, e.g. "efficientnet-lite0" (pixels only)


class TextInput(BaseModel):
    """What text.onnx reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bow", "minilm", "features"]  # bag of words made on the host, MiniLM tokens, or vectors
    dim: int  # width of the vector the text head reads (V, 384 or the feature width)
    bag_of_words: dict[str, Any] | None = None  # BagOfWords.to_json() (bow only)
    tokenizer: TokenizerSettings | None = None  # tokenisation (minilm only)


class SourceRun(BaseModel):
    """The training run a model was exported from (provenance; not part of the checksum)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # the run directory, resolved
    config: dict[str, Any]  # its TrainConfig as JSON


class ModelInfo(BaseModel):
    """model.json: everything needed to serve an exported model and to identify it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int  # layout of the model directory; the runtime refuses other versions
    method: str  # hashing method that trained it (bi_ncmh, dcmh, djsrh, cca_itq)
    bits: int  # code length L
    image: ImageInput  # image graph input and preprocessing
    text: TextInput  # text graph input and vocabulary or tokenizer
    source: SourceRun  # the exported run
    opset: int  # ONNX (ai.onnx) opset of both graphs
    image_onnx_sha256: str  # sha256 of image.onnx
    text_onnx_sha256: str  # sha256 of text.onnx
    checksum: str  # sha256 identifying the model: both graphs and every input setting

    def expected_checksum(self) -> str:
        """The checksum these fields imply (codes from models with equal checksums are comparable)."""
        return model_checksum(self.bits, self.image, self.text, self.image_onnx_sha256, self.text_onnx_sha256)


def model_checksum(bits: int, image: ImageInput, text: TextInput, image_sha256: str, text_sha256: str) -> str:
    """sha256 over the graphs' sha256s and the preprocessing, vocabulary and tokenizer settings
    (not the source path, so re-exporting the same weights gives the same checksum)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "bits": bits,
        "image_onnx_sha256": image_sha256,
        "text_onnx_sha256": text_sha256,
        "image": image.model_dump(mode="json"),
        "text": text.model_dump(mode="json"),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def read_verified(model_dir: Path, name: str, sha256: str) -> bytes:
    """The bytes of `name`, refused unless they hash to `sha256` (read once: no check-then-use gap)."""
    path = model_dir / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from exc
    actual = sha256_bytes(data)
    if actual != sha256:
        raise _mismatch(model_dir, path, actual, sha256)
    return data


def _mismatch(model_dir: Path, path: Path, actual: str, sha256: str) -> ModelDirError:
    return ModelDirError(
        f"{path} does not match {model_dir / INFO_FILE} (sha256 {actual[:16]}..., expected "
        f"{sha256[:16]}...): the directory was modified after export; export it again"
    )


def _fd_sha256(fd: int) -> str:
    """sha256 of the whole file behind `fd`, read in chunks (never all in memory)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


@contextmanager
def opened_verified(model_dir: Path, name: str, sha256: str) -> Iterator[str | bytes]:
    """A source for ONNX Runtime of `name`, refused unless it hashes to `sha256`: the path of an
    open descriptor (/proc/self/fd/N) to the very file that was hashed, so the runtime reads it
    itself without a copy in this process (about half the resident memory of passing bytes)
    and a file replaced meanwhile cannot slip in; hashed again on exit, so a file rewritten in
    place while it loaded is refused too. Without /proc, the verified bytes."""
    path = model_dir / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from exc
    try:
        actual = _fd_sha256(fd)
        if actual != sha256:
            raise _mismatch(model_dir, path, actual, sha256)
        by_fd = Path(f"/proc/self/fd/{fd}")
        yield str(by_fd) if by_fd.exists() else read_verified(model_dir, name, sha256)
        actual = _fd_sha256(fd)
        if actual != sha256:
            raise _mismatch(model_dir, path, actual, sha256)
    finally:
        os.close(fd)


def read_model_info(model_dir: Path) -> ModelInfo:
    """model.json of `model_dir`, validated, of this format version and self-consistent."""
    path = Path(model_dir) / INFO_FILE
    try:
        info = ModelInfo.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ModelDirError(f"{model_dir} is not a model directory: cannot read {path}: {exc}") from exc
    except ValidationError as exc:
        raise ModelDirError(f"{path} is not a valid model description: {exc}") from exc
    if info.format_version != FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {info.format_version}; this code reads {FORMAT_VERSION}")
    if info.checksum != info.expected_checksum():
        raise ModelDirError(f"{path} was edited after export: its checksum does not match its contents")
    return info
