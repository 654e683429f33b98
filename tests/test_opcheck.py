"""torch.library.opcheck for every op, and torch.compile through SL layers."""

import pytest
import torch
from torch import nn

import sltrain_ext as sl
from helpers import make_problem

ops = torch.ops.sltrain


def sl_matmul_samples():
    for dtype, columns in ((torch.float32, torch.int32), (torch.bfloat16, torch.uint16)):
        p = make_problem(9, 12, 3, 30, dtype, columns=columns)
        x = torch.randn(2, 4, 12, dtype=dtype)
        leaves = [t.requires_grad_() for t in (x, p.A, p.B, p.values, p.bias)]
        yield (leaves[0], *leaves[1:4], p.row_ptr, p.col_idx, p.scale, leaves[4])
        yield (x.detach(), p.A.detach(), p.B.detach(), p.values.detach(), p.row_ptr, p.col_idx, p.scale, None)


@pytest.mark.parametrize("path", ["factored", "materialized"])
def test_opcheck_sl_matmul(path):
    with sl.matmul_config(path):
        for args in sl_matmul_samples():
            torch.library.opcheck(ops.sl_matmul.default, args)


@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_opcheck_sl_matmul_backward(columns):
    p = make_problem(9, 12, 3, 30, columns=columns)
    for mask in ([True] * 4, [False, True, False, True]):
        torch.library.opcheck(ops.sl_matmul_backward.default,
                              (torch.randn(5, 9), torch.randn(5, 12), *p.operands(), mask))


@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_opcheck_transpose_support(columns):
    row_ptr, col_idx = sl.random_support(10, 20, 30, 4)
    torch.library.opcheck(ops.transpose_support.default, (row_ptr, col_idx.to(columns), 20))


@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_opcheck_densify(columns):
    torch.library.opcheck(ops.densify.default, make_problem(7, 5, 2, 11, columns=columns).operands())


def test_opcheck_random_support_and_fill():
    torch.library.opcheck(ops.random_support.default, (10, 20, 30, 4))
    row_ptr, col_idx = torch.empty(11, dtype=torch.int32), torch.empty(30, dtype=torch.int32)
    torch.library.opcheck(ops._random_support_fill.default, (row_ptr, col_idx, 20, 4))


@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_opcheck_validate_support(columns):
    row_ptr, col_idx = sl.random_support(10, 20, 30, 4)
    torch.library.opcheck(ops.validate_support.default, (row_ptr, col_idx.to(columns), 10, 20))


def test_opcheck_fused_adam():
    params = [torch.randn(10), torch.randn(3, 4).bfloat16()]
    args = (params, [torch.randn_like(p) for p in params], [torch.zeros(p.shape) for p in params],
            [torch.zeros(p.shape) for p in params], 1e-3, 0.9, 0.999, 1e-8, 0.01, 1, True)
    torch.library.opcheck(ops.fused_adam_.default, args)


def test_opcheck_fused_adam8bit():
    params = [torch.randn(300), torch.randn(2, 200).bfloat16()]
    args = (params, [torch.randn_like(p) for p in params],
            [torch.zeros(p.numel(), dtype=torch.int8) for p in params], [torch.zeros(2) for _ in params],
            [torch.zeros(p.numel(), dtype=torch.uint8) for p in params], [torch.zeros(2) for _ in params],
            1e-3, 0.9, 0.999, 1e-8, 0.01, 1, True)
    torch.library.opcheck(ops.fused_adam8bit_.default, args)


def test_opcheck_fused_adam4bit():
    params = [torch.randn(301), torch.randn(2, 200).bfloat16()]  # an odd size: a padding nibble
    args = (params, [torch.randn_like(p) for p in params],
            [torch.zeros((p.numel() + 1) // 2, dtype=torch.uint8) for p in params], [torch.zeros(3), torch.zeros(4)],
            [torch.zeros((p.numel() + 1) // 2, dtype=torch.uint8) for p in params], [torch.zeros(3), torch.zeros(4)],
            1e-3, 0.9, 0.999, 1e-8, 0.01, 1, True)
    torch.library.opcheck(ops.fused_adam4bit_.default, args)


@pytest.mark.parametrize("op,args", [
    (ops.set_matmul_config.default, ("auto", 64 << 20)),
    (ops.get_matmul_config.default, ()),
    (ops.matmul_path.default, (16, 64, 64, 8, 100, torch.device("cpu"))),
])
def test_opcheck_config_ops(op, args):
    # Host-side settings that return strings: nothing to trace, so the AOT
    # dispatch test (which compares traced tensor outputs) does not apply.
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = sl.SLLinear(16, 48, 4, 0.1, seed=1)
        self.down = sl.SLLinear(48, 16, 4, 0.1, seed=2)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x))) + x


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(backend):
    torch.manual_seed(0)
    eager = Block()
    for layer in (eager.up, eager.down):
        nn.init.normal_(layer.B, std=0.1)
    compiled_model = Block()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    x = torch.randn(3, 5, 16)
    y_eager, y_compiled = eager(x), compiled(x)
    # Inductor fuses and reorders the pointwise ops around ours: float32 rounding.
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-4)
    y_eager.square().sum().backward()
    y_compiled.square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * a.grad.abs().max().item(), msg=name)


def test_compiled_layers_follow_autocast_entered_after_compiling():
    # The compiled graph must ask whether autocast is on at every call: a
    # graph traced without autocast must not be reused inside it, and the
    # cast SLLinear does (autocast does not know our op) must happen there.
    def layers():
        torch.manual_seed(0)
        return nn.Sequential(sl.SLLinear(16, 48, 4, 0.1, seed=1), nn.GELU(), sl.SLLinear(48, 16, 4, 0.1, seed=2))
    eager, compiled_model = layers(), layers()
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 5, 16)
    assert compiled(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_eager, y_compiled = eager(x), compiled(x)
    assert y_eager.dtype == torch.bfloat16 and y_compiled.dtype == torch.bfloat16
    torch.testing.assert_close(y_compiled, y_eager)
    y_eager.float().square().sum().backward()
    y_compiled.float().square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        assert b.grad.dtype == a.grad.dtype == torch.float32, name
        torch.testing.assert_close(b.grad, a.grad, msg=name)
