"""sltrain_ext's LLaMA MLP activation: swiglu gives the bits of torch's
silu(gate) * up in both directions while saving less (tests/test_gpu.py checks
the aligned rows it hands to the CUDA layers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sltrain_ext.llama import swiglu

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 45), (1, 1, 1), (4, 5461), (0, 7)])
def test_swiglu_equals_silu_times_up_bitwise_in_both_directions(shape, dtype):
    torch.manual_seed(0)
    gate, up = (torch.randn(shape, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(2))
    weight = torch.randn(shape, dtype=torch.float64).to(dtype)

    def run(activation):
        gate.grad = up.grad = None
        out = activation(gate, up)
        (out * weight).sum().backward()
        return out.detach(), gate.grad, up.grad

    for ours, torchs in zip(run(swiglu), run(lambda g, u: F.silu(g) * u)):
        assert ours.shape == torchs.shape
        assert torch.equal(ours, torchs)


def saved_tensor_count(activation) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    gate, up = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        activation(gate, up)
    return count


def test_swiglu_saves_only_gate_and_up():
    assert saved_tensor_count(swiglu) == 2
    assert saved_tensor_count(lambda g, u: F.silu(g) * u) == 3  # silu's input, its output, up


def test_second_derivatives_of_swiglu_are_refused_with_a_reason():
    gate, up = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="swiglu has no second derivative"):
        torch.autograd.grad(swiglu(gate, up).sum(), gate, create_graph=True)
