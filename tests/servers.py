"""Starting servers in tests: a free port, and the one wait for /readyz (fails fast when the
server dies or reports a failed load, instead of waiting out its timeout)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    base: str, *, alive: Callable[[], bool] = lambda: True, timeout: float = 90.0, log: Callable[[], str] = lambda: ""
) -> None:
    """Return once GET {base}/readyz answers 200. AssertionError (with `log()`) when `alive()`
    turns false, the server reports a failed load, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert alive(), f"the server at {base} exited before it was ready\n{log()}"
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
            assert r.json().get("status") != "failed", f"the server at {base} failed to load: {r.text}\n{log()}"
        except (httpx.TransportError, ValueError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{base} did not become ready in {timeout:.0f} s (last: {last})\n{log()}")
