"""Mutation testing of the suite, outside CI: does each small deliberate bug fail a test?

A committed list of mutants (file, exact original snippet, replacement, the test files that must
catch it) over index/ (faiss_store, journal, search), the gallery routes, the search radius check,
model/training/metrics.py and DJSRH. Each mutant is applied to its own temporary copy of the
repository (the tracked and untracked-but-not-ignored files, from `git ls-files`; the working tree
is never modified: others edit it), and its tests run there with `pytest -x -q`. A mutant whose
tests fail is killed, one whose tests pass survived. Prints one line per mutant and the score;
writes bench/out/mutation.json.

First the union of all named tests runs on an unmutated copy (the baseline): if it fails, the run
stops, since every mutant would then look killed. The tiny trained model of the test suite
(tests/conftest.py's tiny_run / tiny_model_dir, about a minute of training) is built once by the
baseline and reused by the mutants through a small pytest plugin; no mutant touches training.

    .venv/bin/python bench/mutation.py                 # every mutant
    .venv/bin/python bench/mutation.py --only metrics  # mutants whose name contains "metrics"
    .venv/bin/python bench/mutation.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.flags import write_result  # noqa: E402


@dataclass(frozen=True)
class Mutant:
    name: str  # short label
    file: str  # repository-relative path
    original: str  # exact snippet, present `occurrences` times in the file (every one is mutated)
    replacement: str
    tests: tuple[str, ...]  # test files that must catch it
    why: str = ""  # the bug it stands for
    args: tuple[str, ...] = ()  # extra pytest options (e.g. a -k filter)
    occurrences: int = 1  # how often the snippet occurs (a bug repeated in the Hamming and re-ranked paths: 2)


FAISS = "tests/index/test_faiss_store.py"
JOURNAL = "tests/index/test_journal.py"
METRICS = "tests/model/training/test_metrics.py"
SEARCH = "tests/service/test_search.py"
RADIUS = "tests/service/test_radius.py"
UPLOAD_IDS = "tests/service/test_gallery_upload_ids.py"
GALLERY_API = "tests/service/test_gallery_api.py"
HOSTILE = "tests/service/test_hostile.py"
_ROOM_AND_STORED = (  # the two lines of add_images between its metadata checks
    """    room = str(folder / f"{'0' * 24}-{'0' * 12}.webp")  """
    """# as long as any stored path (checked before storing)\n"""
    """    stored = [{**m, "path": room, "filename": f.filename or ""} for m, f in zip(metas, files, strict=True)]\n"""
)
NO_FUZZ = ("-k", "not fuzzed")  # the schemathesis part of test_hostile.py: slow, and not what these target

MUTANTS: list[Mutant] = [
    # ---- index/faiss_store.py
    Mutant(
        "faiss: range search exclusive",
        "index/faiss_store.py",
        "raw = self._range_raw(q, int(radius) + 1)",
        "raw = self._range_raw(q, int(radius))",
        (FAISS,),
        "radius lookups drop the items at exactly the radius",
    ),
    Mutant(
        "faiss: radius == bits refused",
        "index/faiss_store.py",
        "if isinstance(radius, bool) or int(radius) != radius or radius < 0:",
        "if isinstance(radius, bool) or int(radius) != radius or radius < 0 or radius >= self.bits:",
        (FAISS,),
        "(b) a radius equal to the code length is refused",
    ),
    Mutant(
        "faiss: range ties reversed",
        "index/faiss_store.py",
        "order = np.lexsort((i, d))",
        "order = np.lexsort((-i, d))",
        (FAISS,),
        "ties of a radius lookup in reverse insertion order",
    ),
    Mutant(
        "faiss: straddling tie group ignored",
        "index/faiss_store.py",
        "if fetch < n and D[j, kk - 1] == D[j, fetch - 1]:",
        "if fetch < n and D[j, kk - 1] == D[j, fetch - 1] and False:",
        (FAISS,),
        "k-NN keeps FAISS' arbitrary tie order when the tie group extends past the fetch",
    ),
    Mutant(
        "faiss: get returns padded code",
        "index/faiss_store.py",
        'return {"id": id, "code": code[: self.code_bytes].copy()',
        'return {"id": id, "code": code[: self.padded_bytes].copy()',
        (FAISS,),
        "get() returns the FAISS padding bytes with the code",
    ),
    # ---- index/journal.py
    Mutant(
        "journal: marker test inverted",
        "index/journal.py",
        'if _current_snapshot(self.path) != state["before"]:',
        'if _current_snapshot(self.path) == state["before"]:',
        (JOURNAL,),
        "after a crash inside compaction, records are skipped when the save did not complete",
    ),
    Mutant(
        "journal: torn line kept",
        "index/journal.py",
        "if good < len(data):  # drop a torn last line",
        "if False:  # drop a torn last line",
        (JOURNAL,),
        "a torn last line is not cut off: the next append lands after it",
    ),
    Mutant(
        "journal: compaction one late",
        "index/journal.py",
        "if self._pending < self._compact_at:",
        "if self._pending <= self._compact_at:",
        (JOURNAL,),
        "compaction runs one write after compact_every",
    ),
    Mutant(
        "journal: failed append kept in the store",
        "index/journal.py",
        "            except BaseException:\n                self.gallery.store.remove(ids)\n                raise",
        "            except BaseException:\n                raise",
        (JOURNAL,),
        "an add whose journal write failed stays visible (not durable, yet served)",
    ),
    # ---- index/search.py
    Mutant(
        "search: rank ignores offset",
        "index/search.py",
        "rank=offset + position + 1,",
        "rank=position + 1,",
        (SEARCH, RADIUS),
        "ranks restart at 1 on every page",
    ),
    Mutant(
        "search: k-NN window ignores offset",
        "index/search.py",
        "found = [(ids[row][: offset + k], dists[row][: offset + k])",
        "found = [(ids[row][:k], dists[row][:k])",
        (SEARCH,),
        "pages after the first come back short or empty",
    ),
    Mutant(
        "search: radius total counts the page",
        "index/search.py",
        "explain = radius is not None and not len(all_ids) and explain_empty\n        pages.append(Page(hits, len(all_ids),",
        "explain = radius is not None and not len(all_ids) and explain_empty\n        pages.append(Page(hits, len(hits),",
        (SEARCH, RADIUS),
        "a radius search's total is the page size",
        occurrences=2,
    ),
    # ---- service/deps.py (the route-level radius check)
    Mutant(
        "routes: radius == bits refused",
        "service/deps.py",
        "if radius is not None and not 0 <= radius <= bits:",
        "if radius is not None and not 0 <= radius < bits:",
        (SEARCH, RADIUS),
        "(b) the search routes refuse radius == bits",
    ),
    # ---- service/routers/gallery.py
    Mutant(
        "gallery: codes of a multi-file upload reversed",
        "service/routers/gallery.py",
        'codes = await asyncio.to_thread(state.encode, "image", arrays)',
        'codes = (await asyncio.to_thread(state.encode, "image", arrays))[::-1]',
        (GALLERY_API, UPLOAD_IDS),
        "(a) a multi-file upload assigns codes to the wrong ids",
    ),
    Mutant(
        "gallery: metadata checks removed",
        "service/routers/gallery.py",
        "    _check_metadata(metas, state.settings)\n    folder = upload_dir(state)\n"
        + _ROOM_AND_STORED
        + "    _check_metadata(stored, state.settings)  # with the path and file name the server adds\n",
        "    folder = upload_dir(state)\n" + _ROOM_AND_STORED,
        (HOSTILE,),
        "(g) NaN image metadata is no longer a 400 (it becomes a 409 conflict)",
        NO_FUZZ,
    ),
    Mutant(
        "gallery: user metadata dropped",
        "service/routers/gallery.py",
        'stored = [{**m, "path": room, "filename": f.filename or ""}',
        'stored = [{"path": room, "filename": f.filename or ""}',
        (GALLERY_API, UPLOAD_IDS),
        "an image's metadata is not stored",
    ),
    Mutant(
        "gallery: file names of a multi-file upload reversed",
        "service/routers/gallery.py",
        "for m, f in zip(metas, files, strict=True)]",
        "for m, f in zip(metas, files[::-1], strict=True)]",
        (GALLERY_API, UPLOAD_IDS),
        "each item records another file's name",
    ),
    Mutant(
        "gallery: stored files of a multi-file upload reversed",
        "service/routers/gallery.py",
        "for m, p in zip(stored, paths, strict=True)]",
        "for m, p in zip(stored, paths[::-1], strict=True)]",
        (GALLERY_API, UPLOAD_IDS),
        "each item points at another item's uploaded file",
    ),
    Mutant(
        "gallery: id length limit off by one",
        "service/routers/gallery.py",
        "or len(item_id) > MAX_ID_CHARS\n",
        "or len(item_id) > MAX_ID_CHARS + 1\n",
        (HOSTILE,),
        "a 257-character id is accepted",
        NO_FUZZ,
    ),
    Mutant(
        "gallery: delete keeps the upload",
        "service/routers/gallery.py",
        "                await asyncio.to_thread(_unlink_quietly, path)\n    return Deleted(",
        "                pass\n    return Deleted(",
        (GALLERY_API,),
        "deleting an image leaves its uploaded file behind",
    ),
    Mutant(
        "gallery: text metadata loses the text",
        "service/routers/gallery.py",
        'metas = [{**(item.metadata or {}), "text": item.text} for item in body.items]',
        "metas = [dict(item.metadata or {}) for item in body.items]",
        (GALLERY_API, SEARCH),
        "a text item's metadata no longer holds its text",
    ),
    # ---- model/training/metrics.py
    Mutant(
        "metrics: signed 8-bit sort key",
        "model/training/metrics.py",
        "key_type = np.uint8 if bits <= np.iinfo(np.uint8).max else np.uint16",
        "key_type = np.int8",
        (METRICS,),
        "(d) distances above 127 wrap: shows only with long codes",
    ),
    Mutant(
        "metrics: 8-bit sort key at any length",
        "model/training/metrics.py",
        "key_type = np.uint8 if bits <= np.iinfo(np.uint8).max else np.uint16",
        "key_type = np.uint8",
        (METRICS,),
        "(d) distances above 255 wrap: shows only above 255 bits",
    ),
    Mutant(
        "metrics: precision off by one position",
        "model/training/metrics.py",
        "summed = np.where(rel, hits / positions, 0.0).sum(axis=1)",
        "summed = np.where(rel, hits / (positions + 1), 0.0).sum(axis=1)",
        (METRICS,),
        "AP divides by position + 1",
    ),
    Mutant(
        "metrics: top-k cut one too long",
        "model/training/metrics.py",
        "cut = len(r) if top_k is None else min(top_k, len(r))",
        "cut = len(r) if top_k is None else min(top_k + 1, len(r))",
        (METRICS,),
        "MAP@k reads k + 1 items",
    ),
    Mutant(
        "metrics: pooled precision denominator",
        "model/training/metrics.py",
        '"precision": ratio(relevant_retrieved.sum(axis=0), retrieved.sum(axis=0)),',
        '"precision": ratio(relevant_retrieved.sum(axis=0), retrieved.sum(axis=0) + 1),',
        (METRICS,),
        "pooled precision divides by one more item",
    ),
    # ---- model/training/methods/djsrh.py
    Mutant(
        "djsrh: rescale flags swapped",
        "model/training/methods/djsrh.py",
        "rescale_image=bool((batch.image_features >= 0).all()),\n"
        "            rescale_text=bool((batch.text_features >= 0).all()),",
        "rescale_image=bool((batch.text_features >= 0).all()),\n"
        "            rescale_text=bool((batch.image_features >= 0).all()),",
        ("tests/model/training/methods/test_djsrh.py",),
        "(c) each modality rescaled by the other's sign test",
    ),
]

# A pytest plugin written into each copy: tiny_run and tiny_model_dir (session fixtures of
# tests/conftest.py) are built once, by the baseline, and then served from a cache.
PLUGIN = """
import os, shutil
from pathlib import Path

CACHE = Path(os.environ["CMHASH_MUTATION_MODEL_CACHE"])
NAMES = ("tiny_run", "tiny_model_dir")


def _cached(name, original):
    def fixture(**kwargs):
        done = CACHE / name / ".done"
        if done.exists():
            return CACHE / name / "dir"
        result = original(**kwargs)
        shutil.rmtree(CACHE / name, ignore_errors=True)
        shutil.copytree(result, CACHE / name / "dir")
        done.touch()
        return result
    return fixture


def pytest_collection_modifyitems(items):
    seen = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name in NAMES:
            for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
                if id(fixturedef) not in seen:
                    seen.add(id(fixturedef))
                    fixturedef.func = _cached(name, fixturedef.func)
"""


def tracked_files() -> list[str]:
    """Files of the working tree git knows of or would add (tracked, and untracked not ignored)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


def copy_tree(dest: Path, files: list[str]) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    (dest / "_mutation_plugin.py").write_text(PLUGIN)


def apply(root: Path, mutant: Mutant) -> None:
    path = root / mutant.file
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.original)
    if count != mutant.occurrences:
        raise ValueError(f"{mutant.name}: the original snippet occurs {count} times in {mutant.file}")
    path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")


def run_tests(root: Path, tests: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, output tail) of `pytest -x -q tests` in `root`."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "_mutation_plugin",
        "-p",
        "no:randomly",
        *tests,
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        return "timeout", time.monotonic() - started, (out.decode() if isinstance(out, bytes) else out)[-2000:]
    outcome = "passed" if done.returncode == 0 else "failed"
    return outcome, time.monotonic() - started, (done.stdout + done.stderr)[-2000:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the mutants whose name contains this text")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--timeout", type=float, default=900, help="seconds per test run (a run past it counts as killed)")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON output (default: docs/results/mutation.json from a clean tree, bench/out/ otherwise)",
    )
    args = p.parse_args()
    mutants = [m for m in MUTANTS if args.only in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name:50s} {m.file:35s} {' '.join(m.tests)}")
        return 0
    files = tracked_files()
    with tempfile.TemporaryDirectory(prefix="cmhash-mutation-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CMHASH_")}
        env.update(CMHASH_MUTATION_MODEL_CACHE=str(work / "model-cache"), PYTHONDONTWRITEBYTECODE="1")
        (work / "model-cache").mkdir()
        # baseline: every named test on the unmutated copy (and the import check: code from the copy)
        base = work / "baseline"
        copy_tree(base, files)
        for m in mutants:  # every snippet is found, once, before anything runs
            count = (base / m.file).read_text(encoding="utf-8").count(m.original)
            if count != m.occurrences:
                print(f"{m.name}: the original snippet occurs {count} times in {m.file}", file=sys.stderr)
                return 2
        check = subprocess.run(
            [
                sys.executable,
                "-c",
                "import index.search, model.training.metrics; "
                "print(index.search.__file__); print(model.training.metrics.__file__)",
            ],
            cwd=base,
            env=env,
            capture_output=True,
            text=True,
        )
        if not all(line.startswith(str(base)) for line in check.stdout.split()):
            print(f"the copy's code is not what gets imported:\n{check.stdout}{check.stderr}", file=sys.stderr)
            return 2
        union = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        extra = tuple(dict.fromkeys(a for m in mutants for a in m.args))  # only "-k not fuzzed" so far
        outcome, seconds, tail = run_tests(base, (*extra, *union), env, args.timeout * 2)
        print(f"baseline ({len(union)} test files): {outcome} in {seconds:.0f} s", flush=True)
        if outcome != "passed":
            print(tail, file=sys.stderr)
            return 2
        shutil.rmtree(base)
        results = []
        for n, m in enumerate(mutants, 1):
            root = work / f"m{n:02d}"
            copy_tree(root, files)
            apply(root, m)
            outcome, seconds, tail = run_tests(root, (*m.args, *m.tests), env, args.timeout)
            verdict = "survived" if outcome == "passed" else "killed"
            print(
                f"[{n:2d}/{len(mutants)}] {verdict:8s} {seconds:5.0f} s  {m.name}"
                + (" (timeout)" if outcome == "timeout" else ""),
                flush=True,
            )
            results.append(
                {
                    **asdict(m),
                    "verdict": verdict,
                    "outcome": outcome,
                    "seconds": round(seconds, 1),
                    "tail": tail if verdict == "survived" else "",
                }
            )
            shutil.rmtree(root)
    killed = sum(r["verdict"] == "killed" for r in results)
    score = killed / len(results) if results else 0.0
    print(f"score: {killed}/{len(results)} killed ({100 * score:.0f} %)")
    result = {"killed": killed, "total": len(results), "score": score, "mutants": results}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    elif not args.only:  # a complete run: docs/results/mutation.json at a clean commit
        print(f"wrote {write_result('mutation', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
