"""SLLinear behaves like nn.Linear, keeps its support, and round-trips."""

import io
import math

import pytest
import torch
from torch import nn

import sltrain_ext as sl


def test_shapes_init_and_buffers():
    torch.manual_seed(0)
    layer = sl.SLLinear(40, 24, rank=4, density=0.05, alpha=16)
    assert layer.nnz == round(0.05 * 40 * 24)
    assert layer.A.shape == (4, 40) and layer.B.shape == (24, 4) and layer.bias.shape == (24,)
    assert torch.count_nonzero(layer.B) == 0
    assert layer.values.abs().max() <= 1 / math.sqrt(40)
    assert layer.row_ptr.dtype == torch.int32 and layer.col_idx.dtype == torch.uint16  # in_features <= 65536
    assert set(dict(layer.named_buffers())) == {"row_ptr", "col_idx"}
    assert {n for n, _ in layer.named_parameters()} == {"A", "B", "values", "bias"}
    assert layer.scale == 4.0
    assert "rank=4" in repr(layer) and "nnz=48" in repr(layer)
    assert layer(torch.randn(2, 3, 40)).shape == (2, 3, 24)


def test_matches_nn_linear_with_its_dense_weight():
    layer = sl.SLLinear(30, 20, rank=3, density=0.1, seed=1)
    nn.init.normal_(layer.B)
    linear = nn.Linear(30, 20)
    with torch.no_grad():
        linear.weight.copy_(layer.dense_weight())
        linear.bias.copy_(layer.bias)
    x = torch.randn(7, 30)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)


def test_seed_fixes_support_and_manual_seed_fixes_everything():
    a, b = sl.SLLinear(16, 16, 2, 0.2, seed=7), sl.SLLinear(16, 16, 2, 0.2, seed=7)
    assert torch.equal(a.col_idx, b.col_idx) and torch.equal(a.row_ptr, b.row_ptr)
    torch.manual_seed(3)
    c = sl.SLLinear(16, 16, 2, 0.2)
    torch.manual_seed(3)
    d = sl.SLLinear(16, 16, 2, 0.2)
    assert c.seed == d.seed and torch.equal(c.values, d.values) and torch.equal(c.A, d.A)


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    source = sl.SLLinear(32, 48, 4, 0.1)
    nn.init.normal_(source.B)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = sl.SLLinear(32, 48, 4, 0.1, seed=999)  # another support, same nnz
    target.load_state_dict(torch.load(buffer))
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    x = torch.randn(5, 32)
    assert torch.equal(source(x), target(x))


def test_loading_a_corrupt_support_raises_and_keeps_the_module():
    layer = sl.SLLinear(8, 6, 2, 0.3, seed=1)
    before = layer.col_idx.clone()
    state = layer.state_dict()
    state["col_idx"] = state["col_idx"].clone()
    state["col_idx"][0] = 8
    with pytest.raises(ValueError, match="invalid support in state_dict.*outside \\[0, n\\)"):
        layer.load_state_dict(state)
    assert torch.equal(layer.col_idx, before)


def test_dtype_conversion_keeps_the_support_dtypes():
    layer = sl.SLLinear(8, 8, 2, 0.5).to(torch.bfloat16)
    assert layer.A.dtype == torch.bfloat16 and layer.row_ptr.dtype == torch.int32 and layer.col_idx.dtype == torch.uint16
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("path", ["factored", "materialized"])
def test_autocast_runs_in_the_autocast_dtype(path):
    layer = sl.SLLinear(16, 12, 2, 0.2)
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), sl.matmul_config(path):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.A.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_reset_parameters_and_no_bias():
    layer = sl.SLLinear(10, 10, 2, 0.3, bias=False)
    assert layer.bias is None
    with torch.no_grad():
        layer.B.fill_(1.0)
    layer.reset_parameters()
    assert torch.count_nonzero(layer.B) == 0
    assert layer(torch.randn(3, 10)).shape == (3, 10)


def test_trains_a_small_regression():
    torch.manual_seed(0)
    teacher = torch.randn(24, 32) / 32**0.5
    model = sl.SLLinear(32, 24, rank=8, density=0.3)
    optimizer = sl.SLAdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(150):
        x = torch.randn(64, 32)
        loss = (model(x) - x @ teacher.T).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_load_state_dict_is_all_or_nothing():
    layer = sl.SLLinear(12, 10, rank=3, density=0.2, seed=1)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    other = sl.SLLinear(12, 10, rank=3, density=0.3, seed=2).state_dict()  # a valid support, another nnz
    with pytest.raises(RuntimeError, match="size mismatch for col_idx"):
        layer.load_state_dict(other)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key
    layer(torch.randn(2, 12))  # still usable


@pytest.mark.parametrize("key", ["row_ptr", "col_idx"])
def test_half_a_support_is_validated_against_the_other_half(key):
    layer = sl.SLLinear(12, 10, rank=3, density=0.2, seed=1)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    corrupt = before[key].clone()
    corrupt[-1] = 12 if key == "col_idx" else corrupt[-1] + 1  # column n, or an entry too many
    with pytest.raises(ValueError, match="invalid support in state_dict"):
        layer.load_state_dict({key: corrupt}, strict=False)
    assert torch.equal(getattr(layer, key), before[key])


@pytest.mark.parametrize("layer", [sl.SLLinear(12, 9, 3, 0.3, seed=1), sl.LowRankLinear(12, 9, 3)])
@pytest.mark.parametrize("fault", ["missing", "unexpected"])
def test_strict_load_with_a_missing_or_unexpected_key_writes_nothing(layer, fault):
    state = layer.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    state = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
    if fault == "missing":
        del state["bias"]
    else:
        state["weight"] = torch.zeros(9, 12)
    with pytest.raises(RuntimeError, match=rf"{fault} key\(s\) \['(bias|weight)'\].*nothing was loaded"):
        layer.load_state_dict(state)
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    layer.load_state_dict(state, strict=False)  # not strict: what is there loads
    assert torch.count_nonzero(layer.A) == 0
