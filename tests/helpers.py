"""Shared test helpers: random SL problems and float64 dense references."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import sltrain_ext as sl

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Relative error allowed against a float64 reference computed from the same
# (already rounded) inputs: the kernels accumulate in fp32 (fp64) and round once.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class Problem:
    A: Tensor
    B: Tensor
    values: Tensor
    row_ptr: Tensor
    col_idx: Tensor
    scale: float
    bias: Tensor | None

    @property
    def m(self) -> int:
        return self.B.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    def operands(self) -> tuple:
        return (self.A, self.B, self.values, self.row_ptr, self.col_idx, self.scale)


def make_problem(m, n, r, nnz, dtype=torch.float32, device="cpu", seed=0, bias=True,
                 columns=torch.int32) -> Problem:
    """Random factors (B nonzero, unlike at init) on a random support, its
    column indices of dtype `columns` (int32, or uint16 as SLLinear keeps them)."""
    gen = torch.Generator().manual_seed(seed)
    row_ptr, col_idx = sl.random_support(m, n, nnz, seed, device=device)
    col_idx = col_idx.to(columns)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    return Problem(
        A=rand(r, n) / max(n, 1) ** 0.5,
        B=rand(m, r) / max(r, 1) ** 0.5,
        values=rand(nnz),
        row_ptr=row_ptr,
        col_idx=col_idx,
        scale=0.5 + torch.rand((), generator=gen).item(),
        bias=rand(m) if bias else None,
    )


def flat_support(row_ptr: Tensor, col_idx: Tensor, n: int) -> Tensor:
    rows = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1), row_ptr.diff().long().cpu())
    return rows * n + col_idx.long().cpu()


def reference_weight(p: Problem, A=None, B=None, values=None) -> Tensor:
    """float64 dense W = scale * B @ A + S, differentiable in the given factors."""
    A = p.A.double().cpu() if A is None else A
    B = p.B.double().cpu() if B is None else B
    values = p.values.double().cpu() if values is None else values
    flat = flat_support(p.row_ptr, p.col_idx, p.n)
    sparse = torch.zeros(p.m * p.n, dtype=torch.float64).scatter(0, flat, values)
    return p.scale * B @ A + sparse.view(p.m, p.n)


def reference_forward_backward(p: Problem, x: Tensor, grad_y: Tensor):
    """float64 (y, dx, dA, dB, dvalues, dbias) by autograd through a dense W."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, p.A, p.B, p.values)]
    x64, A64, B64, v64 = leaves
    y = x64 @ reference_weight(p, A64, B64, v64).T
    bias64 = None
    if p.bias is not None:
        bias64 = p.bias.detach().double().cpu().requires_grad_()
        y = y + bias64
    y.backward(grad_y.double().cpu())
    return (y.detach(), *(t.grad for t in leaves), None if bias64 is None else bias64.grad)


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str = "") -> None:
    """|actual - expected| <= tol(dtype) * max(1, max|expected|), elementwise."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite entries"
    if expected.numel() == 0:
        return
    bound = TOLERANCE[dtype] * max(1.0, expected.abs().max().item())
    error = (actual.double().cpu() - expected).abs().max().item()
    assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g} ({dtype})"


def check_sl_matmul(p: Problem, x: Tensor, dtype: torch.dtype, grad_seed: int = 1, before_each=None) -> None:
    """sl_matmul forward and every gradient (on x's device) against the float64
    reference; `before_each()` runs before the forward and before the backward."""
    gen = torch.Generator().manual_seed(grad_seed)
    leaves = [t.detach().clone().requires_grad_() for t in (x, p.A, p.B, p.values)]
    bias = None if p.bias is None else p.bias.detach().clone().requires_grad_()
    if before_each:
        before_each()
    y = sl.sl_matmul(*leaves, p.row_ptr, p.col_idx, p.scale, bias)
    grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=y.device)
    if before_each:
        before_each()
    y.backward(grad_y)
    expected = reference_forward_backward(p, x, grad_y)
    assert y.dtype == dtype and y.device == x.device
    assert_close(y.detach(), expected[0], dtype, "y")
    for name, leaf, ref in zip(("dx", "dA", "dB", "dvalues"), leaves, expected[1:5]):
        assert leaf.grad.dtype == dtype and leaf.grad.device == x.device
        assert_close(leaf.grad, ref, dtype, name)
    if bias is not None:
        assert_close(bias.grad, expected[5], dtype, "dbias")


def split_packed_csc(packed: Tensor, n: int, nnz: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """transpose_support's segments (col_ptr, row_idx, entry) and its pads, as
    README documents the layout: each segment starts at a multiple of 4 int32
    elements (16 bytes), so n + 1 and nnz are rounded up to 4."""
    row_idx_at = -(-(n + 1) // 4) * 4
    entry_at = row_idx_at + -(-nnz // 4) * 4
    assert packed.shape == (entry_at + nnz,), f"packed CSC of {tuple(packed.shape)} for n = {n}, nnz = {nnz}"
    pads = torch.cat([packed[n + 1 : row_idx_at], packed[row_idx_at + nnz : entry_at]])
    return packed[: n + 1], packed[row_idx_at : row_idx_at + nnz], packed[entry_at:], pads


def codes_in_order(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Optimizer-state codes as integers whose neighbouring codes differ by 1,
    for "within one code" comparisons: 8-bit codes as they are; 4-bit ones
    (two a byte, low nibble first) unpacked, the signed ones (sign bit 8 and
    a magnitude) as +-magnitude."""
    if bits == 8:
        return codes.int()
    nibbles = torch.stack([codes & 15, codes >> 4], dim=1).flatten().int()
    return torch.where(nibbles >= 8, 8 - nibbles, nibbles) if signed else nibbles
