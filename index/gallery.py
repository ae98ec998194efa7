"""A gallery: a code store bound to the model that made its codes.

A gallery directory holds ``gallery.json`` (what kind of items, how many bits, which backend,
the checksum of the model the codes came from) beside the backend's own files (FAISS
snapshots, or the Milvus connection sidecar). Opening a gallery with a different model is
refused: codes of two models live in unrelated Hamming spaces, so mixing them would return
confident nonsense.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from index.faiss_store import FaissCodeStore
from index.snapshots import write_atomic
from index.store import CodeStore
from model.runtime.choices import Device, Modality

GALLERY_FILE = "gallery.json"
GALLERY_FORMAT = 1

Backend = Literal["faiss", "milvus"]


class GalleryMismatchError(ValueError):
    """The gallery was built with another model (or code length) than the one offered."""


class GalleryInfo(BaseModel):
    """The ``gallery.json`` sidecar: fixed when the gallery is created."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = GALLERY_FORMAT  # layout version of this file
    kind: Modality  # modality of the items: image or text
    bits: int = Field(ge=8)  # code length L
    backend: Backend = "faiss"  # where the codes live
    model_checksum: str  # checksum of the exported model whose encoder made the codes
    model_method: str | None = None  # hashing method of that model, for messages
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))  # UTC


class Gallery:
    """A code store plus its ``gallery.json``; `save` persists the store crash-safely."""

    def __init__(self, path: Path, info: GalleryInfo, store: CodeStore) -> None:
        self.path = Path(path)
        self.info = info
        self.store = store

    @classmethod
    def create(cls, path: Path, info: GalleryInfo, store: CodeStore | None = None, device: Device = "cpu") -> Gallery:
        """A new, empty gallery at `path` (refused when one exists there); FAISS by default."""
        path = Path(path)
        if (path / GALLERY_FILE).exists():
            raise FileExistsError(f"{path} already holds a gallery")
        if store is None:
            if info.backend != "faiss":
                raise ValueError(f"a {info.backend} gallery needs its store passed in")
            store = FaissCodeStore(info.bits, device)
        if store.bits != info.bits:
            raise ValueError(f"store has {store.bits} bits, gallery info says {info.bits}")
        path.mkdir(parents=True, exist_ok=True)
        gallery = cls(path, info, store)
        gallery.save()
        write_atomic(path / GALLERY_FILE, info.model_dump_json(indent=2) + "\n")
        return gallery

    @classmethod
    def open(cls, path: Path, *, model_checksum: str | None = None, bits: int | None = None,
             kind: Modality | None = None, device: Device = "cpu", token: str | None = None) -> Gallery:
        """Load the gallery at `path`; with `model_checksum` / `bits` / `kind` given, refuse a
        gallery built otherwise (GalleryMismatchError naming both sides and the fix).
        `device` places a FAISS store's k-NN; `token` authenticates to a Milvus server."""
        path = Path(path)
        info = read_info(path)
        check_compatible(path, info, model_checksum=model_checksum, bits=bits, kind=kind)
        if info.backend == "faiss":
            store: CodeStore = FaissCodeStore.load(path, device)
        else:
            from index.milvus_store import MilvusCodeStore

            store = MilvusCodeStore.load(path, token=token)
        if store.bits != info.bits:
            raise ValueError(f"{path}: store has {store.bits} bits but {GALLERY_FILE} says {info.bits}")
        return cls(path, info, store)

    def save(self) -> None:
        """Persist the store's current contents (crash-safe)."""
        self.store.save(self.path)


class ModelIdentity(Protocol):
    """What a gallery records of the model whose codes it holds (model.runtime.encoder.Encoder has it)."""

    bits: int
    checksum: str

    @property
    def info(self) -> Any: ...  # has `.method`


def open_or_create(path: Path, kind: Modality, model: ModelIdentity, *, device: Device = "cpu",
                   token: str | None = None, new_store: Callable[[], CodeStore] | None = None) -> Gallery:
    """The gallery at `path`, refused unless it holds `kind` codes of `model`; or, when there is
    none yet, a new empty one bound to `model` (FAISS on `device`, or the store `new_store` makes)."""
    path = Path(path)
    if (path / GALLERY_FILE).is_file():
        return Gallery.open(path, model_checksum=model.checksum, bits=model.bits, kind=kind, device=device, token=token)
    store = new_store() if new_store is not None else None
    info = GalleryInfo(kind=kind, bits=model.bits, backend=store.backend if store is not None else "faiss",  # type: ignore[arg-type]
                       model_checksum=model.checksum, model_method=model.info.method)
    return Gallery.create(path, info, store, device=device)


def read_info(path: Path) -> GalleryInfo:
    """The gallery.json of `path`, with a clear error when there is none."""
    file = Path(path) / GALLERY_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a gallery (no {GALLERY_FILE}); build one with `cmhash index`")
    return GalleryInfo.model_validate(json.loads(file.read_text(encoding="utf-8")))


def check_compatible(path: Path, info: GalleryInfo, *, model_checksum: str | None = None,
                     bits: int | None = None, kind: Modality | None = None) -> None:
    """Raise GalleryMismatchError when the gallery was not built for this model and kind."""
    if kind is not None and info.kind != kind:
        raise GalleryMismatchError(f"{path} is a {info.kind} gallery, not a {kind} gallery")
    if bits is not None and info.bits != bits:
        raise GalleryMismatchError(f"{path} holds {info.bits}-bit codes but the model makes {bits}-bit codes")
    if model_checksum is not None and info.model_checksum != model_checksum:
        raise GalleryMismatchError(
            f"{path} was built with model {info.model_checksum[:12]} ({info.model_method or 'unknown method'}, "
            f"{info.bits} bits), not with the loaded model {model_checksum[:12]}; codes of different models "
            f"are not comparable: rebuild it with `cmhash index --rebuild`"
        )
