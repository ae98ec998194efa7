"""Cheaper decoding for indexing (issue 12): what two cheaper paths save on the MIRFLICKR-sample
JPEGs and what they cost in codes, against the exact path `cmhash index` takes
(`load_for_model`: these photos, at most 500 x 375, are below the 2 x 256 pixels where draft
decoding starts): decoding at half scale from the DCT (then the usual bilinear resize up to
the model's 256 pixels), and resizing only the centre crop's source box instead of the whole
image (the same filter over about half the output pixels; rounding differs by one level).

    .venv/bin/python bench/decode_scale.py --model runs/demo/model

For each path: decode + preprocess milliseconds per image (one thread, best of --repeats), the
share of code bits that differ from the exact path's codes and of images with any differing
bit, and MAP over the whole ranking (ties by item order; relevant = a shared label) of the 730
tag texts against the 730 images' codes (T->I) and back (I->T). The demo model was trained on
most of these items, so the MAPs only compare the two paths. The encoder's milliseconds per
image (ONNX Runtime, --threads) give the bound any overlap of decoding with encoding can reach
on this machine: encoder core-ms / (encoder core-ms + decode ms). Writes decode_scale.json
with bench/flags.write_result and prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flags import env, usable_cpus, write_result
from PIL import Image

from model.runtime.encoder import Encoder
from model.runtime.image import ImagePreprocess, load_for_model, to_array
from model.training.config import shared_data_root
from model.training.data import load_dataset
from model.training.metrics import map_variant_name, mean_average_precision


def draft_half(data: bytes, pre: ImagePreprocess) -> np.ndarray:
    """The image decoded at half scale from the DCT, then `to_array` (resized up to the resize)."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))
    return to_array(img.convert("RGB"), pre)


def box_resize(data: bytes, pre: ImagePreprocess) -> np.ndarray:
    """`load_for_model`'s resize and centre crop done as one resize of the crop's source box
    (the same bilinear filter over fewer output pixels), then the same scaling to [-1, 1]."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert pre.resize is not None  # resolved by ImagePreprocess
    w, h = img.size
    scale = pre.resize / min(w, h)
    new_w, new_h = max(pre.resize, round(w * scale)), max(pre.resize, round(h * scale))
    left, top = round((new_w - pre.size) / 2), round((new_h - pre.size) / 2)
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + pre.size) * sx, (top + pre.size) * sy)
    out = img.resize((pre.size, pre.size), Image.Resampling.BILINEAR, box=box)
    x = np.asarray(out, dtype=np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray((x / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0))


def best_ms(fn: Callable[[bytes], np.ndarray], data: list[bytes], repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-`repeats` milliseconds per image of `fn` over `data`, and its arrays."""
    best, arrays = float("inf"), np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        arrays = np.stack([fn(d) for d in data])
        best = min(best, (time.perf_counter() - start) * 1e3 / len(data))
    return best, arrays


def signs(packed: np.ndarray) -> np.ndarray:
    """n x L +-1 codes of packed codes."""
    return np.unpackbits(packed, axis=1).astype(np.float32) * 2 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=env("model", "runs/demo/model"), help="exported model directory")
    p.add_argument("--data", type=Path, default=Path(env("data", str(shared_data_root() / "mirflickr25k"))))
    p.add_argument("--threads", type=int, default=int(env("threads", str(usable_cpus())) or 2))
    p.add_argument("--repeats", type=int, default=int(env("repeats", "3") or 3))
    args = p.parse_args()
    ds = load_dataset("mirflickr", args.data)
    assert ds.image_paths is not None and ds.texts is not None
    data = [Path(path).read_bytes() for path in ds.image_paths]
    encoder = Encoder.load(args.model, device="cpu", threads=args.threads)
    pre = ImagePreprocess.from_json(encoder.info.image.preprocess or {})
    paths = {
        "exact (load_for_model)": lambda d: load_for_model(d, pre),
        "draft 1/2": lambda d: draft_half(d, pre),
        "crop-box resize": lambda d: box_resize(d, pre),
    }
    text = signs(encoder.encode_texts(list(ds.texts)))
    labels = np.asarray(ds.labels)
    rows, exact = [], None
    for name, fn in paths.items():
        ms, arrays = best_ms(fn, data, args.repeats)
        start = time.perf_counter()
        codes = signs(encoder.encode_image_arrays(arrays))
        encoder_ms = (time.perf_counter() - start) * 1e3 / len(data)
        exact = codes if exact is None else exact
        core_ms = encoder_ms * args.threads
        rows.append(
            {
                "path": name,
                "decode_ms": ms,
                "encoder_ms": encoder_ms,
                "overlap_bound": core_ms / (core_ms + ms),
                "bits_differing": float((codes != exact).mean()),
                "images_with_a_differing_bit": float((codes != exact).any(axis=1).mean()),
                "map_t2i": mean_average_precision(text, codes, labels, labels),
                "map_i2t": mean_average_precision(codes, text, labels, labels),
            }
        )
    print("| path | decode ms | bound | bits differing | images differing | T->I MAP | I->T MAP |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['path']} | {r['decode_ms']:.2f} | {r['overlap_bound']:.2f} | {r['bits_differing']:.2%} | "
            f"{r['images_with_a_differing_bit']:.1%} | {r['map_t2i']:.4f} | {r['map_i2t']:.4f} |"
        )
    path = write_result(
        "decode_scale",
        {
            "images": len(data),
            "model": str(args.model),
            "bits": encoder.info.bits,
            "threads": args.threads,
            "map_variant": map_variant_name(None),
            "rows": rows,
        },
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
