"""Micro-batching: one batch runs at a time, in a worker thread, so the encoder and FAISS see
every query that arrived while the previous batch ran as one batch (both parallelise over its
rows) and the event loop never blocks. An idle batcher starts a lone request at once (after
`window_ms`, when set), so batching costs nothing at low load and groups requests at high load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`await submit(item)` returns `fn(batch)[i]` for the item's position i in its batch.

    `fn` runs in a thread, one call at a time, on at most `max_batch` items, and must return one
    result per item; if it raises, every request of that batch gets the exception. When no batch
    is running a new item waits `window_ms` for others (0: starts at once); items that arrive
    while a batch runs start together as soon as it ends. Must be used from one event loop."""

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], window_ms: float = 0.0, max_batch: int = 32) -> None:
        if max_batch < 1 or window_ms < 0:
            raise ValueError("max_batch must be positive and window_ms non-negative")
        self.fn = fn
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._running is None:
            if len(self._pending) >= self.max_batch or self.window_s == 0:
                self._start()
            elif self._timer is None:
                self._timer = loop.call_later(self.window_s, self._start)
        return await future

    def _start(self) -> None:
        """Run the next batch now (no batch may be running)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if batch:
            self._running = asyncio.ensure_future(self._run(batch))
            self._running.add_done_callback(self._next)

    def _next(self, _: asyncio.Task[None]) -> None:
        """A batch ended: start whatever queued meanwhile."""
        self._running = None
        if self._pending:
            self._start()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)

    async def drain(self) -> None:
        """Run what is queued and wait until no batch runs."""
        while self._running is not None or self._pending:
            if self._running is None:
                self._start()
            if self._running is not None:
                await asyncio.gather(self._running, return_exceptions=True)
