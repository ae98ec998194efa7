"""Serving-side encoders: an exported model directory (`model.runtime.model_dir`) run with
ONNX Runtime. Codes are packed as in `model.runtime.codes` (h >= 0 -> bit 1, the
sgn(0) = +1 convention of training)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from model.runtime.choices import Device
from model.runtime.codes import pack_codes
from model.runtime.errors import UserError
from model.runtime.image import MAX_ASPECT, ImagePreprocess, load_for_model
from model.runtime.installs import check_exclusive_installs
from model.runtime.model_dir import (
    IMAGE_FILE,
    INFO_FILE,
    OUTPUT_NAME,
    TEXT_FILE,
    ModelDirError,
    ModelInfo,
    TokenizerSettings,
    opened_verified,
    read_model_info,
    read_verified,
)
from model.runtime.text import BagOfWords, tokenize

ImageSource = Image.Image | bytes | Path
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# CUDA provider options: pick convolution algorithms by heuristic instead of benchmarking every
# algorithm on each new batch shape (EXHAUSTIVE re-runs that search per shape), and grow the
# memory arena by what is asked for, not by powers of two.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
log = logging.getLogger("cmhash.runtime")


def resolve_providers(device: Device) -> list[str]:
    """ONNX Runtime providers for `device`: CUDA (CPU as fallback for unsupported nodes) when
    asked for or, with "auto", when this onnxruntime build has it; else the CPU."""
    check_exclusive_installs("onnxruntime")
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise UserError(
            f"device='cuda' was asked for but this onnxruntime has no {CUDA_PROVIDER} "
            f"(available: {available}); install the cmhash[gpu] extra (onnxruntime-gpu) or use device='cpu'"
        )
    if device == "cuda" or (device == "auto" and CUDA_PROVIDER in available):
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def check_providers(device: Device, requested: list[str], actual: list[list[str]]) -> None:
    """ONNX Runtime falls back to the CPU with only a log line when the CUDA provider cannot load
    (missing CUDA or cuDNN libraries): refuse that for device "cuda", say it loudly for "auto"."""
    if CUDA_PROVIDER not in requested or all(CUDA_PROVIDER in session for session in actual):
        return
    message = (
        f"the CUDA provider of onnxruntime could not be loaded (sessions run on {actual[0]}); "
        "CUDA and cuDNN libraries matching onnxruntime-gpu are missing (see onnxruntime's CUDA requirements)"
    )
    if device == "cuda":
        raise UserError(message + "; use device='cpu' to run on the CPU")
    log.warning("%s: running on the CPU", message)


class Encoder:
    """Image and text encoders of an exported model on ONNX Runtime: inputs -> B x bits
    representations h, and packed codes (h >= 0). Large inputs run in chunks of `batch_size`
    items so memory stays bounded. Thread-safe: `preprocess_image` touches no session, and
    ONNX Runtime sessions may be run concurrently."""

    def __init__(
        self,
        info: ModelInfo,
        image_session: ort.InferenceSession,
        text_session: ort.InferenceSession,
        tokenizer: Any | None,
        batch_size: int,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._info = info
        self._image = image_session
        self._text = text_session
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self._preprocess = ImagePreprocess.from_json(info.image.preprocess) if info.image.preprocess else None
        bow = info.text.bag_of_words
        self._bag_of_words = BagOfWords.from_json(bow) if bow is not None else None

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        device: Device = "auto",
        threads: int | None = None,
        batch_size: int = 64,
        spinning: bool = True,
    ) -> Encoder:
        """Open `model_dir` (written by `model.training.export.export_run`) after checking every file's
        sha256 against model.json. `threads`: ONNX Runtime intra-op threads (None: its default).
        `spinning`: let idle intra-op threads busy-wait for the next run (ONNX Runtime's default;
        a server sharing its cores with other work turns it off)."""
        model_dir = Path(model_dir)
        providers = resolve_providers(device)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be positive, got {threads}")
        info = read_model_info(model_dir)
        tokenizer = None
        if info.text.kind == "minilm":
            settings = info.text.tokenizer
            if settings is None or Path(settings.file).name != settings.file:
                raise ModelDirError(f"{model_dir / INFO_FILE}: minilm text needs a tokenizer file in the directory")
            tokenizer = _load_tokenizer(read_verified(model_dir, settings.file, settings.sha256), settings)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if CUDA_PROVIDER in providers and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu ships no CUDA libraries: load them from the nvidia-* wheels or the
            # system before the session looks for them (without torch having loaded them first).
            ort.preload_dlls()
        requested: list[Any] = [(p, CUDA_OPTIONS) if p == CUDA_PROVIDER else p for p in providers]
        sessions = []
        for name, sha256 in ((IMAGE_FILE, info.image_onnx_sha256), (TEXT_FILE, info.text_onnx_sha256)):
            with opened_verified(model_dir, name, sha256) as source:
                try:
                    sessions.append(ort.InferenceSession(source, sess_options=options, providers=requested))
                except Exception as exc:  # onnxruntime raises its own exception types
                    raise ModelDirError(f"onnxruntime cannot load {model_dir / name}: {exc}") from exc
        check_providers(device, providers, [s.get_providers() for s in sessions])
        return cls(info, sessions[0], sessions[1], tokenizer, batch_size)

    @property
    def info(self) -> ModelInfo:
        """The model description (model.json)."""
        return self._info

    @property
    def bits(self) -> int:
        """Code length L."""
        return self._info.bits

    @property
    def checksum(self) -> str:
        """sha256 identifying the model: codes are comparable only between equal checksums."""
        return self._info.checksum

    @property
    def device(self) -> str:
        """Where the encoder runs: "cuda" when its sessions run on the CUDA provider, else "cpu"."""
        return "cuda" if CUDA_PROVIDER in self.providers else "cpu"

    @property
    def providers(self) -> list[str]:
        """Execution providers of the sessions, in priority order."""
        return list(self._image.get_providers())

    @property
    def code_bytes(self) -> int:
        """Bytes per packed code (bits / 8)."""
        return self.bits // 8

    # images -------------------------------------------------------------------------------

    def preprocess_image(
        self,
        source: ImageSource,
        *,
        max_pixels: int | None = None,
        max_aspect: float | None = MAX_ASPECT,
        max_decoded_pixels: int | None = None,
        name: str | None = None,
    ) -> np.ndarray:
        """3 x S x S float32 input of one image (decoded, resized, cropped, scaled to [-1, 1]) by
        `model.runtime.image.load_for_model`: size and aspect limits checked from the header, JPEG
        decoded at reduced scale. Raises model.runtime.image.ImageDecodeError for undecodable
        input, its subclass ImageTooLargeError for one over a limit. Thread-safe."""
        return load_for_model(
            source,
            self._pixel_preprocess(),
            max_pixels=max_pixels,
            max_aspect=max_aspect,
            max_decoded_pixels=max_decoded_pixels,
            name=name,
        )

    def image_representations(self, arrays: np.ndarray) -> np.ndarray:
        """B x bits float32 h of image inputs: B x 3 x S x S pixels (pixels models) or B x d
        feature vectors (features models)."""
        x = self._as_batch(arrays, self._image_input_shape(), "image input")
        return self._run_chunks(self._image, len(x), lambda rows: {self._info.image.kind: x[rows]})

    def encode_image_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """B x bits/8 packed uint8 codes of preprocessed pixel arrays (B x 3 x S x S)."""
        self._pixel_preprocess()
        return self.pack(self.image_representations(arrays))

    def encode_images(self, images: Sequence[ImageSource]) -> np.ndarray:
        """B x bits/8 packed uint8 codes of images (PIL images, encoded bytes or paths),
        decoded one chunk at a time."""
        self._pixel_preprocess()
        out = np.empty((len(images), self.code_bytes), dtype=np.uint8)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            arrays = np.stack([self.preprocess_image(s) for s in chunk])
            out[start : start + len(chunk)] = self.encode_image_arrays(arrays)
        return out

    def encode_image_features(self, x: np.ndarray) -> np.ndarray:
        """B x bits/8 packed uint8 codes of image feature vectors (B x d; features models only)."""
        if self._info.image.kind != "features":
            raise UserError("this model reads image pixels, not feature vectors: use encode_images")
        return self.pack(self.image_representations(x))

    # texts --------------------------------------------------------------------------------

    def text_representations(self, texts: Sequence[str]) -> np.ndarray:
        """B x bits float32 h of raw texts (bag of words or MiniLM tokens, made here)."""
        texts = self._check_texts(texts)
        kind = self._info.text.kind
        if kind == "bow":
            assert self._bag_of_words is not None
            bow = self._bag_of_words
            return self._run_chunks(
                self._text, len(texts), lambda rows: {"features": bow.transform([texts[i] for i in rows])}
            )
        if kind == "minilm":
            order = np.array(sorted(range(len(texts)), key=lambda i: len(texts[i])), dtype=np.int64)
            return self._run_chunks(self._text, len(texts), lambda rows: self._tokens([texts[i] for i in rows]), order)
        raise UserError(
            "this model reads text feature vectors (it was trained without a vocabulary or tokenizer, "
            "e.g. on Wikipedia LDA topics): raw texts cannot be encoded; use encode_text_features"
        )

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` a bag-of-words model cannot see (outside its vocabulary); [] for
        subword (MiniLM) models, which read every word."""
        return self._bag_of_words.unknown_words(text) if self._bag_of_words is not None else []

    def reads_words(self, text: str) -> bool:
        """Whether the encoder sees anything of `text`: False for a bag-of-words model when no
        word of it is in the vocabulary (its code would say nothing about the text)."""
        if self._bag_of_words is None:
            return True
        return bool(tokenize(text)) and len(self.unknown_words(text)) < len(set(tokenize(text)))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """B x bits/8 packed uint8 codes of raw texts."""
        return self.pack(self.text_representations(texts))

    def text_feature_representations(self, x: np.ndarray) -> np.ndarray:
        """B x bits float32 h of text feature vectors (features models, or bag-of-words vectors
        of a bow model)."""
        if self._info.text.kind == "minilm":
            raise UserError("this model reads MiniLM tokens, not text feature vectors: use encode_texts")
        x = self._as_batch(x, (self._info.text.dim,), "text features")
        return self._run_chunks(self._text, len(x), lambda rows: {"features": x[rows]})

    def encode_text_features(self, x: np.ndarray) -> np.ndarray:
        """B x bits/8 packed uint8 codes of text feature vectors (B x d)."""
        return self.pack(self.text_feature_representations(x))

    # helpers ------------------------------------------------------------------------------

    def pack(self, h: np.ndarray) -> np.ndarray:
        """Packed uint8 codes of representations: bit 1 where h >= 0 (sgn(0) = +1)."""
        return pack_codes(np.asarray(h).reshape(-1, self.bits) >= 0)

    def _pixel_preprocess(self) -> ImagePreprocess:
        if self._preprocess is None:
            raise UserError(
                "this model reads image feature vectors (it was trained on given features, e.g. "
                "Wikipedia SIFT), not pixels: use encode_image_features"
            )
        return self._preprocess

    def _image_input_shape(self) -> tuple[int, ...]:
        if self._preprocess is not None:
            return (3, self._preprocess.size, self._preprocess.size)
        return (self._info.image.dim,)

    @staticmethod
    def _as_batch(x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
        """`x` as a contiguous float32 batch of `shape` rows (an empty 1-D array: no rows)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape == (0,):
            x = x.reshape(0, *shape)
        if x.shape[1:] != shape or x.ndim != len(shape) + 1:
            raise ValueError(f"{what} must have shape (B, {', '.join(map(str, shape))}), got {x.shape}")
        return x

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> Sequence[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}")
        return texts

    def _tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self._tokenizer is not None  # loaded for minilm text, the only kind that tokenizes
        encodings = self._tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def _run_chunks(
        self,
        session: ort.InferenceSession,
        n: int,
        feeds: Callable[[np.ndarray], dict[str, np.ndarray]],
        order: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run `session` on rows `order` (default 0..n-1) in chunks of batch_size; rows of the
        result are in input order."""
        order = np.arange(n) if order is None else order
        out = np.empty((n, self.bits), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = session.run([OUTPUT_NAME], feeds(rows))[0]
        return out


def _load_tokenizer(data: bytes, settings: TokenizerSettings) -> Any:
    """A `tokenizers.Tokenizer` truncating to max_length and padding each batch to its longest text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    tokenizer.enable_truncation(max_length=settings.max_length)
    tokenizer.enable_padding(pad_id=settings.pad_id, pad_token=settings.pad_token)
    return tokenizer
