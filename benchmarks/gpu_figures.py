"""The key figure of one `benchmarks/gpu_run.sh` stage, for its summary table.

    python benchmarks/gpu_figures.py KIND FILE

KIND says how FILE is read: `pytest`, `sanitizer`, `train_run` and `last_line` read a stage's log;
`layer`, `decode`, `optim`, `support`, `train` and `memory_step` a
benchmark's JSON;
`cuda_bench` the JSON lines of a bench_cuda_* program. Prints one line. A
missing or unreadable file prints what is missing instead (exit status 0):
the table must stay complete when a stage died before writing its result.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def last_match(pattern: str, text: str) -> str | None:
    matches = re.findall(pattern, text, flags=re.MULTILINE)
    return matches[-1] if matches else None


def last_line_figure(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:100] if lines else "empty log"


def pytest_figure(log: Path) -> str:
    # The last line such as "12 passed, 1 failed in 3.2s" or "138 tests collected in 2.1s".
    summary = last_match(r"^=*\s*(\d+[^=\n]*(?:passed|failed|error|collected|skipped|deselected)[^=\n]*?)\s*=*$",
                         log.read_text(errors="replace"))
    return summary or "no pytest summary in the log"


def sanitizer_figure(log: Path) -> str:
    errors = last_match(r"ERROR SUMMARY: (\d+ errors?)", log.read_text(errors="replace"))
    return f"{errors or 'no ERROR SUMMARY'}; {pytest_figure(log)}"


def train_run_figure(log: Path) -> str:
    # sltrain-train's closing table: "sltrain  <parameters>  <held-out ppl>  <bits/byte>  <tokens/s>  <time>".
    text = log.read_text(errors="replace")
    runs = re.findall(r"^\S+\s+[\d,]+\s+([\d.]+)\s+[\d.]+\s+([\d,]+)\s+[\d.]+s$", text, flags=re.MULTILINE)
    if not runs:
        return "no closing table of sltrain-train in the log"
    stopped = "stopped at step" in text
    cells = [f"held-out ppl {ppl}, {tokens} tok/s" for ppl, tokens in runs]
    return ("stopped, then resumed: " if stopped else "") + " -> ".join(cells)


def layer_figure(result: dict[str, Any]) -> str:
    rows = result["rows"]
    ratios = {row["shape"]: row["ours"]["fwd_bwd_ms"] / row["dense"]["fwd_bwd_ms"] for row in rows}
    worst = max(ratios, key=ratios.__getitem__)
    summary = result["summary"]
    figure = (f"fwd+bwd ours/dense geomean {summary['geomean_ours_over_dense_fwd_bwd_ms']:.2f}x (<=1.15), "
              f"ours/naive {summary['geomean_ours_over_naive_fwd_bwd_ms']:.2f}x, worst {worst} {ratios[worst]:.2f}x")
    with_memory = [row for row in rows if "peak_mib" in row["ours"]]
    if with_memory:
        within = sum(row["ours"]["peak_mib"] <= row["dense"]["peak_mib"] for row in with_memory)
        figure += f", peak <= dense at {within}/{len(with_memory)}"
    return figure


def decode_figure(result: dict[str, Any]) -> str:
    cells = [f"b={row['b']} ours {row['ours']['fwd_ms']:.4f} / dense {row['dense']['fwd_ms']:.4f}"
             for row in result["rows"] if row["b"] <= 16]
    return "fwd ms " + ("; ".join(cells) if cells else "no row with b <= 16") + " (ours <= 0.025 at b=1, 16)"


def optim_figure(result: dict[str, Any]) -> str:
    rows = {row["optimizer"]: row for row in result["rows"]}
    ours, fused = rows["SLAdamW (fp32 states)"], rows["torch AdamW fused"]
    return (f"SLAdamW fp32 {ours['gb_per_s'] / 1e3:.2f} TB/s ({ours['copy_fraction']:.2f} of copy), "
            f"{fused['ms'] / ours['ms']:.2f}x torch fused (>=1.5); "
            f"8-bit {rows['SLAdamW (8-bit states)']['ms']:.1f} ms")


def support_figure(result: dict[str, Any]) -> str:
    return (f"{result['matrices']} supports ({result['total_nnz'] / 1e6:.0f} M nonzeros) in {result['ours_s']:.2f} s "
            f"(< 1 s for 7B), original ~{result['original_estimated_s']:.0f} s")


def train_figure(result: dict[str, Any]) -> str:
    cells = []
    for config in dict.fromkeys(row["config"] for row in result["rows"]):
        by_method = {row["method"]: row for row in result["rows"] if row["config"] == config}
        ours, naive, full = by_method["ours"], by_method["naive SLTrain"], by_method["full-rank"]
        cell = (f"{config} tok/s ours/naive {ours['tokens_per_s'] / naive['tokens_per_s']:.2f}x "
                f"ours/full {ours['tokens_per_s'] / full['tokens_per_s']:.2f}x")
        if not math.isnan(ours["peak_gib"]):
            cell += f" peak {ours['peak_gib']:.1f}/{naive['peak_gib']:.1f} GiB vs naive"
        cells.append(cell)
    return "; ".join(cells)


def memory_step_figure(result: dict[str, Any]) -> str:
    return (f"peak {result['peak_gib']:.2f} GiB (<=16), analytic {result['analytic_total_gib']:.2f}, "
            f"losses {', '.join(f'{x:.3f}' for x in result['losses'])}")


def cuda_bench_figure(json_lines: Path) -> str:
    rows = [json.loads(line) for line in json_lines.read_text().splitlines() if line.strip()]
    if not rows:
        return "no measurement"
    best = max(rows, key=lambda row: row["GBps"])
    return f"{len(rows)} cases, best {best['GBps']:.0f} GB/s ({best['kernel']} {best['case']})"


def from_json(figure: Callable[[dict[str, Any]], str]) -> Callable[[Path], str]:
    return lambda path: figure(json.loads(path.read_text()))


KINDS: dict[str, Callable[[Path], str]] = {
    "last_line": last_line_figure,
    "pytest": pytest_figure,
    "train_run": train_run_figure,
    "sanitizer": sanitizer_figure,
    "layer": from_json(layer_figure),
    "decode": from_json(decode_figure),
    "optim": from_json(optim_figure),
    "support": from_json(support_figure),
    "train": from_json(train_figure),
    "memory_step": from_json(memory_step_figure),
    "cuda_bench": cuda_bench_figure,
}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in KINDS:
        sys.exit(f"usage: gpu_figures.py {{{','.join(KINDS)}}} FILE")
    path = Path(sys.argv[2])
    if not path.is_file():
        print(f"no {path.name}")
        return
    try:
        print(KINDS[sys.argv[1]](path))
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as error:
        print(f"unreadable {path.name}: {type(error).__name__} {error}")


if __name__ == "__main__":
    main()
