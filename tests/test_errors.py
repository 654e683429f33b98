"""Every bad input of DESIGN.md raises an error that names the argument."""

import pytest
import torch

import sltrain_ext as sl
from helpers import make_problem


def arguments(x=None, **overrides):
    """sl_matmul's arguments for a 6 x 8 problem, with some replaced."""
    p = make_problem(6, 8, 2, 12)
    args = dict(A=p.A, B=p.B, values=p.values, row_ptr=p.row_ptr, col_idx=p.col_idx, scale=p.scale, bias=p.bias)
    args.update(overrides)
    return dict(x=torch.randn(3, 8) if x is None else x, **args)


def call(x=None, **overrides):
    return sl.sl_matmul(**arguments(x, **overrides))


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
                                         ("out_features", dict(out_features=2.5)), ("rank", dict(rank=True)),
                                         ("in_features", dict(in_features=False))])
def test_sllinear_bad_sizes(name, kwargs):
    args = dict(in_features=8, out_features=8, rank=2, density=0.1) | kwargs
    with pytest.raises(ValueError, match=f"`{name}`"):
        sl.SLLinear(**args)


def test_matmul_config_rejects_unknown_path():
    with pytest.raises(ValueError, match="`path` must be 'auto', 'factored' or 'materialized'"):
        sl.set_matmul_config("dense")
    with pytest.raises(ValueError, match="`workspace_bytes` must be positive"):
        sl.set_matmul_config("auto", 0)


def test_aliased_or_overlapping_adam_tensors_are_refused():
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    p, g, m, v = (torch.zeros(8) for _ in range(4))
    with pytest.raises(ValueError, match=r"`exp_avgs`\[0\] and `exp_avg_sqs`\[0\] share memory"):
        sl.fused_adam_([p], [g], [m], [m], **hyper)
    with pytest.raises(ValueError, match=r"`params`\[0\] and `params`\[1\] share memory"):
        sl.fused_adam_([p, p], [g, g.clone()], [m, m.clone()], [v, v.clone()], **hyper)
    flat = torch.zeros(12)
    with pytest.raises(ValueError, match="share memory"):
        sl.fused_adam_([flat[:8], flat[4:]], [g, g.clone()], [m, m.clone()], [v, v.clone()], **hyper)
    # Disjoint views of one buffer are fine.
    sl.fused_adam_([flat[:6], flat[6:]], [torch.ones(6), torch.ones(6)], [torch.zeros(6), torch.zeros(6)],
                   [torch.zeros(6), torch.zeros(6)], **hyper)
    assert torch.all(flat != 0)
    codes, absmax = torch.zeros(8, dtype=torch.int8), torch.zeros(1)
    with pytest.raises(ValueError, match="share memory"):
        sl.fused_adam8bit_([p], [g], [codes], [absmax], [torch.zeros(8, dtype=torch.uint8)], [absmax],
                           **hyper)


@pytest.mark.parametrize("name,value", [("lr", float("inf")), ("eps", float("inf")),
                                        ("weight_decay", float("inf")), ("lr", float("nan"))])
def test_non_finite_adam_hyper_parameters_are_refused(name, value):
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    hyper[name] = value
    p = torch.zeros(4)
    with pytest.raises(ValueError, match=f"`{name}` must be finite"):
        sl.fused_adam_([p], [torch.ones(4)], [torch.zeros(4)], [torch.zeros(4)], **hyper)
    assert torch.all(p == 0)


def test_sizes_whose_product_overflows_int64_are_handled():
    row_ptr = torch.zeros(5, dtype=torch.int32)
    sl.validate_support(row_ptr, torch.zeros(0, dtype=torch.int32), 4, 2**62)  # valid: empty rows
    with pytest.raises(ValueError, match=r"more than m \* n = 2 \* 1"):
        sl.validate_support(torch.tensor([0, 2, 3], dtype=torch.int32), torch.zeros(3, dtype=torch.int32), 2, 1)


def test_seed_and_scale_out_of_range_name_the_argument():
    with pytest.raises(ValueError, match=r"`seed` must be in \[-2\*\*63, 2\*\*63\)"):
        sl.random_support(4, 4, 3, 2**63)
    p = make_problem(4, 5, 2, 6)
    with pytest.raises(ValueError, match="`scale` must be finite and at most"):
        sl.sl_matmul(torch.randn(2, 5), p.A, p.B, p.values, p.row_ptr, p.col_idx, 1e308)
    half = make_problem(4, 5, 2, 6, torch.float16)
    with pytest.raises(ValueError, match="`scale` must be finite and at most 65504"):
        sl.densify(half.A, half.B, half.values, half.row_ptr, half.col_idx, 1e5)


HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


@pytest.mark.parametrize("view", ["transpose", "expand"])
def test_a_gradient_that_is_a_view_of_another_param_is_refused(view):
    # grads[1] reads params[0], which the same call updates first: the result
    # would differ from the call with a copy of it. Both are named.
    params = [torch.randn(4, 4), torch.randn(4, 4)]
    before = [p.clone() for p in params]
    grads = [torch.randn(4, 4), params[0].t() if view == "transpose" else params[0][0].expand(4, 4)]
    states = [[torch.zeros(4, 4) for _ in params] for _ in range(2)]
    with pytest.raises(ValueError, match=r"`params`\[0\] and `grads`\[1\] share memory"):
        sl.fused_adam_(params, grads, *states, **HYPER)
    assert all(torch.equal(p, b) for p, b in zip(params, before))



def test_a_strided_gradient_spanning_a_param_is_refused():
    # The gradient's elements (0, 4, 8) skip over params[1] (4..7) in one buffer: its byte range overlaps.
    buffer = torch.zeros(3, 4)
    params = [torch.zeros(3), buffer[1]]
    grads = [buffer[:, 0], torch.ones(4)]
    states = [[torch.zeros(3), torch.zeros(4)] for _ in range(2)]
    with pytest.raises(ValueError, match=r"`grads`\[0\] and `params`\[1\] share memory"):
        sl.fused_adam_(params, grads, *states, **HYPER)


def test_8bit_gradient_that_is_an_expanded_param_is_refused():
    params = [torch.randn(300), torch.randn(300)]
    blocks = 2
    lists = ([params[0], params[1]], [torch.randn(300), params[0][:1].expand(300)],
             [torch.zeros(300, dtype=torch.int8) for _ in params], [torch.zeros(blocks) for _ in params],
             [torch.zeros(300, dtype=torch.uint8) for _ in params], [torch.zeros(blocks) for _ in params])
    with pytest.raises(ValueError, match=r"`params`\[0\] and `grads`\[1\] share memory"):
        sl.fused_adam8bit_(*lists, **HYPER)


@pytest.mark.parametrize("name", ["exp_avg_absmaxes", "sqrt_exp_avg_sq_absmaxes"])
@pytest.mark.parametrize("bad", ["nan", "-1", "inf"])
def test_8bit_states_with_a_bad_absmax_are_refused_before_any_update(name, bad):
    # A damaged state would turn the params non-finite or flip the sign of their update.
    params = [torch.randn(300), torch.randn(600)]
    before = [p.clone() for p in params]
    lists = {"params": params, "grads": [torch.randn_like(p) for p in params],
             "exp_avgs": [torch.full((p.numel(),), 50, dtype=torch.int8) for p in params],
             "exp_avg_absmaxes": [torch.ones(-(-p.numel() // 256)) for p in params],
             "sqrt_exp_avg_sqs": [torch.full((p.numel(),), 200, dtype=torch.uint8) for p in params],
             "sqrt_exp_avg_sq_absmaxes": [torch.ones(-(-p.numel() // 256)) for p in params]}
    lists[name][1][2] = float(bad)
    with pytest.raises(ValueError, match=rf"`{name}`\[1\]\[2\] = {bad}.*finite and >= 0"):
        sl.fused_adam8bit_(*lists.values(), **HYPER)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # params[0] came first: still untouched


@pytest.mark.parametrize("path", ["factored", "materialized"])
def test_zero_tokens_cost_nothing_on_either_path(path):
    # W would be 4 x 2^40 (16 TiB in float32): a call with no token must never build it.
    n = 2**40
    A, B = torch.empty(0, n), torch.empty(4, 0)
    values, row_ptr, col_idx = torch.ones(1), torch.tensor([0, 1, 1, 1, 1], dtype=torch.int32), torch.tensor(
        [5], dtype=torch.int32)
    x, bias = torch.empty(2, 0, n), torch.ones(4)
    with sl.matmul_config(path):
        y = sl.sl_matmul(x, A, B, values, row_ptr, col_idx, 1.0, bias)
        dx, dA, dB, dvalues = sl.sl_matmul_backward(torch.empty(2, 0, 4), x, A, B, values, row_ptr, col_idx, 1.0)
    assert y.shape == (2, 0, 4) and dx.shape == (2, 0, n)
    assert dA.shape == (0, n) and dB.shape == (4, 0)
    assert torch.equal(dvalues, torch.zeros(1))


@pytest.mark.parametrize("layer", [sl.SLLinear, sl.LowRankLinear])
@pytest.mark.parametrize("alpha,dtype", [(float("nan"), None), (float("inf"), None), ("8", None),
                                         (1e39, torch.float64), (2 * 3.5e38, torch.float32), (1e6, torch.float16)])
def test_an_alpha_the_kernels_would_refuse_is_refused_at_construction(layer, alpha, dtype):
    # Before, the layer was built and its first forward failed naming `scale`.
    density = {"density": 0.5} if layer is sl.SLLinear else {}
    if dtype is torch.float64:
        layer(8, 8, rank=2, alpha=alpha, dtype=dtype, **density)(torch.randn(2, 8, dtype=dtype))  # representable
        return
    with pytest.raises(ValueError, match="`alpha`"):
        layer(8, 8, rank=2, alpha=alpha, dtype=dtype, **density)


def test_validate_support_of_lists_names_the_argument():
    with pytest.raises(TypeError, match="validate_support: `row_ptr` must be a torch.Tensor, got list"):
        sl.validate_support([0, 1], [0], 1, 4)
    with pytest.raises(TypeError, match="`col_idx` must be a torch.Tensor, got list"):
        sl.validate_support(torch.tensor([0, 1], dtype=torch.int32), [0], 1, 4)


@pytest.mark.parametrize("path", ["factored", "materialized"])
@pytest.mark.parametrize("tokens", [1, 64, 1000])
def test_a_scale_near_float32_max_gives_the_exact_result_where_it_is_finite(path, tokens):
    # B = 0, as at init: W = S, every exact result is small. The factored path
    # let addmm scale an operand by `scale` first: dx came out inf or NaN.
    p = make_problem(64, 64, 16, 400)
    scale = 3.4e38  # float32 holds up to 3.4028e38
    A, B = torch.randn(16, 64), torch.zeros(64, 16)  # scale * A overflows, scale * (B @ A) does not
    x, grad_y = torch.randn(tokens, 64), torch.randn(tokens, 64)
    with sl.matmul_config(path):
        y = sl.sl_matmul(x, A, B, p.values, p.row_ptr, p.col_idx, scale)
        dx, dA, dB, dvalues = sl.sl_matmul_backward(grad_y, x, A, B, p.values, p.row_ptr, p.col_idx, scale)
    S = sl.densify(A, B, p.values, p.row_ptr, p.col_idx, 0.0).double()
    torch.testing.assert_close(y.double(), x.double() @ S.T, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dx.double(), grad_y.double() @ S, rtol=1e-5, atol=1e-4)
    assert torch.equal(dA, torch.zeros_like(dA))  # (dB = scale * g^T x A^T truly overflows)
