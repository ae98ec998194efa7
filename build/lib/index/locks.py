"""One writer process per gallery: an exclusive advisory lock on a file in the gallery folder.

Two processes appending to one journal (a second `cmhash serve` on the same volume, or
`cmhash index` while a server writes) would truncate each other's records. The lock is an
`flock` on `writer.lock`: the kernel drops it when its holder exits, even by kill -9, so a
crashed writer never leaves a stale lock behind. Within one process the lock is shared and
counted (the process is the one writer; the service holds one journal per gallery)."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from model.runtime.errors import UserError

LOCK_FILE = "writer.lock"
# (device, inode) of a locked gallery folder -> [descriptor holding the flock, holders in this process]
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_LOCK = threading.Lock()


class GalleryBusyError(UserError):
    """The gallery is open for writing by another process."""


class WriterLock:
    """Held while this process may write the gallery at `path`; `release` (or exit) gives it up."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        st = os.stat(self.path)
        self._key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        with _HELD_LOCK:
            held = _HELD.get(self._key)
            if held is not None:
                held[1] += 1
                return
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise GalleryBusyError(
                    f"gallery {self.path.name!r} is open for writing by another process (pid {holder}): one writer "
                    "per gallery; stop that server or indexing run first"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[self._key] = [fd, 1]

    def release(self) -> None:
        """Give this holder's share up; the flock goes with the last one (idempotent)."""
        with _HELD_LOCK:
            if self._key is None:
                return
            held = _HELD[self._key]
            held[1] -= 1
            if not held[1]:
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])
                del _HELD[self._key]
            self._key = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
