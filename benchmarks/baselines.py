"""The naive SLTrain layer every benchmark compares against.

This is the algorithm of the original SLTrain code, composed of plain torch
ops: the forward pass materialises ``W = B @ (s * A)`` and scatter-adds the
sparse values into it; the backward pass materialises ``W`` again, computes
the full ``dW = g^T x`` and derives ``dB``, ``dA`` and ``dvalues`` (a gather
with int64 flat indices) from it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import sltrain_ext as sl


def _naive_weight(A: Tensor, B: Tensor, values: Tensor, flat_index: Tensor, scale: float) -> Tensor:
    w = B @ (A * scale)
    return w.view(-1).scatter_add(0, flat_index, values).view_as(w)


class NaiveSLMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, A, B, values, flat_index, scale, bias):
        ctx.save_for_backward(x, A, B, values, flat_index)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, _naive_weight(A, B, values, flat_index, scale), bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, A, B, values, flat_index = ctx.saved_tensors
        w = _naive_weight(A, B, values, flat_index, ctx.scale)
        g2, x2 = grad_y.reshape(-1, grad_y.shape[-1]), x.reshape(-1, x.shape[-1])
        dx = (g2 @ w).view_as(x)
        dw = g2.T @ x2
        dB = dw @ (A * ctx.scale).T
        dA = ctx.scale * (B.T @ dw)
        dvalues = dw.view(-1)[flat_index]
        dbias = g2.sum(0) if ctx.has_bias else None
        return dx, dA, dB, dvalues, None, None, dbias


class NaiveSLLinear(nn.Module):
    """The original code's SLTrain linear layer, with the same parameters as an
    ``SLLinear`` it is built from (same support, same values)."""

    def __init__(self, layer: sl.SLLinear) -> None:
        super().__init__()
        self.scale = layer.scale
        self.A = nn.Parameter(layer.A.detach().clone())
        self.B = nn.Parameter(layer.B.detach().clone())
        self.values = nn.Parameter(layer.values.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        rows = torch.repeat_interleave(
            torch.arange(layer.out_features, device=layer.row_ptr.device), layer.row_ptr.diff().long()
        )
        self.register_buffer("flat_index", rows * layer.in_features + layer.col_idx.long())

    def forward(self, x: Tensor) -> Tensor:
        return NaiveSLMatmul.apply(x, self.A, self.B, self.values, self.flat_index, self.scale, self.bias)
