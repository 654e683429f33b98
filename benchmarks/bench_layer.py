"""One SL layer against dense nn.Linear and the naive SLTrain layer.

    python benchmarks/bench_layer.py                       # CPU, the shapes of the CPU table
    python benchmarks/bench_layer.py --preset training     # DESIGN.md's seven H100 shapes (GPU)
    python benchmarks/bench_layer.py --sweep-paths         # both sl_matmul paths, for the cost model

Times forward and forward+backward (median of --repeats, inputs requiring
grad as inside a network) and, on a GPU, the peak memory a forward+backward
allocates above its inputs. Writes JSON, a markdown table and a PNG chart.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import sltrain_ext as sl
from baselines import NaiveSLLinear
from common import header, measure, pyplot, write_results

# name, tokens b, in n, out m, rank r, density
PRESETS = {
    "cpu": [
        ("issue-2 CPU target", 512, 1024, 1024, 128, 0.03),
        ("60M-up", 512, 512, 1376, 128, 0.03),
        ("130M-attn", 256, 768, 768, 256, 0.03),
        ("few tokens", 16, 1024, 1024, 128, 0.03),
        ("1B-down (b=256)", 256, 5461, 2048, 512, 0.03),
    ],
    "training": [
        ("350M-attn", 32768, 1024, 1024, 256, 0.03),
        ("1B-attn", 8192, 2048, 2048, 512, 0.03),
        ("1B-up", 8192, 2048, 5461, 512, 0.03),
        ("1B-down", 8192, 5461, 2048, 512, 0.03),
        ("7B-attn", 2048, 4096, 4096, 1024, 0.05),
        ("7B-up b=2048", 2048, 4096, 11008, 1024, 0.05),
        ("7B-up b=16384", 16384, 4096, 11008, 1024, 0.05),
    ],
    # Straddles the CPU cost model's boundary between the two paths (--sweep-paths).
    "paths": [
        ("r = n", 2048, 256, 256, 256, 0.03),
        ("r = n/2", 2048, 512, 512, 256, 0.03),
        ("dense support", 1024, 256, 256, 64, 0.5),
        ("density .2", 1024, 512, 512, 64, 0.2),
        ("r = n/4", 1024, 512, 512, 128, 0.03),
        ("9M-attn", 4096, 128, 128, 32, 0.03),
        ("9M-up", 4096, 128, 352, 32, 0.03),
        ("9M-down", 4096, 352, 128, 32, 0.03),
    ],
    "decode": [
        ("7B-up b=1", 1, 4096, 11008, 1024, 0.05),
        ("7B-up b=16", 16, 4096, 11008, 1024, 0.05),
        ("7B-up b=128", 128, 4096, 11008, 1024, 0.05),
    ],
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_layers(n, m, r, density, dtype, device):
    torch.manual_seed(0)
    ours = sl.SLLinear(n, m, r, density, alpha=32, device=device, dtype=dtype)
    nn.init.normal_(ours.B, std=0.02)  # trained factors, not the zero init
    dense = nn.Linear(n, m, device=device, dtype=dtype)
    return {"dense": dense, "naive": NaiveSLLinear(ours), "ours": ours}


def time_layer(layer, x, grad, device, repeats):
    def forward():
        return layer(x)

    def forward_backward():
        layer(x).backward(grad)

    result = {"fwd_ms": measure(forward, device, repeats), "fwd_bwd_ms": measure(forward_backward, device, repeats)}
    if device.type == "cuda":
        layer.zero_grad(set_to_none=False)
        x.grad = torch.zeros_like(x)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        torch.cuda.synchronize()
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return result


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="shape set (default: cpu on the CPU, training on a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: float32 on the CPU, bfloat16 on a GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (median)")
    parser.add_argument("--sweep-paths", action="store_true", help="also time both sl_matmul paths")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    preset = args.preset or ("training" if on_gpu else "cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if on_gpu else "float32")]
    repeats = args.repeats or (50 if on_gpu else 10)
    rows = []
    for name, b, n, m, r, density in PRESETS[preset]:
        layers = build_layers(n, m, r, density, dtype, device)
        x = torch.randn(b, n, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, m, device=device, dtype=dtype)
        row = {"shape": name, "b": b, "n": n, "m": m, "r": r, "density": density,
               "path": sl.matmul_path(b, m, n, r, layers["ours"].nnz, device)}
        for kind, layer in layers.items():
            row[kind] = time_layer(layer, x, grad, device, repeats)
        if args.sweep_paths:
            for path in ("factored", "materialized"):
                with sl.matmul_config(path):
                    row[path] = time_layer(layers["ours"], x, grad, device, repeats)
        rows.append(row)
        print(f"{name}: dense {row['dense']['fwd_bwd_ms']:.3f} ms, naive {row['naive']['fwd_bwd_ms']:.3f} ms, "
              f"ours {row['ours']['fwd_bwd_ms']:.3f} ms (fwd+bwd, {row['path']})", flush=True)
        del layers, x, grad

    summary = {
        f"geomean_{kind}_over_dense_{phase}": geomean(row[kind][phase] / row["dense"][phase] for row in rows)
        for kind in ("ours", "naive") for phase in ("fwd_ms", "fwd_bwd_ms")
    }
    summary["geomean_ours_over_naive_fwd_bwd_ms"] = geomean(
        row["ours"]["fwd_bwd_ms"] / row["naive"]["fwd_bwd_ms"] for row in rows)
    meta = header() | {"dtype": str(dtype).removeprefix("torch."), "preset": preset, "repeats": repeats}
    write_results(args.out, f"bench_layer_{preset}_{device.type}", meta | {"summary": summary, "rows": rows},
                  markdown(meta, rows, summary, on_gpu, args.sweep_paths))
    plot(args.out / f"bench_layer_{preset}_{device.type}.png", meta, rows)


def markdown(meta, rows, summary, with_memory, with_paths):
    columns = ["shape (b, n->m, r, density)", "dense fwd", "naive fwd", "ours fwd", "dense fwd+bwd",
               "naive fwd+bwd", "ours fwd+bwd", "ours/dense", "ours/naive", "path"]
    if with_memory:
        columns += ["dense MiB", "naive MiB", "ours MiB"]
    if with_paths:
        columns += ["factored fwd+bwd", "materialized fwd+bwd"]
    lines = [f"{meta['machine']}, torch {meta['torch']}, {meta['dtype']}, {meta['date']}; times in ms "
             f"(median of {meta['repeats']}).", f"Command: `{meta['command']}`", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row['shape']} ({row['b']}, {row['n']}->{row['m']}, {row['r']}, {row['density']})"]
        cells += [f"{row[k]['fwd_ms']:.3f}" for k in ("dense", "naive", "ours")]
        cells += [f"{row[k]['fwd_bwd_ms']:.3f}" for k in ("dense", "naive", "ours")]
        cells += [f"{row['ours']['fwd_bwd_ms'] / row['dense']['fwd_bwd_ms']:.2f}x",
                  f"{row['ours']['fwd_bwd_ms'] / row['naive']['fwd_bwd_ms']:.2f}x", row["path"]]
        if with_memory:
            cells += [f"{row[k]['peak_mib']:.0f}" for k in ("dense", "naive", "ours")]
        if with_paths:
            cells += [f"{row[p]['fwd_bwd_ms']:.3f}" for p in ("factored", "materialized")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Geometric means: " + ", ".join(f"{k.removeprefix('geomean_')} {v:.2f}x" for k, v in summary.items()), ""]
    return "\n".join(lines)


def plot(path: Path, meta, rows):
    plt = pyplot()
    if plt is None:
        return
    kinds = [("dense", "dense nn.Linear"), ("naive", "naive SLTrain"), ("ours", "sltrain_ext")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.27
    for i, (kind, label) in enumerate(kinds):
        ratios = [row[kind]["fwd_bwd_ms"] / row["dense"]["fwd_bwd_ms"] for row in rows]
        ax.bar([j + (i - 1) * width for j in range(len(rows))], ratios, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [row["shape"] for row in rows], rotation=20, ha="right")
    ax.set_ylabel("forward+backward time / dense")
    ax.set_title(f"{meta['machine']}, {meta['dtype']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
