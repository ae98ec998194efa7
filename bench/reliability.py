"""Reliability run (issue 10): one bounded run against real `cmhash serve` processes on 127.0.0.1
(over fresh copies of the galleries) that gives the numbers of the reliability table of
docs/results.md.

    .venv/bin/python bench/reliability.py                      # ~5 min on 2 cores
    .venv/bin/python bench/reliability.py --duration 20 --kills 4

Scenarios (each counts the requests it tried, the 5xx answers, acknowledged writes lost, refused
or deleted writes that came back, and orphan upload files and *.tmp files left):
  1. load: bench/load.py's mixed clients (searches, text and image adds, deletes of their own
     acknowledged adds) for --duration s with --clients clients, plus --contenders threads that
     add, then delete, the same id at the same moment (exactly one 201 and one 200 each, the rest
     409 / 404); the final galleries and upload folder checked against what was acknowledged.
  2. kills: --kills rounds of SIGKILL at a random moment while write-heavy clients add and delete
     (CMHASH_COMPACT_EVERY=20, so some land in a compaction), then a restart on the same folders:
     every acknowledged add (of every round so far) must be there with its metadata, the code the
     model gives its text or image and (images) its file, no acknowledged delete may be back, and
     no orphan upload or *.tmp may be left after the startup sweep. A round is survived when all hold.
  3. disk: the galleries on a 5 MB tmpfs (root only; skipped with a line otherwise), filled up to
     ~48 KiB, then text adds with padded metadata, image adds and deletes until writes are refused
     (507), some room freed, more writes; after a restart with the space freed, no refused write
     may have taken effect and no acknowledged one may be lost. 507 is the expected refusal and is
     not counted as a 5xx failure (500s are counted on their own).
  4. hostile: bench/hostile_images.py's "issue_mix" scenario (three hostile images at once: peak
     RSS growth of the server and the statuses), then a sweep of hostile requests (bad JSON, huge
     and deep metadata, bad Host and Origin, oversize bodies, broken images, bad paths): no 5xx, the
     server healthy and its galleries unchanged afterwards.

Every flag can also be set by CMHASH_BENCH_<FLAG>. Writes reliability.json with
flags.write_result (docs/results/ at a clean commit, else bench/out/), prints a markdown table and
exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import load
from flags import env, write_result
from hostile_images import SCENARIOS as IMAGE_SCENARIOS
from hostile_images import _chunk, run_scenarios, status_kib
from hostile_images import images as hostile_image_files

ROOT = Path(__file__).resolve().parents[1]
MARKER_FILE = "journal.compacting"  # index.journal.MARKER_FILE: present while a compaction runs
KILL_MIX = {"add-text": 3.0, "delete-text": 2.0, "add-image": 2.0, "delete-image": 1.0, "text-to-image": 1.0}
DISK_MIB = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        default=Path(env("model", str(ROOT / "runs/demo/model"))),
        help="exported model directory [CMHASH_BENCH_MODEL]",
    )
    p.add_argument(
        "--image-gallery",
        type=Path,
        default=Path(env("image_gallery", str(ROOT / "runs/demo/gallery-images"))),
        help="image gallery, copied before each scenario [CMHASH_BENCH_IMAGE_GALLERY]",
    )
    p.add_argument(
        "--text-gallery",
        type=Path,
        default=Path(env("text_gallery", str(ROOT / "runs/demo/gallery-texts"))),
        help="text gallery, copied before each scenario [CMHASH_BENCH_TEXT_GALLERY]",
    )
    p.add_argument(
        "--queries",
        type=Path,
        default=Path(env("queries", str(ROOT / "runs/demo/sources/images.jsonl"))),
        help="JSONL with 'image' paths and 'text' fields [CMHASH_BENCH_QUERIES]",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=float(env("duration", "60")),
        help="seconds of mixed load [CMHASH_BENCH_DURATION]",
    )
    p.add_argument("--clients", type=int, default=int(env("clients", "16")), help="load clients [CMHASH_BENCH_CLIENTS]")
    p.add_argument(
        "--contenders",
        type=int,
        default=int(env("contenders", "4")),
        help="threads writing the same ids at once during the load [CMHASH_BENCH_CONTENDERS]",
    )
    p.add_argument("--kills", type=int, default=int(env("kills", "10")), help="SIGKILL rounds [CMHASH_BENCH_KILLS]")
    p.add_argument(
        "--kill-clients",
        type=int,
        default=int(env("kill_clients", "6")),
        help="writing clients during the kill rounds [CMHASH_BENCH_KILL_CLIENTS]",
    )
    p.add_argument(
        "--scenarios",
        default=env("scenarios", "load,kills,disk,hostile"),
        help="comma list of the scenarios to run [CMHASH_BENCH_SCENARIOS]",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=int(env("threads", "1")),
        help="server ONNX Runtime threads [CMHASH_BENCH_THREADS]",
    )
    p.add_argument("--seed", type=int, default=int(env("seed", "0")), help="random seed [CMHASH_BENCH_SEED]")
    args = p.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(args.scenarios) - {"load", "kills", "disk", "hostile"}:
        p.error(f"unknown scenarios {sorted(unknown)}")
    # what bench/load.py's start_server and client read
    args.device, args.max_requests = "cpu", 100_000
    args.mix = {
        "text-to-image": 4,
        "image-to-text": 2,
        "add-text": 2,
        "delete-text": 1,
        "add-image": 1,
        "delete-image": 1,
    }
    return args


# ---------------------------------------------------------------------------------------------
# Servers and audits


class Server:
    """A `cmhash serve` process over copies of the galleries (or given folders), restartable."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        images: Path | None = None,
        texts: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.args, self.extra_env = args, extra_env or {}
        self.images, self.texts = images or workdir / "images", texts or workdir / "texts"
        if images is None:
            shutil.copytree(args.image_gallery, self.images)
            shutil.copytree(args.text_gallery, self.texts)
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self) -> float:
        """Start and wait for /readyz; the seconds it took (SystemExit when it fails, as load.py)."""
        started = time.monotonic()
        self.proc, self.base = load.start_server(self.args, self.images, self.texts, self.log, self.extra_env)
        return time.monotonic() - started

    def stop(self) -> int | None:
        """SIGINT (a clean shutdown, SIGKILL after 60 s); the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def unhandled(self) -> int:
        """Unhandled errors (500s) the server logged."""
        return self.log.read_text(errors="replace").count("unhandled error") if self.log.exists() else 0


def tmp_files(*roots: Path) -> list[str]:
    """Leftovers of interrupted writes under `roots`: *.tmp files and folders."""
    return sorted(str(p) for root in roots if root.is_dir() for p in root.rglob("*") if p.name.endswith(".tmp"))


def listed(http: httpx.Client, kind: str) -> dict[str, dict[str, Any]]:
    """id -> public metadata of every item of the `kind` gallery, from GET /gallery/{kind}s/items."""
    items: dict[str, dict[str, Any]] = {}
    while True:
        r = http.get(f"/gallery/{kind}s/items", params={"offset": len(items), "limit": 1000})
        r.raise_for_status()
        page = r.json()
        items.update({item["id"]: item["metadata"] for item in page["items"]})
        if not page["items"] or len(items) >= page["count"]:
            return items


def orphan_uploads(http: httpx.Client, folder: Path) -> list[str]:
    """Files in the upload `folder` that no live image item names as its "path"."""
    live = {str(meta.get("path")) for meta in listed(http, "image").values()}
    return sorted(p.name for p in folder.iterdir() if p.name not in live) if folder.is_dir() else []


class Ledger:
    """What clients saw, over a whole scenario: acknowledged adds (id -> kind, sent content),
    acknowledged deletes, refused writes, and writes without an answer."""

    def __init__(self) -> None:
        self.added: dict[str, tuple[str, Any]] = {}
        self.deleted: dict[str, str] = {}
        self.refused_adds: dict[str, str] = {}
        self.refused_deletes: dict[str, str] = {}
        self.unsure: set[str] = set()

    def take(self, recs: list[load.Record]) -> None:
        for rec in recs:
            for kind in load.KINDS:
                self.added.update({i: (kind, rec.sent.get(i)) for i in rec.added[kind]})
                self.deleted.update({i: kind for i in rec.deleted[kind]})
                self.unsure |= rec.unsure[kind]


class Codes:
    """The code the model gives a text or an image (POST /encode/...), cached by content."""

    def __init__(self, images: list[bytes]) -> None:
        self.images, self.cache = images, {}

    def __call__(self, http: httpx.Client, kind: str, content: Any) -> str:
        key = (kind, content)
        if key not in self.cache:
            if kind == "text":
                r = http.post("/encode/text", json={"text": content})
            else:
                r = http.post("/encode/image", files={"file": ("q.jpg", self.images[content], "image/jpeg")})
            r.raise_for_status()
            self.cache[key] = r.json()["code"]
        return self.cache[key]


def audit(http: httpx.Client, ledger: Ledger, codes: Codes | None, query: str) -> dict[str, Any]:
    """Check a (restarted) server against `ledger`: acknowledged adds present (with their metadata,
    the model's code for what was sent and, for images, the file), acknowledged deletes and refused
    adds absent, refused deletes still there, every item once in a full search and in the count."""
    lost, back, wrong, problems = [], [], [], []
    for item_id, (kind, content) in sorted(ledger.added.items()):
        if item_id in ledger.deleted or item_id in ledger.unsure:
            continue
        r = http.get(f"/gallery/{kind}s/{item_id}")
        if r.status_code != 200:
            lost.append(item_id)
            continue
        item = r.json()
        if codes is not None and content is not None:
            if kind == "text":
                ok = item["metadata"] == {"text": content}
            else:
                ok = (
                    item["metadata"].get("filename") == "q.jpg"
                    and http.get(f"/gallery/images/{item_id}/file").content == codes.images[content]
                )
            if not ok or item["code"] != codes(http, kind, content):
                wrong.append(item_id)
        elif kind == "image" and http.get(f"/gallery/images/{item_id}/file").status_code != 200:
            wrong.append(item_id)
    for item_id, kind in sorted(ledger.deleted.items()):
        if item_id not in ledger.unsure and http.get(f"/gallery/{kind}s/{item_id}").status_code != 404:
            back.append(item_id)
    for item_id, kind in sorted(ledger.refused_adds.items()):
        if http.get(f"/gallery/{kind}s/{item_id}").status_code != 404:
            back.append(item_id)
    for item_id, kind in sorted(ledger.refused_deletes.items()):
        if item_id not in ledger.deleted and http.get(f"/gallery/{kind}s/{item_id}").status_code != 200:
            back.append(item_id)  # a refused delete that took effect
    for kind in load.KINDS:
        ids = load.all_ids(http, kind, query)
        count = http.get(f"/gallery/{kind}s").json()["count"]
        if len(ids) != len(set(ids)) or count != len(ids) or set(ids) != set(listed(http, kind)):
            problems.append(f"{kind}: {len(ids)} ids in a full search ({len(set(ids))} distinct), count {count}")
    if lost or back or wrong:
        problems.append(f"lost {lost[:5]}, came back {back[:5]}, wrong code/metadata/file {wrong[:5]}")
    return {"lost": len(lost) + len(wrong), "came_back": len(back), "problems": problems}


def fives(status: Counter, ignore: tuple[int, ...] = ()) -> int:
    return sum(n for code, n in status.items() if isinstance(code, int) and code >= 500 and code not in ignore)


def route_statuses(recs: list[load.Record]) -> Counter:
    """Statuses of load.client records by class ("2xx", "5xx", "error")."""
    total: Counter = Counter()
    for rec in recs:
        for codes in rec.status.values():
            total.update(codes)
    return total


# ---------------------------------------------------------------------------------------------
# 1. Mixed load with contention on the same ids


def contenders(base: str, n: int, deadline: float, texts: list[str], images: list[bytes], out: dict[str, Any]) -> None:
    """`n` threads add the same id at the same moment (a barrier), then (every other round)
    delete it at the same moment: exactly one add 201 (the rest 409) and one delete 200 (the rest
    404) each round. `out` gets the statuses, the anomalies, and what should be stored."""
    barrier = threading.Barrier(n, timeout=60)
    results: dict[int, list[tuple[int, str, int, Any]]] = {}
    lock, done = threading.Lock(), [False]

    def worker(t: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            j = 0
            while True:
                barrier.wait()
                if done[0]:
                    return
                item_id, kind = f"same-{j:04d}", "image" if j % 3 == 0 else "text"
                try:
                    if kind == "text":
                        content: Any = f"{texts[(j * n + t) % len(texts)]} same {j} {t}"
                        r = http.post("/gallery/texts", json={"items": [{"id": item_id, "text": content}]})
                    else:
                        content = (j + t) % len(images)
                        r = http.post(
                            "/gallery/images",
                            files={"files": ("q.jpg", images[content], "image/jpeg")},
                            data={"ids": item_id},
                        )
                    status = r.status_code
                except httpx.TransportError:
                    status, content = -1, None
                with lock:
                    results.setdefault(j, []).append((t, "add", status, content))
                barrier.wait()
                if j % 2 == 0:
                    try:
                        status = http.delete(f"/gallery/{kind}s/{item_id}").status_code
                    except httpx.TransportError:
                        status = -1
                    with lock:
                        results[j].append((t, "delete", status, None))
                if barrier.wait() == 0:
                    done[0] = time.monotonic() >= deadline
                j += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    statuses: Counter = Counter()
    anomalies, present, deleted = [], {}, {}
    for j, events in sorted(results.items()):
        kind = "image" if j % 3 == 0 else "text"
        statuses.update(s for _, _, s, _ in events)
        adds = [e for e in events if e[1] == "add"]
        dels = [e for e in events if e[1] == "delete"]
        winners = [e for e in adds if e[2] == 201]
        if len(winners) != 1 or any(e[2] not in (201, 409) for e in adds):
            anomalies.append(f"same-{j:04d} adds: {sorted(e[2] for e in adds)}")
            continue
        if dels and (sum(e[2] == 200 for e in dels) != 1 or any(e[2] not in (200, 404) for e in dels)):
            anomalies.append(f"same-{j:04d} deletes: {sorted(e[2] for e in dels)}")
            continue
        if dels:
            deleted[f"same-{j:04d}"] = kind
        else:
            present[f"same-{j:04d}"] = (kind, winners[0][3])
    out.update(
        rounds=len(results),
        requests=sum(len(e) for e in results.values()),
        statuses=statuses,
        anomalies=anomalies,
        present=present,
        deleted=deleted,
    )


def scenario_load(args: argparse.Namespace, images: list[bytes], texts: list[str], codes: Codes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cmhash-rel-load-") as tmp:
        srv = Server(args, Path(tmp), extra_env={"CMHASH_COMPACT_EVERY": "100"})
        srv.start()
        try:
            with httpx.Client(base_url=srv.base, timeout=60) as http:
                initial = {kind: load.all_ids(http, kind, texts[0]) for kind in load.KINDS}
                recs = [load.Record() for _ in range(args.clients)]
                contention: dict[str, Any] = {}
                started = time.monotonic()
                deadline = started + args.duration
                threads = [
                    threading.Thread(target=load.client, args=(i, srv.base, args, images, texts, deadline, rec))
                    for i, rec in enumerate(recs)
                ]
                threads.append(
                    threading.Thread(
                        target=contenders, args=(srv.base, args.contenders, deadline, texts, images, contention)
                    )
                )
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.monotonic() - started
                ledger = Ledger()
                ledger.take(recs)
                ledger.added.update(contention["present"])
                ledger.deleted.update(contention["deleted"])
                result = audit(http, ledger, codes, texts[0])
                # bench/load.py's own checks (every item once, acknowledged adds readable, uploads)
                shared = load.Record()
                shared.added["text"] = {i for i, (k, _) in contention["present"].items() if k == "text"}
                shared.added["image"] = {i for i, (k, _) in contention["present"].items() if k == "image"}
                anomalous = {a.split()[0] for a in contention["anomalies"]}
                for kind in load.KINDS:
                    shared.added[kind] |= anomalous & set(load.all_ids(http, kind, texts[0]))
                shared.deleted["text"] = {i for i, k in contention["deleted"].items() if k == "text"}
                shared.deleted["image"] = {i for i, k in contention["deleted"].items() if k == "image"}
                problems = [
                    p
                    for kind in load.KINDS
                    for p in load.check_gallery(http, kind, initial[kind], [*recs, shared], texts[0])
                ]
                upload_problems, upload_files = load.check_uploads(http, srv.images / "uploads", [*recs, shared])
                orphans = orphan_uploads(http, srv.images / "uploads")
                tmps = tmp_files(srv.images, srv.texts)
        finally:
            exit_code = srv.stop()
        statuses = route_statuses(recs)
        client_5xx = statuses.get("5xx", 0)
        errors = [e for r in recs for e in r.errors]
        problems += upload_problems + result["problems"] + contention["anomalies"][:10]
        if exit_code != 0:
            problems.append(f"the server exited with {exit_code} on SIGINT")
        if errors:
            problems.append(f"{len(errors)} failed requests, e.g. {errors[:3]}")
        return {
            "cases": sum(statuses.values()) + contention["requests"],
            "wall_s": round(wall, 1),
            "responses_5xx": client_5xx + fives(contention["statuses"]),
            "server_unhandled": srv.unhandled(),
            "lost": result["lost"],
            "came_back": result["came_back"],
            "orphans": len(orphans),
            "tmp_files": len(tmps),
            "routes": load.summarize(recs, wall),
            "contention": {k: contention[k] for k in ("rounds", "requests", "anomalies")}
            | {"statuses": {str(k): v for k, v in contention["statuses"].items()}},
            "acknowledged": {"adds": len(ledger.added), "deletes": len(ledger.deleted)},
            "upload_files": upload_files,
            "problems": problems,
        }


# ---------------------------------------------------------------------------------------------
# 2. SIGKILL rounds


def scenario_kills(args: argparse.Namespace, images: list[bytes], texts: list[str], codes: Codes) -> dict[str, Any]:
    rng = random.Random(args.seed)
    kill_args = argparse.Namespace(**{**vars(args), "mix": KILL_MIX})
    rounds, ledger, problems = [], Ledger(), []
    all_recs: list[load.Record] = []
    with tempfile.TemporaryDirectory(prefix="cmhash-rel-kills-") as tmp:
        srv = Server(args, Path(tmp), extra_env={"CMHASH_COMPACT_EVERY": "20"})
        srv.start()
        try:
            for r in range(args.kills):
                recs = [load.Record() for _ in range(args.kill_clients)]
                stop = threading.Event()
                kill_args.seed = args.seed * 1000 + r
                threads = [
                    threading.Thread(
                        target=load.client,
                        args=(i, srv.base, kill_args, images, texts, time.monotonic() + 120, rec, stop, f"k{r:02d}"),
                    )
                    for i, rec in enumerate(recs)
                ]
                for t in threads:
                    t.start()
                delay = rng.uniform(1.0, 5.0)
                time.sleep(delay)
                assert srv.proc is not None
                srv.proc.send_signal(signal.SIGKILL)
                stop.set()  # the clients stop at their next request: fewer writes without an answer
                srv.proc.wait(30)
                in_compaction = any((d / MARKER_FILE).exists() for d in (srv.images, srv.texts))
                for t in threads:
                    t.join(120)
                ledger.take(recs)
                all_recs += recs
                round_ = {
                    "round": r,
                    "killed_after_s": round(delay, 2),
                    "in_compaction": in_compaction,
                    "acknowledged": sum(len(rec.added[k]) + len(rec.deleted[k]) for rec in recs for k in load.KINDS),
                    "unanswered": sum(len(rec.unsure[k]) for rec in recs for k in load.KINDS),
                }
                try:
                    round_["restart_s"] = round(srv.start(), 1)
                except SystemExit as exc:
                    round_.update(survived=False, problems=[f"restart failed: {str(exc)[-500:]}"])
                    rounds.append(round_)
                    break
                with httpx.Client(base_url=srv.base, timeout=60) as http:
                    result = audit(http, ledger, codes, texts[0])
                    orphans = orphan_uploads(http, srv.images / "uploads")
                tmps = tmp_files(srv.images, srv.texts)
                round_.update(
                    lost=result["lost"],
                    came_back=result["came_back"],
                    orphans=len(orphans),
                    tmp_files=len(tmps),
                    problems=result["problems"]
                    + ([f"orphans {orphans[:5]}"] if orphans else [])
                    + ([f"tmp files {tmps[:5]}"] if tmps else []),
                )
                round_["survived"] = not round_["problems"]
                rounds.append(round_)
                print(
                    f"  kill {r}: after {delay:.1f} s{' (in a compaction)' if in_compaction else ''}, "
                    f"{round_['acknowledged']} acknowledged writes, restart {round_['restart_s']} s: "
                    f"{'survived' if round_['survived'] else round_['problems']}",
                    flush=True,
                )
        finally:
            exit_code = srv.stop()
        if exit_code != 0:
            problems.append(f"the server exited with {exit_code} on SIGINT")
    statuses = route_statuses(all_recs)
    problems += [f"round {x['round']}: {p}" for x in rounds for p in x["problems"]]
    return {
        "cases": sum(statuses.values()),
        "kills": len(rounds),
        "kills_survived": sum(x["survived"] for x in rounds),
        "kills_in_compaction": sum(x["in_compaction"] for x in rounds),
        "responses_5xx": statuses.get("5xx", 0),
        "server_unhandled": srv.unhandled(),
        "lost": sum(x.get("lost", 0) for x in rounds),
        "came_back": sum(x.get("came_back", 0) for x in rounds),
        "orphans": max((x.get("orphans", 0) for x in rounds), default=0),
        "tmp_files": max((x.get("tmp_files", 0) for x in rounds), default=0),
        "acknowledged": {"adds": len(ledger.added), "deletes": len(ledger.deleted), "unanswered": len(ledger.unsure)},
        "rounds": rounds,
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# 3. Full disk


def fill(path: Path, leave: int) -> None:
    """Fill the file system of `path` with the file `path` until about `leave` bytes are free."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    os.truncate(path, max(0, path.stat().st_size - leave))


def scenario_disk(args: argparse.Namespace, images: list[bytes], texts: list[str], codes: Codes) -> dict[str, Any]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return {"skipped": "mounting a tmpfs needs root"}
    with tempfile.TemporaryDirectory(prefix="cmhash-rel-disk-") as tmp:
        where = Path(tmp) / "tmpfs"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if done.returncode != 0:
            return {"skipped": f"cannot mount a tmpfs: {done.stderr.strip()}"}
        try:
            return full_disk(args, Path(tmp), where, images, texts, codes)
        finally:
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=20, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20, check=False)


def full_disk(
    args: argparse.Namespace, tmp: Path, where: Path, images: list[bytes], texts: list[str], codes: Codes
) -> dict[str, Any]:
    shutil.copytree(args.image_gallery, where / "images")
    shutil.copytree(args.text_gallery, where / "texts")
    srv = Server(args, tmp, where / "images", where / "texts", extra_env={"CMHASH_COMPACT_EVERY": "4"})
    srv.start()
    statuses: Counter = Counter()
    ledger, problems, tmp_seen = Ledger(), [], 0
    filler = where / "filler"
    try:
        with httpx.Client(base_url=srv.base, timeout=60) as http:
            initial_texts = load.all_ids(http, "text", texts[0])
            fill(filler, 48 * 1024)
            for round_ in range(4):
                for n in range(40):
                    item_id = f"disk-r{round_}n{n}"
                    if n % 3 == 0:
                        content: Any = n % len(images)
                        kind = "image"
                        r = http.post(
                            "/gallery/images",
                            files={"files": ("q.jpg", images[content], "image/jpeg")},
                            data={"ids": item_id},
                        )
                    else:
                        content, kind = f"{texts[n % len(texts)]} disk {round_} {n}", "text"
                        r = http.post(
                            "/gallery/texts",
                            json={"items": [{"id": item_id, "text": content, "metadata": {"pad": "p" * 2000}}]},
                        )
                    statuses[r.status_code] += 1
                    if r.status_code == 201:
                        ledger.added[item_id] = (kind, None)
                    elif r.status_code >= 500:
                        ledger.refused_adds[item_id] = kind
                    if n % 5 == 4:  # a delete of an acknowledged text (or an initial one) now and then
                        victims = sorted(
                            i for i, (k, _) in ledger.added.items() if k == "text" and i not in ledger.deleted
                        ) or [i for i in initial_texts if i not in ledger.deleted and i not in ledger.refused_deletes]
                        d = http.delete(f"/gallery/texts/{victims[0]}")
                        statuses[d.status_code] += 1
                        if d.status_code == 200:
                            ledger.deleted[victims[0]] = "text"
                        elif d.status_code >= 500:
                            ledger.refused_deletes[victims[0]] = "text"
                    tmp_seen = max(tmp_seen, len(tmp_files(where)))
                os.truncate(filler, max(0, filler.stat().st_size - 24 * 1024))  # some room again: writes resume
            tmps_before_restart = tmp_files(where)
    finally:
        exit_code = srv.stop()  # its final compaction may fail on the full disk: that must lose nothing
    filler.unlink(missing_ok=True)
    srv.start()
    try:
        with httpx.Client(base_url=srv.base, timeout=60) as http:
            result = audit(http, ledger, None, texts[0])
            orphans = orphan_uploads(http, srv.images / "uploads")
        tmps = tmp_files(where)
    finally:
        srv.stop()
    if 507 not in statuses:
        problems.append(f"no write was refused: the disk never filled ({dict(statuses)})")
    if odd := {s: n for s, n in statuses.items() if s not in (200, 201, 507)}:
        problems.append(f"statuses other than 200, 201 and 507: {odd}")
    if exit_code != 0:
        problems.append(f"the server exited with {exit_code} on SIGINT on the full disk")
    problems += result["problems"]
    return {
        "cases": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "responses_5xx": fives(statuses, ignore=(507,)),
        "responses_500": statuses.get(500, 0),
        "responses_507": statuses.get(507, 0),
        "server_unhandled": srv.unhandled(),
        "lost": result["lost"],
        "came_back": result["came_back"],
        "orphans": len(orphans),
        "tmp_files": len(tmps) + len(tmps_before_restart),
        "tmp_files_seen_while_writing": tmp_seen,
        "acknowledged": {"adds": len(ledger.added), "deletes": len(ledger.deleted)},
        "refused": {"adds": len(ledger.refused_adds), "deletes": len(ledger.refused_deletes)},
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# 4. Hostile input


def hostile_requests(image: bytes) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx keyword arguments) of each hostile request; each must get a 4xx."""
    deep = b"[" * 100_000 + b"]" * 100_000
    js = {"Content-Type": "application/json"}
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # a PNG claiming 10^10 pixels, without data
    big_png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")
    cases: list[tuple[str, str, str, dict[str, Any]]] = []

    def up(name: str, data: bytes, field: str = "files", **form: Any) -> dict[str, Any]:
        return {"files": {field: (name, data, "image/jpeg")}, "data": form}

    for route in ("/search/text-to-image", "/search/text-to-text", "/encode/text", "/gallery/texts"):
        cases += [
            (f"{route} truncated JSON", "POST", route, {"content": b'{"text": "a', "headers": js}),
            (f"{route} non-UTF-8 JSON", "POST", route, {"content": b'{"text": "caf\xe9 \xff"}', "headers": js}),
            (f"{route} deeply nested JSON", "POST", route, {"content": deep, "headers": js}),
            (f"{route} empty body", "POST", route, {"content": b"", "headers": js}),
            (f"{route} array body", "POST", route, {"content": b"[]", "headers": js}),
            (f"{route} NaN", "POST", route, {"content": b'{"text": "a", "k": NaN}', "headers": js}),
            (
                f"{route} 11 MB body",
                "POST",
                route,
                {"content": b'{"text": "' + b"b" * (11 * 2**20) + b'"}', "headers": js},
            ),
            (
                f"{route} 12 MB chunked body",
                "POST",
                route,
                {"content": (b"x" * 2**20 for _ in range(12)), "headers": js},
            ),
            (
                f"{route} text/plain",
                "POST",
                route,
                {"content": b'{"text": "a"}', "headers": {"Content-Type": "text/plain"}},
            ),
        ]
    meta = lambda m: {"json": {"items": [{"id": "hostile-1", "text": "a red square", "metadata": m}]}}  # noqa: E731
    nested: dict[str, Any] = {}
    for _ in range(200):
        nested = {"a": nested}
    cases += [
        ("texts metadata 100 KB", "POST", "/gallery/texts", meta({"pad": "x" * 100_000})),
        ("texts metadata 200 levels deep", "POST", "/gallery/texts", meta(nested)),
        ("texts metadata 10^5 keys", "POST", "/gallery/texts", meta({f"k{i}": i for i in range(100_000)})),
        ("texts metadata 2^70 integer", "POST", "/gallery/texts", meta({"n": 2**70})),
        ("texts 300 items", "POST", "/gallery/texts", {"json": {"items": [{"text": f"t {i}"} for i in range(300)]}}),
        ("texts id with NUL", "POST", "/gallery/texts", {"json": {"items": [{"id": "a\x00", "text": "a red square"}]}}),
        (
            "texts extra field path",
            "POST",
            "/gallery/texts",
            {"json": {"items": [{"id": "h", "text": "a", "path": "/etc/passwd"}]}},
        ),
        (
            "images metadata 100000 brackets",
            "POST",
            "/gallery/images",
            {"files": {"files": ("h.jpg", image, "image/jpeg")}, "data": {"metadata": "[" * 100_000}},
        ),
        (
            "images metadata NaN",
            "POST",
            "/gallery/images",
            {"files": {"files": ("h.jpg", image, "image/jpeg")}, "data": {"metadata": '{"s": NaN}'}},
        ),
        (
            "images metadata 100 KB",
            "POST",
            "/gallery/images",
            {
                "files": {"files": ("h.jpg", image, "image/jpeg")},
                "data": {"metadata": json.dumps({"p": "x" * 100_000})},
            },
        ),
        (
            "images two ids one file",
            "POST",
            "/gallery/images",
            {"files": {"files": ("h.jpg", image, "image/jpeg")}, "data": {"ids": ["a", "b"]}},
        ),
        ("images 11 MB upload", "POST", "/gallery/images", up("h.jpg", b"\xff" * (11 * 2**20))),
        ("images 10^10-pixel header", "POST", "/gallery/images", up("h.png", big_png)),
        ("images truncated JPEG", "POST", "/gallery/images", up("h.jpg", image[: len(image) // 2])),
        ("images zero bytes", "POST", "/gallery/images", up("h.jpg", b"")),
        ("images PDF as JPEG", "POST", "/gallery/images", up("h.jpg", b"%PDF-1.7\n%%EOF\n")),
        ("search image 10^10-pixel header", "POST", "/search/image-to-text", up("h.png", big_png, "file")),
        (
            "search image k=10^30",
            "POST",
            "/search/image-to-text",
            {"files": {"file": ("h.jpg", image, "image/jpeg")}, "data": {"k": str(10**30)}},
        ),
        (
            "search image k non-UTF-8",
            "POST",
            "/search/image-to-image",
            {"files": {"file": ("h.jpg", image, "image/jpeg")}, "data": {"k": b"\xff\xfe"}},
        ),
        ("search text radius -10^30", "POST", "/search/text-to-image", {"json": {"text": "red", "radius": -(10**30)}}),
        ("search text offset 10^30", "POST", "/search/text-to-image", {"json": {"text": "red", "offset": 10**30}}),
        ("Host evil.example", "GET", "/gallery/texts", {"headers": {"Host": "evil.example"}}),
        (
            "Host evil.example on a write",
            "POST",
            "/gallery/texts",
            {"json": {"items": [{"id": "hostile-2", "text": "a red square"}]}, "headers": {"Host": "evil.example"}},
        ),
        ("Host with bad characters", "GET", "/readyz", {"headers": {"Host": "a b"}}),
        (
            "Origin evil.example on a write",
            "POST",
            "/gallery/texts",
            {
                "json": {"items": [{"id": "hostile-3", "text": "a red square"}]},
                "headers": {"Origin": "http://evil.example"},
            },
        ),
        (
            "Origin evil.example on a delete",
            "DELETE",
            "/gallery/texts/hostile-4",
            {"headers": {"Origin": "http://evil.example"}},
        ),
        (
            "Origin null on an upload",
            "POST",
            "/gallery/images",
            {**up("h.jpg", image, ids="hostile-5"), "headers": {"Origin": "null"}},
        ),
        ("1 MB header", "GET", "/gallery/texts", {"headers": {"X-Pad": "p" * 2**20}}),
        ("GET id ..%2f..%2fetc%2fpasswd", "GET", "/gallery/images/..%2f..%2fetc%2fpasswd/file", {}),
        ("GET id %00", "GET", "/gallery/texts/%00", {}),
        ("GET id %ff%fe", "GET", "/gallery/texts/%ff%fe", {}),
        ("DELETE id of 20000 chars", "DELETE", "/gallery/texts/" + "z" * 20_000, {}),
        ("PATCH an item", "PATCH", "/gallery/texts/x", {"json": {"text": "x"}}),
        ("DELETE a gallery", "DELETE", "/gallery/texts", {}),
    ]
    return cases


def scenario_hostile(args: argparse.Namespace, images: list[bytes], texts: list[str], codes: Codes) -> dict[str, Any]:
    wanted = ["issue_mix"]  # three hostile images at once
    files = hostile_image_files([name for w in wanted for name in IMAGE_SCENARIOS[w]])
    statuses: Counter = Counter()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cmhash-rel-hostile-") as tmp:
        srv = Server(args, Path(tmp))
        srv.start()
        try:
            assert srv.proc is not None
            rss_before = status_kib(srv.proc.pid, "VmRSS") / 1024
            image_results = run_scenarios(srv.base, srv.proc.pid, files, wanted, 120)
            with httpx.Client(base_url=srv.base, timeout=120) as http:
                before = {kind: listed(http, kind) for kind in load.KINDS}
                for name, method, path, kw in hostile_requests(images[0]):
                    try:
                        r = http.request(method, path, **kw)
                        status: Any = r.status_code
                    except httpx.TransportError as exc:  # a closed connection is a refusal, not a 5xx
                        status = f"closed ({type(exc).__name__})"
                    statuses[status] += 1
                    if not (isinstance(status, int) and 400 <= status < 500):
                        failures.append(f"{name}: {status}")
                healthy = (
                    http.get("/readyz").status_code == 200
                    and http.post("/search/text-to-image", json={"text": texts[0], "k": 3}).status_code == 200
                )
                unchanged = {kind: listed(http, kind) for kind in load.KINDS} == before
                orphans = orphan_uploads(http, srv.images / "uploads")
                rss_after = status_kib(srv.proc.pid, "VmRSS") / 1024
        finally:
            srv.stop()
        tmps = tmp_files(srv.images, srv.texts)
    image_5xx = sum(s >= 500 for r in image_results.values() for s in r["statuses"])
    problems = [f"hostile request {f}" for f in failures if f.split(": ")[-1].startswith("5")]
    problems += [
        f"hostile images {n}: {r['statuses']}, +{r['peak_growth_mib']} MiB"
        for n, r in image_results.items()
        if not r["ok"]
    ]
    if not healthy:
        problems.append("the server was not healthy after the sweep")
    if not unchanged:
        problems.append("a refused request changed a gallery")
    return {
        "cases": sum(statuses.values()) + sum(len(r["statuses"]) for r in image_results.values()),
        "responses_5xx": fives(statuses) + image_5xx,
        "server_unhandled": srv.unhandled(),
        "lost": 0 if unchanged else 1,
        "came_back": 0,
        "orphans": len(orphans),
        "tmp_files": len(tmps),
        "peak_rss_growth_mib": max(r["peak_growth_mib"] for r in image_results.values()),
        "rss_mib": {"start": round(rss_before, 1), "end": round(rss_after, 1)},
        "hostile_images": image_results,
        "sweep_statuses": {str(k): v for k, v in statuses.items()},
        "sweep_not_4xx": failures,
        "healthy_after": healthy,
        "galleries_unchanged": unchanged,
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| scenario | cases | 5xx | acknowledged writes lost | refused/deleted writes back | orphans + tmp files "
        "| peak RSS growth | kills survived |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "load": "mixed load",
        "kills": "SIGKILL rounds",
        "disk": "full disk (5 MB tmpfs)",
        "hostile": "hostile input",
    }
    for name, r in results.items():
        if "skipped" in r:
            rows.append(f"| {names[name]} | skipped: {r['skipped']} | | | | | | |")
            continue
        five = str(r["responses_5xx"])
        if name == "disk":
            five += f" (507: {r['responses_507']}, 500: {r['responses_500']})"
        rss = f"{r['peak_rss_growth_mib']:.0f} MiB" if "peak_rss_growth_mib" in r else "-"
        kills = f"{r['kills_survived']} / {r['kills']}" if "kills" in r else "-"
        rows.append(
            f"| {names[name]} | {r['cases']} | {five} | {r['lost']} | {r['came_back']} | "
            f"{r['orphans']} + {r['tmp_files']} | {rss} | {kills} |"
        )
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    images, texts = load.load_queries(args.queries)
    codes = Codes(images)
    run = {"load": scenario_load, "kills": scenario_kills, "disk": scenario_disk, "hostile": scenario_hostile}
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name in args.scenarios:
        t0 = time.monotonic()
        print(f"{name} ...", flush=True)
        try:
            results[name] = run[name](args, images, texts, codes)
        except (Exception, SystemExit) as exc:  # a scenario that could not run is a failed goal, not a stop
            results[name] = {
                "cases": 0,
                "responses_5xx": 0,
                "lost": 0,
                "came_back": 0,
                "orphans": 0,
                "tmp_files": 0,
                "problems": [f"the scenario failed: {type(exc).__name__}: {str(exc)[-1500:]}"],
            }
        results[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {results[name]['seconds']} s, problems: {results[name].get('problems') or 'none'}", flush=True)
    problems = [f"{name}: {p}" for name, r in results.items() for p in r.get("problems", [])]
    markdown = table(results)
    path = write_result(
        "reliability",
        {
            "benchmark": "reliability",
            "model": str(args.model),
            "seconds": round(time.monotonic() - started, 1),
            "settings": {
                k: getattr(args, k)
                for k in ("duration", "clients", "contenders", "kills", "kill_clients", "threads", "seed", "scenarios")
            },
            "scenarios": results,
            "table": markdown,
            "problems": problems,
            "all_ok": not problems,
        },
    )
    print()
    print(markdown)
    for problem in problems:
        print(f"PROBLEM: {problem[:600]}")
    print(f"\nwrote {path}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
