"""benchmarks/gpu_figures.py reads the results the GPU run writes: each JSON
kind against the committed CPU result of the same benchmark, which has the
same keys (benchmarks/gpu_run.sh's rehearsal uses them as stand-ins). A key
read that the benchmark does not write would otherwise show up only on the
GPU, as an 'unreadable' figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_figures  # noqa: E402

STAND_INS = {"layer": "bench_layer_cpu_cpu.json", "decode": "bench_layer_cpu_cpu.json",
             "optim": "bench_optim_60m_cpu.json", "support": "bench_support_1b_cpu.json"}


@pytest.mark.parametrize("kind,stand_in", sorted(STAND_INS.items()))
def test_each_benchmark_figure_reads_what_its_benchmark_writes(kind, stand_in):
    figure = gpu_figures.KINDS[kind](BENCHMARKS / "results" / stand_in)
    assert figure and "unreadable" not in figure
