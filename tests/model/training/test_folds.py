"""K-fold evaluation: `make_folds` (every item a query exactly once, never a training or
retrieval row of its own fold), the fold fields of TrainConfig, and a k-fold `train_run`
writing RUN/fold-i plus an aggregate metrics.json (per-fold MAPs, mean, 95% CI, per-label MAPs
over all folds' queries, the folds' data warnings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import model.training.train as train_module
from model.runtime.errors import DataError, UserError
from model.training.config import TrainConfig
from model.training.data import CrossModalDataset, Split
from model.training.data.base import make_folds
from model.training.evaluate import aggregate_folds, aggregate_warnings, report, summary_line
from model.training.metrics import average_precisions


@pytest.mark.parametrize(("n", "k"), [(730, 5), (10, 3), (7, 7), (101, 10)])
def test_every_item_is_a_query_exactly_once(n: int, k: int) -> None:
    folds = make_folds(n, k, seed=4)
    assert len(folds) == k
    queries = np.concatenate([f.query for f in folds])
    assert np.array_equal(np.sort(queries), np.arange(n))  # a partition: once each
    sizes = [len(f.query) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for f in folds:
        assert len(np.intersect1d(f.query, f.train)) == 0
        assert len(np.intersect1d(f.query, f.retrieval)) == 0
        assert np.array_equal(np.union1d(f.query, f.retrieval), np.arange(n))
        assert np.array_equal(f.train, f.retrieval)


def test_folds_are_seeded() -> None:
    a, b, c = make_folds(50, 5, seed=1), make_folds(50, 5, seed=1), make_folds(50, 5, seed=2)
    assert all(np.array_equal(x.query, y.query) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.query, y.query) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 11), (3, 0)])
def test_bad_fold_counts_are_refused(n: int, k: int) -> None:
    with pytest.raises(DataError):
        make_folds(n, k, seed=0)


def test_config_fold_must_be_within_folds(tmp_path) -> None:
    TrainConfig(dataset="mirflickr", out=tmp_path, folds=5, fold=4)
    with pytest.raises(ValueError):
        TrainConfig(dataset="mirflickr", out=tmp_path, folds=5, fold=5)
    with pytest.raises(ValueError):
        TrainConfig(dataset="mirflickr", out=tmp_path, fold=0)
    with pytest.raises(ValueError):
        TrainConfig(dataset="mirflickr", out=tmp_path, folds=1)


def synthetic(n: int = 36, preset: Split | None = None) -> CrossModalDataset:
    """Two separable classes with noisy feature vectors in both modalities."""
    rng = np.random.default_rng(0)
    cls = np.arange(n) % 2
    labels = np.eye(2, dtype=np.uint8)[cls]
    centers = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0]])
    return CrossModalDataset(
        name="manifest",
        ids=[str(i) for i in range(n)],
        labels=labels,
        label_names=["a", "b"],
        image_features=(centers[cls] + rng.normal(0, 0.3, (n, 4))).astype(np.float32),
        text_features=(centers[cls][:, ::-1] + rng.normal(0, 0.3, (n, 4))).astype(np.float32),
        preset_split=preset,
    )


@pytest.mark.slow
def test_kfold_train_run_writes_folds_and_aggregate(tmp_path, monkeypatch) -> None:
    from model.training.run import evaluate_run, train_run

    ds = synthetic()
    monkeypatch.setattr(train_module, "load_dataset", lambda *a, **k: ds)
    cfg = TrainConfig(
        dataset="manifest",
        data=tmp_path / "m.jsonl",
        out=tmp_path / "run",
        method="bi_ncmh",
        bits=8,
        epochs=3,
        hidden=[16],
        batch_size=8,
        folds=3,
        device="cpu",
        cache_dir=tmp_path / "c",
    )
    metrics = train_run(cfg, progress=False)
    queries = []
    for i in range(3):
        fold = tmp_path / "run" / f"fold-{i}"
        assert (fold / "checkpoint.pt").exists() and (fold / "metrics.json").exists()
        queries += Split.load(fold / "split.json").query.tolist()
        assert TrainConfig.model_validate_json((fold / "config.json").read_text()).fold == i
    assert sorted(queries) == list(range(len(ds)))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["folds"] == 3 and saved["n_query"] == len(ds) and len(saved["per_fold"]) == 3
    for d in ("i2t", "t2i"):
        per = saved[d]["map_per_fold"]
        assert saved[d]["map"] == pytest.approx(np.mean(per))
        lo, hi = saved[d]["map_ci95"]
        assert lo <= saved[d]["map"] <= hi
        assert "map@50_ci95" in saved[d]
    assert saved["variants"]["map"].startswith("MAP (whole ranking")
    assert "collapse" in saved and "chance_map" in saved
    assert "95% CI" in summary_line(metrics)
    again = evaluate_run(tmp_path / "run", progress=False)  # re-evaluates every fold, same numbers
    assert again["i2t"]["map_per_fold"] == pytest.approx(saved["i2t"]["map_per_fold"])
    for d in ("i2t", "t2i"):
        assert [e[d] for e in again["per_label"]] == pytest.approx([e[d] for e in saved["per_label"]])
    assert again["warnings"] == saved["warnings"]


@pytest.mark.slow
def test_kfold_per_label_map_is_over_all_folds_queries(tmp_path, monkeypatch) -> None:
    """The aggregate per-label MAP is the mean AP over every query carrying the label, all
    folds' codes together; the folds' data warnings are kept, each distinct one once, with its folds."""
    from model.training.run import train_run

    ds = synthetic(n=40)
    ds.labels[:6] = [1, 1]  # both labels on a few items, so the label query sets differ from the classes
    monkeypatch.setattr(train_module, "load_dataset", lambda *a, **k: ds)
    cfg = TrainConfig(
        dataset="manifest",
        data=tmp_path / "m.jsonl",
        out=tmp_path / "run",
        method="bi_ncmh",
        bits=8,
        epochs=2,
        hidden=[16],
        batch_size=8,
        folds=3,
        device="cpu",
        cache_dir=tmp_path / "c",
    )
    metrics = train_run(cfg, progress=False)
    per_query: dict[str, list[np.ndarray]] = {"i2t": [], "t2i": []}
    query_labels = []
    for i in range(3):
        with np.load(tmp_path / "run" / f"fold-{i}" / "codes.npz") as z:
            ql, rl = z["query_labels"], z["retrieval_labels"]
            per_query["i2t"].append(average_precisions(z["query_image_codes"], z["retrieval_text_codes"], ql, rl))
            per_query["t2i"].append(average_precisions(z["query_text_codes"], z["retrieval_image_codes"], ql, rl))
            query_labels.append(ql)
    carries = np.concatenate(query_labels) != 0
    assert [e["label"] for e in metrics["per_label"]] == ["a", "b"]
    for j, entry in enumerate(metrics["per_label"]):
        assert entry["n_query"] == carries[:, j].sum()
        for d in ("i2t", "t2i"):
            assert entry[d] == pytest.approx(np.concatenate(per_query[d])[carries[:, j]].mean())
    # 40 items in folds of 14, 13, 13 queries: the others, 26, 27, 27, are each fold's training rows
    assert [w.split(" < ")[0] for w in metrics["warnings"]] == [
        "fold 0: too few training items for 8-bit codes: 26",
        "folds 1, 2: too few training items for 8-bit codes: 27",
    ]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["per_label"] == metrics["per_label"]
    printed = report(metrics, tmp_path / "run")
    assert "over all folds' queries carrying the label" in printed
    assert f"WARNING: {metrics['warnings'][0]}" in printed
    assert str(tmp_path / "run" / "fold-2" / "pr_curve.png") in printed


def test_fold_warnings_are_said_once_with_their_folds() -> None:
    got = aggregate_warnings([["small", "rare x"], ["small"], ["small", "rare x", "rare y"]])
    assert got == ["small", "folds 0, 2: rare x", "fold 2: rare y"]


def test_folds_refused_on_a_preset_split(tmp_path, monkeypatch) -> None:
    preset = Split(query=np.arange(6), retrieval=np.arange(6, 36), train=np.arange(6, 36))
    monkeypatch.setattr(train_module, "load_dataset", lambda *a, **k: synthetic(preset=preset))
    cfg = TrainConfig(dataset="wikipedia", out=tmp_path / "run", folds=3, fold=0, device="cpu")
    with pytest.raises(UserError, match="own query/retrieval split"):
        train_module.prepare_run(cfg, progress=False)


def test_confidence_interval_is_student_t() -> None:
    from scipy import stats

    def fold(m: float) -> dict:
        d = {"map": m, "map@50": m}
        return {
            "variants": {"map": "x", "map@50": "y"},
            "relevance": "r",
            "n_query": 10,
            "n_retrieval": 40,
            "chance_map": 0.5,
            "i2t": d,
            "t2i": d,
            "collapse": {"collapsed": False, "reasons": [], "rule": "r"},
        }

    values = [0.6, 0.7, 0.65, 0.8]
    agg = aggregate_folds([fold(v) for v in values])
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert agg["i2t"]["map_ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    assert agg["n_query"] == 40 and not agg["collapse"]["collapsed"]
    assert "per_label" not in agg and "warnings" not in agg  # folds without them (re-ranking, tuning)
