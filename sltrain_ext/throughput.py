"""What a training step costs: the model flops a token takes for what each
method really computes, the device's dense bf16 peak to measure them
against (MFU), and where a step's memory goes.

Flops count the matrix products of a training step (forward and backward,
2 flops a multiply-add), as the kernels run them:

* ``nn.Linear`` (m x n): ``6mn`` a token.
* ``LowRankLinear`` (rank r): two thin products forward, four backward:
  ``6r(m + n)`` a token.
* ``SLLinear`` on the path ``sl_matmul`` takes for the step's micro-batch of
  ``b`` tokens (``ops.matmul_path``, the cost model of
  csrc/common/cost_model.h):
  - materialised: ``W = s B A + S`` built forward and again backward
    (``2mnr`` each), three ``b x m x n`` GEMMs (``6bmn``), and ``dA``, ``dB``
    from the ``dW`` chunks (``4mnr``) or from the factors (``4br(m + n)``),
    whichever is cheaper; so the per-token figure falls as ``b`` grows;
  - factored: ``2r(3m + 4n)`` dense flops a token and three sparse passes
    over the support (SpMM, its transpose, SDDMM): ``6 nnz``.
* attention scores and their weighted sum, ``QK^T`` and ``AV``: ``12 T h``
  a token per layer for ``T`` positions and width ``h``, the full ``T x T``
  product (a causal kernel that skips the masked half does less; MFU
  figures conventionally count it whole, as PaLM's appendix does).

Element-wise work (norms, rotary, softmax, SiLU) and the recomputation of
--checkpointing are left out, as MFU conventionally leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from . import ops
from .nn import LowRankLinear, SLLinear

__all__ = ["DENSE_BF16_PEAK_FLOPS", "MemoryLedger", "StepCosts", "device_peak_flops", "linear_flops_per_token",
           "step_costs", "training_flops_per_token"]

# Dense (not 2:4 sparse) bf16 tensor-core peaks from the vendors' data sheets,
# matched as substrings of torch.cuda.get_device_name, most specific first.
DENSE_BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (HBM3); "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),
    ("A100", 312e12),
)


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in flop/s; None on the CPU (no meaningful
    tensor-core peak) and on a GPU the table does not know."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DENSE_BF16_PEAK_FLOPS if key in name), None)


def linear_flops_per_token(layer: nn.Module, tokens_per_call: int, device: torch.device) -> float:
    """Forward + backward flops a token of one linear layer (see the module
    docstring); `tokens_per_call` is the micro-batch the layer sees at once."""
    if isinstance(layer, SLLinear):
        m, n, r, nnz, b = layer.out_features, layer.in_features, layer.rank, layer.nnz, tokens_per_call
        if ops.matmul_path(b, m, n, r, nnz, device) == "factored":
            return 2 * r * (3 * m + 4 * n) + 6 * nnz
        factor_grads = min(4 * m * n * r, 4 * b * r * (m + n))
        return 6 * m * n + (4 * m * n * r + factor_grads) / b
    if isinstance(layer, LowRankLinear):
        return 6 * layer.rank * (layer.out_features + layer.in_features)
    if isinstance(layer, nn.Linear):
        return 6 * layer.out_features * layer.in_features
    raise TypeError(f"not a linear layer: {type(layer).__name__}")


def training_flops_per_token(model: nn.Module, tokens_per_call: int, seq_len: int, device: torch.device) -> float:
    """Model flops a trained token costs: every linear layer of `model` (a
    LlamaForCausalLM) plus attention over `seq_len` positions."""
    linears = (m for m in model.modules() if isinstance(m, (nn.Linear, LowRankLinear, SLLinear)))
    config = model.config
    attention = 12 * seq_len * config.hidden_size * config.num_hidden_layers
    return sum(linear_flops_per_token(layer, tokens_per_call, device) for layer in linears) + attention


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds for `tensors` (its shard of a DTensor)."""
    total = 0
    for tensor in tensors:
        local = getattr(tensor, "_local_tensor", tensor)
        total += local.numel() * local.element_size()
    return total


def _state_tensors(state: object) -> Iterable[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _state_tensors(value)


@dataclass
class MemoryLedger:
    """Where a step's memory goes: the model's parameters and buffers, the
    gradients held after backward (with --per-layer only the few not yet
    freed), the optimizer's states, and on a GPU the rest of the step's peak
    allocation (activations, workspaces)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    gradient_bytes: int = 0

    def start_step(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def after_backward(self) -> None:
        self.gradient_bytes = _bytes(p.grad for p in self.model.parameters() if p.grad is not None)

    def breakdown_gib(self) -> dict[str, float | None]:
        """The step's peak and its parts in GiB; the peak and the rest are
        None on the CPU, whose allocator reports no peak."""
        parameters = _bytes(self.model.parameters()) + _bytes(self.model.buffers())
        states = _bytes(t for state in self.optimizer.state.values() for t in _state_tensors(state))
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        known = parameters + self.gradient_bytes + states
        return {"peak_memory_gib": None if peak is None else peak / 2**30,
                "memory_parameters_gib": parameters / 2**30, "memory_gradients_gib": self.gradient_bytes / 2**30,
                "memory_optimizer_gib": states / 2**30,
                "memory_other_gib": None if peak is None else max(0, peak - known) / 2**30}


@dataclass
class StepCosts:
    """What a training step of one method costs, for its records: the tokens
    it trains on over all processes, their model flops, the peak of all the
    processes' devices (None where there is none to compare with) and its
    memory."""
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float | None
    memory: MemoryLedger

    def mfu(self, tokens_per_s: float) -> float | None:
        return None if self.peak_flops is None else self.flops_per_token * tokens_per_s / self.peak_flops

    def peak_note(self) -> str:
        """Why there is no MFU: the CPU, or a GPU missing from the table."""
        device = self.memory.device
        if device.type != "cuda":
            return "n/a (CPU)"
        return f"n/a ({torch.cuda.get_device_name(device)}: no peak in throughput.DENSE_BF16_PEAK_FLOPS)"


def step_costs(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, tokens_per_step: int,
               tokens_per_call: int, seq_len: int, world_size: int) -> StepCosts:
    peak = device_peak_flops(device)
    return StepCosts(tokens_per_step, training_flops_per_token(model, tokens_per_call, seq_len, device),
                     None if peak is None else peak * world_size, MemoryLedger(model, optimizer, device))
