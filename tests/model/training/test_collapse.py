"""Collapse detection: the chance MAP of a random ranking, the constant-bit and near-chance
rules, the "collapse" entry of metrics.json and the warning `cmhash train` prints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from typer.testing import CliRunner

from model.training.evaluate import (
    chance_map,
    collapse_warning,
    constant_bit_fraction,
    evaluate_codes,
    summary_line,
)
from model.training.metrics import mean_average_precision


def labels_of(classes: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.uint8)[classes]


def test_chance_map_is_the_expected_map_of_a_random_ranking() -> None:
    """Averaged over every ordering of a small retrieval set, MAP (whole ranking) equals the
    exact expectation, whose large-N value is the mean fraction of relevant items per query
    (what `chance_map` reports)."""
    rng = np.random.default_rng(0)
    q_labels = (rng.random((4, 3)) < 0.5).astype(np.uint8)
    r_labels = (rng.random((5, 3)) < 0.4).astype(np.uint8)
    r_labels[0] = 1
    bits = 8
    # Every retrieval item gets a distinct Hamming distance 0..4 from an all-ones query code.
    query_codes = np.ones((len(q_labels), bits), dtype=np.int8)
    maps = []
    for order in itertools.permutations(range(5)):
        codes = np.ones((5, bits), dtype=np.int8)
        for rank, item in enumerate(order):
            codes[item, :rank] = -1
        maps.append(mean_average_precision(query_codes, codes, q_labels, r_labels))
    # The exact expectation per query with R of N relevant: (R-1)/(N-1) + (N-R) H_N / (N (N-1)).
    n = len(r_labels)
    h_n = sum(1 / i for i in range(1, n + 1))
    relevant = ((q_labels.astype(int) @ r_labels.T.astype(int)) > 0).sum(1)
    exact = np.mean([0.0 if r == 0 else (r - 1) / (n - 1) + (n - r) * h_n / (n * (n - 1)) for r in relevant])
    assert exact == pytest.approx(np.mean(maps))
    # chance_map is its large-N value, the mean fraction relevant: within ln(N)/N + 1/N of it.
    assert chance_map(q_labels, r_labels) == pytest.approx(np.mean(relevant / n))
    big_n, big_r = 2000, 700
    big_h = sum(1 / i for i in range(1, big_n + 1))
    big_exact = (big_r - 1) / (big_n - 1) + (big_n - big_r) * big_h / (big_n * (big_n - 1))
    assert abs(big_exact - big_r / big_n) < (np.log(big_n) + 1) / big_n


def test_constant_bit_fraction() -> None:
    codes = np.array([[1, 1, -1, 1], [1, -1, -1, 1], [1, 1, -1, -1]], dtype=np.int8)
    assert constant_bit_fraction(codes) == pytest.approx(0.5)


def codes_dict(q_img, q_txt, r_img, r_txt, q_labels, r_labels) -> dict:
    return {
        "query_image_codes": q_img,
        "query_text_codes": q_txt,
        "retrieval_image_codes": r_img,
        "retrieval_text_codes": r_txt,
        "query_labels": q_labels,
        "retrieval_labels": r_labels,
    }


def test_constant_codes_are_reported_as_collapsed() -> None:
    rng = np.random.default_rng(1)
    q_l, r_l = labels_of(rng.integers(0, 4, 20), 4), labels_of(rng.integers(0, 4, 60), 4)
    ones_q, ones_r = np.ones((20, 16), dtype=np.int8), np.ones((60, 16), dtype=np.int8)
    m = evaluate_codes(codes_dict(ones_q, ones_q, ones_r, ones_r, q_l, r_l))
    assert m["collapse"]["collapsed"]
    assert m["collapse"]["constant_bit_fraction"] == {"image": 1.0, "text": 1.0}
    assert any("constant" in r for r in m["collapse"]["reasons"])
    assert m["chance_map"] == pytest.approx(chance_map(q_l, r_l))


def test_random_codes_near_chance_are_reported_as_collapsed() -> None:
    """Balanced random bits (no constant bit) that carry no label information: MAP at chance."""
    rng = np.random.default_rng(2)
    n_q, n_r = 200, 400
    q_l, r_l = labels_of(rng.integers(0, 2, n_q), 2), labels_of(rng.integers(0, 2, n_r), 2)

    def rand(n: int) -> np.ndarray:
        return np.where(rng.random((n, 32)) < 0.5, 1, -1).astype(np.int8)

    m = evaluate_codes(codes_dict(rand(n_q), rand(n_q), rand(n_r), rand(n_r), q_l, r_l))
    assert max(m["collapse"]["constant_bit_fraction"].values()) == 0.0
    assert abs(m["i2t"]["map"] - m["chance_map"]) < 0.02
    assert m["collapse"]["collapsed"] and any("chance" in r for r in m["collapse"]["reasons"])
    assert "WARNING" in summary_line(m)


def test_informative_codes_are_not_collapsed() -> None:
    rng = np.random.default_rng(3)
    q_c, r_c = rng.integers(0, 4, 30), rng.integers(0, 4, 90)
    book = np.where(rng.random((4, 32)) < 0.5, 1, -1).astype(np.int8)
    m = evaluate_codes(codes_dict(book[q_c], book[q_c], book[r_c], book[r_c], labels_of(q_c, 4), labels_of(r_c, 4)))
    assert m["i2t"]["map"] == pytest.approx(1.0)
    assert not m["collapse"]["collapsed"] and m["collapse"]["reasons"] == []
    assert collapse_warning(m) is None and "WARNING" not in summary_line(m)
    assert "chance MAP" in summary_line(m)


def test_cmhash_train_prints_the_warning(tmp_path, monkeypatch) -> None:
    """The CLI prints the collapse warning line of the metrics `train_run` returns."""
    import model.training.run as run_module
    from service.cli import app

    rng = np.random.default_rng(4)
    q_l, r_l = labels_of(rng.integers(0, 3, 10), 3), labels_of(rng.integers(0, 3, 30), 3)
    ones_q, ones_r = np.ones((10, 8), dtype=np.int8), np.ones((30, 8), dtype=np.int8)
    collapsed = evaluate_codes(codes_dict(ones_q, ones_q, ones_r, ones_r, q_l, r_l))
    monkeypatch.setattr(run_module, "train_run", lambda cfg, progress=True: collapsed)
    result = CliRunner().invoke(
        app, ["train", "--dataset", "mirflickr", "--out", str(tmp_path / "r"), "--method", "dcmh", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "WARNING: the codes collapsed" in result.output
