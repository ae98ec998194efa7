"""What a gallery is built from: the items of an image folder or manifest, or of a text file.

Ids are stable across runs so re-indexing adds only new items: an image's id is its path
relative to the folder, without the extension; a manifest or JSONL line gives its own id; a
plain text line's id is derived from its content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.runtime.errors import DataError
from model.runtime.jsonl import read_jsonl


@dataclass
class Item:
    """One gallery item to encode."""

    id: str  # external id
    source: Path | str  # the image file, or the text itself
    metadata: dict[str, Any] = field(default_factory=dict)  # stored beside the code


@dataclass
class Listing:
    """Items to index and input entries that cannot become items (with the reason)."""

    items: list[Item]  # unique ids, in input order
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (entry, reason)


def text_id(text: str) -> str:
    """Content-derived id of a text line: the same text always gets the same id."""
    return "t-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _dedupe(items: list[Item], rejected: list[tuple[str, str]]) -> Listing:
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.id in seen:
            rejected.append(
                (str(item.source) if isinstance(item.source, Path) else item.id, f"duplicate id {item.id!r}")
            )
            continue
        seen.add(item.id)
        unique.append(item)
    return Listing(unique, rejected)


def image_listing(source: Path) -> Listing:
    """Images of a folder (every regular file below it, hidden ones excluded: the encoder
    decides what is an image) or of a JSONL manifest with ``id`` and ``image`` per line
    (paths relative to the manifest; other fields become metadata)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
        items = [Item(p.relative_to(source).with_suffix("").as_posix(), p, {"path": str(p.resolve())}) for p in files]
        return _dedupe(items, [])
    if not source.is_file():
        raise DataError(f"{source}: no such folder or manifest")
    items, rejected = [], []
    for lineno, obj in read_jsonl(source, "JSONL file"):
        if not isinstance(obj.get("id"), str) or not obj["id"] or not isinstance(obj.get("image"), str):
            rejected.append((f"{source}:{lineno}", "needs a string 'id' and 'image'"))
            continue
        path = (source.parent / obj["image"]).resolve()
        extra = {k: v for k, v in obj.items() if k not in ("id", "image")}
        items.append(Item(obj["id"], path, {"path": str(path), **extra}))
    return _dedupe(items, rejected)


def text_listing(source: Path) -> Listing:
    """Texts of a ``.jsonl`` file (``id`` and ``text`` per line, other fields become metadata)
    or of a plain file with one text per line (ids from content; blank lines ignored)."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"{source}: no such text file")
    items, rejected = [], []
    if source.suffix == ".jsonl":
        for lineno, obj in read_jsonl(source, "JSONL file"):
            text, item_id = obj.get("text"), obj.get("id")
            if not isinstance(text, str) or not text.strip():
                rejected.append((f"{source}:{lineno}", "needs a non-empty string 'text'"))
                continue
            item_id = item_id if isinstance(item_id, str) and item_id else text_id(text)
            extra = {k: v for k, v in obj.items() if k not in ("id", "text")}
            items.append(Item(item_id, text, {"text": text, **extra}))
    else:
        for line in source.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                items.append(Item(text_id(text), text, {"text": text}))
    return _dedupe(items, rejected)
