"""The decode forward of one SL layer at inference (issue 24), on the CPU.

    python benchmarks/bench_decode.py

Two tables, fp32, under torch.no_grad():
- host overhead per layer call, on a layer small enough that the arithmetic
  is negligible: the sl_matmul call SLLinear made before (through the op's
  Python autograd formula), the layer now (one sl_matmul_inference call) and
  that op alone;
- the 4096 -> 11008 layer (rank 1024, density .05) at b = 1 and 16 against
  dense nn.Linear of the same shape, in the same run: the training op
  (GEMV, scale, GEMV, SpMV) and the one-pass decode kernel on int32 columns,
  and the layer itself, whose decode kernel reads its uint16 columns. Bytes are the
  weights each reads once.
Writes benchmarks/results/bench_decode_cpu.{json,md,png}.

On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps
OpenMP's spinning idle threads from taking the cores from the next parallel
region (and the decode kernel then splits only large layers across threads);
the JSON records the setting.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

import sltrain_ext as sl
from common import header, measure, provenance, pyplot, write_results
from sltrain_ext.nn import _has_autocast
from sltrain_ext.ops import sl_matmul_inference

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")


def per_call_us(fn, calls: int, repeats: int) -> float:
    """Median over repeats of the mean time of `calls` back-to-back calls, in microseconds."""
    def batch():
        for _ in range(calls):
            fn()
    return measure(batch, CPU, repeats) * 1e3 / calls


class PreviousSLLinear(sl.SLLinear):
    """SLLinear with the forward it had before the inference path: the
    training op, through its Python autograd formula, with grad on or off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B, values, bias = self.A, self.B, self.values, self.bias
        if _has_autocast(x.device.type) and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, A, B, values = x.to(dtype), A.to(dtype), B.to(dtype), values.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return sl.sl_matmul(x, A, B, values, self.row_ptr, self.col_idx, self.scale, bias)


def host_overhead(calls: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    layer = sl.SLLinear(64, 64, rank=8, density=0.1).eval()
    previous = PreviousSLLinear(64, 64, rank=8, density=0.1).eval()
    x = torch.randn(1, 64)
    operands = (layer.A, layer.B, layer.values, layer.row_ptr, layer.col_idx, layer.scale, layer.bias)
    variants = {
        "before: SLLinear forward calling sl_matmul (its autograd formula)": lambda: previous(x),
        "before: the sl_matmul call alone": lambda: sl.sl_matmul(x, *operands),
        "now: SLLinear forward (one sl_matmul_inference call)": lambda: layer(x),
        "sl_matmul_inference op alone": lambda: sl_matmul_inference(x, *operands),
    }
    with torch.no_grad():
        return [{"variant": name, "us_per_call": per_call_us(fn, calls, repeats)} for name, fn in variants.items()]


def decode(tokens: list[int], repeats: int) -> list[dict]:
    n, m, r, density = 4096, 11008, 1024, 0.05
    torch.manual_seed(0)
    layer = sl.SLLinear(n, m, rank=r, density=density).eval()
    nn.init.normal_(layer.B, std=0.02)
    dense = nn.Linear(n, m)
    nnz = layer.nnz
    # The support with int32 columns, as layers wider than 65536 inputs keep it
    # (this one keeps uint16 ones).
    operands = (layer.A, layer.B, layer.values, layer.row_ptr, layer.col_idx.int(), layer.scale, layer.bias)
    factor_bytes = 4 * (r * n + m * r + nnz + m) + 4 * (m + 1)
    bytes_of = {"dense nn.Linear": 4 * (m * n + m), "training op (sl_matmul)": factor_bytes + 4 * nnz,
                "decode kernel, int32 columns": factor_bytes + 4 * nnz,
                "decode kernel, uint16 columns (SLLinear.eval())": factor_bytes + 2 * nnz}
    rows = []
    with torch.no_grad(), sl.matmul_config("factored"):
        for b in tokens:
            x = torch.randn(b, n)
            variants = {
                "dense nn.Linear": lambda: dense(x),
                "training op (sl_matmul)": lambda: sl.sl_matmul(x, *operands),
                "decode kernel, int32 columns": lambda: sl_matmul_inference(x, *operands),
                "decode kernel, uint16 columns (SLLinear.eval())": lambda: layer(x),
            }
            times = {name: measure(fn, CPU, repeats) for name, fn in variants.items()}
            for name, ms in times.items():
                rows.append({"b": b, "variant": name, "ms": ms, "vs_dense": ms / times["dense nn.Linear"],
                             "weight_bytes": bytes_of[name],
                             "bytes_vs_dense": bytes_of[name] / bytes_of["dense nn.Linear"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000, help="calls per host-overhead sample")
    args = parser.parse_args()

    overhead = host_overhead(args.calls, args.repeats)
    layer_rows = decode(args.tokens, args.repeats)
    payload = {**header(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spinning)"),
               "host_overhead": overhead, "decode_4096x11008": layer_rows}
    lines = ["## Host time per layer call, 64 -> 64 layer, b = 1, fp32, no grad", "",
             "| call | µs per call |", "|---|---:|"]
    lines += [f"| {row['variant']} | {row['us_per_call']:.1f} |" for row in overhead]
    lines += ["", "## Decode forward, 4096 -> 11008, rank 1024, density .05, fp32, no grad", "",
              "| b | variant | ms | x dense time | weight MB | x dense bytes |", "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {row['b']} | {row['variant']} | {row['ms']:.2f} | {row['vs_dense']:.2f} | "
              f"{row['weight_bytes'] / 1e6:.0f} | {row['bytes_vs_dense']:.2f} |" for row in layer_rows]
    lines += ["", provenance(payload, f"OMP_WAIT_POLICY {payload['omp_wait_policy']}"), ""]
    write_results(RESULTS, "bench_decode_cpu", payload, "\n".join(lines))

    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(len(args.tokens), 1, figsize=(9, 2.6 * len(args.tokens)), squeeze=False)
    for axis, b in zip(axes[:, 0], args.tokens):
        rows = [row for row in layer_rows if row["b"] == b]
        axis.barh([row["variant"] for row in rows], [row["ms"] for row in rows])
        axis.invert_yaxis()
        axis.set_title(f"4096 -> 11008 decode, b = {b}")
        axis.set_xlabel("ms (median)")
    figure.tight_layout()
    figure.savefig(RESULTS / "bench_decode_cpu.png", dpi=120)
    print(f"wrote {RESULTS / 'bench_decode_cpu.png'}")


if __name__ == "__main__":
    main()
