"""Every bad input of DESIGN.md raises an error that names the argument."""

import pytest
import torch

import sltrain_ext as sl
from helpers import make_problem


def call(x=None, **overrides):
    p = make_problem(6, 8, 2, 12)
    args = dict(A=p.A, B=p.B, values=p.values, row_ptr=p.row_ptr, col_idx=p.col_idx, scale=p.scale, bias=p.bias)
    args.update(overrides)
    x = torch.randn(3, 8) if x is None else x
    return sl.sl_matmul(x, **args)


def with_bad(tensor, index, value):
    bad = tensor.clone()
    bad[index] = value
    return bad


p = make_problem(6, 8, 2, 12)

CASES = [
    # (overrides, x, exception, message)
    (dict(A=torch.randn(2, 8, 1)), None, ValueError, "`A` must be 2-D"),
    (dict(B=torch.randn(6, 3)), None, ValueError, "`B` must be 2-D \\[m, r\\]"),
    (dict(values=torch.randn(12, 1)), None, ValueError, "`values` must be 1-D"),
    ({}, torch.randn(3, 7), ValueError, "`x` must have shape \\[..., n\\]"),
    ({}, torch.randn(3, 8, dtype=torch.float64), TypeError, "`x` has dtype"),
    (dict(B=p.B.double()), None, TypeError, "`B` has dtype"),
    (dict(values=p.values.half()), None, TypeError, "`values` has dtype"),
    (dict(A=p.A.long()), None, TypeError, "`A` must be float32"),
    (dict(row_ptr=p.row_ptr.long()), None, TypeError, "`row_ptr` must be int32"),
    (dict(col_idx=p.col_idx.long()), None, TypeError, "`col_idx` must be int32"),
    (dict(row_ptr=p.row_ptr[:-1]), None, ValueError, "`row_ptr` must be 1-D with m \\+ 1"),
    (dict(col_idx=p.col_idx[:-1]), None, ValueError, "`col_idx` must be 1-D with nnz"),
    (dict(row_ptr=with_bad(p.row_ptr, 3, 100)), None, ValueError, "`row_ptr` must be non-decreasing"),
    (dict(row_ptr=with_bad(p.row_ptr, -1, 13)), None, ValueError, "`row_ptr` must end at nnz"),
    (dict(row_ptr=with_bad(p.row_ptr, 0, 1)), None, ValueError, "`row_ptr` must start at 0"),
    (dict(col_idx=with_bad(p.col_idx, 4, 8)), None, ValueError, "`col_idx` has entries outside"),
    (dict(col_idx=with_bad(p.col_idx, 0, -3)), None, ValueError, "`col_idx` has entries outside"),
    (dict(bias=torch.randn(5)), None, ValueError, "`bias` must be 1-D \\[m\\]"),
    (dict(bias=torch.randn(6, dtype=torch.float64)), None, TypeError, "`bias` has dtype"),
    (dict(scale=float("inf")), None, ValueError, "`scale` must be finite"),
    (dict(values=torch.randn(49), col_idx=torch.zeros(49, dtype=torch.int32)), None, ValueError,
     "more than the m \\* n"),
]


@pytest.mark.parametrize("path", ["factored", "materialized"])
@pytest.mark.parametrize("overrides,x,error,message", CASES)
def test_sl_matmul_rejects(overrides, x, error, message, path):
    with sl.matmul_config(path), pytest.raises(error, match=message):
        call(x, **overrides)


@pytest.mark.parametrize("path", ["factored", "materialized"])
def test_backward_rejects_out_of_range_columns(path):
    bad = with_bad(p.col_idx, 2, 99)
    with sl.matmul_config(path), pytest.raises(ValueError, match="`col_idx` has entries outside"):
        sl.sl_matmul_backward(torch.randn(3, 6), torch.randn(3, 8), p.A, p.B, p.values, p.row_ptr, bad, 1.0)


def test_backward_rejects_mismatched_grad():
    with pytest.raises(ValueError, match="`grad_y` must have shape \\[..., m\\]"):
        sl.sl_matmul_backward(torch.randn(3, 5), torch.randn(3, 8), *p.operands())
    with pytest.raises(ValueError, match="`grad_y` must have `x`'s leading dimensions"):
        sl.sl_matmul_backward(torch.randn(4, 6), torch.randn(3, 8), *p.operands())


def test_densify_rejects_bad_support():
    with pytest.raises(ValueError, match="`col_idx` has entries outside"):
        sl.densify(p.A, p.B, p.values, p.row_ptr, with_bad(p.col_idx, 1, 8), 1.0)
    with pytest.raises(ValueError, match="`row_ptr` must end at nnz"):
        sl.densify(p.A, p.B, p.values, with_bad(p.row_ptr, -1, 20), p.col_idx, 1.0)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_outside_unit_interval(density):
    with pytest.raises(ValueError, match="`density` must be in \\(0, 1\\]"):
        sl.SLLinear(8, 8, rank=2, density=density)


@pytest.mark.parametrize("name,kwargs", [("in_features", dict(in_features=0)), ("rank", dict(rank=0)),
                                         ("out_features", dict(out_features=2.5))])
def test_sllinear_bad_sizes(name, kwargs):
    args = dict(in_features=8, out_features=8, rank=2, density=0.1) | kwargs
    with pytest.raises(ValueError, match=f"`{name}`"):
        sl.SLLinear(**args)


def test_matmul_config_rejects_unknown_path():
    with pytest.raises(ValueError, match="`path` must be 'auto', 'factored' or 'materialized'"):
        sl.set_matmul_config("dense")
    with pytest.raises(ValueError, match="`workspace_bytes` must be positive"):
        sl.set_matmul_config("auto", 0)
