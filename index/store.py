"""The one interface every code store backend implements (FAISS embedded, Milvus server).

Codes are packed bits: ``n x bits/8`` uint8 (see :mod:`model.runtime.codes`). Ids are strings chosen
by the user. Results are ordered by (Hamming distance, insertion order), so every backend
returns exactly the same ranking for the same data, ties included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

MilvusIndexType = Literal["BIN_FLAT", "BIN_IVF_FLAT"]  # Milvus binary indexes: exact scan, or inverted lists
SearchResult = tuple[list[list[str]], np.ndarray]  # ids per query, nq x k int64 distances
RangeResult = list[tuple[list[str], np.ndarray]]  # per query: ids and int64 distances


@runtime_checkable
class CodeStore(Protocol):
    """A mutable set of (id, packed code, metadata) items with exact Hamming search."""

    bits: int  # code length L; every code is L/8 bytes
    backend: str  # "faiss" or "milvus": recorded in a gallery's gallery.json

    def add(
        self, ids: Sequence[str], codes: np.ndarray, metadata: Sequence[dict[str, Any] | None] | None = None
    ) -> None:
        """Add items; a duplicate id (in the call or already stored) raises ValueError and adds nothing."""

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""

    def search(self, codes: np.ndarray, k: int) -> SearchResult:
        """The min(k, len) nearest items per query, by (distance, insertion order)."""

    def range_search(self, codes: np.ndarray, radius: int) -> RangeResult:
        """Every item with Hamming distance <= radius (inclusive) per query, same order."""

    def get(self, id: str) -> dict[str, Any] | None:
        """``{"id", "code", "metadata"}`` of one item, or None when absent."""

    def ids(self) -> list[str]:
        """All ids in insertion order."""

    def __len__(self) -> int: ...

    def __contains__(self, item: object) -> bool: ...

    def save(self, path: Path | str) -> None:
        """Persist crash-safely to directory `path`."""
