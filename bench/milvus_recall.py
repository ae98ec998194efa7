"""BIN_IVF_FLAT on a real Milvus server: recall@10 against the exact FAISS flat oracle and
milliseconds per query, for random and clustered 64-bit codes, over a few (nlist, nprobe)
choices; BIN_FLAT (exact) is timed on the same server as the reference row.

    .venv/bin/python bench/milvus_recall.py --quick     # 200k random + clustered, 2 nlist x 3 nprobe
    .venv/bin/python bench/milvus_recall.py --sizes 1000000

The server is the PyPI `milvus` package (2.3.5: an embedded standalone Milvus, etcd and
rocksmq in one process) started by :class:`LocalMilvus` in a fresh temporary data directory.
Codes go in through :class:`~index.milvus_store.MilvusCodeStore` (the store the galleries
use), one collection per (data, nlist); nprobe is a search-time setting, so every nprobe is
measured on the same built index. recall@10 is tie-aware: the share of the 10 results whose
distance is at most the oracle's 10th distance (any item at that distance is a correct 10th
neighbour); id_recall@10 is the plain overlap of ids with the oracle's (distance, insertion
order) top 10. Queries are gallery codes with a few bits flipped, one query per call;
exact_fallbacks counts the queries IVF answered short and the store redid exactly.

The store reads with consistency Strong, and a Strong read waits for the server's next time
tick: the server runs with a 20 ms tick (``--time-tick-ms``; Milvus's default 200 ms adds about
0.2 s to every Milvus request a search makes, whatever the index). A guard samples the
resident memory of this process and of the server and aborts the run cleanly (server stopped,
data removed, exit status 3) once their sum passes ``--max-rss-gib``; the peaks are reported.
Every flag can also be set by CMHASH_BENCH_<FLAG>. Writes OUT/milvus_recall.json and prints a
markdown table; never part of the test suite.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# --quick and an explicit --out write here; a full run writes docs/results/ (from a clean tree)
DEFAULT_OUT = Path(__file__).resolve().parent / "out"
QUICK = {"sizes": "200000", "queries": "100", "nlist": "256,1024", "nprobe": "8,32,128"}

# ------------------------------------------------------------------ the local server
_CLONE_NEWNET = 0x40000000
_PROXY_PORT = 19530  # inside the server's own network namespace, so always free
_HEALTH_PORT = 9091
# Run in the child before exec: a private network namespace whose only interface is its own
# loopback, so every port Milvus opens (its gRPC servers bind every interface) is unreachable
# from outside; the parent reaches the proxy through LocalMilvus's 127.0.0.1 forwarder. The
# server is also killed when its parent dies (PR_SET_PDEATHSIG), so a crashed or killed test
# or benchmark leaves no orphan server behind.
_ISOLATE = r"""
import ctypes, fcntl, os, signal, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGKILL) != 0 or os.getppid() != int(sys.argv[2]):
    sys.exit(98)
if libc.unshare(0x40000000) != 0:
    sys.stderr.write("unshare(CLONE_NEWNET): " + os.strerror(ctypes.get_errno()) + "\n")
    sys.exit(97)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))
os.execv(sys.argv[1], [sys.argv[1], *sys.argv[3:]])
"""


class LocalMilvus:
    """A standalone Milvus (PyPI `milvus`, 2.3.5) with its data in `base_dir`, served on
    ``127.0.0.1:port`` only.

    Milvus's gRPC and metrics servers bind every interface and have no listen-address
    setting, so the server runs in a private network namespace (needs CAP_SYS_ADMIN, e.g.
    root) and a small forwarder in this process listens on 127.0.0.1 and connects into it.
    :meth:`stop` then :meth:`start` restarts it on the same data and the same port."""

    def __init__(self, base_dir: Path | str, port: int = 0, settings: dict[str, int | str] | None = None) -> None:
        """`settings`: server config items by dotted path (``proxy.timeTickInterval``), on top
        of the package's template; each must name an item the template has."""
        self.base_dir = Path(base_dir).resolve()
        self.settings = dict(settings or {})
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dial: queue.Queue[tuple[int, queue.Queue[Any]] | None] | None = None
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="milvus-fwd-accept").start()

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 120.0) -> None:
        """Start the server process and return once it answers; RuntimeError (with the end of
        its log) when it exits or does not answer within `timeout_s`. The server dies with the
        calling thread, so call this from one that outlives it (the main thread)."""
        from milvus import MilvusServerConfig, _initialize_data_files

        if self._proc is not None:
            raise RuntimeError("already started")
        config = MilvusServerConfig(data_dir=str(self.base_dir))
        config.resolve_storage()  # data, logs, configs under base_dir; ports keep their defaults
        for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
            config.set(f"{component}.ip", "127.0.0.1")
        for key, value in self.settings.items():
            config.set(key, value)
        unresolved = [k for k, (_, v) in config.configurable_items.items() if v is None]
        if unresolved:
            raise RuntimeError(f"milvus config items without a value: {unresolved}")
        config.write_config()
        written = (self.base_dir / "configs" / "milvus.yaml").read_text()
        missing = [
            k
            for k, v in self.settings.items()
            if not re.search(rf"^ *{re.escape(k.rsplit('.', 1)[-1])}: {re.escape(str(v))}( |$)", written, re.M)
        ]
        if missing:
            raise RuntimeError(f"milvus config items not in the template: {missing}")
        _initialize_data_files(str(self.base_dir))
        exe = self.base_dir / "bin" / "milvus"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(_HEALTH_PORT),
            "MILVUS_RUN_DIR": str(self.base_dir / "run"),
            "LD_LIBRARY_PATH": ":".join(filter(None, [str(exe.parent), os.environ.get("LD_LIBRARY_PATH")])),
        }
        self.log = self.base_dir / "logs" / "milvus-stdout.log"
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _ISOLATE, str(exe), str(os.getpid()), "run", "standalone"],
                cwd=self.base_dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._dial = queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        threading.Thread(
            target=self._dialer, args=(self._proc.pid, self._dial, ready), daemon=True, name="milvus-fwd-dial"
        ).start()
        try:
            deadline = time.monotonic() + timeout_s
            err = ready.get(timeout=timeout_s)
            if err is not None:
                raise RuntimeError(f"cannot enter the server's network namespace: {err}")
            while not self._healthy():
                if self._proc.poll() is not None:
                    raise RuntimeError(f"milvus exited with {self._proc.returncode}:\n{self._log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"milvus not healthy after {timeout_s:.0f} s:\n{self._log_tail()}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout_s`); the data stays."""
        proc, self._proc = self._proc, None
        if self._dial is not None:
            self._dial.put(None)
            self._dial = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the server and the forwarder."""
        self.stop()
        self._closed = True
        self._listener.close()

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def __enter__(self) -> LocalMilvus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    # -------------------------------------------------------------- forwarder
    @staticmethod
    def _dialer(pid: int, requests: queue.Queue[Any], ready: queue.Queue[BaseException | None]) -> None:
        """Owns one thread inside the server's network namespace (setns is per thread) and
        opens the connections into it that the other threads ask for."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            path = f"/proc/{pid}/ns/net"
            deadline = time.monotonic() + 10
            while os.readlink(path) == os.readlink("/proc/self/ns/net"):  # the child has not unshared yet
                if time.monotonic() > deadline:
                    raise OSError("the server process did not leave this network namespace")
                time.sleep(0.01)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        while (request := requests.get()) is not None:
            port, reply = request
            try:
                reply.put(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError as exc:
                reply.put(exc)

    def _connect(self, port: int) -> socket.socket:
        dial = self._dial
        if dial is None:
            raise OSError("milvus is not running")
        reply: queue.Queue[Any] = queue.Queue()
        dial.put((port, reply))
        got = reply.get(timeout=10)
        if isinstance(got, BaseException):
            raise got
        got.settimeout(None)
        return got

    def _healthy(self) -> bool:
        try:
            with self._connect(_HEALTH_PORT) as s:
                s.settimeout(5)
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] and b"OK" in data
        except (OSError, queue.Empty):
            return False

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = self._connect(_PROXY_PORT)
            except (OSError, queue.Empty):
                down.close()
                continue
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="milvus-fwd-pump").start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def temporary_server(timeout_s: float = 120.0, settings: dict[str, int | str] | None = None) -> Any:
    """A LocalMilvus in a fresh temporary directory, removed afterwards."""
    base = tempfile.mkdtemp(prefix="cmhash-milvus-")
    server = LocalMilvus(base, settings=settings)
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ the memory guard
def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


class MemoryGuard:
    """Samples the RSS of this process and of the server twice a second and keeps the peaks;
    once their sum passes `limit_bytes` it interrupts the main thread (KeyboardInterrupt), so
    the run ends through its context managers (server stopped, data directory removed)
    instead of eating the machine. `tripped` then says what was seen."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.peak = {"bench": 0, "server": 0, "total": 0}
        self.tripped: str | None = None

    @contextlib.contextmanager
    def watching(self, server: LocalMilvus) -> Any:
        """Guard while the block runs."""
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(server, stop), daemon=True, name="memory-guard")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def _run(self, server: LocalMilvus, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            pid = server.pid
            now = {"bench": rss_bytes(os.getpid()), "server": rss_bytes(pid) if pid is not None else 0}
            now["total"] = now["bench"] + now["server"]
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            if now["total"] > self.limit_bytes:
                gib = {k: round(v / 2**30, 2) for k, v in now.items()}
                self.tripped = f"RSS above the {self.limit_bytes / 2**30:.1f} GiB limit (GiB: {gib}); run aborted"
                _thread.interrupt_main()
                return


# ------------------------------------------------------------------ the benchmark
def make_codes(rng: Any, kind: str, n: int, bits: int) -> Any:
    """Packed codes: uniform random bits, or clustered (class centres with per-bit noise, like
    trained codes: 100 centres, each bit flipped with probability 0.1)."""
    import numpy as np

    if kind == "random":
        return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    centres = rng.integers(0, 2, size=(100, bits), dtype=np.uint8)
    out = np.empty((n, bits // 8), dtype=np.uint8)
    for s in range(0, n, 1 << 18):
        m = min(n, s + (1 << 18)) - s
        unpacked = centres[rng.integers(0, len(centres), m)] ^ (rng.random((m, bits)) < 0.1).astype(np.uint8)
        out[s : s + m] = np.packbits(unpacked, axis=1)
    return out


def wait_indexed(store: Any, timeout_s: float = 1800.0) -> float:
    """Flush, then wait until the server has built the code index on every row; seconds taken."""
    t0 = time.perf_counter()
    client, coll = store._client, store.collection
    client.flush(coll)
    name = client.list_indexes(coll, field_name="code")[0]
    while True:
        info = client.describe_index(coll, name)
        if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) >= int(
            info.get("total_rows", 0)
        ):
            break
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"index not built after {timeout_s:.0f} s: {info}")
        time.sleep(1.0)
    client.release_collection(coll)  # reload so that the query node serves the indexed segments
    client.load_collection(coll)
    return time.perf_counter() - t0


def measure(store: Any, queries: Any, ref_ids: list[list[str]], ref_d: Any, k: int) -> dict[str, float]:
    """recall@k (tie-aware and by id) and ms per query, one query per call."""
    import numpy as np

    times, tie_hits, id_hits = [], 0, 0
    for j in range(len(queries)):
        t0 = time.perf_counter()
        ids, d = store.search(queries[j : j + 1], k)
        times.append(time.perf_counter() - t0)
        tie_hits += int((d[0] <= ref_d[j, k - 1]).sum())
        id_hits += len(set(ids[0]) & set(ref_ids[j]))
    ms = np.asarray(times) * 1e3
    n = len(queries) * k
    return {
        "recall_at_k": round(tie_hits / n, 4),
        "id_recall_at_k": round(id_hits / n, 4),
        "ms_mean": round(float(ms.mean()), 3),
        "ms_p50": round(float(np.percentile(ms, 50)), 3),
        "ms_p95": round(float(np.percentile(ms, 95)), 3),
    }


def run_grid(args: Any, kinds: list[str], bits: int, k: int, server: LocalMilvus, rows: list[dict[str, Any]]) -> None:
    """Measure every (size, data, index, nlist, nprobe) of the grid on `server` into `rows`,
    printing each row as it is measured."""
    import json

    import numpy as np

    from index.faiss_store import FaissCodeStore
    from index.milvus_store import MilvusCodeStore

    for n in args.sizes:
        for kind in kinds:
            rng = np.random.default_rng(n + len(kind))
            codes = make_codes(rng, kind, n, bits)
            ids = [f"c{i}" for i in range(n)]
            q = codes[rng.integers(0, n, args.queries)].copy()
            flip = rng.integers(0, bits, size=(len(q), 3))  # 3 bits flipped (maybe the same one)
            for j, bs in enumerate(flip):
                for b in bs:
                    q[j, b // 8] ^= np.uint8(1 << (7 - b % 8))
            oracle = FaissCodeStore(bits)
            oracle.add(ids, codes)
            t0 = time.perf_counter()
            ref_ids, ref_d = oracle.search(q, k)
            flat_oracle_ms = (time.perf_counter() - t0) * 1e3 / len(q)
            for index_type, nlist in [("BIN_FLAT", 0)] + [("BIN_IVF_FLAT", nl) for nl in args.nlist]:
                store = MilvusCodeStore(
                    bits, server.uri, f"bench_{kind}_{n}_{nlist}", index_type=index_type, nlist=max(nlist, 1)
                )
                t0 = time.perf_counter()
                for s in range(0, n, 100_000):
                    store.add(ids[s : s + 100_000], codes[s : s + 100_000])
                load_s = time.perf_counter() - t0
                index_s = wait_indexed(store)
                for nprobe in [0] if index_type == "BIN_FLAT" else args.nprobe:
                    if nprobe > nlist and index_type == "BIN_IVF_FLAT":
                        continue
                    store.nprobe = max(nprobe, 1)
                    fallbacks = store.stats["exact_fallbacks"]
                    row = {
                        "n": n, "data": kind, "bits": bits, "index": index_type,
                        "nlist": nlist or None, "nprobe": nprobe or None,
                        "load_s": round(load_s, 1), "index_s": round(index_s, 1),
                        "faiss_flat_ms": round(flat_oracle_ms, 3),
                        **measure(store, q, ref_ids, ref_d, k),
                    }  # fmt: skip
                    row["exact_fallbacks"] = store.stats["exact_fallbacks"] - fallbacks
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                store._client.drop_collection(store.collection)
                store.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from flags import env, ints, positive, write_result

    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", type=ints, default=env("sizes", "200000,1000000"), help="gallery sizes N")
    p.add_argument("--bits", type=positive, default=env("bits", "64"), help="code length L (multiple of 8)")
    p.add_argument("--data", default=env("data", "random,clustered"), help="random and/or clustered codes")
    p.add_argument("--nlist", type=ints, default=env("nlist", "256,1024,4096"), help="BIN_IVF_FLAT clusters")
    p.add_argument("--nprobe", type=ints, default=env("nprobe", "8,32,128"), help="clusters probed per search")
    p.add_argument("--queries", type=positive, default=env("queries", "200"), help="queries per measurement")
    p.add_argument("-k", type=positive, default=env("k", "10"), help="neighbours per query")
    p.add_argument(
        "--time-tick-ms",
        type=positive,
        default=env("time_tick_ms", "20"),
        help="the server's proxy.timeTickInterval (Milvus's default is 200): every Strong read waits for the next tick",
    )
    p.add_argument(
        "--max-rss-gib", type=float, default=env("max_rss_gib", "8"), help="abort once bench + server RSS passes this"
    )
    p.add_argument("--quick", action="store_true", help=f"the quick run: {QUICK}")
    p.add_argument("--out", type=Path, default=Path(env("out", str(DEFAULT_OUT)) or DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.quick:
        args = p.parse_args([*(argv if argv is not None else sys.argv[1:]), *[f"--{k}={v}" for k, v in QUICK.items()]])
    kinds = [s.strip() for s in args.data.split(",") if s.strip()]
    if not kinds or set(kinds) - {"random", "clustered"} or args.bits % 8:
        p.error("--data is a comma list of random, clustered; --bits a multiple of 8")
    bits, k = int(args.bits), int(args.k)
    rows: list[dict[str, Any]] = []
    settings: dict[str, int | str] = {"proxy.timeTickInterval": args.time_tick_ms}
    guard = MemoryGuard(int(args.max_rss_gib * 2**30))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill stops the server too
    t_run = time.perf_counter()
    try:
        with temporary_server(settings=settings) as server, guard.watching(server):
            run_grid(args, kinds, bits, k, server, rows)
    except KeyboardInterrupt:
        if guard.tripped is None:
            raise
        print(guard.tripped, file=sys.stderr)
        return 3
    wall_s = time.perf_counter() - t_run
    peak_gib = {name: round(v / 2**30, 2) for name, v in guard.peak.items()}
    header = ["n", "data", "index", "nlist", "nprobe", "recall_at_k", "id_recall_at_k", "ms_mean", "ms_p95",
              "exact_fallbacks", "faiss_flat_ms", "load_s", "index_s"]  # fmt: skip
    print(f"\nrecall@{k} against the FAISS flat oracle, {bits}-bit codes, {args.queries} queries (1 per call)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join("" if row[h] is None else str(row[h]) for h in header) + " |")
    print(f"\nwall {wall_s:.0f} s; peak RSS GiB: {peak_gib}")
    result = {
        "benchmark": "milvus_recall",
        "server": "PyPI milvus 2.3.5 standalone (embedded etcd + rocksmq), one process, 127.0.0.1",
        "k": k,
        "queries": args.queries,
        "recall": "recall_at_k: share of results within the oracle's k-th distance; id_recall_at_k: id overlap",
        "server_settings": settings,
        "wall_s": round(wall_s, 1),
        "peak_rss_gib": peak_gib,
        "rows": rows,
    }
    path = write_result("milvus_recall", result, out_dir=args.out if args.out != DEFAULT_OUT or args.quick else None)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
