"""CUDA behaviour. Marked `gpu`: skipped where no CUDA device is present."""

import pytest
import torch

import sltrain_ext as sl
from helpers import make_problem

pytestmark = pytest.mark.gpu


def test_ops_without_cuda_kernels_raise_not_implemented():
    p = make_problem(6, 8, 2, 10, device="cpu")
    cuda = [t.cuda() for t in (p.A, p.B, p.values, p.row_ptr, p.col_idx)]
    with pytest.raises(NotImplementedError, match="sltrain::sl_matmul has no CUDA kernel"):
        sl.sl_matmul(torch.randn(3, 8, device="cuda"), *cuda, 1.0)
    with pytest.raises(NotImplementedError, match="sltrain::densify has no CUDA kernel"):
        sl.densify(*cuda, 1.0)


def test_mixed_devices_name_the_argument():
    p = make_problem(6, 8, 2, 10)
    with pytest.raises(ValueError, match="`B` is on cpu but `A` is on cuda"):
        sl.sl_matmul(torch.randn(3, 8, device="cuda"), p.A.cuda(), p.B, p.values.cuda(),
                     p.row_ptr.cuda(), p.col_idx.cuda(), 1.0)


def test_sampler_and_optimizer_raise_not_implemented_on_cuda():
    with pytest.raises(NotImplementedError, match="sltrain::_random_support_fill has no CUDA kernel"):
        sl.random_support(10, 10, 5, 0, device="cuda")
    p = torch.zeros(4, device="cuda")
    with pytest.raises(NotImplementedError, match="sltrain::fused_adam_ has no CUDA kernel"):
        sl.fused_adam_([p], [p.clone()], [p.clone()], [p.clone()], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=0.0, step=1)
