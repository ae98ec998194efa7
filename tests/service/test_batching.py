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
