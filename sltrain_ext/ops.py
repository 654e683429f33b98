"""Typed Python entry points to the ``torch.ops.sltrain`` operators.

The schemas and the CPU/CUDA kernels live in C++ (``csrc/``); this module adds
what the dispatcher needs from Python: the autograd formula of ``sl_matmul``,
registered once with ``torch.library.register_autograd``, and the fake kernel
of ``random_support``. The other fake (meta) kernels, which ``torch.compile``
traces with, are in C++ (``csrc/meta.cpp``) and share the real kernels'
argument checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from . import _C  # noqa: F401  (loads the library that defines torch.ops.sltrain)

__all__ = [
    "sl_matmul",
    "sl_matmul_backward",
    "sl_matmul_inference",
    "densify",
    "random_support",
    "transpose_support",
    "fused_adam_",
    "fused_adam8bit_",
    "fused_adam4bit_",
    "validate_support",
    "nnz_for_density",
    "set_matmul_config",
    "matmul_config",
    "matmul_path",
]

_ops = torch.ops.sltrain


def sl_matmul(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    values: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    scale: float,
    bias: Tensor | None = None,
) -> Tensor:
    """``x @ (scale * B @ A + S).T + bias``, differentiable in x, A, B, values and bias.

    Args:
        x: ``[..., n]`` input.
        A: ``[r, n]`` right factor.  B: ``[m, r]`` left factor.
        values: ``[nnz]`` nonzeros of the sparse part ``S`` (``m x n``).
        row_ptr, col_idx: ``S``'s fixed support as CSR: ``row_ptr`` int32 ``[m + 1]``,
            ``col_idx`` ``[nnz]`` int32, or uint16 where ``n <= 65536`` (the training
            kernels widen 16-bit columns to int32 for the call).
        scale: the low-rank scale ``s = alpha / r``.
        bias: optional ``[m]``.

    All floating tensors share one dtype (float32, float64, bfloat16, float16)
    and one device. Returns ``[..., m]``.
    """
    return _ops.sl_matmul(x, A, B, values, row_ptr, col_idx, scale, bias)


def sl_matmul_inference(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    values: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    scale: float,
    bias: Tensor | None = None,
) -> Tensor:
    """``sl_matmul``'s forward as one C++ op with no autograd formula (results
    carry no gradient): the inference path of ``SLLinear``. Up to 32 tokens on
    the CPU and 16 on CUDA take one pass over ``B`` and the sparse entries,
    reading ``col_idx`` as stored (2 bytes a column for uint16, 4 for int32)."""
    return _ops.sl_matmul_inference.default(x, A, B, values, row_ptr, col_idx, scale, bias)


def sl_matmul_backward(
    grad_y: Tensor,
    x: Tensor,
    A: Tensor,
    B: Tensor,
    values: Tensor,
    row_ptr: Tensor,
    col_idx: Tensor,
    scale: float,
    output_mask: Sequence[bool] = (True, True, True, True),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dA, dB, dvalues)`` of ``sl_matmul`` (without bias).

    An entry whose ``output_mask`` flag is false is returned empty and costs nothing.
    """
    return _ops.sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, scale, list(output_mask))


def densify(
    A: Tensor, B: Tensor, values: Tensor, row_ptr: Tensor, col_idx: Tensor, scale: float
) -> Tensor:
    """The dense ``m x n`` weight ``scale * B @ A + S`` (for export, merging and tests)."""
    return _ops.densify(A, B, values, row_ptr, col_idx, scale)


def random_support(
    m: int, n: int, nnz: int, seed: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """``nnz`` distinct positions of an ``m x n`` matrix, drawn uniformly, as int32 CSR.

    Returns ``(row_ptr, col_idx)`` with columns strictly increasing in each row.
    The result depends only on ``(m, n, nnz, seed)``: every device and every run
    draws the same support. Takes O(nnz) time and memory (a counter-based
    Feistel permutation of ``[0, m*n)``, never a permutation of all positions).
    """
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"`seed` must be in [-2**63, 2**63) (an int64), got {seed}")
    return _ops.random_support(m, n, nnz, seed, torch.device(device) if device else None)


def transpose_support(row_ptr: Tensor, col_idx: Tensor, n: int) -> Tensor:
    """The CSC copy of a valid ``m x n`` support, packed in one int32 tensor:
    ``[col_ptr (n + 1) | pad | row_idx (nnz) | pad | entry (nnz)]``, each
    segment starting at a multiple of 4 elements (16 bytes; the pads hold
    zeros), where ``entry`` is each CSC entry's position in CSR order (rows
    increase within a column). The CUDA factored backward computes
    ``dx = grad_y @ S`` from such a copy deterministically, without atomics; it
    builds and caches its own, so this op is for inspection and tests. The CPU
    version validates the support first."""
    return _ops.transpose_support(row_ptr, col_idx, n)


def fused_adam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    decoupled: bool = True,
    step_tensor: Tensor | None = None,
    lr_tensor: Tensor | None = None,
) -> None:
    """One in-place Adam (``decoupled=False``) or AdamW step over every tensor of the lists.

    ``step`` is the number of the step being taken (1 for the first). States are
    float32 (float64 for float64 params); params may be float32, bfloat16,
    float16 or float64, and each grad has its param's dtype.

    Capturable steps: with ``step_tensor`` (int64, one element, on the params'
    device) the op adds 1 to it and takes the sum as the step (``step`` is
    ignored); with ``lr_tensor`` (float32 or float64, one element, same device)
    it reads the learning rate there (``lr`` is ignored). Nothing is read on the
    host, so a CUDA graph of the call replayed N times takes N steps.
    """
    if not any((params, grads, exp_avgs, exp_avg_sqs)):
        return  # nothing to update, and no tensor for the dispatcher to pick a device by
    _ops.fused_adam_(
        list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
        lr, beta1, beta2, eps, weight_decay, step, decoupled, step_tensor, lr_tensor,
    )


def fused_adam8bit_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_absmaxes: Sequence[Tensor],
    sqrt_exp_avg_sqs: Sequence[Tensor],
    sqrt_exp_avg_sq_absmaxes: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    decoupled: bool = True,
    step_tensor: Tensor | None = None,
    lr_tensor: Tensor | None = None,
) -> None:
    """``fused_adam_`` with 8-bit block-quantised moments (``step_tensor`` and
    ``lr_tensor`` as there).

    Per param of ``numel`` elements: ``exp_avgs`` int8 ``[numel]`` codes,
    ``sqrt_exp_avg_sqs`` uint8 ``[numel]`` codes of ``sqrt(exp_avg_sq)``, and
    float32 ``[ceil(numel / 256)]`` absmaxes for each (the code is in
    ``csrc/common/quant8.h``). Zeros are the initial state. Params are float32,
    bfloat16 or float16.
    """
    _fused_adam_codes(_ops.fused_adam8bit_, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs,
                      sqrt_exp_avg_sq_absmaxes, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                      step_tensor, lr_tensor)


def fused_adam4bit_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_absmaxes: Sequence[Tensor],
    sqrt_exp_avg_sqs: Sequence[Tensor],
    sqrt_exp_avg_sq_absmaxes: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    decoupled: bool = True,
    step_tensor: Tensor | None = None,
    lr_tensor: Tensor | None = None,
) -> None:
    """``fused_adam8bit_`` with 4-bit block-quantised moments (the code is in
    ``csrc/common/quant4.h``).

    Per param of ``numel`` elements: ``exp_avgs`` and ``sqrt_exp_avg_sqs``
    uint8 ``[ceil(numel / 2)]``, two codes a byte (element ``2i`` in the low
    nibble), and float32 ``[ceil(numel / 128)]`` absmaxes for each. Zeros are
    the initial state. Params are float32, bfloat16 or float16.
    """
    _fused_adam_codes(_ops.fused_adam4bit_, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs,
                      sqrt_exp_avg_sq_absmaxes, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                      step_tensor, lr_tensor)


def _fused_adam_codes(op: Callable[..., None], params: Sequence[Tensor], grads: Sequence[Tensor],
                      exp_avgs: Sequence[Tensor], exp_avg_absmaxes: Sequence[Tensor],
                      sqrt_exp_avg_sqs: Sequence[Tensor], sqrt_exp_avg_sq_absmaxes: Sequence[Tensor], lr: float,
                      beta1: float, beta2: float, eps: float, weight_decay: float, step: int, decoupled: bool,
                      step_tensor: Tensor | None, lr_tensor: Tensor | None) -> None:
    """Calls a block-quantised Adam op with lists (the dispatcher wants lists, not sequences)."""
    if not any((params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs, sqrt_exp_avg_sq_absmaxes)):
        return  # nothing to update, and no tensor for the dispatcher to pick a device by
    op(list(params), list(grads), list(exp_avgs), list(exp_avg_absmaxes), list(sqrt_exp_avg_sqs),
       list(sqrt_exp_avg_sq_absmaxes), lr, beta1, beta2, eps, weight_decay, step, decoupled,
       step_tensor, lr_tensor)


def validate_support(row_ptr: Tensor, col_idx: Tensor, m: int, n: int) -> None:
    """Raises ``ValueError`` naming what is wrong unless ``(row_ptr, col_idx)`` is a
    valid support of an ``m x n`` matrix: ``row_ptr`` int32 ``[m + 1]`` from 0 to
    nnz and non-decreasing; ``col_idx`` int32 (or uint16 where ``n <= 65536``),
    columns in ``[0, n)`` strictly increasing in each row.
    O(nnz); runs on the CPU (tensors on other devices are copied). A support
    on the meta device has no values to check and is refused."""
    for name, tensor in (("row_ptr", row_ptr), ("col_idx", col_idx)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"validate_support: `{name}` must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.is_meta:
            raise ValueError(f"validate_support: `{name}` is on the meta device, which holds no values to validate")
    _ops.validate_support(row_ptr.cpu(), col_idx.cpu(), m, n)


def nnz_for_density(m: int, n: int, density: float) -> int:
    """``round(density * m * n)``, the support size of an ``m x n`` matrix."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be in (0, 1], got {density}")
    return round(density * m * n)


def set_matmul_config(path: str = "auto", workspace_bytes: int = 64 << 20) -> None:
    """Process-wide ``sl_matmul`` settings.

    Args:
        path: ``"auto"`` (the cost model decides per call), ``"factored"``
            (low-rank products plus sparse kernels, no ``m x n`` matrix) or
            ``"materialized"`` (``W`` built in row chunks, then dense GEMMs).
        workspace_bytes: the most the materialised path spends on ``W`` and
            ``dW`` row chunks at once.
    """
    _ops.set_matmul_config(path, workspace_bytes)


@contextlib.contextmanager
def matmul_config(path: str | None = None, workspace_bytes: int | None = None) -> Iterator[None]:
    """``set_matmul_config`` for the duration of a ``with`` block; ``None`` keeps a setting."""
    old_path, old_workspace = _ops.get_matmul_config()
    set_matmul_config(path or old_path, workspace_bytes or old_workspace)
    try:
        yield
    finally:
        set_matmul_config(old_path, old_workspace)


def matmul_path(
    b: int, m: int, n: int, r: int, nnz: int, device: torch.device | str = "cpu"
) -> str:
    """The path ``sl_matmul`` takes for ``b`` tokens of these sizes under the current config."""
    return _ops.matmul_path(b, m, n, r, nnz, torch.device(device))


# ---- fake kernels ---------------------------------------------------------------
# Every op with tensor arguments has its fake (meta) kernel in C++
# (csrc/meta.cpp), running the argument checks of the real kernels. This one
# has none: it only creates tensors.


@torch.library.register_fake("sltrain::random_support")
def _(m, n, nnz, seed, device=None):
    # The C++ op checks the arguments; on the meta device it allocates nothing
    # and reads nothing, so running it outside the fake mode costs nothing.
    with _disable_current_modes():
        _ops.random_support(m, n, nnz, seed, torch.device("meta"))
    return (
        torch.empty(m + 1, dtype=torch.int32, device=device),
        torch.empty(nnz, dtype=torch.int32, device=device),
    )


# ---- autograd -------------------------------------------------------------------


def _sl_matmul_setup_context(ctx, inputs, output):
    x, A, B, values, row_ptr, col_idx, scale = inputs[:7]
    ctx.save_for_backward(x, A, B, values, row_ptr, col_idx)
    ctx.scale = scale


def _sl_matmul_backward(ctx, grad_y):
    x, A, B, values, row_ptr, col_idx = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    dx = dA = dB = dvalues = dbias = None
    if any(mask):
        grads = _ops.sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, ctx.scale, mask)
        dx, dA, dB, dvalues = (g if wanted else None for g, wanted in zip(grads, mask))
    # needs_input_grad has an entry per argument passed: no bias entry without one.
    if len(ctx.needs_input_grad) > 7 and ctx.needs_input_grad[7]:
        dbias = grad_y.sum(tuple(range(grad_y.dim() - 1)))
    return (dx, dA, dB, dvalues, None, None, None, dbias)[: len(ctx.needs_input_grad)]


torch.library.register_autograd(
    "sltrain::sl_matmul", _sl_matmul_backward, setup_context=_sl_matmul_setup_context
)
