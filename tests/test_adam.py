"""fused_adam_ against a float64 Adam/AdamW reference, and SLAdamW against torch.optim.AdamW."""

import pytest
import torch
from torch import nn

import sltrain_ext as sl


def reference_adam(params, grads_per_step, lr, beta1, beta2, eps, weight_decay, decoupled, round_to):
    params = [p.double().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.double()
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            update = (m[i] / (1 - beta1**step)) / ((v[i] / (1 - beta2**step)).sqrt() + eps)
            params[i] = (p - lr * update).to(round_to).double()
    return params


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12),
                                             (torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
@pytest.mark.parametrize("decoupled", [True, False])
def test_fused_adam_matches_float64_reference(dtype, tolerance, decoupled):
    gen = torch.Generator().manual_seed(0)
    shapes = [(37,), (5, 9), (70000,), (0,)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    exp_avgs = [torch.full(p.shape, float("nan"), dtype=state_dtype).zero_() for p in params]
    exp_avg_sqs = [torch.zeros(p.shape, dtype=state_dtype) for p in params]
    grads_per_step = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(5)]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    expected = reference_adam(params, grads_per_step, **hyper, decoupled=decoupled, round_to=dtype)
    for step, grads in enumerate(grads_per_step, start=1):
        sl.fused_adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper, step=step, decoupled=decoupled)
    for got, want in zip(params, expected):
        assert got.dtype == dtype
        if want.numel():
            assert (got.double() - want).abs().max() <= tolerance * want.abs().max()


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "`lr`"), (dict(beta1=1.0), "`beta1`"), (dict(beta2=-0.1), "`beta2`"),
    (dict(eps=0.0), "`eps`"), (dict(weight_decay=-1.0), "`weight_decay`"), (dict(step=0), "`step`"),
])
def test_fused_adam_rejects_bad_hyper_parameters(kwargs, message):
    p, g, m, v = (torch.zeros(3) for _ in range(4))
    args = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1) | kwargs
    with pytest.raises(ValueError, match=message):
        sl.fused_adam_([p], [g], [m], [v], **args)


def test_fused_adam_rejects_mismatched_lists():
    p = torch.zeros(3)
    with pytest.raises(ValueError, match="equal lengths"):
        sl.fused_adam_([p], [], [p.clone()], [p.clone()], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="`grads`\\[0\\] has shape"):
        sl.fused_adam_([p], [torch.zeros(4)], [p.clone()], [p.clone()], lr=1e-3, beta1=0.9, beta2=0.999,
                       eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(TypeError, match="`exp_avgs`\\[0\\] and `exp_avg_sqs`\\[0\\] must be"):
        sl.fused_adam_([p.bfloat16()], [p.bfloat16()], [p.bfloat16()], [p.clone()], lr=1e-3, beta1=0.9,
                       beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(sl.SLLinear(16, 32, 4, 0.2), nn.GELU(), nn.Linear(32, 8))
    data = [(torch.randn(10, 16), torch.randn(10, 8)) for _ in range(20)]
    return model, data


def test_sladamw_equals_torch_adamw():
    ours, data = model_and_data()
    theirs, _ = model_and_data()
    theirs.load_state_dict(ours.state_dict())
    opt_ours = sl.SLAdamW(ours.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01)
    for x, target in data:
        for model, optimizer in ((ours, opt_ours), (theirs, opt_theirs)):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), target).backward()
            optimizer.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("kwargs,message", [(dict(lr=-1), "`lr`"), (dict(betas=(1.0, 0.9)), "`betas\\[0\\]`"),
                                            (dict(betas=(0.9, -0.5)), "`betas\\[1\\]`"),
                                            (dict(eps=-1e-8), "`eps`"), (dict(weight_decay=-0.1), "`weight_decay`")])
def test_sladamw_rejects_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sl.SLAdamW([nn.Parameter(torch.zeros(2))], **kwargs)
