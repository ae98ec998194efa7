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
    """No sleeps or polling: the first batch signals that it runs and blocks until released, so
    what queues behind it is fixed before it ends (every wait is bounded)."""
    release = threading.Event()
    started = threading.Event()
    calls: list[list[int]] = []
    running = 0
    most_running = 0

    def slow(items: Sequence[int]) -> list[int]:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        calls.append(list(items))
        if len(calls) == 1:
            started.set()
            assert release.wait(10)
        running -= 1
        return [-i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(slow, window_ms=0, max_batch=4)
        first = asyncio.ensure_future(batcher.submit(0))
        # the lone first item starts without waiting for company (bounded wait, in a thread)
        assert await asyncio.to_thread(started.wait, 10), "the first batch did not start"
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0)  # each submit runs to its await: all six are queued
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
        real_represent = state.represent

        def counting(modality, queries):
            calls.append(len(queries))
            return real_represent(modality, queries)

        state.represent = counting

        # Deterministic grouping (no reliance on the 100 ms window on a loaded machine): in the
        # concurrent phase the first encoder call blocks until all n searches were submitted, so
        # whatever did not make the first batch queues behind it and runs as one more batch.
        batcher = state.batchers[route]
        real_submit = batcher.submit
        submitted = 0
        all_submitted = threading.Event()
        gate_first = False

        async def counting_submit(job):
            nonlocal submitted
            submitted += 1
            if submitted == n:
                all_submitted.set()
            return await real_submit(job)

        def gated(modality, queries):
            nonlocal gate_first
            if gate_first:
                gate_first = False
                assert all_submitted.wait(30), f"only {submitted} of {n} searches were submitted"
            return counting(modality, queries)

        batcher.submit = counting_submit  # type: ignore[method-assign]
        state.represent = gated

        def request(i: int):
            if route == "text":
                target = "text-to-image" if i % 2 else "text-to-text"
                return client.post(
                    f"/search/{target}",
                    json={"text": f"a small {['red square', 'blue stripes'][i % 2]} {i}", "k": 2 + i, "offset": i % 3},
                )
            return client.post(
                f"/search/image-to-{'text' if i % 2 else 'image'}",
                files={"file": ("q.png", png_bytes(i % 4, seed=i))},
                data={"k": str(2 + i)},
            )

        solo = [request(i).json()["results"] for i in range(n)]
        assert calls == [1] * n
        calls.clear()
        submitted = 0
        all_submitted.clear()
        gate_first = True
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(request, range(n)))
        assert [r.status_code for r in together] == [200] * n
        assert [r.json()["results"] for r in together] == solo
        # the gated first batch, then (unless it already held all n) one batch of all the rest
        assert sum(calls) == n and 1 <= len(calls) <= 2, calls
