"""The tuning protocol is nested: bench/tune.py tunes inside the training rows of each evaluation
split, and bench/quality.py refuses settings whose tuning rows include a query row of the split
it reports them on. Checked on a synthetic 730-item dataset shaped like the MIRFLICKR sample,
and on the committed bench/settings.json against the real data when it is present."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from model.training.config import shared_data_root
from model.training.data import CrossModalDataset
from model.training.data.base import make_folds

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import tune  # noqa: E402

N_SAMPLE = 730


def sample_like(n: int = N_SAMPLE) -> CrossModalDataset:
    rng = np.random.default_rng(0)
    return CrossModalDataset(
        name="mirflickr",
        ids=[str(i) for i in range(n)],
        labels=(rng.random((n, 24)) < 0.15).astype(np.uint8),
        label_names=[f"l{i}" for i in range(24)],
        image_features=np.zeros((n, 2), np.float32),
        text_features=np.zeros((n, 2), np.float32),
    )


def test_tuning_rows_of_each_fold_are_that_folds_training_rows() -> None:
    ds = sample_like()
    protocol = tune.PROTOCOLS["mirflickr"]
    folds = make_folds(N_SAMPLE, protocol["folds"], protocol["seed"])
    for i, fold in enumerate(folds):
        record = {"split": tune.split_record("mirflickr", i), "bits": 64, "validation_fraction": 0.2}
        rows = tune.tuning_rows(ds, "mirflickr", record)
        assert np.array_equal(rows, fold.train)  # fit + validation = exactly fold i's training rows
        assert len(np.intersect1d(rows, fold.query)) == 0


def test_tuning_config_carves_validation_inside_the_fold() -> None:
    from model.training.data import carve_validation

    cfg = tune.tuning_config("mirflickr", 64, tune.split_record("mirflickr", 3), threads=1)
    assert (cfg.folds, cfg.fold, cfg.validation_fraction) == (5, 3, 0.2)
    fold = make_folds(N_SAMPLE, 5, cfg.seed)[3]
    fit, val = carve_validation(fold.train, cfg.validation_fraction, cfg.seed)
    assert len(np.intersect1d(fit, val)) == 0 and set(fit) | set(val) == set(fold.train)


def test_every_method_gets_the_same_budget() -> None:
    sizes = {}
    for method in ("bi_ncmh", "dcmh", "djsrh"):
        sizes[method] = len(tune.candidates(method, "mirflickr")) + len(tune.REFINE_GRID)
    sizes["cca_itq"] = len(tune.candidates("cca_itq", "mirflickr"))
    assert set(sizes.values()) == {tune.BUDGET}
    # Bi_NCMH's points move all three weights of eq. 11.
    points = [c["hp"] for c in tune.candidates("bi_ncmh", "mirflickr")]
    for name in ("alpha", "beta", "gamma"):
        assert len({p[name] for p in points}) > 1, name


def fold_settings(validation_for_fold) -> dict:
    """A settings file for the k-fold sample: every fold's cca_itq entry, with `_validation`
    from `validation_for_fold(i)`."""
    protocol = tune.PROTOCOLS["mirflickr"]
    raw = {"mirflickr": {"_protocol": protocol}}
    for i in range(protocol["folds"]):
        raw["mirflickr"][f"fold-{i}"] = {"cca_itq": {"hp": {"reg": 0.01}, "_validation": validation_for_fold(i)}}
    return raw


def jobs_for(raw: dict, tmp_path: Path, monkeypatch) -> list:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(raw))
    monkeypatch.setattr(quality, "load_dataset", lambda *a, **k: sample_like())
    args = quality.parse_args(
        [
            "--datasets",
            "mirflickr",
            "--methods",
            "cca_itq",
            "--bits",
            "16",
            "--settings",
            str(path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    return quality.make_jobs(args, quality.load_settings(path), threads=1)


def test_nested_settings_pass_the_leak_check(tmp_path, monkeypatch) -> None:
    jobs = jobs_for(
        fold_settings(lambda i: {"split": tune.split_record("mirflickr", i), "bits": 64, "validation_fraction": 0.2}),
        tmp_path,
        monkeypatch,
    )
    assert [j.cfg.fold for j in jobs] == list(range(5))
    assert quality.check_no_tuning_leak(jobs) == []
    seen = np.concatenate([make_folds(N_SAMPLE, 5, 0)[j.cfg.fold].query for j in jobs])
    assert sorted(seen) == list(range(N_SAMPLE))  # the reported queries cover every item once


def test_settings_tuned_on_another_split_are_refused(tmp_path, monkeypatch) -> None:
    """Settings tuned inside fold 0 (whose training rows are the other folds' queries) reused for
    every fold, and settings tuned on one seeded split reused for all (the old protocol):
    the leak check names the folds that would report tuning rows as queries."""
    reused = fold_settings(
        lambda i: {"split": tune.split_record("mirflickr", 0), "bits": 64, "validation_fraction": 0.2}
    )
    problems = quality.check_no_tuning_leak(jobs_for(reused, tmp_path, monkeypatch))
    assert len(problems) == 4 and all("were tuning rows" in p for p in problems)
    seeded = fold_settings(
        lambda i: {
            "split": {"kind": "seeded", "query_size": 100, "train_size": None, "seed": 0},
            "bits": 64,
            "validation_fraction": 0.2,
        }
    )
    assert len(quality.check_no_tuning_leak(jobs_for(seeded, tmp_path, monkeypatch))) == 5
    unrecorded = fold_settings(lambda i: {"bits": 64})
    assert all("do not record" in p for p in quality.check_no_tuning_leak(jobs_for(unrecorded, tmp_path, monkeypatch)))


def test_missing_fold_settings_are_refused(tmp_path, monkeypatch) -> None:
    raw = fold_settings(lambda i: {"split": tune.split_record("mirflickr", i)})
    del raw["mirflickr"]["fold-2"]
    with pytest.raises(SystemExit, match=r"bench/tune\.py"):
        jobs_for(raw, tmp_path, monkeypatch)


@pytest.mark.shared_data
def test_committed_settings_never_tuned_on_a_reported_query_row() -> None:
    """Every (dataset, method, split) entry of bench/settings.json: its tuning rows, rebuilt from
    the real data, hold no query row of any split the benchmark reports it on (and, as the
    benchmark's own guard, none of any reported split of that dataset)."""
    if not shared_data_root().exists():
        pytest.skip("no ../shared/data")
    raw = json.loads((BENCH / "settings.json").read_text())
    from model.training.data import load_dataset
    from model.training.train import evaluation_split

    checked = 0
    for key, entries in raw.items():
        if key.startswith("_"):
            continue
        if "_same_as" in entries:  # run with another key's entries, as quality.load_settings reads them
            entries = {**raw[entries["_same_as"]], **entries}
        dataset, variant = quality.DATASETS[key]
        tune.ensure_data(key)  # a manifest key's manifest, written from its source dataset
        path = quality.TrainConfig(dataset=dataset, out="/tmp/x", **variant).data_path()
        ds = load_dataset(dataset, path, text_features=variant.get("text_features", "lda"))
        protocol = tune.PROTOCOLS[key]
        if protocol["kind"] == "folds":
            folds = make_folds(len(ds), protocol["folds"], protocol["seed"])
            reported = {f"fold-{i}": s.query for i, s in enumerate(folds)}
        else:
            reported = {"": ds.preset_split.query}
        for part, methods in quality._split_entries(key, entries).items():
            for method, entry in methods.items():
                if method.startswith("_"):
                    continue
                rows = tune.tuning_rows(ds, key, entry["_validation"])
                assert len(np.intersect1d(rows, reported[part])) == 0, (key, part, method)
                if protocol["kind"] == "preset":  # one split: disjoint from every reported query set
                    assert (
                        len(
                            np.intersect1d(
                                rows,
                                evaluation_split(
                                    ds, quality.TrainConfig(dataset=dataset, out="/tmp/x", **variant)
                                ).query,
                            )
                        )
                        == 0
                    )
                checked += 1
    assert checked > 0
