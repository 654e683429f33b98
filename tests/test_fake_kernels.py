"""The fake (meta) kernels run the real kernels' argument checks, and a meta
tensor among real ones is refused, naming it, instead of giving garbage."""

import re

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode

import sltrain_ext as sl
from helpers import make_problem, split_packed_csc
from test_errors import CASES, arguments

ops = torch.ops.sltrain
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
# Messages of the checks that read index values: only the real kernels can make them.
VALUE_CHECKS = ("must be non-decreasing", "must end at nnz", "must start at 0", "has entries outside")


def names_it_on_meta(name):
    """The device error of a call whose `name` argument is on meta."""
    return re.escape(f"`{name}`") + r"(\[\d\])? is on meta|but " + re.escape(f"`{name}`") + r"(\[\d\])? is on meta"


def sl_matmul_args():
    p = make_problem(6, 8, 2, 12)
    return dict(x=torch.randn(3, 8), A=p.A, B=p.B, values=p.values, row_ptr=p.row_ptr, col_idx=p.col_idx,
                scale=p.scale, bias=p.bias)


def backward_args():
    args = sl_matmul_args()
    del args["bias"]
    return dict(grad_y=torch.randn(3, 6), **args)


def densify_args():
    args = sl_matmul_args()
    return {k: args[k] for k in ("A", "B", "values", "row_ptr", "col_idx", "scale")}


@pytest.mark.parametrize("op,make_args", [(sl.sl_matmul, sl_matmul_args), (sl.sl_matmul_backward, backward_args),
                                          (sl.densify, densify_args)], ids=["sl_matmul", "backward", "densify"])
def test_a_meta_tensor_among_cpu_tensors_is_refused_naming_it(op, make_args):
    names = [name for name, value in make_args().items() if torch.is_tensor(value)]
    for name in names:
        args = make_args()
        args[name] = args[name].to("meta")
        with pytest.raises(ValueError, match=names_it_on_meta(name)):
            op(**args)


def adam_lists(eight_bit):
    params = [torch.randn(300), torch.randn(40)]
    lists = {"params": params, "grads": [torch.randn_like(p) for p in params]}
    if eight_bit:
        lists["exp_avgs"] = [torch.zeros(p.numel(), dtype=torch.int8) for p in params]
        lists["exp_avg_absmaxes"] = [torch.zeros(-(-p.numel() // 256)) for p in params]
        lists["sqrt_exp_avg_sqs"] = [torch.zeros(p.numel(), dtype=torch.uint8) for p in params]
        lists["sqrt_exp_avg_sq_absmaxes"] = [torch.zeros(-(-p.numel() // 256)) for p in params]
    else:
        lists["exp_avgs"] = [torch.zeros_like(p) for p in params]
        lists["exp_avg_sqs"] = [torch.zeros_like(p) for p in params]
    return lists


@pytest.mark.parametrize("eight_bit", [False, True])
def test_adam_with_one_tensor_on_meta_is_refused_and_updates_nothing(eight_bit):
    op = sl.fused_adam8bit_ if eight_bit else sl.fused_adam_
    for name in adam_lists(eight_bit):
        for index in range(2):
            lists = adam_lists(eight_bit)
            before = [t.clone() for t in lists["params"]]
            lists[name][index] = lists[name][index].to("meta")
            with pytest.raises(ValueError, match=names_it_on_meta(name)):
                op(*lists.values(), **HYPER)
            for param, old in zip(lists["params"], before):
                assert param.is_meta or torch.equal(param, old)


def test_support_ops_refuse_a_meta_half():
    row_ptr, col_idx = sl.random_support(6, 8, 12, 0)
    bad_row_ptr = torch.tensor([0, 5, 3, 12, 12, 12, 12], dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="`row_ptr` is on the meta device, which holds no values"):
        sl.validate_support(bad_row_ptr, col_idx.to("meta"), 6, 8)
    with pytest.raises(ValueError, match=names_it_on_meta("col_idx")):
        ops.validate_support(row_ptr, col_idx.to("meta"), 6, 8)
    with pytest.raises(ValueError, match=names_it_on_meta("row_ptr")):
        sl.transpose_support(row_ptr.to("meta"), col_idx, 8)


def test_the_raw_validate_support_op_refuses_a_support_on_meta():
    # Corrupt (decreasing row_ptr, columns out of range) and on meta: nothing
    # can be read, so the op must not return as if it had checked.
    row_ptr = torch.tensor([0, 5, 3, 12, 12, 12, 12], dtype=torch.int32, device="meta")
    col_idx = torch.full((12,), -7, dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="validate_support: `row_ptr` and `col_idx` are on the meta device, "
                                         "which holds no values"):
        ops.validate_support(row_ptr, col_idx, 6, 8)


def test_an_sllinear_with_its_support_moved_to_meta_refuses_to_run():
    layer = sl.SLLinear(8, 6, 2, 0.5, seed=0)
    layer.col_idx = layer.col_idx.to("meta")
    with pytest.raises(ValueError, match=names_it_on_meta("col_idx")):
        layer(torch.randn(3, 8))


def test_everything_on_meta_gives_shapes():
    layer = sl.SLLinear(8, 6, 2, 0.5, seed=0, device="meta")
    x = torch.randn(2, 3, 8, device="meta", requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == (2, 3, 6) and y.is_meta and x.grad.shape == x.shape and layer.values.grad.shape == (layer.nnz,)
    assert layer.dense_weight().shape == (6, 8)
    split_packed_csc(sl.transpose_support(layer.row_ptr, layer.col_idx, 8), 8, layer.nnz)  # its shape
    lists = {name: [t.to("meta") for t in tensors] for name, tensors in adam_lists(False).items()}
    sl.fused_adam_(*lists.values(), **HYPER)


def fake_call(function, *args, **kwargs):
    """function(*args, **kwargs) on fake copies of the tensors (static shapes)."""
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        def fake(value):
            if isinstance(value, list):
                return [fake(v) for v in value]
            return mode.from_tensor(value) if torch.is_tensor(value) else value
        return function(*[fake(a) for a in args], **{k: fake(v) for k, v in kwargs.items()})


def real_error(function, *args, **kwargs):
    with pytest.raises(Exception) as info:
        function(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("overrides,x,error,message", CASES)
def test_fake_kernels_raise_what_the_real_kernels_raise(overrides, x, error, message):
    args = arguments(x, **overrides)
    expected = real_error(sl.sl_matmul, **args)
    if any(check in str(expected) for check in VALUE_CHECKS):
        y = fake_call(sl.sl_matmul, **args)  # index values are unknown while tracing
        assert y.shape == (3, 6)
        return
    with pytest.raises(type(expected)) as info:
        fake_call(sl.sl_matmul, **args)
    assert str(info.value) == str(expected)


def test_fake_backward_and_adam_raise_what_the_real_kernels_raise():
    p = make_problem(6, 8, 2, 12)
    calls = [
        (sl.sl_matmul_backward, (torch.randn(3, 5), torch.randn(3, 8), *p.operands()), {}),
        (sl.sl_matmul_backward, (torch.randn(4, 6), torch.randn(3, 8), *p.operands()), {}),
        (sl.densify, (p.A, p.B, p.values, p.row_ptr.long(), p.col_idx, 1.0), {}),
        (sl.transpose_support, (p.row_ptr, p.col_idx.float(), 8), {}),
        (ops.validate_support, (p.row_ptr, p.col_idx, 5, 8), {}),
        (ops._random_support_fill, (torch.empty(7, dtype=torch.int32), torch.empty(12), 8, 0), {}),
        (ops._random_support_fill, (torch.empty(3, dtype=torch.int32), torch.empty(9, dtype=torch.int32), 4, 0), {}),
        (ops.random_support, (4, 4, 17, 0), {}),
        (ops.random_support, (-1, 4, 0, 0), {}),
    ]
    aliased = torch.zeros(4)
    calls += [
        (sl.fused_adam_, ([torch.zeros(4)], [torch.ones(4)], [aliased], [aliased]), HYPER),
        (sl.fused_adam_, ([torch.zeros(4)], [torch.ones(4)], [torch.zeros(4)], [torch.zeros(4)]),
         HYPER | {"lr": float("inf")}),
        (sl.fused_adam_, ([torch.zeros(4)], [torch.ones(5)], [torch.zeros(4)], [torch.zeros(4)]), HYPER),
        (sl.fused_adam8bit_, ([torch.zeros(300)], [torch.ones(300)], [torch.zeros(300, dtype=torch.int8)],
                              [torch.zeros(1)], [torch.zeros(300, dtype=torch.uint8)], [torch.zeros(2)]), HYPER),
    ]
    for function, args, kwargs in calls:
        expected = real_error(function, *args, **kwargs)
        with pytest.raises(type(expected)) as info:
            fake_call(function, *args, **kwargs)
        assert str(info.value) == str(expected)


def test_the_checks_apply_to_symbolic_sizes_under_torch_compile():
    p = make_problem(6, 8, 2, 12)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda *args: ops.sl_matmul(*args), dynamic=True, fullgraph=True, backend=counter)
    frames = None
    for batch in (3, 5, 9):
        x = torch.randn(batch, 8)
        torch.testing.assert_close(compiled(x, *p.operands()), sl.sl_matmul(x, *p.operands()))
        frames = frames or counter.frame_count
    assert counter.frame_count == frames  # no recompilation: the batch size was symbolic
    bad = [
        ((p.A, p.B, p.values, p.row_ptr.long(), p.col_idx, 1.0), "`row_ptr` must be int32, got Long"),
        ((p.A, p.B[:, :1], p.values, p.row_ptr, p.col_idx, 1.0), "`B` must be 2-D [m, r] with r = A.size(0)"),
        ((p.A, p.B, p.values, p.row_ptr[:-1], p.col_idx, 1.0), "`row_ptr` must be 1-D with m + 1"),
        ((p.A, p.B, p.values, p.row_ptr, p.col_idx, float("nan")), "`scale` must be finite"),
    ]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            compiled(torch.randn(4, 8), *args)
