"""Peak transient memory, flops, DRAM bytes and predicted H100 time of the
CUDA sl_matmul forward+backward at DESIGN.md's seven training shapes,
against dense nn.Linear and the naive algorithm.

    python benchmarks/bench_cuda_memory.py --out benchmarks/results

No GPU needed: the peaks come from the allocation plan of the CUDA bindings
(benchmarks/cuda_layer_model.py), which this script first checks against
the allocation ledger of the emulated bindings (tests/emulated_cuda.py) at
each shape scaled down by 16; the times are that plan's GEMM flops at the
H100's measured 709 TFLOP/s and its memory passes at 3.0 TB/s. Every peak at
the real shapes and every time is a PREDICTION: the GPU issue measures them.
Dense and naive peaks and times measured on an H100 come from DESIGN.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import sltrain_ext as sl  # noqa: E402
from bench_layer import PRESETS  # noqa: E402
from common import header, pyplot, write_results  # noqa: E402
from cuda_layer_model import (GEMM_FLOPS, Layer, dense_cost, dense_peak, materialized_backward_peak,  # noqa: E402
                              materialized_cost, materialized_forward_peak, materialized_peak)

# DESIGN.md's H100 measurements at its seven training shapes (bench_layer.py's
# "training" preset): dense fwd ms, dense and naive fwd+bwd ms, dense and
# naive peak MiB.
H100 = {
    "350M-attn": (0.100, 0.361, 0.562, 130, 134),
    "1B-attn": (0.095, 0.320, 0.566, 72, 86),
    "1B-up": (1.972, 4.511, 4.600, 139, 171),
    "1B-down": (1.454, 4.088, 4.549, 139, 173),
    "7B-attn": (0.091, 0.324, 0.602, 64, 122),
    "7B-up b=2048": (0.264, 0.882, 1.579, 145, 273),
    "7B-up b=16384": (2.080, 6.199, 7.438, 558, 686),
}
SCALE_DOWN = 16
MIB = 2**20


def measured_scaled_peak(b, n, m, r, density, operands_aligned):
    """(ledger peak, plan peak) in bytes of the emulated bindings at the shape / SCALE_DOWN, float32."""
    import emulated_cuda

    b, n, m, r = (max(1, v // SCALE_DOWN) for v in (b, n, m, r))
    layer = Layer(b, m, n, r, round(density * m * n), element=4, operands_aligned=operands_aligned)
    forward, backward = emulated_cuda.ledgers_of_a_materialized_layer(b, m, n, r, layer.nnz, layer.workspace,
                                                                      torch.float32,
                                                                      operands_aligned=operands_aligned)
    measured = max(forward.peak, b * m * 4 + backward.peak)
    return measured, materialized_peak(layer), (b, n, m, r)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    rows = []
    for name, b, n, m, r, density in PRESETS["training"]:
        dense_fwd_ms, dense_ms, naive_ms, dense_mib, naive_mib = H100[name]
        # In sltrain_ext's LLaMA, x and the output gradient arrive with aligned
        # rows (swiglu); `contiguous` is the same layer fed by an arbitrary producer.
        layer = Layer(b, m, n, r, round(density * m * n), operands_aligned=True)
        contiguous = Layer(b, m, n, r, layer.nnz)
        path = sl.matmul_path(b, m, n, r, layer.nnz, torch.device("cuda"))
        ours, dense = materialized_cost(layer), dense_cost(layer)
        for operands_aligned in (True, False):
            measured, planned, scaled = measured_scaled_peak(b, n, m, r, density, operands_aligned)
            if measured != planned:
                raise SystemExit(f"{name}: the ledger measured {measured} bytes at {scaled} "
                                 f"(operands_aligned={operands_aligned}), the plan says {planned}")
        rows.append({
            "shape": name, "b": b, "n": n, "m": m, "r": r, "density": density, "path": path,
            "scaled_shape_b_n_m_r": scaled, "scaled_measured_peak_bytes": measured,
            "ours_peak_mib": materialized_peak(layer) / MIB,
            "ours_peak_mib_contiguous": materialized_peak(contiguous) / MIB,
            "ours_forward_peak_mib": materialized_forward_peak(layer) / MIB,
            "ours_backward_peak_mib": materialized_backward_peak(layer) / MIB,
            "dense_peak_mib": dense_peak(layer) / MIB,
            "dense_peak_mib_h100": dense_mib, "naive_peak_mib_h100": naive_mib,
            "ours_gemm_gflop": ours.gemm_flops / 1e9, "dense_gemm_gflop": dense.gemm_flops / 1e9,
            "ours_dram_gb": ours.bytes / 1e9, "dense_dram_gb": dense.bytes / 1e9,
            "ours_floor_ms": ours.gemm_flops / GEMM_FLOPS * 1e3, "ours_predicted_ms": ours.seconds * 1e3,
            "ours_predicted_ms_contiguous": materialized_cost(contiguous).seconds * 1e3,
            "ours_fwd_predicted_ms": materialized_cost(layer, backward_pass=False).seconds * 1e3,
            "dense_fwd_ms_h100": dense_fwd_ms,
            "dense_predicted_ms": dense.seconds * 1e3,
            "dense_ms_h100": dense_ms, "naive_ms_h100": naive_ms,
            "factors_from_dW": layer.factors_from_dW,
        })
        print(f"{name}: peak {rows[-1]['ours_peak_mib']:.1f} MiB (dense {rows[-1]['dense_peak_mib']:.1f}), "
              f"predicted {rows[-1]['ours_predicted_ms']:.3f} ms (floor {rows[-1]['ours_floor_ms']:.3f})", flush=True)
    meta = header() | {"note": "peaks at the real shapes and all times are PREDICTIONS (H100: 709 TFLOP/s "
                                "bf16 GEMM, 3.0 TB/s copy); the scaled-down peaks were measured by the ledger"}
    name = "bench_cuda_memory"
    write_results(args.out, name, meta | {"rows": rows}, markdown(meta, rows))
    plot(args.out / f"{name}.png", rows)


def markdown(meta, rows):
    lines = [
        f"CUDA sl_matmul forward+backward, bf16, DESIGN.md's training shapes: {meta['note']}. "
        f"Computed on {meta['machine']}, torch {meta['torch']}, {meta['date']}. "
        "'ours' is the layer in sltrain_ext's LLaMA, whose MLP hands x and the output gradient over with rows "
        "16-byte aligned at any width (swiglu); 'contiguous' is the same layer fed contiguous operands by an "
        "arbitrary producer (at 5461 wide, copies and staging passes the aligned case does not need).",
        f"Command: `{meta['command']}`", "",
        "| shape (b, n->m, r, density) | path | ours peak MiB (predicted) | dense peak MiB | ours/dense | "
        "naive peak MiB (H100) | ledger at 1/16 = plan (bytes) | ours GFLOP | dense GFLOP | ours GB | dense GB | "
        "ours ms (predicted) | ours floor ms | predicted/floor | contiguous: peak/dense, predicted/floor | "
        "dense ms (H100) | ours fwd ms (predicted) | dense fwd ms (H100) |",
        "|" + "---|" * 18,
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} ({row['b']}, {row['n']}->{row['m']}, {row['r']}, {row['density']}) | {row['path']} | "
            f"{row['ours_peak_mib']:.1f} | {row['dense_peak_mib']:.1f} | "
            f"{row['ours_peak_mib'] / row['dense_peak_mib']:.3f}x | {row['naive_peak_mib_h100']} | "
            f"{row['scaled_measured_peak_bytes']} | {row['ours_gemm_gflop']:.0f} | {row['dense_gemm_gflop']:.0f} | "
            f"{row['ours_dram_gb']:.2f} | {row['dense_dram_gb']:.2f} | {row['ours_predicted_ms']:.3f} | "
            f"{row['ours_floor_ms']:.3f} | {row['ours_predicted_ms'] / row['ours_floor_ms']:.2f}x | "
            f"{row['ours_peak_mib_contiguous'] / row['dense_peak_mib']:.3f}x, "
            f"{row['ours_predicted_ms_contiguous'] / row['ours_floor_ms']:.2f}x | "
            f"{row['dense_ms_h100']:.3f} | {row['ours_fwd_predicted_ms']:.3f} | {row['dense_fwd_ms_h100']:.3f} |")
    lines.append("")
    return "\n".join(lines)


def plot(path: Path, rows):
    plt = pyplot()
    if plt is None:
        return
    fig, (memory, time) = plt.subplots(1, 2, figsize=(13, 4.2))
    names = [row["shape"] for row in rows]
    def bars(ax, series, per, ylabel, title):
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar([j + offset for j in range(len(rows))], [row[key] / row[per] for row in rows], width,
                   label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(rows)), names, rotation=25, ha="right")
        ax.legend(fontsize=8)

    bars(memory, [("ours_peak_mib", "sltrain_ext (predicted)"), ("dense_peak_mib_h100", "dense nn.Linear (H100)"),
                  ("naive_peak_mib_h100", "naive SLTrain (H100)")],
         "dense_peak_mib", "peak transient memory / dense", "forward+backward peak memory")
    bars(time, [("ours_predicted_ms", "sltrain_ext in its LLaMA (predicted)"),
                ("ours_predicted_ms_contiguous", "sltrain_ext, contiguous operands (predicted)"),
                ("dense_ms_h100", "dense nn.Linear (H100)"),
                ("naive_ms_h100", "naive SLTrain (H100)")],
         "ours_floor_ms", "time / our algorithm's GEMM floor", "forward+backward time (bf16, H100)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
