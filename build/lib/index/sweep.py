"""Startup sweep: leftovers of interrupted writes that nothing will ever read.

* In a gallery directory: ``*.tmp`` files (a ``write_atomic`` cut short: ``CURRENT.tmp``,
  ``gallery.json.tmp``, ``journal.compacting.tmp``), ``snapshot-*.tmp`` folders (a save cut
  short) and damaged or superseded snapshots that retention does not keep
  (:func:`index.snapshots.prune`: the snapshot CURRENT names and its chain back to the
  previous valid one are never touched).
* In the upload directory: stored uploads that no live image item references (an upload whose
  add failed after the file was written, or a delete that crashed before unlinking) and
  their ``*.tmp`` halves. Only names of the upload pattern (``<24 hex>-<12 hex><suffix>``,
  see ``service/routers/gallery.py``) are considered, so a misconfigured upload directory
  shared with other files loses nothing else.

Run it only while no writer is active (the service runs it inside its load, before it is
ready), and sweep uploads only when the image gallery opened: a gallery that failed to open
says nothing about which files are live.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from index.snapshots import prune

UPLOAD_NAME = re.compile(r"^[0-9a-f]{24}-[0-9a-f]{12}(\.[A-Za-z0-9]{1,8})?(\.tmp)?$")


def sweep_gallery_dir(path: Path) -> list[str]:
    """Remove ``*.tmp`` files and snapshots retention drops from gallery directory `path`;
    returns the names removed."""
    path = Path(path)
    if not path.is_dir():
        return []
    removed = []
    for child in sorted(path.iterdir()):
        if child.name.endswith(".tmp") and child.is_file() and not child.is_symlink():
            child.unlink(missing_ok=True)
            removed.append(child.name)
    if any(c.name.startswith("snapshot-") for c in path.iterdir()):
        removed.extend(prune(path))
    return removed


def sweep_uploads(folder: Path, live: Iterable[str]) -> list[str]:
    """Remove upload files in `folder` whose name is not in `live` (the file names that live
    image items reference; a ``.tmp`` half is always removed); returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = set(live)
    removed = []
    for child in sorted(folder.iterdir()):
        if not UPLOAD_NAME.match(child.name) or not child.is_file() or child.is_symlink():
            continue
        if child.name.endswith(".tmp") or child.name not in keep:
            child.unlink(missing_ok=True)
            removed.append(child.name)
    return removed
