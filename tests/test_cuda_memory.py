"""The CUDA bindings' transient memory, measured: the allocation ledger of the
emulated build (tests/emulated_cuda.py) records every allocation and free of
a materialised forward and backward, and must equal the allocation plan of
benchmarks/cuda_layer_model.py, which predicts the peaks at the real
training shapes (benchmarks/bench_cuda_memory.py). bfloat16 is left out:
ATen's CPU bf16 GEMM allocates conversion buffers of its own, which cuBLAS
does not; float16 takes the same 16-bit branches (the float32 dA sum)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

import emulated_cuda
import sltrain_ext as sl
from helpers import make_problem

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_layer import PRESETS  # noqa: E402
from cuda_layer_model import (Layer, dense_peak, materialized_backward_peak,  # noqa: E402
                              materialized_forward_peak)

MASKS = list(itertools.product([False, True], repeat=4))
# b, m, n, r, nnz, workspace bytes: both sides of factor_grads_from_dW, odd
# widths (aligned copies, if the workspace holds them), workspaces that are
# the configured budget or the layer's saving over dense, one or many chunks.
LAYERS = [
    (40, 64, 48, 4, 100, 1 << 20),
    (40, 64, 48, 4, 100, 3000),
    (9, 61, 45, 3, 90, 1 << 20),
    (200, 37, 29, 5, 60, 4000),
    (5, 64, 64, 4, 50, 1 << 20),
    (64, 16, 61, 2, 40, 1 << 20),
    (3, 8, 8, 8, 64, 1 << 20),  # no saving at all: a single 8-row chunk still runs
]


def measured_peaks(layer: Layer, dtype, mask=(True,) * 4):
    columns = torch.uint16 if layer.column_bytes == 2 else torch.int32
    return emulated_cuda.ledgers_of_a_materialized_layer(layer.b, layer.m, layer.n, layer.r, layer.nnz,
                                                         layer.workspace, dtype, mask, layer.operands_aligned,
                                                         columns)


@pytest.mark.parametrize("column_bytes", [4, 2], ids=["int32_columns", "uint16_columns"])
@pytest.mark.parametrize("operands_aligned", [False, True], ids=["contiguous", "aligned_rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("b,m,n,r,nnz,workspace", LAYERS)
def test_ledger_equals_the_allocation_plan(b, m, n, r, nnz, workspace, dtype, operands_aligned, column_bytes):
    layer = Layer(b, m, n, r, nnz, element=dtype.itemsize, workspace=workspace, operands_aligned=operands_aligned,
                  column_bytes=column_bytes)
    forward, backward = measured_peaks(layer, dtype)
    assert forward.peak == materialized_forward_peak(layer)
    assert forward.live == b * m * dtype.itemsize  # only y survives the call
    assert backward.peak == materialized_backward_peak(layer)


@pytest.mark.parametrize("mask", MASKS, ids=lambda mask: "".join("1" if k else "0" for k in mask))
@pytest.mark.parametrize("b", [40, 9])  # dA and dB from dW, and from the factored formulas
def test_ledger_equals_the_plan_for_every_output_mask(b, mask):
    layer = Layer(b, 64, 48, 4, 100, element=2, workspace=3000)
    _, backward = measured_peaks(layer, torch.float16, mask)
    assert backward.peak == materialized_backward_peak(layer, mask)


# DESIGN.md's seven H100 training shapes (b, n -> m, r, density), and the same
# scaled down by 16 in every dimension (density kept) for the ledger.
TRAINING_SHAPES = PRESETS["training"]
SCALED_TRAINING_SHAPES = [(name, *(v // 16 for v in dims), density) for name, *dims, density in TRAINING_SHAPES]


@pytest.mark.parametrize("column_bytes", [4, 2], ids=["int32_columns", "uint16_columns"])
@pytest.mark.parametrize("name,b,n,m,r,density", SCALED_TRAINING_SHAPES, ids=[s[0] for s in SCALED_TRAINING_SHAPES])
def test_forward_backward_peak_is_at_most_dense(name, b, n, m, r, density, column_bytes):
    # As a network runs it: y stays alive through the backward.
    layer = Layer(b, m, n, r, round(density * m * n), element=4, column_bytes=column_bytes)
    forward, backward = measured_peaks(layer, torch.float32)
    peak = max(forward.peak, b * m * 4 + backward.peak)
    assert peak <= dense_peak(layer), f"{name}: {peak} bytes against dense's {dense_peak(layer)}"


@pytest.mark.parametrize("column_bytes", [4, 2], ids=["int32_columns", "uint16_columns"])
@pytest.mark.parametrize("name,b,n,m,r,density", TRAINING_SHAPES, ids=[s[0] for s in TRAINING_SHAPES])
@pytest.mark.parametrize("element", [2, 4])
def test_planned_peak_at_the_real_training_shapes_is_at_most_dense(name, b, n, m, r, density, element, column_bytes):
    # The plan, checked against the ledger above, at the unscaled shapes
    # (bf16 and fp32): what the GPU issue will measure.
    layer = Layer(b, m, n, r, round(density * m * n), element=element, column_bytes=column_bytes)
    peak = max(materialized_forward_peak(layer), b * m * element + materialized_backward_peak(layer))
    assert peak <= dense_peak(layer), f"{name}: {peak} bytes against dense's {dense_peak(layer)}"


def test_an_input_whose_rows_are_already_aligned_is_not_copied():
    # n = 45: a contiguous x gets an aligned copy ([b, 48]); the same values in
    # rows already 48 apart (as a caller that pads its activations holds them) do not.
    b, m, n, r, nnz = 40, 64, 45, 4, 100
    layer = Layer(b, m, n, r, nnz, element=4, workspace=1 << 20)
    p = make_problem(m, n, r, nnz, torch.float32, seed=1)
    padded_rows = torch.randn(b, 48)[:, :n]
    same_contiguous = padded_rows.contiguous()
    with sl.matmul_config("materialized", workspace_bytes=layer.workspace):
        with emulated_cuda.Ledger() as strided:
            y_strided = emulated_cuda.ops().sl_matmul(padded_rows, *p.operands(), p.bias)
        with emulated_cuda.Ledger() as contiguous:
            y_contiguous = emulated_cuda.ops().sl_matmul(same_contiguous, *p.operands(), p.bias)
    assert contiguous.peak == materialized_forward_peak(layer)
    copy = b * 48 * 4  # the aligned copy of x
    assert copy in contiguous.events and copy not in strided.events
    assert strided.peak < contiguous.peak
    assert torch.equal(y_strided, y_contiguous)


@pytest.mark.parametrize("m,r,float32_sum", [(64, 16, False), (80, 30, True)])
def test_a_16_bit_dA_sums_its_chunks_in_float32_unless_that_breaks_the_memory_bound(m, r, float32_sum):
    # n 64: the layer saves fewer bytes over dense than dA's float32 sum. In
    # 3 dW chunks (m 64, r 16) the sum stays 16-bit within the bound; in 10
    # (m 80, r 30) precision comes first: float32, beyond the workspace.
    b, n = 40, 64
    nnz = round(0.03 * m * n)
    layer = Layer(b, m, n, r, nnz, element=2)
    assert layer.factors_from_dW and (m * n - r * (m + n) - nnz) * 2 < r * n * 4
    _, backward = measured_peaks(layer, torch.float16)
    assert (r * n * 4 in backward.events) == float32_sum
    assert backward.peak == materialized_backward_peak(layer)
