"""Steps with a non-finite loss or gradient: how every rank agrees on them,
and how --per-layer, which updates inside backward, undoes one."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["on_every_rank", "gradients_finite", "ReplayWithout"]


def on_every_rank(flag: torch.Tensor | bool, device: torch.device) -> bool:
    """Whether a flag holds on every rank (a collective under torch.distributed)."""
    flag = torch.as_tensor(flag).to(device=device, dtype=torch.int32).reshape(1)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def gradients_finite(model: nn.Module, device: torch.device) -> bool:
    """Whether every gradient of the model is finite, agreed across ranks
    (FSDP2 shards the gradients, so each rank sees only its own)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    norms = torch._foreach_norm(grads) if grads else []
    return on_every_rank(torch.stack(norms).isfinite().all() if norms else True, device)


class ReplayWithout(Exception):
    """--per-layer: step `step` updated some parameters inside backward before
    a non-finite gradient showed. The run goes back to its newest checkpoint
    (or to step 0) and replays the steps since, skipping this one, which
    leaves the state a skipped step leaves; it still ends at step `end`."""

    def __init__(self, step: int, end: int) -> None:
        super().__init__(step, end)
        self.step, self.end = step, end
