"""Micro-batching: concurrent searches share encoder and store calls, and each still gets
exactly the answer it gets alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching import MicroBatcher
from tests.service.conftest import open_client, png_bytes


def test_batcher_gathers_and_returns_each_result() -> None:
    calls: list[list[int]] = []

    def square(items: Sequence[int]) -> list[int]:
        assert threading.current_thread() is not threading.main_thread()  # off the event loop
        calls.append(list(items))
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(square, window_ms=20, max_batch=8)
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * i for i in range(20)]
    assert sorted(i for call in calls for i in call) == list(range(20))
    assert [len(c) for c in calls] == [8, 8, 4]


def test_batcher_passes_errors_to_every_waiter() -> None:
    def fail(items: Sequence[int]) -> list[int]:
        raise RuntimeError("boom")

    async def main() -> list[object]:
        batcher = MicroBatcher(fail, window_ms=5, max_batch=4)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) for e in asyncio.run(main()))


def test_idle_batcher_starts_at_once_and_groups_what_queues_behind_a_running_batch() -> None:
    release = threading.Event()
    calls: list[list[int]] = []
    running = 0
    most_running = 0

    def slow(items: Sequence[int]) -> list[int]:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        calls.append(list(items))
        if len(calls) == 1:
            assert release.wait(5)
        running -= 1
        return [-i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(slow, window_ms=0, max_batch=4)
        first = asyncio.ensure_future(batcher.submit(0))
        while not calls:  # the lone first item started without waiting for company
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        assert calls == [[0]]  # the others wait for the running batch
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.drain()
        return results

    assert asyncio.run(main()) == [-i for i in range(7)]
    assert calls == [[0], [1, 2, 3, 4], [5, 6]]
    assert most_running == 1


def test_cancelled_waiter_does_not_stop_the_others() -> None:
    async def main() -> list[int]:
        batcher = MicroBatcher(lambda items: [i + 1 for i in items], window_ms=10, max_batch=8)
        doomed = asyncio.ensure_future(batcher.submit(100))
        kept = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0)
        doomed.cancel()
        return await asyncio.gather(*kept)

    assert asyncio.run(main()) == [1, 2, 3]


@pytest.mark.parametrize("route", ["text", "image"])
def test_concurrent_requests_share_encoder_calls(make_settings, route: str) -> None:
    n = 8
    with open_client(make_settings(batch_window_ms=100.0, max_batch=64)) as client:
        state = client.app.state.cmhash  # type: ignore[attr-defined]
        calls: list[int] = []
        real_encode = state.encode

        def counting(modality, queries):
            calls.append(len(queries))
            return real_encode(modality, queries)

        state.encode = counting

        def request(i: int):
            if route == "text":
                target = "text-to-image" if i % 2 else "text-to-text"
                return client.post(f"/search/{target}", json={"text": f"a small {['red square', 'blue stripes'][i % 2]} {i}",
                                                             "k": 2 + i, "offset": i % 3})
            return client.post(f"/search/image-to-{'text' if i % 2 else 'image'}",
                               files={"file": ("q.png", png_bytes(i % 4, seed=i))}, data={"k": str(2 + i)})

        solo = [request(i).json()["results"] for i in range(n)]
        assert calls == [1] * n
        calls.clear()
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(request, range(n)))
        assert [r.status_code for r in together] == [200] * n
        assert [r.json()["results"] for r in together] == solo
        assert sum(calls) == n and len(calls) < n
