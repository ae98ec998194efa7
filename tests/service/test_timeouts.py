"""Slow clients against a real uvicorn on 127.0.0.1 run as `cmhash serve` runs it
(`server_options`): a slow body gets 408, a slow or missing request head is cut off, idle
keep-alive connections close, and the settings reach uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.app import create_app
from service.cli.serve import server_options
from service.middleware import HeadTimeoutProtocol
from service.settings import Settings
from tests.servers import free_port

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEAD = 8 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(host, port) of uvicorn serving an app with 1 s head and body timeouts (no model needed:
    the body is read, or not, before any route runs)."""
    settings = Settings(
        model_dir=tmp_path_factory.mktemp("no_model"),
        device="cpu",
        header_timeout_s=HEAD_TIMEOUT,
        body_timeout_s=BODY_TIMEOUT,
        keep_alive_s=1,
        max_connections=100,
    )  # type: ignore[call-arg]
    options = server_options(settings)
    assert HeadTimeoutProtocol is not None and options["http"] is HeadTimeoutProtocol  # httptools is installed
    options["http"] = type(
        "Protocol",
        (HeadTimeoutProtocol,),
        {
            "header_timeout": HEAD_TIMEOUT,  # not via the env
            "max_head_bytes": MAX_HEAD,
        },
    )
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", **options)
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield "127.0.0.1", port
    srv.should_exit = True
    thread.join(30)


def connect(server: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(server, timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def test_settings_reach_uvicorn(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path, keep_alive_s=7, max_connections=50, max_header_bytes=8192)  # type: ignore[call-arg]
    options = server_options(settings)
    assert options["timeout_keep_alive"] == 7 and options["limit_concurrency"] == 50
    assert options["h11_max_incomplete_event_size"] == 8192
    config = uvicorn.Config("service.app:create_app", factory=True, **options)
    assert config.timeout_keep_alive == 7 and config.limit_concurrency == 50


def test_slow_body_is_408(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /search/text-to-text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"text": "a'
        )
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b'"request_timeout"' in data and b"nosniff" in data
    assert BODY_TIMEOUT * 0.8 < took < BODY_TIMEOUT + 3


def test_trickled_body_is_408(server: tuple[str, int]) -> None:
    """A byte every 0.2 s keeps no per-read timer from firing; the whole-body deadline does."""
    with connect(server) as sock:
        sock.sendall(
            b"POST /search/text-to-text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        start = time.monotonic()
        try:
            while time.monotonic() - start < BODY_TIMEOUT + 3:
                sock.sendall(b"1\r\na\r\n")
                time.sleep(0.2)
        except OSError:  # closed by the server after its 408
            pass
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data


def test_fast_requests_are_unaffected(server: tuple[str, int]) -> None:
    with connect(server) as sock:
        for _ in range(2):  # keep-alive: two requests on one connection
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        _, took = read_until_closed(sock)  # then the idle keep-alive connection is closed
        assert took < 1 + 3


def test_slow_heads_are_cut_off(server: tuple[str, int]) -> None:
    """32 slowloris connections (a header line every 0.3 s) and 8 silent ones are all closed
    about HEAD_TIMEOUT after they open (uvicorn alone keeps them forever); the server keeps answering."""
    slow = [connect(server) for _ in range(32)]
    silent = [connect(server) for _ in range(8)]
    try:
        start = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
        open_ = set(range(len(slow)))
        while open_ and time.monotonic() - start < HEAD_TIMEOUT + 4:
            for i in list(open_):
                try:
                    slow[i].sendall(f"X-Slow-{i}: 1\r\n".encode())
                    if slow[i].recv(1) == b"":
                        open_.discard(i)
                except BlockingIOError:
                    pass
                except OSError:
                    open_.discard(i)
            time.sleep(0.3)
        assert not open_, f"{len(open_)} slow connections still open after {time.monotonic() - start:.1f} s"
        for sock in silent:
            read_until_closed(sock, limit=HEAD_TIMEOUT + 4)  # raises if still open then
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert read_until_closed(sock)[0].startswith(b"HTTP/1.1 200")
    finally:
        for sock in slow + silent:
            sock.close()


def test_an_oversized_head_is_431_and_closed(server: tuple[str, int]) -> None:
    """httptools buffers a head of any size: the protocol counts it and answers 431 past the limit."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (4 * MAX_HEAD) + b"\r\n\r\n")
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ") and b'"header_too_large"' in data
    with connect(server) as sock:  # a head under the limit is served as before
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
            + b"a" * (MAX_HEAD // 2)
            + b"\r\nConnection: close\r\n\r\n"
        )
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ")


def test_a_large_body_behind_a_small_head_is_not_a_large_head(server: tuple[str, int]) -> None:
    """The head limit counts the head only: a body bigger than it, sent with the head in one go,
    reaches the app (here a 404 for a path with no route, not a 431)."""
    body = b"x" * (4 * MAX_HEAD)
    with connect(server) as sock:
        sock.sendall(
            b"POST /no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        data, _ = read_until_closed(sock)
    assert not data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert data.startswith(b"HTTP/1.1 404 ") or data.startswith(b"HTTP/1.1 405 "), data[:200]
