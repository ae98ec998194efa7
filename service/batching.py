"""Micro-batching: concurrent requests are gathered for up to `window_ms` (or until `max_batch`
are waiting) and handled by one call of a batch function in a worker thread, so the encoder
and FAISS see one batch (both parallelise over its rows) and the event loop never blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`await submit(item)` returns `fn(batch)[i]` for the item's position i in its batch.

    `fn` runs in a thread and must return one result per item; if it raises, every request of
    that batch gets the exception. Must be used from one event loop."""

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], window_ms: float = 2.0, max_batch: int = 32) -> None:
        if max_batch < 1 or window_ms < 0:
            raise ValueError("max_batch must be positive and window_ms non-negative")
        self.fn = fn
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush)
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        """Run what is queued and wait for every batch in flight."""
        self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
