"""Peak memory of real SLTrain training steps, against the analytic model.

    python benchmarks/bench_memory_step.py                              # GPU: LLaMA-7B, 4 x 256 tokens
    python benchmarks/bench_memory_step.py --config 9m --device cpu     # a smoke run (no memory figure)

The configuration of DESIGN.md's memory target: a LLaMA whose linear layers
are SLLinear, bf16 weights (float32 on the CPU), SLAdamW with 8-bit states and
per-layer updates (each parameter is updated inside backward and its
gradient freed at once), activation checkpointing per decoder layer. Runs
--steps steps (the first one creates the optimizer states) and reports the
peak memory allocated from the moment the model exists, next to
`benchmarks/memory.py`'s analytic total for the same batch ("ours + 8-bit +
per-layer"). A measured peak far above the model means something the model
does not count (a transient, a second copy) is alive.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sltrain_ext as sl
from sltrain_ext import configs
from bench_train import build
from common import header, write_results
from memory import METHODS, breakdown

GIB = 2**30
ANALYTIC_METHOD = "ours + 8-bit + per-layer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=configs.available(), default="7b")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (default 4, as memory.py)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="training steps (default 2; the first creates states)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    for name in ("batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    config = configs.load(args.config)
    model = build(config, "ours", device, torch.bfloat16 if on_gpu else torch.float32)
    optimizer = sl.SLAdamW(model.parameters(), lr=1e-4, state_bits=8, per_layer=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), device=device)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model_gib = torch.cuda.memory_allocated() / GIB if on_gpu else float("nan")
    losses, seconds = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model.loss(tokens, checkpoint=True)
        loss.backward()  # the per-layer updates run in here
        optimizer.step()
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    peak_gib = torch.cuda.max_memory_allocated() / GIB if on_gpu else float("nan")
    after_gib = torch.cuda.memory_allocated() / GIB if on_gpu else float("nan")
    analytic = breakdown(config, METHODS[ANALYTIC_METHOD], args.batch, args.seq_len)

    row = {"config": args.config, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
           "model_gib": model_gib, "after_steps_gib": after_gib, "peak_gib": peak_gib,
           "analytic_total_gib": analytic["total"], "analytic": analytic, "losses": losses,
           "step_seconds": seconds}
    meta = header()
    lines = [f"{meta['machine']}, torch {meta['torch']}, {meta['date']}. LLaMA-{args.config.upper()} with SLLinear, "
             f"{'bf16' if on_gpu else 'float32'} weights, SLAdamW 8-bit states with per-layer updates, activation "
             f"checkpointing, batch {args.batch} x {args.seq_len} tokens, {args.steps} steps. "
             f"Command: `{meta['command']}`", "",
             "| model GiB | after the steps GiB | peak GiB | analytic total GiB | losses | last step s |",
             "|---|---|---|---|---|---|",
             f"| {model_gib:.2f} | {after_gib:.2f} | {peak_gib:.2f} | {analytic['total']:.2f} | "
             f"{', '.join(f'{x:.3f}' for x in losses)} | {seconds[-1]:.2f} |", ""]
    write_results(args.out, f"bench_memory_step_{args.config}_{device.type}", meta | row, "\n".join(lines))


if __name__ == "__main__":
    main()
