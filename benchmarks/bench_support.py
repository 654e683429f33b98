"""Sampling the sparse supports of every SL matrix of a LLaMA config.

    python benchmarks/bench_support.py                    # LLaMA-1B, its density 0.03
    python benchmarks/bench_support.py --config 7b --device cuda   # density 0.05

Ours: random_support for every attention and MLP projection of the config,
timed in full. Original: the SLTrain code's randperm(m*n)[:nnz] + sort on the
CPU, timed once per distinct matrix shape and multiplied by the number of
matrices of that shape (the full run takes minutes; the column says so).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch

import sltrain_ext as sl
from sltrain_ext import configs
from common import header, write_results

def sample_all(shapes: Counter, density: float, device: torch.device) -> tuple[float, int]:
    total_nnz = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    seed = 0
    for (m, n), count in shapes.items():
        for _ in range(count):
            nnz = sl.nnz_for_density(m, n, density)
            sl.random_support(m, n, nnz, seed, device=device)
            total_nnz += nnz
            seed += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, total_nnz


def original_one(m: int, n: int, density: float) -> float:
    start = time.perf_counter()
    nnz = round(density * m * n)
    torch.randperm(m * n)[:nnz].sort()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=configs.available(), default="1b")
    parser.add_argument("--density", type=float, default=None, help="default: the config's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    config = configs.load(args.config)
    shapes = Counter(config.linear_shapes())
    args.density = args.density or config.density
    device = torch.device(args.device)
    sample_all(Counter({next(iter(shapes)): 1}), args.density, device)  # warm up
    ours_s, total_nnz = sample_all(shapes, args.density, device)
    per_shape = {f"{m}x{n}": original_one(m, n, args.density) for (m, n) in shapes}
    original_s = sum(per_shape[f"{m}x{n}"] * count for (m, n), count in shapes.items())
    meta = header() | {"config": args.config, "density": args.density, "device": str(device)}
    payload = meta | {"matrices": sum(shapes.values()), "total_nnz": total_nnz, "ours_s": ours_s,
                      "original_estimated_s": original_s, "original_per_matrix_s": per_shape}
    md = "\n".join([
        f"{meta['machine']}, torch {meta['torch']}, {meta['date']}. Command: `{meta['command']}`", "",
        "| config | matrices | nnz | ours (all, measured) | original randperm (one per shape x count) |",
        "|---|---|---|---|---|",
        f"| LLaMA-{args.config.upper()}, density {args.density}, {device} | {sum(shapes.values())} | {total_nnz:,} | "
        f"{ours_s:.2f} s | {original_s:.1f} s |", ""])
    write_results(args.out, f"bench_support_{args.config}_{device.type}", payload, md)


if __name__ == "__main__":
    main()
