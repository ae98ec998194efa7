"""`cmhash` command line end to end on a tiny manifest made here: help and env vars, a run
directory with every file, `evaluate` reproducing it, clear errors, and seeded reproducibility.

The module shares one feature cache (a tmp dir named by CMHASH_CACHE_DIR) so the
EfficientNet-Lite0 features of the 40 images are computed once."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from model.training.metrics import mean_average_precision
from service.cli import app
from tests.tiny_data import (
    CLASSES,
    LABEL_NAMES,
    N_ITEMS,
    N_QUERY,
    RETRIEVAL_ONLY,
    item_class,
    write_manifest,
)

BITS = 16
runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str) -> str:
    """Output without ANSI styling and with whitespace runs collapsed (rich wraps and pads)."""
    return " ".join(ANSI.sub("", text).replace("│", " ").split())


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_clean_exit(result, code: int = 0) -> None:
    """Exit `code` without an unhandled exception (a non-zero exit is a SystemExit)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    if code == 0:
        assert result.exception is None, result.exception
    else:
        assert isinstance(result.exception, SystemExit), repr(result.exception)


def expected_labels(rows) -> np.ndarray:
    """One-hot rows over LABEL_NAMES for manifest rows `rows`, built from the classes here."""
    out = np.zeros((len(rows), len(LABEL_NAMES)), dtype=np.uint8)
    for r, i in enumerate(rows):
        out[r, LABEL_NAMES.index(CLASSES[item_class(i)][0])] = 1
    return out


def load_codes(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "codes.npz") as z:
        return {k: z[k].copy() for k in z.files}


@pytest.fixture(scope="module", autouse=True)
def clean_env(tmp_path_factory):
    """No CMHASH_* variable from the caller's shell leaks in; the feature cache is a tmp dir;
    help is rendered wide so flags and env var names are not wrapped."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CMHASH_"):
                mp.delenv(name)
        mp.setenv("CMHASH_CACHE_DIR", str(tmp_path_factory.mktemp("feature_cache")))
        mp.setenv("COLUMNS", "240")
        yield


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """40 items, 10 per class; items 0-7 (2 per class) are queries, 8-11 retrieval only."""
    return write_manifest(tmp_path_factory.mktemp("dataset"))


def train_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "manifest",
        "--data",
        str(manifest),
        "--method",
        "bi_ncmh",
        "--hidden",
        "64",
        "--lr",
        "1e-3",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory):
    """The brief's run: bi_ncmh, 16 bits, 15 epochs, on the manifest's own split."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = invoke(*train_args(manifest, out, "--bits", str(BITS), "--epochs", "15"))
    return out, result


# 1. help -------------------------------------------------------------------------------------


def test_top_level_help_lists_commands() -> None:
    result = invoke("--help")
    assert_clean_exit(result)
    text = plain(result.output)
    assert "train" in text and "evaluate" in text
    assert "cross-modal hashing" in text


def test_no_arguments_shows_help() -> None:
    result = invoke()
    text = plain(result.output)
    assert "train" in text and "evaluate" in text and "Usage" in text


def test_train_help_lists_every_flag_with_its_env_var() -> None:
    result = invoke("train", "--help")
    assert_clean_exit(result)
    text = plain(result.output)
    for flag, env in [
        ("--bits", "CMHASH_BITS"),
        ("--dataset", "CMHASH_DATASET"),
        ("--hp", "CMHASH_HP"),
        ("--query-size", "CMHASH_QUERY_SIZE"),
        ("--cache-dir", "CMHASH_CACHE_DIR"),
    ]:
        assert flag in text and env in text, flag
    params = get_command(app).commands["train"].params
    options = [p for p in params if p.param_type_name == "option" and p.name != "help"]
    assert len(options) >= 25
    for opt in options:
        if opt.name == "out":  # the run directory is per invocation: a flag only
            assert opt.envvar is None
            continue
        expected_env = "CMHASH_" + opt.name.upper()
        assert opt.envvar == expected_env, opt.name
        assert opt.opts[0] in text, opt.opts[0]
        assert expected_env in text, expected_env


def test_evaluate_help() -> None:
    result = invoke("evaluate", "--help")
    assert_clean_exit(result)
    text = plain(result.output)
    assert "run_dir" in text.lower() and "checkpoint" in text and "--no-progress" in text and "CMHASH_PROGRESS" in text


# 2. end to end -------------------------------------------------------------------------------


def test_train_writes_the_run_directory(trained, manifest) -> None:
    out, result = trained
    assert_clean_exit(result)
    assert f"run written to {out}" in result.output
    for name in (
        "config.json",
        "split.json",
        "checkpoint.pt",
        "history.json",
        "metrics.json",
        "codes.npz",
        "pr_curve.png",
    ):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert (config["method"], config["bits"], config["epochs"], config["hidden"], config["lr"]) == (
        "bi_ncmh",
        BITS,
        15,
        [64],
        1e-3,
    )
    assert Path(config["data"]) == manifest
    assert Path(config["cache_dir"]) == Path(os.environ["CMHASH_CACHE_DIR"])
    assert any(Path(os.environ["CMHASH_CACHE_DIR"]).rglob("*.npy"))  # the cache was used, not ~/.cache

    split = json.loads((out / "split.json").read_text())  # the manifest's own split
    assert split["query"] == list(range(N_QUERY))
    assert split["retrieval"] == list(range(N_QUERY, N_ITEMS))
    assert split["train"] == [i for i in range(N_QUERY, N_ITEMS) if i not in RETRIEVAL_ONLY]

    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 15 and len(history["seconds_per_epoch"]) == 15
    assert all(np.isfinite(e["loss"]) for e in history["epochs"])

    with Image.open(out / "pr_curve.png") as png:
        assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 100


def test_codes_are_binary_with_matching_labels(trained) -> None:
    out, result = trained
    assert_clean_exit(result)
    codes = load_codes(out)
    n = {"query": N_QUERY, "retrieval": N_ITEMS - N_QUERY}
    for part in ("query", "retrieval"):
        for modality in ("image", "text"):
            c = codes[f"{part}_{modality}_codes"]
            assert c.shape == (n[part], BITS)
            assert set(np.unique(c)) <= {-1, 1}
        assert codes[f"{part}_labels"].shape[0] == n[part]
    np.testing.assert_array_equal(codes["query_labels"], expected_labels(range(N_QUERY)))
    np.testing.assert_array_equal(codes["retrieval_labels"], expected_labels(range(N_QUERY, N_ITEMS)))


def test_metrics_match_the_codes_and_beat_random_codes(trained) -> None:
    out, result = trained
    assert_clean_exit(result)
    metrics = json.loads((out / "metrics.json").read_text())
    codes = load_codes(out)
    q_l, r_l = expected_labels(range(N_QUERY)), expected_labels(range(N_QUERY, N_ITEMS))
    directions = {
        "i2t": (codes["query_image_codes"], codes["retrieval_text_codes"]),
        "t2i": (codes["query_text_codes"], codes["retrieval_image_codes"]),
    }

    assert "map" in metrics["variants"] and "map@50" in metrics["variants"]
    assert "whole ranking" in metrics["variants"]["map"] and "50" in metrics["variants"]["map@50"]
    assert (metrics["n_query"], metrics["n_retrieval"]) == (N_QUERY, N_ITEMS - N_QUERY)
    assert metrics["train"]["epochs"] == 15

    rng = np.random.default_rng(123)
    random_maps = []
    for _ in range(20):
        rq = rng.choice([-1, 1], size=(N_QUERY, BITS)).astype(np.int8)
        rr = rng.choice([-1, 1], size=(N_ITEMS - N_QUERY, BITS)).astype(np.int8)
        random_maps.append(mean_average_precision(rq, rr, q_l, r_l))
    random_map = float(np.mean(random_maps))
    assert 0.15 < random_map < 0.5  # about the 1/4 base rate of relevant items

    for key, (query, retrieval) in directions.items():
        for variant, top_k in (("map", None), ("map@50", 50)):
            value = metrics[key][variant]
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(mean_average_precision(query, retrieval, q_l, r_l, top_k=top_k), abs=1e-9)
        assert metrics[key]["map"] > random_map + 0.3, (key, metrics[key]["map"], random_map)
        assert metrics[key]["map"] > max(random_maps) + 0.1, (key, metrics[key]["map"], max(random_maps))
    summary = plain(result.output)
    assert f"I->T MAP {metrics['i2t']['map']:.4f}" in summary
    assert f"T->I MAP@50 {metrics['t2i']['map@50']:.4f}" in summary


# 3. evaluate ---------------------------------------------------------------------------------


def test_evaluate_recomputes_the_same_metrics_and_codes(trained, tmp_path) -> None:
    out, result = trained
    assert_clean_exit(result)
    run = tmp_path / "run"
    shutil.copytree(out, run)  # leave the shared run untouched
    before_metrics = json.loads((run / "metrics.json").read_text())
    before_codes = load_codes(run)
    (run / "codes.npz").unlink()  # evaluate must recompute these, not leave them in place
    (run / "pr_curve.png").unlink()

    result = invoke("evaluate", run, "--no-progress")
    assert_clean_exit(result)
    after_metrics = json.loads((run / "metrics.json").read_text())
    after_codes = load_codes(run)
    assert set(after_codes) == set(before_codes)
    for name, array in before_codes.items():
        np.testing.assert_array_equal(after_codes[name], array, err_msg=name)
        assert after_codes[name].dtype == array.dtype, name
    printed = json.loads(result.output.strip().splitlines()[-1])
    for key in ("i2t", "t2i"):
        for variant in ("map", "map@50"):
            assert after_metrics[key][variant] == before_metrics[key][variant], (key, variant)
            assert printed[key][variant] == before_metrics[key][variant], (key, variant)
        assert after_metrics[key]["precision_at_k"] == before_metrics[key]["precision_at_k"]
    assert after_metrics["train"] == before_metrics["train"]  # training info kept
    with Image.open(run / "pr_curve.png") as png:
        assert png.format == "PNG"


# 4. environment variables --------------------------------------------------------------------


def test_options_from_environment_variables(manifest, tmp_path) -> None:
    out = tmp_path / "env_run"
    env = {
        "CMHASH_DATASET": "manifest",
        "CMHASH_DATA": str(manifest),
        "CMHASH_BITS": "24",
        "CMHASH_EPOCHS": "2",
        "CMHASH_HIDDEN": "32",
        "CMHASH_LR": "0.002",
        "CMHASH_HP": "gamma=0.5",
        "CMHASH_PROGRESS": "false",
        "CMHASH_SEED": "5",
    }
    result = invoke("train", "--out", out, "--seed", "7", env=env)  # a flag wins over its variable
    assert_clean_exit(result)
    assert "epoch" not in result.output  # no progress bars (CMHASH_PROGRESS=false)
    config = json.loads((out / "config.json").read_text())
    assert (config["bits"], config["epochs"], config["hidden"], config["lr"], config["hp"], config["seed"]) == (
        24,
        2,
        [32],
        0.002,
        {"gamma": 0.5},
        7,
    )
    codes = load_codes(out)
    for name in ("query_image_codes", "query_text_codes", "retrieval_image_codes", "retrieval_text_codes"):
        assert codes[name].shape[1] == 24, name
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2


# 5. errors -----------------------------------------------------------------------------------


def test_missing_data_path_names_it(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "items.jsonl"
    result = invoke("train", "--dataset", "manifest", "--data", missing, "--out", tmp_path / "run", "--no-progress")
    assert_clean_exit(result, 2)
    assert str(missing) in result.output
    assert "error" in result.output.lower()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_bits_not_multiple_of_8(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--bits", "12"))
    assert_clean_exit(result, 2)
    assert "multiple of 8" in result.output
    assert not (tmp_path / "run").exists()  # rejected before anything is written


def test_hp_without_value_is_a_usage_error(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--hp", "alpha"))
    assert_clean_exit(result, 2)
    text = plain(result.output)
    assert "Usage" in text and "NAME=NUMBER" in text and "'alpha'" in text


def test_hp_with_non_number_is_a_usage_error(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--hp", "alpha=lots"))
    assert_clean_exit(result, 2)
    assert "alpha=lots" in plain(result.output)


def test_unknown_hp_key_for_the_method_is_named(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--bits", "16", "--epochs", "1", "--hp", "delta=1"))
    assert_clean_exit(result, 2)
    assert "delta" in result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_unknown_method_and_dataset(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--method", "nope"))
    assert_clean_exit(result, 2)
    assert "method" in result.output
    result = invoke("train", "--dataset", "imagenet", "--out", tmp_path / "run2")
    assert_clean_exit(result, 2)
    assert "dataset" in result.output


def test_evaluate_without_checkpoint(tmp_path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    result = invoke("evaluate", tmp_path, "--no-progress")
    assert_clean_exit(result, 2)
    assert "checkpoint.pt" in result.output and str(tmp_path) in result.output
    result = invoke("evaluate", tmp_path / "absent", "--no-progress")
    assert_clean_exit(result, 2)
    assert str(tmp_path / "absent") in result.output


def test_bad_hidden_is_a_clear_error(manifest, tmp_path) -> None:
    result = invoke(*train_args(manifest, tmp_path / "run", "--hidden", "64,abc"))
    assert_clean_exit(result, 2)
    assert "abc" in result.output


def test_unknown_hp_key_for_cca_itq_is_named(manifest, tmp_path) -> None:
    args = train_args(manifest, tmp_path / "run", "--bits", "16", "--hp", "alpha=1")
    args[args.index("bi_ncmh")] = "cca_itq"
    result = invoke(*args)
    assert_clean_exit(result, 2)
    assert "alpha" in result.output


# 6. reproducibility --------------------------------------------------------------------------


def test_same_seed_same_codes(manifest, tmp_path) -> None:
    """--query-size makes the seed draw the split too; same seed: same split and codes,
    another seed: another split and other codes."""
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / name
        result = invoke(
            *train_args(manifest, out, "--bits", "16", "--epochs", "3", "--seed", seed, "--query-size", str(N_QUERY))
        )
        assert_clean_exit(result)
        runs[name] = (json.loads((out / "split.json").read_text()), load_codes(out))
    (split_a, codes_a), (split_b, codes_b), (split_c, codes_c) = runs["a"], runs["b"], runs["c"]
    assert len(split_a["query"]) == N_QUERY and split_a["seed"] == 1
    assert split_a == split_b
    assert set(codes_a) == set(codes_b) and len(codes_a) == 6
    for name in codes_a:
        np.testing.assert_array_equal(codes_a[name], codes_b[name], err_msg=name)
    assert split_c["query"] != split_a["query"]
    assert not np.array_equal(codes_c["query_image_codes"], codes_a["query_image_codes"])
