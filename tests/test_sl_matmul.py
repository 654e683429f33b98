"""sl_matmul forward and every gradient against a float64 dense reference."""

import random

import pytest
import torch

import sltrain_ext as sl
from helpers import DTYPES, assert_close, check_sl_matmul, make_problem, reference_weight

PATHS = ["factored", "materialized"]


@pytest.fixture(params=PATHS)
def path(request):
    # A tiny workspace forces the materialised path through many row chunks.
    with sl.matmul_config(request.param, workspace_bytes=4096):
        yield request.param


@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_random_shapes(seed, dtype, columns, path):
    rng = random.Random(seed)
    m, n, r = rng.randint(1, 70), rng.randint(1, 70), rng.randint(1, 12)
    nnz = rng.randint(0, m * n)
    lead = [rng.randint(0, 9) for _ in range(rng.randint(1, 3))]
    p = make_problem(m, n, r, nnz, dtype, seed=seed, bias=bool(seed % 2), columns=columns)
    x = torch.randn(*lead, n, dtype=torch.float64).to(dtype)
    check_sl_matmul(p, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,m,n,r,nnz",
    [
        (0, 5, 7, 2, 9),  # no tokens
        (4, 1, 9, 1, 3),  # m = 1, r = 1
        (4, 9, 1, 3, 4),  # n = 1
        (3, 6, 8, 2, 0),  # empty support
        (3, 6, 8, 2, 48),  # density 1
        (2, 3, 5461, 4, 800),  # LLaMA-1B's odd width
        (1, 300, 40, 8, 1200),  # one token (decode)
        (600, 16, 24, 4, 100),  # more tokens than a batch block
    ],
)
def test_edge_shapes(b, m, n, r, nnz, dtype, path):
    p = make_problem(m, n, r, nnz, dtype, seed=b + m)
    x = torch.randn(b, n, dtype=torch.float64).to(dtype)
    check_sl_matmul(p, x, dtype)


def test_non_contiguous_inputs(path):
    p = make_problem(12, 10, 3, 30)
    x = torch.randn(10, 4, 6).transpose(0, 2)  # [6, 4, 10], not contiguous
    p.A = torch.randn(10, 3).T  # [3, 10] transposed view
    p.B = torch.randn(12, 6)[:, ::2]  # strided columns
    p.values = torch.randn(60)[::2]
    assert not (x.is_contiguous() or p.A.is_contiguous() or p.B.is_contiguous())
    check_sl_matmul(p, x, torch.float32)


@pytest.mark.parametrize("mask", [(True, False, False, False), (False, True, True, False),
                                  (False, False, False, True), (False, False, False, False)])
def test_backward_mask(mask, path):
    p = make_problem(9, 11, 3, 20)
    x, grad_y = torch.randn(5, 11), torch.randn(5, 9)
    full = sl.sl_matmul_backward(grad_y, x, *p.operands())
    partial = sl.sl_matmul_backward(grad_y, x, *p.operands(), output_mask=mask)
    for wanted, got, reference in zip(mask, partial, full):
        if wanted:
            torch.testing.assert_close(got, reference)
        else:
            assert got.numel() == 0


def test_paths_agree():
    p = make_problem(40, 56, 6, 300, seed=3)
    x, grad_y = torch.randn(2, 7, 56), torch.randn(2, 7, 40)
    results = {}
    for name in PATHS:
        with sl.matmul_config(name, workspace_bytes=1024):
            results[name] = (sl.sl_matmul(x, *p.operands()), *sl.sl_matmul_backward(grad_y, x, *p.operands()))
    for factored, materialized in zip(results["factored"], results["materialized"]):
        torch.testing.assert_close(factored, materialized, rtol=1e-5, atol=1e-5)


def test_cost_model_picks_factored_for_few_tokens_and_low_rank():
    assert sl.matmul_path(1, 4096, 4096, 64, 800_000) == "factored"
    assert sl.matmul_path(512, 1024, 1024, 128, 31_457) == "factored"
    # Rank as large as the matrix: materialising W is cheaper.
    assert sl.matmul_path(8192, 512, 512, 512, 7_864) == "materialized"
    with sl.matmul_config("materialized"):
        assert sl.matmul_path(1, 4096, 4096, 64, 800_000) == "materialized"


@pytest.mark.parametrize("path_name", PATHS)
def test_gradcheck_float64(path_name):
    p = make_problem(6, 7, 2, 15, torch.float64, seed=5)
    inputs = [t.detach().clone().requires_grad_() for t in (torch.randn(3, 7, dtype=torch.float64), p.A, p.B, p.values, p.bias)]

    def fn(x, A, B, values, bias):
        return sl.sl_matmul(x, A, B, values, p.row_ptr, p.col_idx, p.scale, bias)

    with sl.matmul_config(path_name, workspace_bytes=64):
        assert torch.autograd.gradcheck(fn, inputs)


def test_densify_matches_reference():
    for dtype in DTYPES:
        p = make_problem(13, 17, 3, 60, dtype, seed=2)
        assert_close(sl.densify(*p.operands()), reference_weight(p), dtype, "densify")


def test_thread_count_does_not_change_results():
    p = make_problem(64, 96, 8, 1500, seed=4)
    x, grad_y = torch.randn(300, 96), torch.randn(300, 64)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with sl.matmul_config("factored"):
                outputs.append((sl.sl_matmul(x, *p.operands()), *sl.sl_matmul_backward(grad_y, x, *p.operands())))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*outputs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("path", PATHS)
def test_no_outputs_with_a_bias_backpropagates(path):
    p = make_problem(0, 5, 2, 0, bias=True)
    x = torch.randn(3, 5, requires_grad=True)
    bias = p.bias.requires_grad_()
    with sl.matmul_config(path):
        y = sl.sl_matmul(x, p.A, p.B, p.values, p.row_ptr, p.col_idx, p.scale, bias)
        y.sum().backward()
    assert y.shape == (3, 0) and bias.grad.shape == (0,)
    assert torch.equal(x.grad, torch.zeros(3, 5))
