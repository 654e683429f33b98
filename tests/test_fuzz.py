"""Property-based fuzzing of every torch.ops.sltrain op, and of loading
tampered states and files.

Each call gets random shapes (empty ones included), dtypes and strides, and
at most one fault: a corrupted support (row_ptr not monotone or not from 0 to
nnz, columns out of range, duplicated or out of order, wrong lengths, int64 or
float indices), a mismatched shape or dtype, a bad scale or hyper-parameter,
aliased tensors. An oracle written here, independently of the C++ checks,
decides which arguments are at fault. A call must then either succeed, with
no fault, and match a float64 reference, or raise ValueError, TypeError or
RuntimeError whose message names an argument at fault. A crash kills pytest,
which fails the run as well.

The budget is SLTRAIN_FUZZ_EXAMPLES examples per test (default 40, with
derandomised examples so that CI is reproducible); setting the variable also
draws fresh random examples, for a deeper run by hand.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import sltrain_ext as sl
from helpers import DTYPES, TOLERANCE, split_packed_csc
from sltrain_ext import pretrained
from sltrain_ext.configs import LlamaConfig
from sltrain_ext.llama import LlamaForCausalLM

EXAMPLES = int(os.environ.get("SLTRAIN_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="SLTRAIN_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ops = torch.ops.sltrain
ERRORS = (ValueError, TypeError, RuntimeError)
INT32_MAX = 2**31 - 1


def names(message: str, name: str) -> bool:
    """Whether an error message names an argument (in backquotes) or a
    state-dict key (dotted, as it stands)."""
    return f"`{name}`" in message or ("." in name and name in message)


def check_outcome(call, faults: set[str]):
    """Runs call(): it must raise naming one of `faults`, or, with no fault,
    return (its result is returned for the caller to compare)."""
    try:
        result = call()
    except ERRORS as error:
        assert faults, f"a valid call raised {error!r}"
        assert any(names(str(error), f) for f in faults), f"{error!r} names none of the faulty {faults}"
        event(f"refused: {type(error).__name__}")  # --hypothesis-show-statistics shows the mix
        return None
    assert not faults, f"the call succeeded although {faults} are at fault"
    event("accepted")
    return result


def assert_matches(actual, expected, dtype, what, scale=1.0):
    """actual (in `dtype`) equals the float64 `expected` to dtype's tolerance."""
    assert actual.dtype == dtype and actual.shape == expected.shape, (what, actual.dtype, actual.shape, expected.shape)
    if expected.numel() == 0:
        return
    bound = TOLERANCE[dtype] * max(1.0, scale, expected.abs().max().item())
    error = (actual.double() - expected).abs().max().item()
    assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g} ({dtype})"


def relayout(t, how):
    """The same values in another memory layout: a strided or transposed view,
    or a view at an offset into a larger buffer."""
    if how == "strided" and t.dim() >= 1:
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        wide[..., ::2] = t
        return wide[..., ::2]
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "offset":
        flat = t.new_zeros(t.numel() + 1)
        flat[1:] = t.reshape(-1)
        return flat[1:].view(t.shape)
    return t


LAYOUTS = st.sampled_from(["contiguous", "contiguous", "strided", "transposed", "offset"])


# ---- supports -------------------------------------------------------------------

SUPPORT_FAULTS = ["row_ptr_value", "row_ptr_swap", "row_ptr_length", "row_ptr_int64", "row_ptr_2d",
                  "col_value", "col_duplicate", "col_swap", "col_idx_length", "col_idx_int64", "col_idx_float"]


@st.composite
def supports(draw, m, n, faults=SUPPORT_FAULTS):
    """(row_ptr, col_idx): a random support of m x n, maybe with one fault."""
    nnz = draw(st.integers(0, m * n))
    row_ptr, col_idx = sl.random_support(m, n, nnz, draw(st.integers(0, 2**63 - 1)))
    fault = draw(st.sampled_from([None] * max(len(faults), 1) + list(faults)))
    rp, ci = row_ptr.clone(), col_idx.clone()
    if fault == "row_ptr_value":
        rp[draw(st.integers(0, m))] = draw(st.integers(-3, nnz + 3))
    elif fault == "row_ptr_swap" and m >= 1:
        i = draw(st.integers(0, m - 1))
        rp[i], rp[i + 1] = rp[i + 1].item(), rp[i].item()
    elif fault == "row_ptr_length":
        rp = rp[:-1] if draw(st.booleans()) else torch.cat([rp, rp[-1:]])
    elif fault == "row_ptr_int64":
        rp = rp.long()
    elif fault == "row_ptr_2d":
        rp = rp[:, None]
    elif fault == "col_value" and nnz >= 1:
        ci[draw(st.integers(0, nnz - 1))] = draw(st.sampled_from([-1, -(2**31), n, n + 5, INT32_MAX]))
    elif fault == "col_duplicate" and nnz >= 2:
        j = draw(st.integers(0, nnz - 2))
        ci[j + 1] = ci[j]
    elif fault == "col_swap" and nnz >= 2:
        j = draw(st.integers(0, nnz - 2))
        ci[j], ci[j + 1] = ci[j + 1].item(), ci[j].item()
    elif fault == "col_idx_length":
        ci = ci[:-1] if draw(st.booleans()) and nnz >= 1 else torch.cat([ci, ci.new_zeros(1)])
    elif fault == "col_idx_int64":
        ci = ci.long()
    elif fault == "col_idx_float":
        ci = ci.float()
    return relayout(rp, draw(LAYOUTS)), relayout(ci, draw(LAYOUTS))


def support_faults(row_ptr, col_idx, m, n, nnz=None, sorted_rows=True, columns=True):
    """The arguments at fault in a support of m x n with nnz entries (col_idx's
    length if None). With sorted_rows, columns must strictly increase within a
    row (validate_support); without, a row may list a column twice (the
    kernels then add the values, see dense_weight). Without `columns`, the
    column indices are not read (the kernels check them as they use them)."""
    faults = set()
    if row_ptr.dtype != torch.int32 or row_ptr.dim() != 1 or row_ptr.shape[0] != m + 1:
        faults.add("row_ptr")
    if (col_idx.dtype not in (torch.int32, torch.uint16) or (col_idx.dtype == torch.uint16 and n > 65536)
            or col_idx.dim() != 1 or (nnz is not None and col_idx.shape[0] != nnz)):
        faults.add("col_idx")
    if col_idx.dim() == 1 and col_idx.shape[0] > m * n:
        faults.add("col_idx")
    if faults:
        return faults
    rp, ci = row_ptr.tolist(), col_idx.tolist()
    nnz = len(ci)
    if rp[0] != 0 or rp[-1] != nnz or any(a > b for a, b in zip(rp, rp[1:])):
        return {"row_ptr"}
    for row in range(m if columns else 0):
        cols = ci[rp[row]:rp[row + 1]]
        if any(not 0 <= c < n for c in cols) or (sorted_rows and any(a >= b for a, b in zip(cols, cols[1:]))):
            return {"col_idx"}
    return set()


def dense_weight(A, B, values, row_ptr, col_idx, scale):
    """float64 scale * B @ A + S; a position listed twice gets both values."""
    rows = torch.repeat_interleave(torch.arange(B.shape[0]), row_ptr.long().diff())
    weight = scale * B.double() @ A.double()
    return weight.index_put_((rows, col_idx.long()), values.double(), accumulate=True)


# ---- sl_matmul, sl_matmul_backward, densify ----------------------------------------

FACTOR_FAULTS = ["x_dtype", "B_dtype", "values_dtype", "bias_dtype", "grad_y_dtype", "A_int", "A_3d", "values_2d",
                 "x_features", "x_scalar", "B_rank", "bias_length", "grad_y_features", "grad_y_tokens",
                 "scale", "nnz_above_m_n"]


@st.composite
def sl_problems(draw):
    """Every argument of sl_matmul and its backward, with at most one fault."""
    dtype = draw(st.sampled_from(DTYPES))
    m, n, r = draw(st.integers(0, 6)), draw(st.integers(0, 6)), draw(st.integers(0, 3))
    lead = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))

    def rand(*shape, dtype=dtype):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    fault = draw(st.sampled_from([None] * 8 + ["support"] * 8 + FACTOR_FAULTS))
    row_ptr, col_idx = draw(supports(m, n) if fault == "support" else supports(m, n, faults=[]))
    nnz = col_idx.shape[0]
    args = dict(x=rand(*lead, n), A=rand(r, n), B=rand(m, r), values=rand(nnz), row_ptr=row_ptr, col_idx=col_idx,
                scale=draw(st.floats(-4, 4)), bias=rand(m) if draw(st.booleans()) else None,
                grad_y=rand(*lead, m))
    other = draw(st.sampled_from([d for d in DTYPES if d != dtype]))
    if fault in ("x_dtype", "B_dtype", "values_dtype", "grad_y_dtype") or (fault == "bias_dtype" and args["bias"] is not None):
        name = fault.removesuffix("_dtype")
        args[name] = args[name].to(other)
    elif fault == "A_int":
        args["A"] = args["A"].to(torch.int32)
    elif fault == "A_3d":
        args["A"] = args["A"][None]
    elif fault == "values_2d":
        args["values"] = args["values"][:, None]
    elif fault == "x_features":
        args["x"] = rand(*lead, n + 1)
    elif fault == "x_scalar":
        args["x"] = rand()
    elif fault == "B_rank":
        args["B"] = rand(m, r + 1)
    elif fault == "bias_length":
        args["bias"] = rand(m + 1)
    elif fault == "grad_y_features":
        args["grad_y"] = rand(*lead, m + 1)
    elif fault == "grad_y_tokens":
        args["grad_y"] = rand(*lead, 1, m)
    elif fault == "scale":
        args["scale"] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 7e4, 4e38]))
    elif fault == "nnz_above_m_n":
        nnz = m * n + draw(st.integers(1, 3))
        args.update(values=rand(nnz), col_idx=torch.zeros(nnz, dtype=torch.int32),
                    row_ptr=torch.tensor([0] * m + [nnz], dtype=torch.int32))
    for name in ("x", "A", "B", "values", "bias", "grad_y"):
        if args[name] is not None:
            args[name] = relayout(args[name], draw(LAYOUTS))
    return args


FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def factor_faults(a, with_x=False, with_bias=False, with_grad=False, reads_columns=True):
    """The arguments at fault among a call's factors (and x, bias, grad_y).
    The ops check the column indices they read and only those (README,
    "Validation"): a call with no token, or a backward that computes neither
    dx nor dvalues, reads none, and its result is right whatever they hold."""
    A, B, values, row_ptr, col_idx = a["A"], a["B"], a["values"], a["row_ptr"], a["col_idx"]
    faults = set()
    if A.dtype not in FLOATS or A.dim() != 2:
        return {"A"}
    r, n = A.shape
    if B.dim() != 2 or B.shape[1] != r or B.dtype != A.dtype:
        return {"B"}
    m = B.shape[0]
    if values.dim() != 1 or values.dtype != A.dtype:
        return {"values"}
    nnz = values.shape[0]
    if with_x and (a["x"].dim() < 1 or a["x"].shape[-1] != n or a["x"].dtype != A.dtype):
        faults.add("x")
    if with_bias and a["bias"] is not None and (a["bias"].shape != (m,) or a["bias"].dtype != A.dtype):
        faults.add("bias")
    if with_grad and (a["grad_y"].dtype != A.dtype or a["grad_y"].dim() < 1 or a["grad_y"].shape[-1] != m
                      or a["x"].dim() < 1 or a["grad_y"].shape[:-1] != a["x"].shape[:-1]):
        faults.add("grad_y")
    largest = torch.finfo(A.dtype).max
    if not (math.isfinite(a["scale"]) and abs(a["scale"]) <= largest):
        faults.add("scale")
    if nnz > m * n:
        faults |= {"values", "col_idx"}
    support = support_faults(row_ptr, col_idx, m, n, nnz, sorted_rows=False, columns=reads_columns)
    if support and not {"row_ptr", "col_idx"} & faults:
        faults |= support
    return faults


@FUZZ
@given(sl_problems(), st.sampled_from(["factored", "materialized"]), st.lists(st.booleans(), min_size=4, max_size=4))
def test_sl_matmul_backward_and_densify(a, path, mask):
    x, A, B, values, row_ptr, col_idx, scale = (a[k] for k in ("x", "A", "B", "values", "row_ptr", "col_idx", "scale"))
    has_tokens = x.dim() >= 1 and math.prod(x.shape[:-1]) > 0
    with sl.matmul_config(path):
        y = check_outcome(lambda: sl.sl_matmul(x, A, B, values, row_ptr, col_idx, scale, a["bias"]),
                          factor_faults(a, with_x=True, with_bias=True, reads_columns=has_tokens))
        grads = check_outcome(lambda: sl.sl_matmul_backward(a["grad_y"], x, A, B, values, row_ptr, col_idx, scale,
                                                            mask),
                              factor_faults(a, with_x=True, with_grad=True, reads_columns=has_tokens and (mask[0] or mask[3])))
        dense = check_outcome(lambda: sl.densify(A, B, values, row_ptr, col_idx, scale), factor_faults(a))
    if dense is None:
        return
    weight = dense_weight(A, B, values, row_ptr, col_idx, scale)
    assert_matches(dense, weight, A.dtype, "densify")
    if y is not None:
        expected = x.double() @ weight.T + (0 if a["bias"] is None else a["bias"].double())
        assert_matches(y, expected, A.dtype, "sl_matmul")
    if grads is not None:
        g = a["grad_y"].double()
        tokens = math.prod(x.shape[:-1])
        tokens_g, tokens_x = g.reshape(tokens, g.shape[-1]), x.double().reshape(tokens, x.shape[-1])
        dW = tokens_g.T @ tokens_x
        rows = torch.repeat_interleave(torch.arange(B.shape[0]), row_ptr.long().diff())
        expected = (g @ weight, scale * B.double().T @ dW, scale * dW @ A.double().T, dW[rows, col_idx.long()])
        for name, grad, reference, wanted in zip(("dx", "dA", "dB", "dvalues"), grads, expected, mask):
            if wanted:
                assert_matches(grad, reference, A.dtype, name)
            else:
                assert grad.numel() == 0, name


# ---- the support ops ------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_validate_and_transpose_support(data):
    m, n = data.draw(st.integers(0, 7)), data.draw(st.integers(0, 7))
    row_ptr, col_idx = data.draw(supports(m, n))
    m_claimed = data.draw(st.sampled_from([m] * 4 + [m + 1, -1]))
    n_claimed = data.draw(st.sampled_from([n] * 4 + [max(n - 1, 0), -1, 2**40]))
    faults = support_faults(row_ptr, col_idx, m_claimed, n_claimed) if m_claimed >= 0 and n_claimed >= 0 else set()
    if m_claimed < 0 or n_claimed < 0:
        faults = {"m", "n"}
    check_outcome(lambda: sl.validate_support(row_ptr, col_idx, m_claimed, n_claimed), faults)

    faults = set() if 0 <= n_claimed <= INT32_MAX else {"n"}
    if row_ptr.dtype != torch.int32 or row_ptr.dim() != 1 or row_ptr.shape[0] == 0:
        faults.add("row_ptr")
    else:
        faults |= support_faults(row_ptr, col_idx, row_ptr.shape[0] - 1, max(n_claimed, 0))
    packed = check_outcome(lambda: sl.transpose_support(row_ptr, col_idx, n_claimed), faults)
    if packed is not None:
        nnz = col_idx.shape[0]
        rows = torch.repeat_interleave(torch.arange(row_ptr.shape[0] - 1), row_ptr.long().diff())
        order = sorted(range(nnz), key=lambda k: (col_idx[k].item(), rows[k].item()))
        col_ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                             torch.bincount(col_idx.long(), minlength=n_claimed).cumsum(0)])
        segments = split_packed_csc(packed, n_claimed, nnz)
        expected = (col_ptr, rows[order], torch.tensor(order, dtype=torch.long))
        assert all(torch.equal(got, want.int()) for got, want in zip(segments, expected))
        assert not segments[3].any()  # zeros in the pads


@FUZZ
@given(st.integers(-2, 40) | st.sampled_from([2**31, 2**40]), st.integers(-2, 40) | st.just(INT32_MAX),
       st.integers(-2, 50) | st.just(2**31), st.integers(-(2**63), 2**63 - 1) | st.sampled_from([2**63, -(2**63) - 1]))
def test_random_support(m, n, nnz, seed):
    faults = set()
    if not 0 <= m <= INT32_MAX:
        faults.add("m")
    if not 0 <= n <= INT32_MAX:
        faults.add("n")
    if not faults and not 0 <= nnz <= min(m * n, INT32_MAX):
        faults.add("nnz")
    if not -(2**63) <= seed < 2**63:
        faults.add("seed")
    support = check_outcome(lambda: sl.random_support(m, n, nnz, seed), faults)
    if support is not None:
        assert support[1].shape == (nnz,) and not support_faults(*support, m, n)
        assert all(torch.equal(a, b) for a, b in zip(support, sl.random_support(m, n, nnz, seed)))


@FUZZ
@given(st.integers(0, 8), st.integers(-1, 8), st.integers(0, 70), st.integers(0, 2**63 - 1),
       st.sampled_from([None] * 6 + ["row_ptr_int64", "col_idx_float", "row_ptr_strided", "col_idx_strided",
                                     "row_ptr_empty", "col_idx_2d"]))
def test_random_support_fill(m, n, nnz, seed, fault):
    row_ptr, col_idx = torch.full((m + 1,), -7, dtype=torch.int32), torch.full((nnz,), -7, dtype=torch.int32)
    faults = {"n"} if n < 0 else {"col_idx"} if nnz > m * n else set()
    if fault == "row_ptr_int64":
        row_ptr = row_ptr.long()
    elif fault == "col_idx_float":
        col_idx = col_idx.float()
    elif fault == "row_ptr_strided" and m >= 1:
        row_ptr = relayout(row_ptr, "strided")
    elif fault == "col_idx_strided" and nnz >= 2:
        col_idx = relayout(col_idx, "strided")
    elif fault == "row_ptr_empty":
        row_ptr = row_ptr[:0]
    elif fault == "col_idx_2d":
        col_idx = col_idx[:, None]
    if fault and not (row_ptr.is_contiguous() and col_idx.is_contiguous() and row_ptr.numel() == m + 1
                      and col_idx.dim() == 1 and row_ptr.dtype == col_idx.dtype == torch.int32):
        faults.add("row_ptr" if fault.startswith("row_ptr") else "col_idx")
    if check_outcome(lambda: ops._random_support_fill(row_ptr, col_idx, n, seed), faults) is None and not faults:
        expected = sl.random_support(m, n, nnz, seed)
        assert torch.equal(row_ptr, expected[0]) and torch.equal(col_idx, expected[1])


# ---- Adam ---------------------------------------------------------------------------------

ADAM_FAULTS = ["lr", "beta1", "beta2", "eps", "weight_decay", "step", "state_dtype", "state_size", "state_strided",
               "param_strided", "param_int", "grad_dtype", "grad_shape", "aliased_states", "param_twice",
               "list_length", "absmax_size", "float64_8bit"]
BAD_HYPER = {"lr": [-1e-3, math.nan, math.inf], "beta1": [1.0, -0.1, math.nan], "beta2": [1.0, 1.5, math.nan],
             "eps": [0.0, -1e-8, math.inf, math.nan], "weight_decay": [-0.1, math.inf, math.nan], "step": [0, -3]}


@st.composite
def adam_problems(draw, eight_bit):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    count = draw(st.integers(0, 3))
    dtypes = [torch.float32, torch.bfloat16, torch.float16] + ([] if eight_bit else [torch.float64])
    params, grads = [], []
    for _ in range(count):
        dtype = draw(st.sampled_from(dtypes))
        shape = draw(st.sampled_from([(0,), (1,), (7,), (255,), (257,), (3, 5), (2, 300)]))
        params.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        grads.append(relayout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype), draw(LAYOUTS)))
    states = {}
    if eight_bit:  # zeros, the initial state: the first update is exact, as 32-bit
        blocks = [-(-p.numel() // 256) for p in params]
        states["exp_avgs"] = [torch.zeros(p.numel(), dtype=torch.int8) for p in params]
        states["exp_avg_absmaxes"] = [torch.zeros(b) for b in blocks]
        states["sqrt_exp_avg_sqs"] = [torch.zeros(p.numel(), dtype=torch.uint8) for p in params]
        states["sqrt_exp_avg_sq_absmaxes"] = [torch.zeros(b) for b in blocks]
    else:
        state_dtype = [torch.float64 if p.dtype == torch.float64 else torch.float32 for p in params]
        states["exp_avgs"] = [0.1 * torch.randn(p.shape, generator=gen, dtype=d) for p, d in zip(params, state_dtype)]
        # |exp_avg| <= sqrt(exp_avg_sq), as in a real run: updates stay near lr in size.
        states["exp_avg_sqs"] = [m.square() + 0.01 * torch.rand(m.shape, generator=gen, dtype=m.dtype)
                                 for m in states["exp_avgs"]]
    hyper = dict(lr=draw(st.floats(0, 0.1)), beta1=draw(st.floats(0, 0.99)), beta2=draw(st.floats(0, 0.999)),
                 eps=draw(st.floats(1e-10, 1e-3)), weight_decay=draw(st.floats(0, 0.1)), step=draw(st.integers(1, 50)),
                 decoupled=draw(st.booleans()))
    lists = {"params": params, "grads": grads, **states}
    fault = draw(st.sampled_from([None] * len(ADAM_FAULTS) + ADAM_FAULTS))
    state_names = list(states)
    faults = set()
    if fault in BAD_HYPER:
        hyper[fault] = draw(st.sampled_from(BAD_HYPER[fault]))
        faults = {fault}
    elif fault == "list_length":
        name = draw(st.sampled_from(list(lists)))
        lists[name] = lists[name] + [torch.zeros(1)] if draw(st.booleans()) or not count else lists[name][:-1]
        faults = set(lists)
    elif count and params[0].numel() and fault in ("param_twice", "aliased_states"):
        if fault == "param_twice":
            for name in lists:
                lists[name] = lists[name] + [lists[name][0] if name == "params" else lists[name][0].clone()]
            faults = {"params"}
        elif not eight_bit:
            states["exp_avg_sqs"][0] = states["exp_avgs"][0]
            faults = {"exp_avgs", "exp_avg_sqs"}
    elif count and fault is not None and fault not in BAD_HYPER:
        i = draw(st.integers(0, count - 1))
        p = params[i]
        if fault == "state_dtype":
            name = draw(st.sampled_from(state_names))
            lists[name][i], faults = lists[name][i].to(torch.float16), {name}
        elif fault == "state_size":
            name = draw(st.sampled_from(state_names))
            lists[name][i], faults = torch.cat([lists[name][i].reshape(-1), lists[name][i].new_zeros(1)]), {name}
        elif fault == "state_strided" and p.numel() >= 2:
            name = draw(st.sampled_from(state_names))
            strided = relayout(lists[name][i], "strided")
            if not strided.is_contiguous():
                lists[name][i], faults = strided, {name}
        elif fault == "param_strided" and p.numel() >= 2:
            params[i], faults = relayout(p, "strided"), {"params"}
        elif fault == "param_int":
            params[i], faults = p.to(torch.int32), {"params"}
        elif fault == "grad_dtype":
            other = torch.float32 if p.dtype != torch.float32 else torch.float16
            grads[i], faults = grads[i].to(other), {"grads"}
        elif fault == "grad_shape":
            grads[i], faults = torch.cat([grads[i].reshape(-1), grads[i].new_zeros(1)]), {"grads"}
        elif fault == "absmax_size" and eight_bit:
            states["exp_avg_absmaxes"][i], faults = torch.zeros(states["exp_avg_absmaxes"][i].numel() + 1), {
                "exp_avg_absmaxes"}
        elif fault == "float64_8bit" and eight_bit:
            params[i], grads[i], faults = p.double(), grads[i].double(), {"params"}
    if not any(lists.values()):
        faults = set()  # no tensor: nothing to update, nothing to check
    return lists, hyper, faults


def adam_reference(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """torch.optim.AdamW's (or Adam's) update in float64."""
    p, g, m, v = (t.double() for t in (p, g, m, v))
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)
    v = v * beta2 + (1 - beta2) * g * g
    step_size = lr / (1 - beta1**step)
    p = p - step_size * (m / (v.sqrt() / math.sqrt(1 - beta2**step) + eps))
    return p, m, v, step_size


@FUZZ
@given(st.booleans(), st.data())
def test_fused_adam(eight_bit, data):
    lists, hyper, faults = data.draw(adam_problems(eight_bit))
    before = {name: [t.clone() for t in tensors] for name, tensors in lists.items()}
    op = sl.fused_adam8bit_ if eight_bit else sl.fused_adam_
    outcome = check_outcome(lambda: op(*lists.values(), **hyper) or "done", faults)
    if outcome is None:
        for name, tensors in lists.items():  # nothing written
            assert all(torch.equal(a, b) for a, b in zip(tensors, before[name])), name
        return
    for i, (p, g) in enumerate(zip(before["params"], before["grads"])):
        zeros = torch.zeros(p.shape, dtype=torch.float64)
        m, v = (zeros, zeros) if eight_bit else (before["exp_avgs"][i], before["exp_avg_sqs"][i])
        new_p, new_m, new_v, step_size = adam_reference(p, g, m, v, **hyper)
        # The update's terms are up to step_size in size before they cancel.
        largest = p.abs().max().item() if p.numel() else 0.0
        assert_matches(lists["params"][i], new_p, p.dtype, f"params[{i}]", scale=step_size + largest)
        if eight_bit:
            blocks = torch.nn.functional.pad(new_m.reshape(-1), (0, -p.numel() % 256)).reshape(-1, 256)
            sqrt_v = torch.nn.functional.pad(new_v.sqrt().reshape(-1), (0, -p.numel() % 256)).reshape(-1, 256)
            assert_matches(lists["exp_avg_absmaxes"][i], blocks.abs().amax(1), torch.float32, "absmax")
            assert_matches(lists["sqrt_exp_avg_sq_absmaxes"][i], sqrt_v.amax(1), torch.float32, "absmax")
        else:
            assert_matches(lists["exp_avgs"][i], new_m, m.dtype, f"exp_avgs[{i}]")
            assert_matches(lists["exp_avg_sqs"][i], new_v, v.dtype, f"exp_avg_sqs[{i}]")


# ---- the configuration ops -------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(["auto", "factored", "materialized", "dense", "", "Auto"]),
       st.integers(-2, 2**40), st.lists(st.integers(-3, 2**40), min_size=5, max_size=5))
def test_config_ops(path, workspace, sizes):
    saved = ops.get_matmul_config()
    try:
        faults = ({"path"} if path not in ("auto", "factored", "materialized") else set()) | (
            {"workspace_bytes"} if workspace <= 0 else set())
        if check_outcome(lambda: sl.set_matmul_config(path, workspace) or "set", faults):
            assert ops.get_matmul_config() == (path, workspace)
    finally:
        sl.set_matmul_config(*saved)
    names = ("b", "m", "n", "r", "nnz")
    chosen = check_outcome(lambda: sl.matmul_path(*sizes), {name for name, v in zip(names, sizes) if v < 0})
    assert chosen in (None, "factored", "materialized")


# ---- tampered states and files ------------------------------------------------------------------

TAMPERINGS = ["none", "swap_support", "other_nnz_support", "corrupt_row_ptr", "corrupt_col_idx", "drop_key",
              "resize", "transpose", "dtype", "index_dtype"]


def tamper(state, how, draw, prefix=""):
    """A copy of `state` (an SLLinear's, keys under `prefix`) changed one way,
    and the names of the tensors a load must then name (empty: it must load)."""
    state = dict(state)
    rp, ci, values = (prefix + k for k in ("row_ptr", "col_idx", "values"))
    m = state[rp].numel() - 1
    n = state[prefix + "A"].shape[1]
    nnz = state[ci].numel()
    if how == "swap_support":  # another valid support with as many entries: loads
        state[rp], state[ci] = sl.random_support(m, n, nnz, draw(st.integers(0, 2**62)))
        return state, set()
    if how == "other_nnz_support" and nnz < m * n:
        state[rp], state[ci] = sl.random_support(m, n, nnz + 1, 0)
        return state, {rp, ci}
    if how == "corrupt_row_ptr":
        state[rp] = state[rp].clone()
        state[rp][draw(st.integers(0, m))] += draw(st.sampled_from([-2, 1, nnz + 1]))
        return state, {rp, ci} if support_faults(state[rp], state[ci], m, n) else set()
    if how == "corrupt_col_idx" and nnz:
        # The columns as saved (uint16 where n <= 65536) or as int32 (a state
        # saved before layers kept 16-bit columns).
        state[ci] = state[ci].to(draw(st.sampled_from([state[ci].dtype, torch.int32])), copy=True)
        wrong = [-1, n, INT32_MAX] if state[ci].dtype == torch.int32 else [n, 65535]
        state[ci][draw(st.integers(0, nnz - 1))] = draw(st.sampled_from(wrong))
        return state, {rp, ci}
    if how == "drop_key":
        key = draw(st.sampled_from(sorted(state)))
        del state[key]
        return state, {key}
    if how == "resize":
        key = draw(st.sampled_from(sorted(state)))
        state[key] = torch.cat([state[key].reshape(-1), state[key].reshape(-1)[:1]])
        return state, {key}
    if how == "transpose" and state[prefix + "A"].shape[0] != n:
        state[prefix + "A"] = state[prefix + "A"].T.contiguous()
        return state, {prefix + "A"}
    if how == "dtype":  # floating tensors are cast on load, as torch does
        key = draw(st.sampled_from([k for k in sorted(state) if state[k].is_floating_point()]))
        state[key] = state[key].double()
        return state, set()
    if how == "index_dtype":
        key = draw(st.sampled_from([rp, ci]))
        state[key] = state[key].long()
        return state, {rp, ci}
    return state, set()


def assert_loaded(module, state):
    for key, value in module.state_dict().items():
        expected = state[key]
        if value.is_floating_point():
            assert value.dtype in (expected.dtype, torch.float32) and torch.equal(value, expected.to(value.dtype)), key
        else:  # int32 columns load into a layer's uint16 ones
            assert torch.equal(value.long(), expected.long()), key


@FUZZ
@given(st.sampled_from(TAMPERINGS), st.booleans(), st.data())
def test_load_state_dict_of_a_tampered_state(how, strict, data):
    source = nn.ModuleDict({"layer": sl.SLLinear(12, 9, 3, 0.3, seed=1)})
    nn.init.normal_(source.layer.B)
    state, faults = tamper(source.state_dict(), how, data.draw, "layer.")
    target = nn.ModuleDict({"layer": sl.SLLinear(12, 9, 3, 0.3, seed=2)})
    original = {k: v.clone() for k, v in target.state_dict().items()}
    expected, after_error = state, original  # all or nothing
    if how == "drop_key":
        # What is missing keeps its value, so half of the support may now meet
        # the other half of another: that is refused. Otherwise torch loads
        # the rest and then, if strict, raises for the missing key (the layer
        # inside a model; the layer's own load_state_dict writes nothing, see
        # test_nn.py).
        expected = original | state
        if support_faults(expected["layer.row_ptr"], expected["layer.col_idx"], 9, 12):
            faults = {"layer.row_ptr", "layer.col_idx"}
        elif strict:
            after_error = expected
        else:
            faults = set()
    if check_outcome(lambda: target.load_state_dict(state, strict=strict) or "loaded", faults) is None:
        assert_loaded(target, after_error)
    else:
        assert_loaded(target, expected)


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(name="fuzz", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=32, max_position_embeddings=16, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, rank=2, alpha=4.0, density=0.2)
    model = LlamaForCausalLM(config)
    sl.convert(model, rank=2, density=0.2, alpha=4.0, seed=0)
    return model


@settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))
@given(st.sampled_from(TAMPERINGS), st.booleans(), st.data())
def test_load_pretrained_of_a_tampered_file(tmp_path_factory, how, checksums_updated, data):
    """A tampered file is refused by its checksums; one whose checksums were
    updated to match (a deliberate edit) must still load exactly or name the
    tensor at fault."""
    folder = tmp_path_factory.mktemp("pretrained")
    pretrained.save_pretrained(tiny_llama(), folder)
    prefix = data.draw(st.sampled_from(["model.layers.0.self_attn.q_proj.", "model.layers.0.mlp.down_proj."]))
    state = load_file(folder / pretrained.WEIGHTS)
    layer_state = {k: v for k, v in state.items() if k.startswith(prefix)}
    tampered, faults = tamper(layer_state, how, data.draw, prefix)
    state = {k: v for k, v in state.items() if not k.startswith(prefix)} | tampered
    save_file(state, str(folder / pretrained.WEIGHTS))
    changed = {k for k in set(layer_state) | set(tampered)
               if k not in tampered or k not in layer_state or tampered[k].dtype != layer_state[k].dtype
               or not torch.equal(tampered[k], layer_state[k])}
    if checksums_updated:
        config = json.loads((folder / pretrained.CONFIG).read_text())
        config["checksums"] = {name: pretrained._checksum(tensor) for name, tensor in state.items()}
        (folder / pretrained.CONFIG).write_text(json.dumps(config))
    else:
        faults = changed
    model = check_outcome(lambda: pretrained.load_pretrained(folder), faults)
    if model is not None:
        assert_loaded(model, state)
