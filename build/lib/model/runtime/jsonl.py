"""JSONL input files (training manifests, gallery listings), read one way everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.runtime.errors import DataError


def read_jsonl(path: Path, what: str = "manifest") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file; an unreadable file, a
    malformed line or a line that is not an object is a DataError naming the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
        if not isinstance(item, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(item).__name__}")
        out.append((lineno, item))
    return out
