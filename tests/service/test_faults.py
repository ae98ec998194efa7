"""Crash safety of acknowledged gallery writes: `cmhash serve` is killed with SIGKILL while
clients add and delete items (and, with a small CMHASH_COMPACT_EVERY, while it compacts), then
restarted on the same directories. Every write the clients saw acknowledged must survive, no
item may appear twice, and a write that got no answer may or may not have happened."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from index.journal import MARKER_FILE
from model.runtime.encoder import Encoder
from tests.servers import free_port, wait_ready
from tests.service.conftest import N_IMAGES, N_TEXTS, png_bytes
from tests.service.test_uvicorn import ROOT

INITIAL = {"image": {f"i{i:02d}" for i in range(N_IMAGES)}, "text": {f"t{i:02d}" for i in range(N_TEXTS)}}
ROUTE = {"image": "/gallery/images", "text": "/gallery/texts"}


@dataclass
class Ledger:
    """What the clients saw for one gallery: acknowledged adds (id -> the writer's item number n,
    from which the text `_text(n)` or the image `png_bytes(n % 4, n)` named `<id>.png` follows),
    acknowledged deletes, ids whose write got no answer (the server died under it), and
    unexpected answers."""

    added: dict[str, int] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    unsure: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Server:
    """A `cmhash serve` process over one image and one text gallery."""

    model: Path
    images: Path
    texts: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""

    def start(self) -> None:
        """Start on a free port and wait for /readyz (fails fast if the process exits)."""
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--model",
            str(self.model),
            "--image-gallery",
            str(self.images),
            "--text-gallery",
            str(self.texts),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--encoder-threads",
            "1",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_ready(self.base, alive=lambda: proc.poll() is None, timeout=60, log=self.log.read_text)

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no final compaction."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill_inside(self, condition: Callable[[], bool], timeout: float) -> bool:
        """SIGKILL while `condition` (a file-system state the server passes through) holds: each
        time it is seen the server is frozen with SIGSTOP and looked at again; killed if it still
        holds, else resumed. False (server killed anyway) if it was never caught within `timeout`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        caught = False
        while not caught and wait_for(condition, max(0.0, deadline - time.monotonic())):
            self.proc.send_signal(signal.SIGSTOP)
            assert wait_for(self._stopped, 10), "SIGSTOP did not stop the server"
            caught = condition()
            if not caught:
                self.proc.send_signal(signal.SIGCONT)
        self.kill()
        return caught

    def _stopped(self) -> bool:
        """Every thread of the server is stopped (state T in /proc): it can change nothing more."""
        assert self.proc is not None
        states = []
        for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
        return bool(states) and all(s in ("T", "t") for s in states)

    def stop(self) -> int:
        """SIGINT (a clean shutdown); returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def server(tiny_model_dir: Path, gallery_templates: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Make a (not yet started) server over fresh gallery copies; killed after the test if still up."""
    made: list[Server] = []

    def make(**env: str) -> Server:
        shutil.copytree(gallery_templates / "images", tmp_path / "images")
        shutil.copytree(gallery_templates / "texts", tmp_path / "texts")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
        srv = Server(
            tiny_model_dir,
            tmp_path / "images",
            tmp_path / "texts",
            tmp_path / "server.log",
            {**base_env, **{f"CMHASH_{k.upper()}": v for k, v in env.items()}},
        )
        made.append(srv)
        return srv

    yield make
    for srv in made:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)


def _add(http: httpx.Client, kind: str, item_id: str, n: int) -> httpx.Response:
    if kind == "text":
        return http.post(ROUTE[kind], json={"items": [{"id": item_id, "text": _text(n)}]})
    return http.post(
        ROUTE[kind], files={"files": (f"{item_id}.png", png_bytes(n % 4, n), "image/png")}, data={"ids": item_id}
    )


def _text(n: int) -> str:
    return f"a {['red', 'blue', 'green', 'yellow'][n % 4]} burst item number {n}"


def writer(
    base: str,
    kind: str,
    prefix: str,
    ledger: Ledger,
    stop: threading.Event,
    delete_every: int = 0,
    victims: tuple[str, ...] = (),
    limit: int = 400,
) -> None:
    """Add items `<prefix><n>` (deleting every `delete_every`-th acknowledged one and, in turn,
    each of `victims`) until `stop`, `limit` requests, or the first request without an answer or
    with an unexpected one."""
    pending_victims = list(victims)
    with httpx.Client(base_url=base, timeout=20) as http:
        for n in range(limit):
            if stop.is_set():
                return
            ops: list[tuple[str, str]] = [("add", f"{prefix}{n}")]
            if delete_every and n % delete_every == delete_every - 1:
                ops.append(("delete", f"{prefix}{n}"))
                if pending_victims:
                    ops.append(("delete", pending_victims.pop()))
            for op, item_id in ops:
                if op == "delete" and item_id.startswith(prefix) and item_id not in ledger.added:
                    continue  # only delete what this client saw added
                try:
                    r = _add(http, kind, item_id, n) if op == "add" else http.delete(f"{ROUTE[kind]}/{item_id}")
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.unsure.add(item_id)
                    return
                with ledger.lock:
                    if r.status_code != (201 if op == "add" else 200):
                        ledger.failures.append(f"{op} {item_id}: {r.status_code} {r.text}")
                        return
                    if op == "add":
                        ledger.added[item_id] = n
                    else:
                        ledger.deleted.add(item_id)


@contextmanager
def burst(base: str, ledgers: dict[str, Ledger], delete_every: int = 0) -> Iterator[None]:
    """Two text writers and one image writer in threads while the block runs; stopped and joined
    after it, and none may have seen an unexpected answer."""
    stop = threading.Event()
    victims = {"text": tuple(sorted(INITIAL["text"]))[:6], "image": tuple(sorted(INITIAL["image"]))[:4]}
    specs = [
        ("text", "ta", victims["text"][:3]),
        ("text", "tb", victims["text"][3:]),
        ("image", "im", victims["image"]),
    ]
    threads = [
        threading.Thread(target=writer, args=(base, kind, prefix, ledgers[kind], stop, delete_every, v))
        for kind, prefix, v in specs
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not [f for lg in ledgers.values() for f in lg.failures]


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` (tightly) until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.0005)
    return False


def acknowledged(ledgers: dict[str, Ledger]) -> int:
    return sum(len(lg.added) + len(lg.deleted) for lg in ledgers.values())


def initial_items(base: str) -> dict[str, dict[str, dict]]:
    """kind -> id -> the item (id, code, metadata) as served before any write."""
    with httpx.Client(base_url=base, timeout=20) as http:
        return {kind: {i: http.get(f"{ROUTE[kind]}/{i}").json() for i in sorted(ids)} for kind, ids in INITIAL.items()}


def check_recovered(
    base: str, ledgers: dict[str, Ledger], encoder: Encoder, before: dict[str, dict[str, dict]]
) -> None:
    """Assert the restarted server holds exactly what the ledgers say (a write without an answer
    may or may not have taken effect): every acknowledged add with the code the encoder gives its
    text or image and the metadata (and, for images, the file) that was sent, every initial item
    as it was `before` the crash."""
    with httpx.Client(base_url=base, timeout=20) as http:
        for kind, lg in ledgers.items():
            must_exist = (INITIAL[kind] | set(lg.added)) - lg.deleted - lg.unsure
            must_be_gone = lg.deleted - lg.unsure
            for item_id in sorted(must_exist):
                r = http.get(f"{ROUTE[kind]}/{item_id}")
                assert r.status_code == 200, f"acknowledged {kind} {item_id} lost: {r.text}"
                item = r.json()
                if item_id in INITIAL[kind]:
                    assert item == before[kind][item_id], f"initial {kind} {item_id} changed"
                elif kind == "text":
                    text = _text(lg.added[item_id])
                    assert item["metadata"] == {"text": text}, item
                    assert item["code"] == bytes(encoder.encode_texts([text])[0]).hex(), item_id
                else:
                    n = lg.added[item_id]
                    image = png_bytes(n % 4, n)
                    assert item["code"] == bytes(encoder.encode_images([image])[0]).hex(), item_id
                    assert set(item["metadata"]) == {"path", "filename"}, item
                    assert item["metadata"]["filename"] == f"{item_id}.png", item
                    assert http.get(f"{ROUTE[kind]}/{item_id}/file").content == image, f"file of {item_id} changed"
                if kind == "image":
                    assert http.get(f"{ROUTE[kind]}/{item_id}/file").status_code == 200, f"file of {item_id} lost"
            for item_id in must_be_gone:
                assert http.get(f"{ROUTE[kind]}/{item_id}").status_code == 404, f"deleted {kind} {item_id} is back"
            unsure_present = {i for i in lg.unsure if http.get(f"{ROUTE[kind]}/{i}").status_code == 200}
            present = must_exist | unsure_present
            assert http.get(ROUTE[kind]).json()["count"] == len(present)
            # every item exactly once in a full-gallery search (a duplicated entry would show twice)
            if kind == "text":
                r = http.post("/search/text-to-text", json={"text": "a red square", "k": len(present)})
            else:
                r = http.post(
                    "/search/image-to-image",
                    files={"file": ("q.png", png_bytes(0), "image/png")},
                    data={"k": str(len(present))},
                )
            ids = [h["id"] for h in r.json()["results"]]
            assert r.status_code == 200 and sorted(ids) == sorted(present)
        r = http.post("/search/text-to-image", json={"text": "a blue stripes", "k": 5})
        assert r.status_code == 200 and len(r.json()["results"]) == 5
        r = http.post("/search/image-to-text", files={"file": ("q.png", png_bytes(1), "image/png")}, data={"k": "5"})
        assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_sigkill_during_adds(server: Callable[..., Server], encoder: Encoder) -> None:
    srv = server()
    srv.start()
    before = initial_items(srv.base)
    ledgers = {"text": Ledger(), "image": Ledger()}
    with burst(srv.base, ledgers):
        assert wait_for(lambda: acknowledged(ledgers) >= 40, 20), "the burst did not get going"
        srv.kill()
    assert ledgers["text"].added and ledgers["image"].added
    srv.start()
    check_recovered(srv.base, ledgers, encoder, before)
    assert srv.stop() == 0


def test_sigkill_during_compaction(server: Callable[..., Server], encoder: Encoder) -> None:
    """The kill lands inside a compaction, deterministically: when a marker is seen the server is
    frozen (SIGSTOP) and killed only if the marker is still there, so the compaction cannot finish
    between the look and the kill (it did in about 1 run in 4 with a look-then-kill on 2 cores,
    and the test then failed on the marker check); otherwise it is resumed and the next one waited for."""
    srv = server(compact_every="5")
    srv.start()
    before = initial_items(srv.base)
    ledgers = {"text": Ledger(), "image": Ledger()}
    markers = [srv.texts / MARKER_FILE, srv.images / MARKER_FILE]
    with burst(srv.base, ledgers, delete_every=3):
        # both galleries have seen acknowledged deletes (the image writer is the slow one)
        assert wait_for(lambda: acknowledged(ledgers) >= 30 and all(lg.deleted for lg in ledgers.values()), 120), (
            "the burst did not get going"
        )
        caught = srv.kill_inside(lambda: any(m.exists() for m in markers), 120)
    assert caught, "no compaction seen in progress"
    assert any(m.exists() for m in markers)  # the kill landed inside one: recovery must use the marker
    assert ledgers["text"].deleted and ledgers["image"].deleted
    srv.start()
    check_recovered(srv.base, ledgers, encoder, before)
    assert srv.stop() == 0


def test_concurrent_uploads_of_one_id(server: Callable[..., Server]) -> None:
    srv = server()
    srv.start()
    blobs = [png_bytes(n % 4, 100 + n) for n in range(6)]
    for item_id in ("same0", "same1", "same2"):
        statuses: dict[int, int] = {}
        gate = threading.Barrier(len(blobs))

        def upload(n: int, item_id: str, gate: threading.Barrier = gate, statuses: dict[int, int] = statuses) -> None:
            gate.wait()
            r = httpx.post(
                f"{srv.base}/gallery/images",
                files={"files": (f"{n}.png", blobs[n], "image/png")},
                data={"ids": item_id},
                timeout=30,
            )
            statuses[n] = r.status_code

        threads = [threading.Thread(target=upload, args=(n, item_id)) for n in range(len(blobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [n for n, s in statuses.items() if s == 201]
        assert sorted(statuses.values()) == [201] + [409] * (len(blobs) - 1), statuses
        file = httpx.get(f"{srv.base}/gallery/images/{item_id}/file")
        assert file.status_code == 200 and file.content == blobs[winners[0]], f"the file of {item_id} was lost"
    assert srv.stop() == 0
