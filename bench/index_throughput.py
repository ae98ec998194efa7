"""Indexing throughput: `cmhash index` (decode pool + ONNX encoder + gallery adds + saves) vs
the bare ONNX image encoder on the same images, in the same run, so the ratio is the
pipeline's overhead.

    .venv/bin/python bench/index_throughput.py --model runs/demo-model            # MIRFLICKR sample
    .venv/bin/python bench/index_throughput.py --model M --images DIR --limit 200 --workers 1

Stages timed (best of --repeats each):
  decode   decode + resize + crop of every image, one thread (the work the pool overlaps)
  encoder  the bare ONNX encoder on already-decoded arrays, batches of --batch-size
  serial   decode then encode with no overlap (computed from the two rates above)
  pipeline `build_gallery` into a fresh gallery: listing, decoding in --workers threads,
           encoding, adding, and the final crash-safe save

Every flag can also be set by an environment variable CMHASH_BENCH_<FLAG>. Writes
index_throughput.json with bench/flags.write_result (docs/results/ from a clean tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from flags import env, write_result

from index.commands import build_gallery
from index.sources import image_listing
from model.runtime.encoder import Encoder
from model.training.config import shared_data_root


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        default=env("model", None),
        required=env("model", None) is None,
        help="exported model directory (cmhash export) [CMHASH_BENCH_MODEL]",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=Path(env("images", str(shared_data_root() / "mirflickr25k" / "images"))),
        help="image folder [CMHASH_BENCH_IMAGES]; default: the MIRFLICKR sample",
    )
    p.add_argument(
        "--limit", type=int, default=int(env("limit", "0")), help="use the first N images (0: all) [CMHASH_BENCH_LIMIT]"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=int(env("batch_size", "32")),
        help="images per encoder call [CMHASH_BENCH_BATCH_SIZE]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(env("workers", "2")),
        help="decoding threads of the pipeline [CMHASH_BENCH_WORKERS]",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=int(env("threads", "0")) or None,
        help="ONNX Runtime threads (default: all cores) [CMHASH_BENCH_THREADS]",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=int(env("repeats", "2")),
        help="repetitions per stage, best kept [CMHASH_BENCH_REPEATS]",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"no image folder at {args.images} (see ../shared/data/README.md or pass --images)")
    encoder = Encoder.load(args.model, device="auto", threads=args.threads)
    listing = image_listing(args.images)
    items = listing.items[: args.limit] if args.limit else listing.items
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for item in items:
            os.symlink(Path(item.source).resolve(), folder / Path(item.source).name)

        t_decode, arrays = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            arrays = [encoder.preprocess_image(Path(it.source)) for it in items]
            t_decode.append(time.perf_counter() - start)
        batch = np.stack(arrays)
        encoder.encode_image_arrays(batch[: args.batch_size])  # warm-up

        t_encode = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for s in range(0, len(batch), args.batch_size):
                encoder.encode_image_arrays(batch[s : s + args.batch_size])
            t_encode.append(time.perf_counter() - start)

        t_pipeline, report = [], None
        for r in range(args.repeats):
            gallery = Path(tmp) / f"gallery{r}"
            start = time.perf_counter()
            report = build_gallery(
                args.model,
                gallery,
                images=folder,
                batch_size=args.batch_size,
                workers=args.workers,
                threads=args.threads,
                progress=False,
            )
            t_pipeline.append(time.perf_counter() - start)
            shutil.rmtree(gallery)

    n = len(items)
    rates = {"decode": n / min(t_decode), "encoder": n / min(t_encode)}
    rates["serial"] = 1 / (1 / rates["decode"] + 1 / rates["encoder"])  # decode then encode, no overlap
    rates["pipeline"] = n / min(t_pipeline)
    result = {
        "images": n,
        "added": report.added if report else 0,
        "skipped": len(report.skipped) if report else 0,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "ort_threads": args.threads or os.cpu_count(),
        "providers": encoder.providers,
        "bits": encoder.bits,
        "images_per_second": rates,
        "pipeline_over_encoder": rates["pipeline"] / rates["encoder"],
        "seconds": {"decode": t_decode, "encoder": t_encode, "pipeline": t_pipeline},
    }
    print(
        f"{n} images, {encoder.bits} bits, batch {args.batch_size}, {args.workers} decode workers, "
        f"ORT threads {result['ort_threads']}, providers {encoder.providers}"
    )
    print(f"{'stage':<10}{'images/s':>10}{'ms/image':>10}")
    for stage, rate in rates.items():
        print(f"{stage:<10}{rate:>10.1f}{1000 / rate:>10.2f}")
    print(
        f"pipeline / bare encoder = {result['pipeline_over_encoder']:.2f} (goal >= 0.9); "
        f"pipeline / serial decode+encode = {rates['pipeline'] / rates['serial']:.2f}"
    )
    print(f"written to {write_result('index_throughput', result)}")


if __name__ == "__main__":
    main()
