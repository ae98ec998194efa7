"""Retrieval-quality benchmark: train every method at several code lengths and seeds on the real
datasets, evaluate I->T and T->I retrieval (MAP, MAP@50, P-R curves) and write the tables of
docs/results.md.

    .venv/bin/python bench/quality.py                        # everything (hours on a CPU)
    .venv/bin/python bench/quality.py --epochs 2 --seeds 0 --bits 16 \\
        --methods bi_ncmh,cca_itq --datasets wikipedia-lda   # smoke test

Protocols (bench/tune.py PROTOCOLS): Wikipedia keeps its official split, run at each of
--seeds (initialisation and batch order); the 730-item MIRFLICKR sample is evaluated by k-fold
(every item a query exactly once), each fold a run, reported as the mean over folds with a 95%
confidence interval. Training settings come from bench/settings.json, tuned by bench/tune.py
inside each evaluation split's own training rows (nested): before training anything the
benchmark rebuilds every settings entry's tuning rows and refuses to run if any is a query row
of the split it would be reported on. Every flag can also be set by an environment variable
CMHASH_BENCH_<FLAG> (e.g. CMHASH_BENCH_SEEDS=0,1).
Output (--out): results.json (every run), quality.md (the tables, the command, the machine)
and pr_<dataset>_<bits>bits.png (P-R curves of every method, fixed seed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from flags import boolean, command_line, env, machine_base, usable_cpus, write_result
from tune import DATASETS as TUNE_DATASETS
from tune import PROTOCOLS, ensure_data, tuning_rows

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from model.training.config import REPO_ROOT, TrainConfig
from model.training.data import load_dataset
from model.training.evaluate import MAP_TOP_K, aggregate_folds, evaluate_codes, split_codes
from model.training.metrics import map_variant_name
from model.training.run import train_summary, write_run_dir
from model.training.train import (
    PreparedRun,
    TrainHistory,
    check_hyper_parameters,
    prepare_run,
    resolve_device,
    train_model,
)

# Benchmark dataset keys (bench/tune.py DATASETS): (TrainConfig.dataset, the fields that select
# the data variant).
DATASETS: dict[str, tuple[str, dict]] = {
    key: (fields["dataset"], {f: v for f, v in fields.items() if f != "dataset"})
    for key, fields in TUNE_DATASETS.items()
}
METHODS = ("bi_ncmh", "dcmh", "djsrh", "cca_itq")
# TrainConfig fields the benchmark sets itself; bench/settings.json may not set them.
BENCH_FIELDS = frozenset(
    {
        "dataset",
        "out",
        "method",
        "bits",
        "seed",
        "text_features",
        "device",
        "threads",
        "folds",
        "fold",
        "query_size",
        "train_size",
        "validation_fraction",
    }
)
# TrainConfig fields `prepare_run` reads: runs that agree on them share one PreparedRun.
PREPARE_FIELDS = (
    "dataset",
    "data",
    "text_features",
    "text_encoder",
    "min_word_count",
    "max_word_share",
    "max_words",
    "text_weighting",
    "image_backbone",
    "cache_dir",
    "query_size",
    "train_size",
    "validation_fraction",
    "folds",
    "fold",
)
MAP_KEYS = ("map", f"map@{MAP_TOP_K}")
DIRECTIONS = (("i2t", "I->T"), ("t2i", "T->I"))
PLOT_BITS = 64  # P-R curves and the training-cost table use this code length when it ran
DEFAULT_SETTINGS = Path(__file__).resolve().parent / "settings.json"
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "quality"


@dataclass
class Job:
    """One training run of the benchmark."""

    key: str  # benchmark dataset key (DATASETS)
    cfg: TrainConfig
    validation: dict  # the settings entry's "_validation" record (how and where it was tuned)

    @property
    def replica(self) -> int:
        """The fold of a k-fold run, else the seed."""
        return self.cfg.fold if self.cfg.fold is not None else self.cfg.seed

    def label(self) -> str:
        what = f"fold {self.cfg.fold}" if self.cfg.fold is not None else f"seed {self.cfg.seed}"
        return f"{self.key} {self.cfg.method} {self.cfg.bits} bits {what}"


# ---------------------------------------------------------------------------------------------
# Command line


def _choices(allowed: tuple[str, ...]):
    """An argparse type: a comma list whose items must be in `allowed`."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(allowed)}; got {text!r}")
        return list(dict.fromkeys(items))

    return parse


def _ints(text: str) -> list[int]:
    """An argparse type: a non-empty comma list of integers."""
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        items = []
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers; got {text!r}")
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its CMHASH_BENCH_<FLAG> environment variable when set."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every flag can be set by the environment variable CMHASH_BENCH_<FLAG> "
        "(upper case, '-' as '_'), e.g. CMHASH_BENCH_KEEP_RUNS=1. Keys of settings.json that "
        "start with '_' are comments.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--datasets",
        type=_choices(tuple(DATASETS)),
        default=env("datasets", ",".join(DATASETS)),
        help="comma list of benchmark datasets",
    )
    p.add_argument(
        "--methods", type=_choices(METHODS), default=env("methods", ",".join(METHODS)), help="comma list of methods"
    )
    p.add_argument("--bits", type=_ints, default=env("bits", "16,32,64,128"), help="comma list of code lengths")
    p.add_argument(
        "--seeds",
        type=_ints,
        default=env("seeds", "0,1,2"),
        help="comma list of seeds of the preset-split datasets (Wikipedia); the first is the fixed "
        "seed of the tables and plots. k-fold datasets run every fold at their protocol's seed",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=env("epochs", None),
        help="override the epochs of every deep method (smoke tests only)",
    )
    p.add_argument(
        "--settings",
        type=Path,
        default=env("settings", str(DEFAULT_SETTINGS)),
        help="JSON {dataset-key: {method: {TrainConfig fields}}}",
    )
    p.add_argument("--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="output folder")
    p.add_argument(
        "--keep-runs",
        action="store_true",
        default=boolean(env("keep-runs", "") or ""),
        help="also write every run directory under OUT/runs/<dataset>/<method>-<bits>-s<seed>",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=env("threads", None),
        help="torch CPU threads; None: every CPU this process may use",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=env("device", "auto"), help="torch device")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def add_run_flags(p: argparse.ArgumentParser, out: Path, name: str) -> None:
    """The flags a script that trains `make_jobs`' runs and measures them shares (bench/rerank.py,
    bench/i2t_ceiling.py), besides its own --datasets, --methods, --bits and seeds or folds."""
    p.add_argument("--epochs", type=int, default=env("epochs", None), help="override (smoke tests only)")
    p.add_argument("--settings", type=Path, default=env("settings", str(DEFAULT_SETTINGS)))
    p.add_argument("--out", type=Path, default=env("out", str(out)), help="run directories go to OUT/runs")
    p.add_argument("--threads", type=int, default=env("threads", None))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=env("device", "auto"))
    p.add_argument("--name", default=env("name", name), help="results file name (one per sweep)")


# ---------------------------------------------------------------------------------------------
# Settings and jobs


def _public(d: dict) -> dict:
    """`d` without its comment keys (those starting with '_')."""
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _split_entries(key: str, entries: dict) -> dict[str, dict]:
    """{"" or "fold-i": {method: entry}} of one dataset's settings."""
    if PROTOCOLS[key]["kind"] == "folds":
        return {k: v for k, v in entries.items() if k.startswith("fold-")}
    return {"": {k: v for k, v in entries.items() if not k.startswith("_")}}


def load_settings(path: Path) -> dict[str, dict[str, dict[str, dict]]]:
    """Read settings.json: {dataset key: {method: entry}} for a preset-split dataset,
    {dataset key: {"fold-i": {method: entry}}} for a k-fold one; an entry is TrainConfig fields
    plus its "_validation" record; a key with "_same_as": OTHER uses OTHER's entries (a data
    variant chosen on the same validation rows, e.g. by bench/levers.py). Returns {key: {"" or "fold-i": {method: entry}}} with the
    entries checked (keys, field names, the tuning split matching the dataset's protocol)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read settings {path}: {exc}") from None
    settings: dict[str, dict[str, dict[str, dict]]] = {}
    for key, entries in _public(raw).items():
        if "_same_as" in entries:  # a data variant run with another key's tuned settings
            entries = {**raw[entries["_same_as"]], **entries}
        if key not in DATASETS:
            raise SystemExit(f"error: {path}: unknown dataset key {key!r}; expected one of {list(DATASETS)}")
        if entries.get("_protocol", PROTOCOLS[key]) != PROTOCOLS[key]:
            raise SystemExit(
                f"error: {path}: {key} was tuned for protocol {entries['_protocol']}, the benchmark "
                f"runs {PROTOCOLS[key]}: re-run bench/tune.py --datasets {key}"
            )
        settings[key] = {}
        for part, methods in _split_entries(key, entries).items():
            settings[key][part] = {}
            for method, entry in _public(methods).items():
                if method not in METHODS:
                    raise SystemExit(
                        f"error: {path}: {key}: unknown method {method!r}; expected one of {list(METHODS)}"
                    )
                fixed = sorted(BENCH_FIELDS & _public(entry).keys())
                if fixed:
                    raise SystemExit(f"error: {path}: {key}.{method} sets {fixed}, which the benchmark sets itself")
                settings[key][part][method] = entry
    return settings


def check_no_tuning_leak(jobs: list[Job]) -> list[str]:
    """For every job: the rows its settings were tuned on (rebuilt from the entry's "_validation"
    record) must contain no query row of the split the job is evaluated and reported on.
    Returns the problems (empty when the protocol is nested)."""
    problems: list[str] = []
    datasets: dict[tuple, object] = {}
    from model.training.train import evaluation_split

    for job in jobs:
        cfg = job.cfg
        if not job.validation.get("split"):
            problems.append(
                f"{job.label()}: its settings do not record the split they were tuned on "
                f"(re-run bench/tune.py --datasets {job.key})"
            )
            continue
        data_key = (cfg.dataset, str(cfg.data_path()), cfg.text_features)
        if data_key not in datasets:
            datasets[data_key] = load_dataset(cfg.dataset, cfg.data_path(), text_features=cfg.text_features)
        ds = datasets[data_key]
        tuned = tuning_rows(ds, job.key, job.validation)  # type: ignore[arg-type]
        query = evaluation_split(ds, cfg).query  # type: ignore[arg-type]
        leaked = np.intersect1d(tuned, query)
        if len(leaked):
            problems.append(f"{job.label()}: {len(leaked)} of its {len(query)} query rows were tuning rows")
    return problems


def replicas(key: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The runs of one dataset as (settings part, TrainConfig fields): each seed of --seeds on a
    preset split, each fold (at the protocol's seed) on a k-fold dataset."""
    protocol = PROTOCOLS[key]
    if protocol["kind"] == "folds":
        return [
            (f"fold-{i}", {"folds": protocol["folds"], "fold": i, "seed": protocol["seed"]})
            for i in range(protocol["folds"])
        ]
    return [("", {"seed": seed}) for seed in args.seeds]


def make_jobs(args: argparse.Namespace, settings: dict[str, dict[str, dict[str, dict]]], threads: int) -> list[Job]:
    """Every (dataset, method, bits, seed or fold) run, in that order, with validated configs."""
    jobs = []
    for key in args.datasets:
        dataset, variant = DATASETS[key]
        ensure_data(key)
        for method in args.methods:
            for bits in args.bits:
                for part, split_fields in replicas(key, args):
                    entry = settings.get(key, {}).get(part, {}).get(method)
                    if entry is None:
                        raise SystemExit(
                            f"error: {args.settings}: no tuned settings for {key} {part or ''} {method}: "
                            f"run bench/tune.py --datasets {key} --methods {method}"
                        )
                    fields = _public(entry)
                    if args.epochs is not None and method != "cca_itq":
                        fields["epochs"] = args.epochs
                    name = f"{method}-{bits}-" + (part if part else f"s{split_fields['seed']}")
                    try:
                        cfg = TrainConfig(
                            dataset=dataset,
                            out=args.out / "runs" / key / name,
                            method=method,
                            bits=bits,
                            device=args.device,
                            threads=threads,
                            **split_fields,
                            **variant,
                            **fields,
                        )
                        check_hyper_parameters(cfg)
                    except ValueError as exc:  # pydantic's ValidationError is a ValueError
                        raise SystemExit(f"error: {key} {method} {bits} bits: {exc}") from None
                    jobs.append(Job(key, cfg, entry.get("_validation", {})))
    return jobs


# ---------------------------------------------------------------------------------------------
# Running


class PreparedRuns:
    """`prepare_run` results shared by the runs that read the same data and split: one per
    dataset variant for a preset split (Wikipedia), one per seed for a seeded split."""

    def __init__(self) -> None:
        self._runs: dict[tuple, PreparedRun] = {}

    def get(self, cfg: TrainConfig) -> PreparedRun:
        base = tuple(getattr(cfg, f) for f in PREPARE_FIELDS)
        for key in ((base, None), (base, cfg.seed)):
            if key in self._runs:
                return self._runs[key]
        start = time.perf_counter()
        run = prepare_run(cfg, progress=False)
        seeded = run.split.seed is not None or cfg.validation_fraction > 0
        self._runs[(base, cfg.seed if seeded else None)] = run
        what = (
            f"fold {cfg.fold} of {cfg.folds}"
            if cfg.fold is not None
            else f"seed {cfg.seed}"
            if seeded
            else "preset split"
        )
        tqdm.write(
            f"prepared {cfg.dataset} ({cfg.text_features if cfg.dataset == 'wikipedia' else 'tags'}, "
            f"{what}) in {time.perf_counter() - start:.1f} s"
        )
        return run


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux /proc/self/clear_refs); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(history: TrainHistory) -> float:
    """Peak resident memory since the last reset (VmHWM), else the process's peak from `history`."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        match = None
    return int(match.group(1)) / 1024.0 if match else history.peak_rss_mib


def run_job(job: Job, run: PreparedRun, keep: bool) -> dict:
    """Train and evaluate one run; return its results.json record."""
    cfg = job.cfg
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_scope = "run" if reset_peak_rss() else "process"
    start = time.perf_counter()
    model, history = train_model(cfg, run, progress=False)
    train = {
        **train_summary(cfg, run, history),
        "peak_rss_mib": peak_rss_mib(history),
        "peak_rss_scope": rss_scope,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    inp, split = run.inputs, run.eval_split
    codes = split_codes(model, inp, split.query, split.retrieval)
    metrics = (
        write_run_dir(cfg, run, model, history, codes, train) if keep else {**evaluate_codes(codes), "train": train}
    )
    return {
        "dataset": job.key,
        "method": cfg.method,
        "bits": cfg.bits,
        "seed": cfg.seed,
        "fold": cfg.fold,
        "folds": cfg.folds,
        "replica": job.replica,
        "metrics": metrics,
        "wall_seconds": time.perf_counter() - start,
        "run_dir": str(cfg.out) if keep else None,
        "settings": cfg.model_dump(mode="json", exclude={"out"}),
    }


def progress_line(record: dict) -> str:
    """One printable line per finished run."""
    m, t = record["metrics"], record["metrics"]["train"]
    scores = "  ".join(
        f"{name} {label} {m[d][k]:.4f}"
        for k, label in zip(MAP_KEYS, ("MAP", f"MAP@{MAP_TOP_K}"))
        for d, name in DIRECTIONS
    )
    what = f"fold {record['fold']}" if record.get("fold") is not None else f"seed {record['seed']}"
    warn = "  COLLAPSED" if m.get("collapse", {}).get("collapsed") else ""
    return (
        f"{record['dataset']} {record['method']} {record['bits']} bits {what}: {scores}  "
        f"chance {m['chance_map']:.4f}{warn}  | "
        f"{t['seconds_per_epoch_mean']:.2f} s/epoch x {t['epochs']}, peak {t['peak_rss_mib']:.0f} MiB, "
        f"{record['wall_seconds']:.1f} s"
    )


# ---------------------------------------------------------------------------------------------
# Provenance


def machine_info(threads: int, device: torch.device) -> dict:
    """CPU, memory, library versions and the device of the benchmark."""
    return {
        **machine_base(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def git_commit() -> str | None:
    """`git describe --always --dirty` of the repository, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def commit_result(key: str, records: list[dict], args: argparse.Namespace) -> Path:
    """docs/results/quality_<key>.json (bench/flags.py:write_result: only from a clean tree, and
    never for a smoke run with --epochs): every run of one dataset without its P-R arrays, and
    the fold aggregates of a k-fold dataset."""
    runs = [
        {
            **{k: r[k] for k in ("method", "bits", "seed", "fold", "replica", "wall_seconds")},
            "metrics": {
                **{k: v for k, v in r["metrics"].items() if k not in ("i2t", "t2i", "train")},
                **{d: {k: v for k, v in r["metrics"][d].items() if k != "pr_curve"} for d, _ in DIRECTIONS},
                "train": {
                    k: r["metrics"]["train"][k]
                    for k in ("epochs", "seconds_per_epoch_mean", "peak_rss_mib", "n_train", "evaluated_on")
                },
            },
            "settings": {k: v for k, v in r["settings"].items() if k not in ("data", "cache_dir")},
        }
        for r in records
        if r["dataset"] == key
    ]
    result = {
        "dataset": key,
        "protocol": PROTOCOLS[key],
        "seeds": replica_ids(key, args),
        "settings_file": str(args.settings.name),
        "runs": runs,
        "fold_aggregates": [a for a in fold_aggregates(records) if a["dataset"] == key],
    }
    return write_result(f"quality_{key}", result, out_dir=args.out if args.epochs is not None else None)


def write_results(path: Path, meta: dict, records: list[dict], complete: bool) -> None:
    """results.json: provenance and every run so far (rewritten after each run)."""
    path.write_text(json.dumps({**meta, "complete": complete, "runs": records}, indent=1))


# ---------------------------------------------------------------------------------------------
# Tables and figures


def by_run(records: list[dict]) -> dict[tuple[str, str, int], dict[int, dict]]:
    """Records keyed by (dataset, method, bits), then by replica (the fold, else the seed)."""
    out: dict[tuple[str, str, int], dict[int, dict]] = {}
    for r in records:
        out.setdefault((r["dataset"], r["method"], r["bits"]), {})[r.get("replica", r["seed"])] = r
    return out


def replica_ids(key: str, args: argparse.Namespace) -> list[int]:
    """The folds of a k-fold dataset, else the seeds; the first is the fixed one of plots and cost."""
    protocol = PROTOCOLS[key]
    return list(range(protocol["folds"])) if protocol["kind"] == "folds" else list(args.seeds)


def fold_aggregates(records: list[dict]) -> list[dict]:
    """Per (dataset, method, bits) of a k-fold dataset: `aggregate_folds` of its fold runs
    (per-fold MAPs, mean and 95% confidence interval)."""
    out = []
    for (key, method, bits), per in by_run(records).items():
        if PROTOCOLS[key]["kind"] != "folds" or len(per) < 2:
            continue
        metrics = aggregate_folds([per[i]["metrics"] for i in sorted(per)])
        out.append({"dataset": key, "method": method, "bits": bits, "metrics": metrics})
    return out


def fold_cell(values: list[float]) -> str:
    """Mean over folds [95% confidence interval]."""
    from scipy import stats

    k = len(values)
    mean = float(np.mean(values))
    if k < 2:
        return f"{mean:.4f}"
    half = float(stats.t.ppf(0.975, k - 1) * np.std(values, ddof=1) / np.sqrt(k))
    return f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"


def score_cell(values: list[float]) -> str:
    """The fixed seed's value, then mean ± sample std over all seeds when there are several."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values[0]:.4f} ({np.mean(values):.4f} ± {np.std(values, ddof=1):.4f})"


def cost_bits(bits: list[int]) -> int:
    """The code length of the P-R figures and the cost table: 64 when it ran, else the longest."""
    return PLOT_BITS if PLOT_BITS in bits else max(bits)


def quality_table(
    runs: dict, key: str, methods: list[str], bits: list[int], seeds: list[int], folds: bool = False
) -> list[str]:
    """Markdown rows: method x bits, I->T / T->I MAP and MAP@50, and the chance MAP (a random
    ranking's); `folds`: cells are the mean over the folds `seeds` with a 95% CI."""
    head = [f"{name} {label}" for label in ("MAP", f"MAP@{MAP_TOP_K}") for _, name in DIRECTIONS] + ["chance MAP"]
    lines = ["| Method | Bits | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(head)]
    cell = fold_cell if folds else score_cell
    for method in methods:
        for b in bits:
            per_seed = runs[(key, method, b)]
            cells = [cell([per_seed[s]["metrics"][d][k] for s in seeds]) for k in MAP_KEYS for d, _ in DIRECTIONS]
            cells.append(f"{np.mean([per_seed[s]['metrics']['chance_map'] for s in seeds]):.4f}")
            collapsed = [s for s in seeds if per_seed[s]["metrics"].get("collapse", {}).get("collapsed")]
            flag = (
                f" (collapsed: {'folds' if folds else 'seeds'} {', '.join(map(str, collapsed))})" if collapsed else ""
            )
            lines.append(f"| {method}{flag} | {b} | " + " | ".join(cells) + " |")
    return lines


def cost_table(runs: dict, key: str, methods: list[str], bits: int, seeds: list[int]) -> list[str]:
    """Markdown rows: training seconds per epoch (mean over seeds) and peak memory (max over seeds)."""
    trains = {m: [runs[(key, m, bits)][s]["metrics"]["train"] for s in seeds] for m in methods}
    gpu = any(t["peak_gpu_mib"] is not None for ts in trains.values() for t in ts)
    lines = [
        "| Method | Epochs | Training items | s / epoch | Peak RSS (MiB)" + (" | Peak GPU (MiB)" if gpu else "") + " |",
        "|---|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for method, ts in trains.items():
        per_epoch = f"{np.mean([t['seconds_per_epoch_mean'] for t in ts]):.2f}"
        row = [
            method,
            "closed form" if method == "cca_itq" else str(ts[0]["epochs"]),
            str(ts[0]["n_train"]),
            per_epoch + (" (fit)" if method == "cca_itq" else ""),
            f"{max(t['peak_rss_mib'] for t in ts):.0f}",
        ]
        if gpu:
            row.append(f"{max(t['peak_gpu_mib'] or 0.0 for t in ts):.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def settings_table(runs: dict, key: str, methods: list[str], bits: int, seed: int) -> list[str]:
    """Markdown rows: the training settings each method ran with (no training loop for cca_itq)."""
    lines = [
        "| Method | Epochs | Batch | Optimizer | LR | Weight decay | Hidden | Dropout | hp |",
        "|---|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for method in methods:
        c = runs[(key, method, bits)][seed]["settings"]
        hp = ", ".join(f"{k}={v:g}" for k, v in sorted(c["hp"].items())) or "defaults"
        if method == "cca_itq":
            row = [method, "–", "–", "–", "–", "–", "linear", "–", hp]
        else:
            hidden = ",".join(map(str, c["hidden"])) or "linear"
            row = [
                method,
                str(c["epochs"]),
                str(c["batch_size"]),
                c["optimizer"],
                f"{c['lr']:g}",
                f"{c['weight_decay']:g}",
                hidden,
                f"{c['dropout']:g}",
                hp,
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def plot_dataset_pr(runs: dict, key: str, methods: list[str], bits: int, seed: int, path: Path) -> None:
    """One PNG per dataset: I->T and T->I panels, one hash-lookup P-R curve per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, (d, name) in zip(axes, DIRECTIONS):
        for method in methods:
            pr = runs[(key, method, bits)][seed]["metrics"][d]["pr_curve"]
            precision = np.array([np.nan if v is None else v for v in pr["precision"]], dtype=np.float64)
            recall = np.asarray(pr["recall"], dtype=np.float64)
            keep = np.isfinite(precision) & np.isfinite(recall)
            ax.plot(recall[keep], precision[keep], marker="o", markersize=3, label=method)
        ax.set(
            xlabel="recall", ylabel="precision", title=f"{name}, P-R by Hamming radius", xlim=(0, 1.02), ylim=(0, 1.02)
        )
        ax.grid(True, alpha=0.4)
        ax.legend()
    fig.suptitle(f"{key}, {bits} bits, seed {seed}")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def report(records: list[dict], args: argparse.Namespace, meta: dict) -> str:
    """quality.md: provenance, then per dataset the quality, cost and settings tables."""
    runs = by_run(records)
    cbits = cost_bits(args.bits)
    m = meta["machine"]
    fixed = args.seeds[0]
    cell = (
        f"preset splits: seed {fixed}"
        + (f" (mean ± sample std over seeds {', '.join(map(str, args.seeds))})" if len(args.seeds) > 1 else "")
        + "; k-fold datasets: mean over the folds [95% confidence interval, "
        "Student t]"
    )
    lines = [
        "# Retrieval quality",
        "",
        f"Generated {meta['date']} by",
        "",
        f"    {meta['command']}",
        "",
        f"Machine: {m['nproc']} usable CPUs (nproc; {m['cpu_count']} in all), {m['cpu_model']}, "
        f"{m['memory_gib']} GiB RAM; torch {m['torch']} with {m['torch_threads']} threads on {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else "")
        + f"; commit {meta['commit'] or 'unknown'}.",
        "",
        f"Metrics: **MAP** = {map_variant_name(None)}; **MAP@{MAP_TOP_K}** = {map_variant_name(MAP_TOP_K)}. "
        f"Relevant: {records[0]['metrics']['relevance']}. I->T: image queries rank retrieval texts; T->I: text queries "
        f"rank retrieval images. Each cell: {cell}. Chance MAP: the expected MAP of a random ranking (mean "
        f"fraction of relevant retrieval items per query). Settings: tuned by bench/tune.py inside each "
        f"evaluation split's own training rows (nested; checked before the runs).",
    ]
    for key in args.datasets:
        seeds = replica_ids(key, args)
        fixed = seeds[0]
        folds = PROTOCOLS[key]["kind"] == "folds"
        fm = runs[(key, args.methods[0], args.bits[0])][fixed]["metrics"]
        what = (
            f"{len(seeds)}-fold evaluation (split seed {PROTOCOLS[key]['seed']}): each fold "
            f"{fm['n_query']} queries against {fm['n_retrieval']} retrieval items, which are also the "
            f"{fm['train']['n_train']} training items; every item is a query exactly once"
            if folds
            else f"{fm['n_query']} queries, {fm['n_retrieval']} retrieval items, {fm['train']['n_train']} training "
            f"items (evaluated on {fm['train']['evaluated_on']})"
        )
        lines += ["", f"## {key}", "", what + ".", ""]
        lines += quality_table(runs, key, args.methods, args.bits, seeds, folds)
        lines += [
            "",
            f"Training cost at {cbits} bits (s / epoch: mean over seeds; peak resident memory of the "
            "benchmark process during training, loaded data included: max over seeds).",
            "",
        ]
        lines += cost_table(runs, key, args.methods, cbits, seeds)
        lines += [
            "",
            f"Settings ({args.settings.name}" + (f", epochs overridden to {args.epochs}" if args.epochs else "") + ").",
            "",
        ]
        lines += settings_table(runs, key, args.methods, cbits, fixed)
        lines += ["", f"P-R curves: `pr_{key}_{cbits}bits.png` ({cbits} bits, {'fold' if folds else 'seed'} {fixed})."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    settings = load_settings(args.settings)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    jobs = make_jobs(args, settings, threads)
    leaks = check_no_tuning_leak(jobs)
    if leaks:
        raise SystemExit("error: settings tuned on rows the benchmark reports as queries:\n  " + "\n  ".join(leaks))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(threads, resolve_device(args.device)),
        "commit": git_commit(),
        "settings_file": str(args.settings),
    }
    records: list[dict] = []
    prepared, current = PreparedRuns(), None
    bar = tqdm(jobs, desc="quality", unit="run")
    for job in bar:
        if job.key != current:  # a new dataset: let the previous one's data go
            prepared, current = PreparedRuns(), job.key
        bar.set_postfix_str(job.label())
        records.append(run_job(job, prepared.get(job.cfg), args.keep_runs))
        tqdm.write(progress_line(records[-1]))
        write_results(args.out / "results.json", meta, records, complete=False)
    bar.close()
    write_results(
        args.out / "results.json", {**meta, "fold_aggregates": fold_aggregates(records)}, records, complete=True
    )
    runs, cbits = by_run(records), cost_bits(args.bits)
    for key in args.datasets:
        first = replica_ids(key, args)[0]
        plot_dataset_pr(runs, key, args.methods, cbits, first, args.out / f"pr_{key}_{cbits}bits.png")
    text = report(records, args, meta)
    (args.out / "quality.md").write_text(text)
    for key in args.datasets:
        committed = commit_result(key, records, args)
        first = replica_ids(key, args)[0]
        plot_dataset_pr(
            runs, key, args.methods, cbits, first, committed.parent / f"{committed.stem}_pr_{cbits}bits.png"
        )
        print(f"{key}: {committed}")
    print("\n" + text)
    print(f"written to {args.out}: results.json, quality.md, pr_*.png" + (", runs/" if args.keep_runs else ""))


if __name__ == "__main__":
    main()
