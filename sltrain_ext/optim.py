"""``SLAdamW``: AdamW whose update is one ``fused_adam_`` call per param group."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .ops import fused_adam_

__all__ = ["SLAdamW"]


class SLAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) over any parameters: SL factors, sparse
    values and ordinary dense weights alike.

    Same hyper-parameters and update as ``torch.optim.AdamW``. Moments are kept
    in float32 (float64 for float64 params), also for bfloat16 params, and every
    group is updated by one multi-tensor ``torch.ops.sltrain.fused_adam_`` call
    per device and step count.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"`lr` must be >= 0, got {lr}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"`betas[{i}]` must be in [0, 1), got {beta}")
        if not eps > 0.0:
            raise ValueError(f"`eps` must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def _state_of(self, param: Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            batches: dict[tuple[torch.device, int], list[list[Tensor]]] = defaultdict(lambda: [[], [], [], []])
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("SLAdamW does not support sparse gradients")
                state = self._state_of(param)
                state["step"] += 1
                batch = batches[(param.device, state["step"])]
                for bucket, tensor in zip(batch, (param, param.grad, state["exp_avg"], state["exp_avg_sq"])):
                    bucket.append(tensor)
            beta1, beta2 = group["betas"]
            for (_, step), (params, grads, exp_avgs, exp_avg_sqs) in batches.items():
                fused_adam_(
                    params, grads, exp_avgs, exp_avg_sqs,
                    lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"], step=step, decoupled=True,
                )
        return loss
