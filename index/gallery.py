"""A gallery: a code store bound to the model that made its codes.

A gallery directory holds ``gallery.json`` (what kind of items, how many bits, which backend,
the checksum of the model the codes came from) beside the backend's own files (FAISS
snapshots, or the Milvus connection sidecar). Opening a gallery with a different model is
refused: codes of two models live in unrelated Hamming spaces, so mixing them would return
confident nonsense.

Damage: a FAISS gallery whose current snapshot is damaged (a truncated index or metadata
file, a bad ``CURRENT``) is opened from the newest valid snapshot before it, but only when
that provably loses nothing. A save made by journal compaction copies the journal it folds
in (every change since the snapshot it replaces) into the new snapshot as
``journal.folded.jsonl``, checksummed in its ``store.json``; on fallback the folded journals of
the skipped snapshots are replayed, oldest first, onto the older snapshot, so the store holds
exactly what the damaged one held and the live journal replays on top as usual. When a
skipped snapshot has no verifiable folded journal (a save outside compaction, or its
``store.json`` is damaged too) the gallery is refused with :class:`CorruptGalleryError`
rather than served with acknowledged changes missing. Every fallback is logged with
``logging.error`` and recorded in ``Gallery.fallback``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from index.faiss_store import FaissCodeStore
from index.mih import IndexType
from index.snapshots import STATE_FILE, CorruptSnapshotError, Fallback, current_name, sha256_file, write_atomic
from index.store import CodeStore
from model.runtime.choices import Device, Modality
from model.runtime.errors import UserError

GALLERY_FILE = "gallery.json"
GALLERY_FORMAT = 1
FOLDED_FILE = "journal.folded.jsonl"  # in a snapshot: the journal records compaction folded into it
_JOURNAL_FILE = "journal.jsonl"  # index.journal.JOURNAL_FILE (that module imports this one)
_MARKER_FILE = "journal.compacting"  # index.journal.MARKER_FILE

log = logging.getLogger("cmhash.gallery")

Backend = Literal["faiss", "milvus"]


class GalleryNotFoundError(UserError, FileNotFoundError):
    """A path that holds no gallery (no gallery.json)."""


class GalleryMismatchError(UserError):
    """The gallery was built with another model (or code length) than the one offered."""


class CorruptGalleryError(ValueError):
    """The gallery's stored data is damaged and cannot be opened without losing changes."""


class GalleryInfo(BaseModel):
    """The ``gallery.json`` sidecar: fixed when the gallery is created."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = GALLERY_FORMAT  # layout version of this file
    kind: Modality  # modality of the items: image or text
    bits: int = Field(ge=8)  # code length L
    backend: Backend = "faiss"  # where the codes live
    index: IndexType = "flat"  # FAISS search index: flat scan, or multi-index hashing (index/mih.py)
    model_checksum: str  # checksum of the exported model whose encoder made the codes
    model_method: str | None = None  # hashing method of that model, for messages
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))  # UTC


class Gallery:
    """A code store plus its ``gallery.json``; `save` persists the store crash-safely."""

    def __init__(self, path: Path, info: GalleryInfo, store: CodeStore) -> None:
        self.path = Path(path)
        self.info = info
        self.store = store
        self.fallback: Fallback | None = None  # set by open when it skipped a damaged snapshot or a bad CURRENT

    @classmethod
    def create(cls, path: Path, info: GalleryInfo, store: CodeStore | None = None, device: Device = "cpu") -> Gallery:
        """A new, empty gallery at `path` (refused when one exists there); FAISS by default."""
        path = Path(path)
        if (path / GALLERY_FILE).exists():
            raise FileExistsError(f"{path} already holds a gallery")
        if store is None:
            if info.backend != "faiss":
                raise ValueError(f"a {info.backend} gallery needs its store passed in")
            store = FaissCodeStore(info.bits, device, index=info.index)
        elif info.index != "flat" and getattr(store, "index_type", "flat") != info.index:
            raise ValueError(f"gallery info says index {info.index} but the store given has none")
        if store.bits != info.bits:
            raise ValueError(f"store has {store.bits} bits, gallery info says {info.bits}")
        path.mkdir(parents=True, exist_ok=True)
        gallery = cls(path, info, store)
        gallery.save()
        write_atomic(path / GALLERY_FILE, info.model_dump_json(indent=2) + "\n")
        return gallery

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        model_checksum: str | None = None,
        bits: int | None = None,
        kind: Modality | None = None,
        device: Device = "cpu",
        token: str | None = None,
    ) -> Gallery:
        """Load the gallery at `path`; with `model_checksum` / `bits` / `kind` given, refuse a
        gallery built otherwise (GalleryMismatchError naming both sides and the fix).
        `device` places a FAISS store's k-NN; `token` authenticates to a Milvus server."""
        path = Path(path)
        info = read_info(path)
        check_compatible(path, info, model_checksum=model_checksum, bits=bits, kind=kind)
        fallback: Fallback | None = None
        if info.backend == "faiss":
            try:
                faiss_store = FaissCodeStore.load(path, device, fallback=True, index=info.index)
            except CorruptSnapshotError as exc:
                raise CorruptGalleryError(f"{info.kind} gallery: {exc}") from None
            fallback = faiss_store.fallback
            if fallback is not None:
                _recover(path, faiss_store, fallback, info.kind)
            store: CodeStore = faiss_store
        else:
            from index.milvus_store import MilvusCodeStore

            store = MilvusCodeStore.load(path, token=token)
        if store.bits != info.bits:
            raise ValueError(f"{path}: store has {store.bits} bits but {GALLERY_FILE} says {info.bits}")
        gallery = cls(path, info, store)
        gallery.fallback = fallback
        return gallery

    def save(self) -> None:
        """Persist the store's current contents (crash-safe). During journal compaction the
        journal being folded in is copied into the snapshot (see the module doc)."""
        if isinstance(self.store, FaissCodeStore):
            self.store.save(self.path, extra=self._fold_journal)
        else:
            self.store.save(self.path)

    def _fold_journal(self, tmp: Path) -> dict[str, Any]:
        """Copy the journal into snapshot dir `tmp` when this save is a compaction (its marker
        names the snapshot CURRENT names), so that snapshot plus this copy rebuild the new one."""
        marker, journal = self.path / _MARKER_FILE, self.path / _JOURNAL_FILE
        if not marker.is_file() or not journal.is_file():
            return {}
        try:
            before = json.loads(marker.read_text(encoding="utf-8")).get("before")
        except (OSError, ValueError, AttributeError):
            return {}
        if before is None or before != current_name(self.path):
            return {}
        shutil.copyfile(journal, tmp / FOLDED_FILE)
        return {"folded": {"file": FOLDED_FILE, "base": before}}


def _records(data: bytes) -> list[dict[str, Any]]:
    """Journal records of a verified folded journal (a trailing part without newline left out)."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def _recover(path: Path, store: FaissCodeStore, fallback: Fallback, kind: str) -> None:
    """Bring `store`, loaded from an older snapshot, up to the snapshot CURRENT named by replaying
    the folded journals of the chain of skipped snapshots; CorruptGalleryError when a link is
    missing or unverifiable. Logs the fallback loudly either way."""
    if not fallback.skipped:  # a bad CURRENT, and the snapshot it should name was fine
        log.error("%s gallery: %s (CURRENT rewritten; no data lost)", kind, fallback.reason)
        return
    chain: list[tuple[str, bytes]] = []
    name: str | None = fallback.wanted
    while name is not None and name != fallback.used and len(chain) <= len(fallback.skipped):
        snap = path / name
        try:
            state = json.loads((snap / STATE_FILE).read_text(encoding="utf-8"))
            folded = state["folded"]
            data = (snap / folded["file"]).read_bytes()
            ok = (
                folded["base"] == state.get("previous")
                and folded["file"] in state["files"]
                and sha256_file(snap / folded["file"]) == state["files"][folded["file"]]
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            log.error(
                "%s gallery: %s; but the changes saved in %s cannot be recovered: refusing the gallery",
                kind,
                fallback.reason,
                name,
            )
            raise CorruptGalleryError(
                f"{kind} gallery: {fallback.reason}; the changes saved in {name} cannot be "
                "recovered (restore the gallery from a backup or rebuild it)"
            )
        chain.append((name, data))
        name = folded["base"]
    if name != fallback.used:
        raise CorruptGalleryError(
            f"{kind} gallery: {fallback.reason}; no chain of snapshots leads back to {fallback.used}"
        )
    for _, data in reversed(chain):
        for record in _records(data):
            if record["op"] == "add":
                code = np.frombuffer(bytes.fromhex(record["code"]), dtype=np.uint8)[None, :]
                store.remove([record["id"]])
                store.add([record["id"]], code, [record["metadata"]])
            else:
                store.remove([record["id"]])
    log.error(
        "%s gallery: %s; replayed the journals folded into %s: no data lost",
        kind,
        fallback.reason,
        ", ".join(n for n, _ in reversed(chain)),
    )


class ModelIdentity(Protocol):
    """What a gallery records of the model whose codes it holds (model.runtime.encoder.Encoder has it)."""

    bits: int
    checksum: str

    @property
    def info(self) -> Any: ...  # has `.method`


def open_or_create(
    path: Path,
    kind: Modality,
    model: ModelIdentity,
    *,
    device: Device = "cpu",
    token: str | None = None,
    new_store: Callable[[], CodeStore] | None = None,
    index: IndexType | None = None,
) -> Gallery:
    """The gallery at `path`, refused unless it holds `kind` codes of `model` (and, when `index`
    is given, uses that search index); or, when there is none yet, a new empty one bound to
    `model` (FAISS on `device` with search index `index`, flat by default, or the store
    `new_store` makes)."""
    path = Path(path)
    if (path / GALLERY_FILE).is_file():
        gallery = Gallery.open(
            path, model_checksum=model.checksum, bits=model.bits, kind=kind, device=device, token=token
        )
        if index is not None and gallery.info.index != index:
            raise GalleryMismatchError(
                f"{path} uses the {gallery.info.index} index, chosen when it was created; "
                f"to switch to {index}, rebuild it with `cmhash index --rebuild --index {index}`"
            )
        return gallery
    store = new_store() if new_store is not None else None
    info = GalleryInfo(
        kind=kind,
        bits=model.bits,
        backend=store.backend if store is not None else "faiss",
        model_checksum=model.checksum,
        model_method=model.info.method,
        index=index or "flat",
    )
    return Gallery.create(path, info, store, device=device)


def read_info(path: Path) -> GalleryInfo:
    """The gallery.json of `path`, with a clear error when there is none."""
    file = Path(path) / GALLERY_FILE
    if not file.is_file():
        raise GalleryNotFoundError(f"{path} is not a gallery (no {GALLERY_FILE}); build one with `cmhash index`")
    return GalleryInfo.model_validate(json.loads(file.read_text(encoding="utf-8")))


def check_compatible(
    path: Path,
    info: GalleryInfo,
    *,
    model_checksum: str | None = None,
    bits: int | None = None,
    kind: Modality | None = None,
) -> None:
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
