"""fused_adam_, fused_adam8bit_ and fused_adam4bit_ against float64 references."""

import pytest
import torch

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
    with pytest.raises(TypeError, match="`exp_avgs`\\[0\\] must be Float for a BFloat16 param"):
        sl.fused_adam_([p.bfloat16()], [p.bfloat16()], [p.bfloat16()], [p.clone()], lr=1e-3, beta1=0.9,
                       beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


def reference_decode(codes, absmax, signed):
    """float64 decoding of the 8-bit codes of csrc/common/quant8.h."""
    blocks = absmax.double().repeat_interleave(256)[: codes.numel()]
    if signed:
        q = codes.double()
        return torch.where(q == 0, 0.0, q.sign() * blocks * torch.exp2((q.abs() - 127) / 12))
    q = codes.double()
    return torch.where(q == 0, 0.0, blocks * torch.exp2((q - 255) / 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_adam8bit_step_matches_reference_from_its_own_states(dtype):
    # One step from random 8-bit states: the param moves exactly as float64 Adam
    # from the decoded states, and the new codes decode to the new moments
    # within the code's stated relative error.
    gen = torch.Generator().manual_seed(1)
    numel = 1000
    param = torch.randn(numel, generator=gen).to(dtype)
    grad = torch.randn(numel, generator=gen).to(dtype)
    m_codes = torch.randint(-127, 128, (numel,), generator=gen, dtype=torch.int8)
    v_codes = torch.randint(0, 256, (numel,), generator=gen, dtype=torch.uint8)
    m_absmax, v_absmax = torch.rand(4, generator=gen) + 0.5, torch.rand(4, generator=gen) + 0.5
    m0 = reference_decode(m_codes, m_absmax, signed=True)
    v0 = reference_decode(v_codes, v_absmax, signed=False) ** 2
    lr, beta1, beta2, eps, wd, step = 1e-2, 0.9, 0.99, 1e-8, 0.1, 7
    p, g = param.double(), grad.double()
    m1 = beta1 * m0 + (1 - beta1) * g
    v1 = beta2 * v0 + (1 - beta2) * g * g
    p1 = p * (1 - lr * wd) - lr * (m1 / (1 - beta1**step)) / ((v1 / (1 - beta2**step)).sqrt() + eps)
    sl.fused_adam8bit_([param], [grad], [m_codes], [m_absmax], [v_codes], [v_absmax],
                       lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, step=step)
    ulp = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    assert ((param.double() - p1).abs() <= ulp * p1.abs() + 1e-6).all()
    m_new = reference_decode(m_codes, m_absmax, signed=True)
    sqrt_v_new = reference_decode(v_codes, v_absmax, signed=False)
    big_m = m1.abs() > 1e-3 * m1.abs().max()  # tiny moments may flush to zero
    assert ((m_new - m1).abs()[big_m] <= 0.03 * m1.abs()[big_m]).all()
    assert ((sqrt_v_new - v1.sqrt()).abs() <= 0.023 * v1.sqrt()).all()
    expected_absmax = torch.stack([block.abs().max() for block in m1.split(256)])
    torch.testing.assert_close(m_absmax.double(), expected_absmax, rtol=1e-6, atol=0)


def test_fused_adam8bit_rejects_float64_and_wrong_state_sizes():
    p = torch.zeros(300)
    states = dict(exp_avgs=[torch.zeros(300, dtype=torch.int8)], exp_avg_absmaxes=[torch.zeros(2)],
                  sqrt_exp_avg_sqs=[torch.zeros(300, dtype=torch.uint8)], sqrt_exp_avg_sq_absmaxes=[torch.zeros(2)])
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(TypeError, match="float64"):
        sl.fused_adam8bit_([p.double()], [p.double()], **states, **hyper)
    with pytest.raises(ValueError, match="`exp_avg_absmaxes`\\[0\\] must be contiguous with 2 entries"):
        sl.fused_adam8bit_([p], [p.clone()], **(states | {"exp_avg_absmaxes": [torch.zeros(3)]}), **hyper)
    with pytest.raises(TypeError, match="`sqrt_exp_avg_sqs`\\[0\\] must be Byte"):
        sl.fused_adam8bit_([p], [p.clone()], **(states | {"sqrt_exp_avg_sqs": [torch.zeros(300, dtype=torch.int8)]}), **hyper)


def reference_decode4(codes, absmax, signed, numel):
    """float64 decoding of the 4-bit codes of csrc/common/quant4.h (two a byte, low nibble first)."""
    q = torch.stack([codes & 15, codes >> 4], dim=1).flatten()[:numel].double()
    scale = absmax.double().repeat_interleave(128)[:numel]
    if signed:
        magnitude = q.remainder(8)
        value = torch.where(magnitude == 0, 0.0, torch.exp2(magnitude - 7))
        return torch.where(q >= 8, -value, value) * scale
    return torch.exp2((q - 15) / 2) * scale


def reference_codes4(x, signed):
    """The nearest 4-bit code of each float64 value (absmax per block of 128;
    sqrt(v) nearest in log2), and whether the value lies within 1e-5
    (relative) of a threshold, where float32 moments may round either way."""
    absmax = torch.stack([block.abs().max() for block in x.split(128)]).repeat_interleave(128)[: x.numel()]
    r = x.abs() / absmax
    if signed:
        values = torch.tensor([0.0] + [2.0 ** (k - 7) for k in range(1, 8)], dtype=torch.float64)
        thresholds = (values[1:] + values[:-1]) / 2
        magnitude = (r.unsqueeze(1) >= thresholds).sum(1)
        near = ((r.unsqueeze(1) / thresholds - 1).abs() < 1e-5).any(1)
        return torch.where((x < 0) & (magnitude > 0), magnitude + 8, magnitude), near
    position = 2 * torch.log2(r)  # <= 0
    near = ((position - 0.5) - (position - 0.5).round()).abs() < 2e-5
    return ((position + 0.5).floor() + 15).clamp(0, 15).long(), near


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_adam4bit_step_matches_reference_from_its_own_states(dtype):
    # One step from random 4-bit states (odd size: the last byte holds a
    # padding nibble): the param moves exactly as float64 Adam from the decoded
    # states, the new absmaxes are the new moments', and every new code is the
    # float64 nearest except within float rounding of a threshold.
    gen = torch.Generator().manual_seed(2)
    numel = 1001
    blocks = -(-numel // 128)
    param = torch.randn(numel, generator=gen).to(dtype)
    grad = (torch.randn(numel, generator=gen) * torch.rand(numel, generator=gen).pow(3)).to(dtype)
    m_codes = torch.randint(0, 256, (numel // 2 + 1,), generator=gen, dtype=torch.uint8)
    v_codes = torch.randint(0, 256, (numel // 2 + 1,), generator=gen, dtype=torch.uint8)
    m_absmax, v_absmax = torch.rand(blocks, generator=gen) + 0.5, torch.rand(blocks, generator=gen) * 0.1 + 0.01
    m0 = reference_decode4(m_codes, m_absmax, True, numel)
    v0 = reference_decode4(v_codes, v_absmax, False, numel) ** 2
    lr, beta1, beta2, eps, wd, step = 1e-2, 0.9, 0.99, 1e-8, 0.1, 7
    p, g = param.double(), grad.double()
    m1 = beta1 * m0 + (1 - beta1) * g
    v1 = beta2 * v0 + (1 - beta2) * g * g
    p1 = p * (1 - lr * wd) - lr * (m1 / (1 - beta1**step)) / ((v1 / (1 - beta2**step)).sqrt() + eps)
    sl.fused_adam4bit_([param], [grad], [m_codes], [m_absmax], [v_codes], [v_absmax],
                       lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd, step=step)
    ulp = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    assert ((param.double() - p1).abs() <= ulp * p1.abs() + 1e-6).all()
    for absmax, moment in ((m_absmax, m1), (v_absmax, v1.sqrt())):
        want = torch.stack([block.abs().max() for block in moment.split(128)])
        torch.testing.assert_close(absmax.double(), want, rtol=1e-6, atol=0)
    for codes, moment, signed in ((m_codes, m1, True), (v_codes, v1.sqrt(), False)):
        got = torch.stack([codes & 15, codes >> 4], dim=1).flatten().long()
        want, near = reference_codes4(moment, signed)
        assert (got[:numel] == want)[~near].all() and near.float().mean() < 0.01
        assert got[numel] == 0  # the padding nibble


def test_fused_adam4bit_rejects_8bit_layouts_and_names_the_argument():
    p = torch.zeros(300)
    states = dict(exp_avgs=[torch.zeros(150, dtype=torch.uint8)], exp_avg_absmaxes=[torch.zeros(3)],
                  sqrt_exp_avg_sqs=[torch.zeros(150, dtype=torch.uint8)], sqrt_exp_avg_sq_absmaxes=[torch.zeros(3)])
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    sl.fused_adam4bit_([p], [torch.ones(300)], **states, **hyper)  # the right layout is accepted
    with pytest.raises(TypeError, match="fused_adam4bit_: `params`\\[0\\] is float64; 4-bit states"):
        sl.fused_adam4bit_([p.double()], [p.double()], **states, **hyper)
    with pytest.raises(TypeError, match="`exp_avgs`\\[0\\] must be Byte"):  # 8-bit's int8 codes
        sl.fused_adam4bit_([p], [p.clone()], **(states | {"exp_avgs": [torch.zeros(150, dtype=torch.int8)]}), **hyper)
    with pytest.raises(ValueError, match="`sqrt_exp_avg_sqs`\\[0\\] must be contiguous with 150 entries"):
        sl.fused_adam4bit_([p], [p.clone()], **(states | {"sqrt_exp_avg_sqs": [torch.zeros(300, dtype=torch.uint8)]}),
                           **hyper)
    with pytest.raises(ValueError, match="`exp_avg_absmaxes`\\[0\\] must be contiguous with 3 entries"):
        sl.fused_adam4bit_([p], [p.clone()], **(states | {"exp_avg_absmaxes": [torch.zeros(2)]}), **hyper)
    with pytest.raises(ValueError, match="fused_adam4bit_: `sqrt_exp_avg_sq_absmaxes`\\[0\\]\\[1\\] = nan"):
        sl.fused_adam4bit_([p], [p.clone()], **(states | {"sqrt_exp_avg_sq_absmaxes": [torch.tensor([0.0, float("nan"), 0.0])]}),
                           **hyper)


def _adam_lists(state_bits, seed=3):
    """Params, fixed grads and zero states for a float32 and a bfloat16 tensor."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(700, generator=gen), torch.randn(5, 100, generator=gen).bfloat16()]
    grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
    if state_bits == 8:
        blocks = [-(-p.numel() // 256) for p in params]
        states = [[torch.zeros(p.numel(), dtype=torch.int8) for p in params], [torch.zeros(b) for b in blocks],
                  [torch.zeros(p.numel(), dtype=torch.uint8) for p in params], [torch.zeros(b) for b in blocks]]
    elif state_bits == 4:
        blocks = [-(-p.numel() // 128) for p in params]
        states = [[torch.zeros(-(-p.numel() // 2), dtype=torch.uint8) for p in params], [torch.zeros(b) for b in blocks],
                  [torch.zeros(-(-p.numel() // 2), dtype=torch.uint8) for p in params], [torch.zeros(b) for b in blocks]]
    else:
        states = [[torch.zeros(p.shape) for p in params] for _ in range(2)]
    return params, grads, states


@pytest.mark.parametrize("state_bits", [32, 8, 4])
def test_same_call_with_a_step_tensor_n_times_equals_n_steps(state_bits):
    # What a CUDA graph replay does: the very same arguments each time; the op
    # advances the step count in step_tensor and reads the learning rate from lr_tensor.
    op = {32: sl.fused_adam_, 8: sl.fused_adam8bit_, 4: sl.fused_adam4bit_}[state_bits]
    hyper = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    params, grads, states = _adam_lists(state_bits)
    step_tensor, lr_tensor = torch.zeros((), dtype=torch.int64), torch.tensor(3e-2, dtype=torch.float64)
    for _ in range(5):
        op(params, grads, *states, lr=99.0, step=1000, step_tensor=step_tensor, lr_tensor=lr_tensor, **hyper)
    eager_params, _, eager_states = _adam_lists(state_bits)
    for step in range(1, 6):
        op(eager_params, grads, *eager_states, lr=3e-2, step=step, **hyper)
    assert step_tensor.item() == 5
    for got, want in zip(params + sum(states, []), eager_params + sum(eager_states, [])):
        assert torch.equal(got, want)


def test_bad_step_or_lr_tensors_are_named_and_change_nothing():
    params, grads, states = _adam_lists(32)
    before = [t.clone() for t in params]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    step_tensor = torch.zeros((), dtype=torch.int64)
    with pytest.raises(TypeError, match="`step_tensor` must be int64"):
        sl.fused_adam_(params, grads, *states, **hyper, step_tensor=torch.zeros(()))
    with pytest.raises(ValueError, match="`step_tensor` must hold one element"):
        sl.fused_adam_(params, grads, *states, **hyper, step_tensor=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="`lr_tensor` must be float32 or float64"):
        sl.fused_adam_(params, grads, *states, **hyper, step_tensor=step_tensor,
                       lr_tensor=torch.ones((), dtype=torch.int64))
    with pytest.raises(ValueError, match="`lr` must be finite and >= 0"):  # read from lr_tensor on the CPU
        sl.fused_adam_(params, grads, *states, **hyper, step_tensor=step_tensor, lr_tensor=torch.tensor(-1.0))
    with pytest.raises(TypeError, match="`grads`\\[1\\] has dtype"):
        sl.fused_adam_(params, [grads[0], grads[0]], *states, **hyper, step_tensor=step_tensor)
    assert step_tensor.item() == 0
    assert all(torch.equal(a, b) for a, b in zip(params, before))
