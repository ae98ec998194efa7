"""ONNX export parity benchmark: how closely ONNX Runtime reproduces the PyTorch model on real data,
and how fast each runs.

    .venv/bin/python bench/export_parity.py --run /tmp/runs/mf64            # export, then compare
    .venv/bin/python bench/export_parity.py --model /tmp/models/mf64        # an exported model
    .venv/bin/python bench/export_parity.py --run RUN --model DIR --items 128 --threads 1

The run (given, or the source run recorded in the model's model.json) is the PyTorch oracle;
its own dataset supplies the first --items items (image files or feature vectors, raw texts or
text feature vectors). For each modality it reports the max abs difference of the
representations h, the relative error the export check uses, the code bits that flip
(h >= 0 differs) and how many of those lie within the margin (|h_torch| <= --margin x max
|h_torch|), and milliseconds per item of the model forward pass in PyTorch and in ONNX Runtime
(images: on already decoded arrays; decoding is timed apart). Every flag can also be set by the
environment variable CMHASH_BENCH_<FLAG> (e.g. CMHASH_BENCH_ITEMS=256). Writes
OUT/export_parity.json; never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flags import env, write_result

from model.runtime.encoder import Encoder
from model.runtime.image import load_image, to_array
from model.runtime.model_dir import read_model_info
from model.runtime.text import BagOfWords
from model.training.backbones import MiniLMTextEmbedder, build_backbone
from model.training.data import load_dataset
from model.training.export import export_run, relative_error
from model.training.train import load_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def _optional_path(text: str | None) -> Path | None:
    return Path(text) if text else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its CMHASH_BENCH_<FLAG> environment variable when set."""
    p = argparse.ArgumentParser(
        description="Parity and speed of an exported model (ONNX Runtime) against its PyTorch run.",
        epilog="Every flag can be set by the environment variable CMHASH_BENCH_<FLAG> (e.g. CMHASH_BENCH_RUN).",
    )
    p.add_argument(
        "--run",
        type=_optional_path,
        default=env("run", None),
        help="run directory (cmhash train); exported to --model (default OUT/export_parity_model)",
    )
    p.add_argument(
        "--model",
        type=_optional_path,
        default=env("model", None),
        help="model directory (cmhash export); without --run it is used as it is",
    )
    p.add_argument("--items", type=int, default=env("items", "64"), help="dataset items compared")
    p.add_argument("--batch-size", type=int, default=env("batch-size", "32"), help="items per forward pass")
    p.add_argument("--repeats", type=int, default=env("repeats", "3"), help="timed passes (median kept)")
    p.add_argument("--threads", type=int, default=env("threads", None), help="torch and ONNX Runtime threads")
    p.add_argument(
        "--margin",
        type=float,
        default=env("margin", "1e-3"),
        help="a flipped bit is 'within margin' when |h_torch| <= margin x max |h_torch|",
    )
    p.add_argument("--out", type=Path, default=env("out", str(DEFAULT_OUT)), help="output folder")
    args = p.parse_args(argv)
    if args.run is None and args.model is None:
        p.error("give --run RUN_DIR (to export) or --model MODEL_DIR (already exported)")
    for name in ("items", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def compare(h_onnx: np.ndarray, h_torch: np.ndarray, margin: float) -> dict[str, float | int]:
    """Parity figures of two n x bits representation matrices (ONNX Runtime vs PyTorch)."""
    scale = float(np.abs(h_torch).max())
    flipped = (h_onnx >= 0) != (h_torch >= 0)
    within = flipped & (np.abs(h_torch) <= margin * max(1.0, scale))
    return {
        "items": len(h_torch),
        "bits_compared": int(flipped.size),
        "max_abs_diff": float(np.abs(h_onnx - h_torch).max()),
        "max_abs_h": scale,
        "relative_error": relative_error(h_onnx, h_torch),
        "flipped_bits": int(flipped.sum()),
        "flipped_within_margin": int(within.sum()),
    }


def ms_per_item(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Median milliseconds per item of `fn` (which processes n items), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / n


def batched(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int) -> np.ndarray:
    """`fn` over `x` in chunks of batch_size rows, concatenated."""
    return np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    export_seconds = None
    model_dir = args.model
    if args.run is not None:
        model_dir = model_dir or args.out / "export_parity_model"
        start = time.perf_counter()
        export_run(args.run, model_dir)
        export_seconds = time.perf_counter() - start
    info = read_model_info(model_dir)
    run_dir = args.run or Path(info.source.path)
    model, cfg, ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    encoder = Encoder.load(model_dir, device="cpu", threads=args.threads, batch_size=args.batch_size)
    ds = load_dataset(cfg.dataset, cfg.data_path(), text_features=cfg.text_features)
    n = min(args.items, len(ds))
    report: dict = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "run": str(run_dir),
        "model": str(model_dir),
        "checksum": info.checksum,
        "bits": info.bits,
        "image_input": info.image.kind,
        "text_input": info.text.kind,
        "opset": info.opset,
        "export_seconds": export_seconds,
        "margin": args.margin,
    }

    with torch.inference_mode():
        if info.image.kind == "pixels":
            paths = list(ds.image_paths[:n])
            backbone = build_backbone(info.image.backbone or cfg.image_backbone).eval()
            start = time.perf_counter()
            x = np.stack([encoder.preprocess_image(p) for p in paths])
            decode_ms = 1000.0 * (time.perf_counter() - start) / n
            # the oracle reads the runtime's arrays, so check they are the backbone's own preprocessing
            np.testing.assert_array_equal(x[0], to_array(load_image(paths[0]), backbone.preprocess))

            def torch_image(batch: np.ndarray) -> np.ndarray:
                return model.image_head(backbone(torch.from_numpy(batch))).numpy()
        else:
            x = np.ascontiguousarray(ds.image_features[:n], dtype=np.float32)
            decode_ms = None

            def torch_image(batch: np.ndarray) -> np.ndarray:
                return model.image_head(torch.from_numpy(batch)).numpy()

        h_torch = batched(torch_image, x, args.batch_size)
        h_onnx = encoder.image_representations(x)
        report["image"] = compare(h_onnx, h_torch, args.margin) | {
            "ms_per_item_torch": ms_per_item(lambda: batched(torch_image, x, args.batch_size), n, args.repeats),
            "ms_per_item_onnxruntime": ms_per_item(lambda: encoder.image_representations(x), n, args.repeats),
            "ms_per_image_decode": decode_ms,
        }

        if info.text.kind == "features":
            t = np.ascontiguousarray(ds.text_features[:n], dtype=np.float32)

            def torch_text() -> np.ndarray:
                return batched(lambda b: model.text_head(torch.from_numpy(b)).numpy(), t, args.batch_size)

            def onnx_text() -> np.ndarray:
                return encoder.text_feature_representations(t)
        else:
            texts = list(ds.texts[:n])
            if info.text.kind == "minilm":
                embedder = MiniLMTextEmbedder()

                def torch_text() -> np.ndarray:
                    return model.text_head(torch.from_numpy(embedder.embed(texts, batch_size=args.batch_size))).numpy()
            else:
                bow = BagOfWords.from_json(ckpt["bag_of_words"])

                def torch_text() -> np.ndarray:
                    return model.text_head(torch.from_numpy(bow.transform(texts))).numpy()

            def onnx_text() -> np.ndarray:
                return encoder.text_representations(texts)

        report["text"] = compare(onnx_text(), torch_text(), args.margin) | {
            "ms_per_item_torch": ms_per_item(torch_text, n, args.repeats),
            "ms_per_item_onnxruntime": ms_per_item(onnx_text, n, args.repeats),
        }

    path = write_result("export_parity", report, None if args.out == DEFAULT_OUT else args.out)
    for modality in ("image", "text"):
        r = report[modality]
        print(
            f"{modality}: {r['items']} items, max |h| {r['max_abs_h']:.4g}, max abs diff {r['max_abs_diff']:.3g} "
            f"(relative {r['relative_error']:.3g}); flipped bits {r['flipped_bits']} of {r['bits_compared']}, "
            f"{r['flipped_within_margin']} within margin; ms/item torch {r['ms_per_item_torch']:.3f}, "
            f"onnxruntime {r['ms_per_item_onnxruntime']:.3f}"
            + (f"; decode {r['ms_per_image_decode']:.2f} ms/image" if r.get("ms_per_image_decode") else "")
        )
    print(f"checksum {info.checksum}; written to {path}")
    return report


if __name__ == "__main__":
    main()
