"""One optimizer step over every trainable tensor of an SLTrain LLaMA config.

    python benchmarks/bench_optim.py                          # CPU: LLaMA-60M
    python benchmarks/bench_optim.py --config 1b --device cuda

SLAdamW (32-bit and 8-bit states) against torch.optim.AdamW with its foreach
and fused implementations, on the same parameters (float32, random
gradients). Effective bandwidth counts the bytes every step must move: param,
grad and both states read, param and states written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sltrain_ext as sl
from sltrain_ext import configs
from common import header, measure, write_results


def make_params(numels: list[int], device: torch.device) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for numel in numels:
        p = torch.nn.Parameter(torch.randn(numel, device=device, generator=gen))
        p.grad = torch.randn(numel, device=device, generator=gen)
        params.append(p)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=configs.available(), default=None,
                        help="default: 1b on a GPU, 60m on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    name = args.config or ("1b" if on_gpu else "60m")
    repeats = args.repeats or (20 if on_gpu else 5)
    numels = configs.load(name).parameter_numels(sltrain=True)
    total = sum(numels)
    optimizers = {
        "SLAdamW (fp32 states)": lambda ps: sl.SLAdamW(ps, lr=1e-4),
        "SLAdamW (8-bit states)": lambda ps: sl.SLAdamW(ps, lr=1e-4, state_bits=8),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
    }
    rows = []
    for label, make in optimizers.items():
        params = make_params(numels, device)
        optimizer = make(params)
        ms = measure(optimizer.step, device, repeats)
        state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        moved = total * 4 * 3 + 2 * state_bytes  # param r+w, grad r, states r+w
        rows.append({"optimizer": label, "ms": ms, "tb_per_s": moved / ms / 1e9, "state_bytes": state_bytes})
        print(f"{label}: {ms:.2f} ms, {moved / ms / 1e9:.3f} TB/s", flush=True)
        del params, optimizer

    base = {r["optimizer"]: r["ms"] for r in rows}
    meta = header() | {"config": name, "tensors": len(numels), "elements": total, "repeats": repeats}
    lines = [f"One step over the {len(numels)} trainable tensors ({total / 1e6:.1f} M float32 elements) of "
             f"SLTrain LLaMA-{name.upper()}; {meta['machine']}, torch {meta['torch']}, {meta['date']}, "
             f"median of {repeats}. Command: `{meta['command']}`", "",
             "| optimizer | ms | effective TB/s | speed-up vs torch foreach | vs torch fused | state MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['ms']:.2f} | {r['tb_per_s']:.3f} | "
                     f"{base['torch AdamW foreach'] / r['ms']:.2f}x | {base['torch AdamW fused'] / r['ms']:.2f}x | "
                     f"{r['state_bytes'] / 2**20:.0f} |")
    lines.append("")
    write_results(args.out, f"bench_optim_{name}_{device.type}", meta | {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
