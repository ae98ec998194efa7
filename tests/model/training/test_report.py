"""The end-of-training report of `cmhash train`: the per-label table (every label, or the best
and worst few), the WARNING lines and the P-R curve path; and one CLI run end to end on the
tiny manifest relabelled to be unbalanced, checking what it prints against metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from model.training.evaluate import report
from model.training.metrics import average_precisions, per_label_map
from tests.tiny_data import N_ITEMS, N_QUERY, RETRIEVAL_ONLY, write_manifest


def entry(label: str, n_query: int, i2t: float | None, t2i: float | None) -> dict:
    return {"label": label, "n_query": n_query, "retrieval_fraction": 0.25, "i2t": i2t, "t2i": t2i}


def metrics_with(per_label: list[dict], warnings: list[str]) -> dict:
    """A single run's metrics as `write_evaluation` returns them, reduced to what the report reads."""
    maps = {"map": 0.5, "map@50": 0.6}
    return {
        "variants": {"map": "MAP (whole)", "map@50": "MAP@50"},
        "chance_map": 0.3,
        "i2t": maps,
        "t2i": maps,
        "collapse": {"collapsed": False, "reasons": []},
        "per_label": per_label,
        "warnings": warnings,
    }


def test_report_lists_every_label_then_warnings_then_the_curve(tmp_path) -> None:
    per_label = [entry("cat", 3, 0.75, 0.5), entry("dog", 0, None, None)]
    lines = report(metrics_with(per_label, ["too few training items"]), tmp_path).splitlines()
    assert lines[2] == "chance MAP (random ranking) 0.3000"
    assert lines[3].startswith("per-label MAP (whole ranking, over the queries carrying the label")
    assert lines[4].split() == ["label", "queries", "retrieval", "I->T", "T->I"]
    assert lines[5].split() == ["cat", "3", "25.0%", "0.7500", "0.5000"]
    assert lines[6].split() == ["dog", "0", "25.0%", "-", "-"]  # no query carries it
    assert lines[7:] == ["WARNING: too few training items", f"P-R curve: {tmp_path / 'pr_curve.png'}"]


def test_report_of_many_labels_shows_the_best_and_worst_five(tmp_path) -> None:
    # 40 labels with queries, MAP falling with the index (l00 best), and 3 without queries
    per_label = [entry(f"l{j:02d}", 2, 1 - j / 100, 1 - j / 100) for j in range(40)]
    per_label += [entry(f"none{j}", 0, None, None) for j in range(3)]
    lines = report(metrics_with(per_label, []), tmp_path).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("per-label MAP"))
    assert "the 5 best and 5 worst of 43 labels by the mean of I->T and T->I" in lines[start]
    shown = [line.split()[0] for line in lines[start + 2 : start + 13]]
    assert shown == ["l00", "l01", "l02", "l03", "l04", "...", "l35", "l36", "l37", "l38", "l39"]
    assert lines[start + 13] == "  (3 label(s) carried by no query have no MAP)"
    assert not any(line.startswith("WARNING") for line in lines)


def test_report_without_per_label_metrics(tmp_path) -> None:
    """Metrics without per-label entries (re-ranked or tuning metrics) print no table."""
    metrics = metrics_with([], [])
    del metrics["per_label"], metrics["warnings"]
    assert "per-label" not in report(metrics, tmp_path)


# --- end to end -------------------------------------------------------------------------------

UNLABELLED = (12, 13)  # training items with no label at all
RARE = (0, 14, 15)  # items carrying "rare": one query, two training items


def unbalanced_manifest(root: Path) -> Path:
    """The tiny manifest (tests.tiny_data) with every labelled item also tagged "photo" (93% of
    the 28 training items), a "rare" label on 2 training items and 2 unlabelled training items."""
    path = write_manifest(root)
    items = [json.loads(line) for line in path.read_text().splitlines()]
    for i, item in enumerate(items):
        item["labels"] = [] if i in UNLABELLED else item["labels"] + ["photo"] + (["rare"] if i in RARE else [])
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.mark.slow
def test_cli_prints_per_label_maps_and_data_warnings(tmp_path, monkeypatch) -> None:
    from service.cli import app

    for name in list(os.environ):
        if name.startswith("CMHASH_"):
            monkeypatch.delenv(name)
    manifest = unbalanced_manifest(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--dataset", "manifest", "--data", manifest, "--out", out, "--bits", "16", "--epochs", "2"]
    args += ["--hidden", "32", "--cache-dir", tmp_path / "cache", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((out / "metrics.json").read_text())

    names = ["blue", "green", "photo", "rare", "red", "yellow"]
    assert [e["label"] for e in metrics["per_label"]] == names
    by_name = {e["label"]: e for e in metrics["per_label"]}
    assert {n: by_name[n]["n_query"] for n in names} == {
        "blue": 2, "green": 2, "photo": N_QUERY, "rare": 1, "red": 2, "yellow": 2
    }  # fmt: skip
    n_retrieval = N_ITEMS - N_QUERY
    assert by_name["photo"]["retrieval_fraction"] == pytest.approx((n_retrieval - len(UNLABELLED)) / n_retrieval)
    assert by_name["rare"]["retrieval_fraction"] == pytest.approx(2 / n_retrieval)
    with np.load(out / "codes.npz") as z:  # the per-label MAPs are those of the saved codes
        ql, rl = z["query_labels"], z["retrieval_labels"]
        for d, query, retrieval in (("i2t", "query_image", "retrieval_text"), ("t2i", "query_text", "retrieval_image")):
            ap = average_precisions(z[f"{query}_codes"], z[f"{retrieval}_codes"], ql, rl)
            np.testing.assert_allclose([by_name[n][d] for n in names], per_label_map(ap, ql))

    lines = result.output.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("per-label MAP")))
    assert lines[table - 1].startswith("chance MAP")
    assert lines[table + 1].split() == ["label", "queries", "retrieval", "I->T", "T->I"]
    for j, name in enumerate(names):
        e = by_name[name]
        cells = [name, str(e["n_query"]), f"{e['retrieval_fraction']:.1%}", f"{e['i2t']:.4f}", f"{e['t2i']:.4f}"]
        assert lines[table + 2 + j].split() == cells

    n_train = N_ITEMS - N_QUERY - len(RETRIEVAL_ONLY)
    assert metrics["warnings"] == [
        f"too few training items for 16-bit codes: {n_train} < max(200, 4 x 16) = 200; try fewer bits or more data",
        "1 label(s) on fewer than 5 training items: rare (2); the model barely sees them and their MAP is unreliable",
        "label photo is on 93% of the training items: almost every pair shares a label, so MAP is near chance by "
        "construction; drop it or use finer labels",
        f"2 training item(s) ({2 / n_train:.0%}) have no label: they are similar to nothing, so training only "
        "pushes their codes away from every other item",
    ]
    printed = [line.removeprefix("WARNING: ") for line in lines if line.startswith("WARNING: ")]
    assert printed[-4:] == metrics["warnings"]  # after a collapse warning, if the 2 epochs collapsed
    assert lines[-2:] == [f"P-R curve: {out / 'pr_curve.png'}", f"run written to {out}"]
