"""Deterministic crash injection: run a real write path in a child process that SIGKILLs
itself at the N-th durability step (each ``os.fsync`` and each ``os.replace`` / ``os.rename``).

Usage::

    steps = count_steps(job, *args)          # run once uncrashed in a child: how many steps
    for n in range(1, steps + 1):
        prepare()                            # the on-disk state before the write
        assert crash_at(n, job, *args)       # the child died by SIGKILL at step n
        check()                              # the parent opens what is left on disk

`job` must be a module-level function (the child is forked, so it may also be a closure on
platforms with fork; pass plain picklable arguments to be safe). The kill happens *before* the
N-th call runs, so step n models "the machine died just before this fsync / rename": every
earlier step completed, later ones never happened (data written without fsync is still in the
page cache of this machine, so this models a process crash, not a power cut). Reusable for any
write path: a gallery save, journal compaction, an upload.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from typing import Any

_PATCHED = ("fsync", "replace", "rename")


def _child(n: int, counter: Any, job: Callable[..., Any], args: tuple[Any, ...]) -> None:
    calls = 0
    real = {name: getattr(os, name) for name in _PATCHED}

    def wrap(name: str) -> Callable[..., Any]:
        def step(*a: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            counter.value = calls
            if calls == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real[name](*a, **kw)

        return step

    for name in _PATCHED:
        setattr(os, name, wrap(name))
    job(*args)
    os._exit(0)  # no atexit handlers, no finalizers writing anything more


def _run(n: int, job: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> tuple[int, int]:
    ctx = mp.get_context("fork")
    counter = ctx.Value("i", 0, lock=False)
    proc = ctx.Process(target=_child, args=(n, counter, job, args))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():  # pragma: no cover - a hung child
        proc.kill()
        proc.join()
        raise TimeoutError(f"the child did not finish within {timeout}s")
    return int(proc.exitcode or 0), int(counter.value)


def count_steps(job: Callable[..., Any], *args: Any, timeout: float = 120.0) -> int:
    """Run `job(*args)` in a child without crashing it; the number of fsync/rename steps it made."""
    code, steps = _run(0, job, args, timeout)
    if code != 0:
        raise RuntimeError(f"the uncrashed run failed with exit code {code}")
    return steps


def crash_at(n: int, job: Callable[..., Any], *args: Any, timeout: float = 120.0) -> bool:
    """Run `job(*args)` in a child SIGKILLed just before its `n`-th fsync/rename step; True when it
    was killed there (False when it finished with fewer steps)."""
    code, _ = _run(n, job, args, timeout)
    if code not in (0, -signal.SIGKILL):
        raise RuntimeError(f"the child failed with exit code {code} (not a crash)")
    return code == -signal.SIGKILL
