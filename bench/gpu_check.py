"""GPU check, in one short run (under 8 minutes) on a machine with an NVIDIA GPU and the `gpu`
extra (faiss-gpu, onnxruntime-gpu): GpuIndexBinaryFlat against the CPU flat scan, and the CUDA
execution provider against the CPU one, each with a parity check, so that the figures of
docs/results.md's GPU section come from one command:

    bash bench/gpu_check.sh --model runs/demo/model        # writes bench/out/gpu_check.json

Parity: the gallery store's GPU mirror must give the CPU store's exact results (ids, distances
and tie order); raw GpuIndexBinaryFlat must give the CPU index's distances (its tie order is
its own); the CUDA encoder's codes may differ from the CPU's only where |h| is tiny (sign flips
of near-zero values), which is counted and reported with the largest |h| of a flipped bit."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.flags import command_line, machine_base  # noqa: E402


def timed(fn: Any, repeat: int) -> float:
    """Best-of-`repeat` wall seconds of fn() after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def faiss_check(n: int, bits: int, nq: int, k: int, seed: int) -> dict[str, Any]:
    """CPU IndexBinaryFlat vs GpuIndexBinaryFlat, and the store's GPU mirror vs its CPU index."""
    import faiss

    from index.faiss_store import FaissCodeStore

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    cpu = faiss.IndexBinaryFlat(bits)
    cpu.add(codes)
    gpu = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), bits)
    gpu.add(codes)
    d_cpu, _ = cpu.search(queries, k)
    d_gpu, _ = gpu.search(queries, k)
    out: dict[str, Any] = {
        "n": n,
        "bits": bits,
        "queries": nq,
        "k": k,
        "raw_distances_equal": bool(np.array_equal(d_cpu, d_gpu)),
    }
    for name, index in (("cpu_flat", cpu), ("gpu_flat", gpu)):
        out[f"{name}_ms_per_query_batch{nq}"] = timed(lambda index=index: index.search(queries, k), 3) * 1000 / nq
        out[f"{name}_ms_single_query"] = timed(lambda index=index: index.search(queries[:1], k), 20) * 1000
    ids = [str(i) for i in range(n)]
    stores = {}
    for device in ("cpu", "cuda"):
        store = FaissCodeStore(bits, device=device)
        store.add(ids, codes)
        stores[device] = store
    a, b = stores["cpu"].search(queries, k), stores["cuda"].search(queries, k)
    out["store_results_equal"] = bool(a[0] == b[0] and np.array_equal(a[1], b[1]))
    out["store_gpu_ms_per_query_batch"] = timed(lambda: stores["cuda"].search(queries, k), 3) * 1000 / nq
    out["store_cpu_ms_per_query_batch"] = timed(lambda: stores["cpu"].search(queries, k), 3) * 1000 / nq
    stores["cuda"].remove(ids[: n // 100])  # the mirror after removes, then after adds
    stores["cpu"].remove(ids[: n // 100])
    extra = rng.integers(0, 256, (n // 100, bits // 8), dtype=np.uint8)
    for store in stores.values():
        store.add([f"x{i}" for i in range(len(extra))], extra)
    a, b = stores["cpu"].search(queries, k), stores["cuda"].search(queries, k)
    out["store_results_equal_after_changes"] = bool(a[0] == b[0] and np.array_equal(a[1], b[1]))
    return out


def encoder_check(model: Path, images: int, texts: int) -> dict[str, Any]:
    """The CUDA provider against the CPU one on the model's own inputs, with sign-flip parity."""
    from model.runtime.encoder import Encoder

    cpu = Encoder.load(model, device="cpu")
    cuda = Encoder.load(model, device="cuda")
    out: dict[str, Any] = {"model": str(model), "providers": cuda.providers, "device": cuda.device}
    rng = np.random.default_rng(0)
    words = cpu.info.text.bag_of_words["vocabulary"] if cpu.info.text.bag_of_words else ["a", "photo", "of", "a", "dog"]
    sample = [" ".join(rng.choice(words, size=5)) for _ in range(texts)]
    h_cpu, h_gpu = cpu.text_representations(sample), cuda.text_representations(sample)
    flipped = (h_cpu >= 0) != (h_gpu >= 0)
    out["text"] = {
        "items": texts,
        "max_abs_diff": float(np.abs(h_cpu - h_gpu).max()),
        "flipped_bits": int(flipped.sum()),
        "max_abs_h_of_flipped": float(np.abs(h_cpu[flipped]).max()) if flipped.any() else 0.0,
    }
    if cpu.info.image.kind == "pixels":
        size = cpu.info.image.preprocess["size"] if cpu.info.image.preprocess else 224
        x = rng.uniform(-1, 1, (images, 3, size, size)).astype(np.float32)
        h_cpu, h_gpu = cpu.image_representations(x), cuda.image_representations(x)
        flipped = (h_cpu >= 0) != (h_gpu >= 0)
        out["image"] = {
            "items": images,
            "max_abs_diff": float(np.abs(h_cpu - h_gpu).max()),
            "flipped_bits": int(flipped.sum()),
            "max_abs_h_of_flipped": float(np.abs(h_cpu[flipped]).max()) if flipped.any() else 0.0,
        }
        # first call at each new batch size: with HEURISTIC algorithm search it must not re-benchmark
        first_calls = {}
        for batch in (1, 7, 32, 64):
            start = time.perf_counter()
            cuda.image_representations(x[:batch])
            first_calls[batch] = (time.perf_counter() - start) * 1000
        out["image"]["first_call_ms_by_batch"] = first_calls
        for name, enc in (("cpu", cpu), ("cuda", cuda)):
            seconds = timed(lambda enc=enc: enc.image_representations(x[:64]), 3)
            out["image"][f"{name}_ms_per_image_batch64"] = seconds * 1000 / 64
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported model directory (skip the encoder check without)")
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery codes for the FAISS check")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"command": command_line(), "machine": machine_base()}
    report["faiss"] = faiss_check(args.n, args.bits, args.queries, args.k, seed=0)
    if args.model is not None:
        report["encoder"] = encoder_check(args.model, images=256, texts=1000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    ok = report["faiss"]["store_results_equal"] and report["faiss"]["store_results_equal_after_changes"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
