"""End-to-end training throughput and peak memory: full-rank, naive SLTrain, ours.

    python benchmarks/bench_train.py                      # GPU: 60M (256), 350M (128), 1B (32), as DESIGN.md
    python benchmarks/bench_train.py --configs 9m:8 --steps 3 --device cpu   # a smoke run

For each config:batch, one LLaMA (this package's, seq 256, bf16 on a GPU) per
method: full-rank weights; naive SLTrain (the original code's layer,
benchmarks/baselines.py, int64 indices); and ours (SLLinear). All train with
SLAdamW at fp32 states so that only the layers differ. Reports tokens/s over
the timed steps (after warm-up) and peak allocated memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

import sltrain_ext as sl
from sltrain_ext import configs
from sltrain_ext.llama import LlamaForCausalLM
from baselines import NaiveSLLinear
from common import header, write_results

METHODS = ("full-rank", "naive SLTrain", "ours")


def build(config: configs.LlamaConfig, method: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if method != "full-rank":
        sl.convert(model, rank=config.rank, density=config.density, alpha=config.alpha)
    if method == "naive SLTrain":
        for name, module in list(model.named_modules()):
            if isinstance(module, sl.SLLinear):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, NaiveSLLinear(module))
    return model.to(dtype)


def run(config: configs.LlamaConfig, batch: int, method: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(config, method, device, dtype)
    optimizer = sl.SLAdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (batch, args.seq_len + 1), device=device)

    def step():
        model.loss(tokens, checkpoint=args.checkpointing).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in model.parameters())
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"method": method, "tokens_per_s": args.steps * batch * args.seq_len / seconds,
            "peak_gib": peak, "parameters": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="60m:256,350m:128,1b:32",
                        help="comma-separated config:batch pairs (default: DESIGN.md's end-to-end table)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    rows = []
    for item in args.configs.split(","):
        name, batch = item.split(":")
        config = configs.load(name)
        for method in METHODS:
            row = {"config": name, "batch": int(batch), **run(config, int(batch), method, args)}
            rows.append(row)
            print(f"{name} batch {batch} {method}: {row['tokens_per_s']:,.0f} tok/s, peak {row['peak_gib']:.2f} GiB",
                  flush=True)
    meta = header() | {"seq_len": args.seq_len, "steps": args.steps}
    lines = [f"{meta['machine']}, torch {meta['torch']}, {meta['date']}, seq {args.seq_len}, SLAdamW fp32 states. "
             f"Command: `{meta['command']}`", "",
             "| config (batch) | method | parameters | tokens/s | vs naive | vs full-rank | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        same = {r["method"]: r for r in rows if r["config"] == row["config"]}
        lines.append(f"| {row['config'].upper()} ({row['batch']}) | {row['method']} | {row['parameters'] / 1e6:.1f} M | "
                     f"{row['tokens_per_s']:,.0f} | {row['tokens_per_s'] / same['naive SLTrain']['tokens_per_s']:.2f}x | "
                     f"{row['tokens_per_s'] / same['full-rank']['tokens_per_s']:.2f}x | {row['peak_gib']:.2f} |")
    lines.append("")
    write_results(args.out, f"bench_train_{torch.device(args.device).type}", meta | {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
