"""``SLAdamW``: AdamW on fused multi-tensor kernels, with per-layer updates and
8- or 4-bit states."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .ops import fused_adam4bit_, fused_adam8bit_, fused_adam_

__all__ = ["SLAdamW", "QUANT_BLOCK", "QUANT4_BLOCK"]

QUANT_BLOCK = 256  # elements per absmax of the 8-bit states (csrc/common/quant8.h)
QUANT4_BLOCK = 128  # elements per absmax of the 4-bit states (csrc/common/quant4.h)
_STATE_BITS = (4, 8, 32)


def _is_sharded(tensor: Tensor) -> bool:
    return torch.distributed.is_available() and isinstance(tensor, torch.distributed.tensor.DTensor)


def _local(tensor: Tensor) -> Tensor:
    """A DTensor's local shard (aliasing its storage, so in-place updates land), else the tensor."""
    return tensor.to_local() if _is_sharded(tensor) else tensor


def _clip_each(grads: list[Tensor], max_norm: float) -> None:
    """Scales each gradient to an L2 norm of at most `max_norm`, as
    ``clip_grad_norm_(param, max_norm)`` does parameter by parameter, with
    every norm of a device from one ``_foreach_norm`` call."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    for device_grads in by_device.values():
        # Coefficients in float32 (float64 for float64 gradients), whatever the
        # mix of gradient dtypes; each gradient is scaled in its own dtype.
        norms = torch.stack(torch._foreach_norm(device_grads))
        norms = norms if norms.dtype == torch.float64 else norms.float()
        coefficients = (max_norm / (norms + 1e-6)).clamp_(max=1.0)
        torch._foreach_mul_(device_grads, list(coefficients.unbind()))


_CODE_KEYS = ("exp_avg", "exp_avg_absmax", "sqrt_exp_avg_sq", "sqrt_exp_avg_sq_absmax")
_STATE_KEYS = {32: ("exp_avg", "exp_avg_sq"), 8: _CODE_KEYS, 4: _CODE_KEYS}
_FUSED_OPS = {32: fused_adam_, 8: fused_adam8bit_, 4: fused_adam4bit_}


def _bits_of(state: dict[str, Any]) -> int:
    """The precision of a parameter's moments, from their layout: 4-bit codes
    are bytes of two codes (uint8 `exp_avg`), 8-bit ones int8 (also what a
    loaded state whose `exp_avg` is not a tensor is checked as)."""
    if "sqrt_exp_avg_sq" not in state:
        return 32
    codes = state.get("exp_avg")
    return 4 if torch.is_tensor(codes) and codes.dtype == torch.uint8 else 8


class _Batch:
    """The parameters of one fused call (one device, step count and state
    precision) and their tensors in the op's argument order, gathered once."""

    def __init__(self, state_bits: int, step: int, step_tensor: Tensor | None = None) -> None:
        self.state_bits = state_bits
        self.step = step
        # Capturable: the step count in device memory, shared by every state of
        # the batch and advanced by the op itself (self.step is then unused).
        self.step_tensor = step_tensor
        self.params: list[Tensor] = []
        self.states: list[dict[str, Any]] = []
        self.state_lists: list[list[Tensor]] = [[] for _ in _STATE_KEYS[state_bits]]
        self.sharded = False

    def add(self, param: Tensor, state: dict[str, Any]) -> None:
        self.params.append(param)
        self.states.append(state)
        for bucket, key in zip(self.state_lists, _STATE_KEYS[self.state_bits]):
            bucket.append(state[key])
        self.sharded = self.sharded or _is_sharded(param)
        if self.step_tensor is not None:
            state["step"] = self.step_tensor

    def in_step(self) -> bool:
        """Whether every parameter is still at this batch's step count (an
        update through another plan, of a subset, moves some of them on)."""
        if self.step_tensor is not None:
            return all(state["step"] is self.step_tensor for state in self.states)
        return [state["step"] for state in self.states].count(self.step) == len(self.states)

    def advance(self) -> dict[str, Any]:
        """Moves the step count on; returns the op's step arguments for this step."""
        if self.step_tensor is not None:
            return {"step": 1, "step_tensor": self.step_tensor}  # the op adds 1 on the device
        self.step += 1
        for state in self.states:
            state["step"] = self.step
        return {"step": self.step}

    def lists(self) -> list[list[Tensor]]:
        """params, grads, then the states, as fused_adam_ / fused_adam8bit_ / fused_adam4bit_ take them.
        A plain parameter is passed itself, so a new `.data` is followed; FSDP2
        shards are looked up each time (each rank updates its own shard)."""
        lists = [self.params, [param.grad for param in self.params], *self.state_lists]
        if self.sharded:
            lists = [[_local(tensor) for tensor in bucket] for bucket in lists]
        return lists


class SLAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) for any parameters: SL factors, sparse
    values and ordinary dense weights alike.

    Parameters sharded by FSDP2 (``fully_shard``, DTensors) are updated shard
    by shard on each rank, with moments sharded like their parameter (32-bit
    states only).

    The update is ``torch.optim.AdamW``'s, applied by one multi-tensor
    ``torch.ops.sltrain.fused_adam_`` (or ``fused_adam8bit_``, ``fused_adam4bit_``) call per group,
    device, step count and state precision. Moments are float32 (float64 for
    float64 params), also for bfloat16 params.

    Args:
        params, lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        state_bits: 32, or 8 for block-quantised moments (a logarithmic int8
            code per element and one float32 absmax per 256 elements: 2 bytes of
            state per parameter instead of 8), or 4 (two 4-bit codes a byte and
            one float32 absmax per 128 elements: 1.06 bytes per parameter;
            ``csrc/common/quant4.h`` says which codes and why). Tensors with
            fewer than ``min_8bit_numel`` elements (norms, biases) keep 32-bit
            states, at 4 bits as at 8.
        per_layer: update each parameter inside ``backward()``, as soon as its
            gradient is complete, and free that gradient at once, so the
            model's gradients never coexist. ``step()`` then only runs the
            closure (and updates any gradient set by other means). Gradients
            are ``None`` after every update. Under FSDP2 the update runs on
            each rank's shard once the gradient is reduce-scattered; under
            ``DistributedDataParallel`` it would run before the all-reduce, on
            this rank's gradient alone, so do not combine the two.

            A non-finite gradient is found before it is used: each update
            first checks its own gradient (on a GPU, one synchronisation per
            parameter), and from the first non-finite one on no parameter of
            that optimizer step is updated. Parameters updated earlier in
            the same backward keep their update: ``updated_in_step`` and
            ``skipped_nonfinite`` tell the caller (``sltrain-train`` then
            goes back to its newest checkpoint and replays the steps since
            without the bad one), and ``discard_step()`` ends such a step;
            until then no parameter is updated and ``step()`` raises.
        max_grad_norm: clip each parameter's gradient to this L2 norm before
            its update (per parameter, in both modes: per-layer updates never
            see a global norm). ``None`` disables clipping.
        accumulation_steps: with ``per_layer``, how many backward passes each
            gradient accumulates over before the update (the last micro-batch's
            backward steps). Without ``per_layer``, call ``step()`` when you
            want, as usual.
        capturable: as ``torch.optim``'s: step counts live on the parameters'
            device (an int64 tensor per fused call, shared by its parameters'
            states) and a tensor ``lr`` is read on the device, so ``step()``
            never reads a value on the host and a CUDA graph of it, replayed
            N times, takes N steps. Run a few eager steps before capturing
            (they build the fused calls, which reads the step counts once).
            Not with ``per_layer`` (its non-finite check reads each gradient
            on the host).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        state_bits: int = 32,
        min_8bit_numel: int = 4096,
        per_layer: bool = False,
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
        capturable: bool = False,
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
        if state_bits not in _STATE_BITS:
            raise ValueError(f"`state_bits` must be 4, 8 or 32, got {state_bits}")
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"`max_grad_norm` must be > 0 or None, got {max_grad_norm}")
        if not (isinstance(accumulation_steps, int) and accumulation_steps >= 1):
            raise ValueError(f"`accumulation_steps` must be a positive int, got {accumulation_steps!r}")
        if capturable and per_layer:
            raise ValueError("`capturable` cannot be combined with per_layer=True: per-layer updates check "
                             "each gradient on the host")
        if accumulation_steps > 1 and not per_layer:
            raise ValueError("`accumulation_steps` applies to per_layer=True; otherwise call step() every k backward passes")
        # Read by add_param_group, which Optimizer.__init__ calls.
        self.per_layer = per_layer
        self.capturable = capturable
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        self.min_8bit_numel = min_8bit_numel
        self._group_of: dict[Tensor, dict[str, Any]] = {}
        # The fused calls of each list of parameters updated together (see _plan).
        self._plans: dict[tuple[int, ...], list[_Batch]] = {}
        self._plans_state: Any = None
        self._hooks: list[Any] = []
        # per_layer, for the optimizer step in progress: parameters updated,
        # and parameters not updated because a gradient of the step was non-finite.
        self.updated_in_step = 0
        self.skipped_nonfinite = 0
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "state_bits": state_bits}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["state_bits"] not in _STATE_BITS:
            raise ValueError(f"`state_bits` must be 4, 8 or 32, got {group['state_bits']}")
        for param in group["params"]:
            self._group_of[param] = group
            if self.per_layer and param.requires_grad:
                self._hooks.append(param.register_post_accumulate_grad_hook(self._per_layer_update))

    def _state_of(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            state["step"] = 0
            state["pending_backwards"] = 0  # per_layer: backward passes accumulated since the last update
            bits = group["state_bits"]
            if bits != 32 and param.numel() >= self.min_8bit_numel and param.dtype != torch.float64:
                if _is_sharded(param):
                    raise ValueError(f"{bits}-bit states are not supported for sharded (FSDP2/DTensor) parameters "
                                     "yet: their blocks would not survive resharding; use state_bits=32")
                layout = _code_layout(param.numel(), bits)
                for key, (dtype, entries) in layout.items():
                    state[key] = torch.zeros(entries, dtype=dtype, device=param.device)
            else:
                # zeros_like keeps a DTensor's sharding: states shard with their param.
                dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
                state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format)
                state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format)
        return state

    def _plan(self, group: dict[str, Any], params: list[Tensor]) -> list[_Batch]:
        """The fused calls that update `params`, built on first use and reused
        while they still describe the optimizer: the same parameters, the same
        state table (``load_state_dict`` replaces it) and every parameter of a
        batch still at the batch's step count."""
        if self._plans_state is not self.state:
            self._plans = {}
            self._plans_state = self.state
        key = tuple(map(id, params))  # the plan holds the params: their ids stay theirs
        batches = self._plans.get(key)
        if batches is None or not all(batch.in_step() for batch in batches):
            # One plan per parameter (per_layer) plus a few lists is the
            # normal count; gradients on ever-changing subsets would add
            # plans without bound: start over instead.
            if len(self._plans) > 2 * len(self._group_of) + 8:
                self._plans = {}
            batches = self._build_plan(group, params)
            self._plans[key] = batches
        return batches

    def _build_plan(self, group: dict[str, Any], params: list[Tensor]) -> list[_Batch]:
        batches: dict[tuple, _Batch] = {}
        for param in params:
            state = self._state_of(param, group)
            bits = _bits_of(state)
            step = int(state["step"])  # capturable: a device tensor, read while the plan is built
            batch_key = (param.device, step, bits)
            if batch_key not in batches:
                step_tensor = (torch.tensor(step, dtype=torch.int64, device=param.device)
                               if self.capturable else None)
                batches[batch_key] = _Batch(bits, step, step_tensor)
            batches[batch_key].add(param, state)
        return list(batches.values())

    @torch.no_grad()
    def _update(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """One AdamW step of `params` (all in `group`, all with a gradient)."""
        grads = [param.grad for param in params]
        if any(grad.is_sparse for grad in grads):
            raise RuntimeError("SLAdamW does not support sparse gradients")
        if self.max_grad_norm is not None:
            _clip_each(grads, self.max_grad_norm)
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        lr_tensor = lr if self.capturable and torch.is_tensor(lr) else None  # read on the device
        hyper = {"lr": 0.0 if lr_tensor is not None else float(lr), "lr_tensor": lr_tensor, "beta1": beta1,
                 "beta2": beta2, "eps": group["eps"], "weight_decay": group["weight_decay"]}
        for batch in self._plan(group, params):
            step = batch.advance()
            _FUSED_OPS[batch.state_bits](*batch.lists(), **hyper, **step, decoupled=True)

    def _per_layer_update(self, param: Tensor) -> None:
        group = self._group_of[param]
        state = self._state_of(param, group)
        state["pending_backwards"] += 1
        if state["pending_backwards"] < self.accumulation_steps:
            return
        state["pending_backwards"] = 0
        # Checked before anything is written (the local shard: no collective
        # inside a hook). Once one gradient of the step is non-finite, the
        # step is lost: no later parameter is updated either.
        if self.skipped_nonfinite or not bool(torch.isfinite(_local(param.grad)).all()):
            self.skipped_nonfinite += 1
        else:
            self._update(group, [param])
            self.updated_in_step += 1
        param.grad = None

    def discard_step(self) -> None:
        """Ends an optimizer step without updating anything more: frees every
        gradient and forgets the backward passes accumulated so far. With
        ``per_layer``, parameters updated in backward before this call keep
        their update (``updated_in_step`` counts them)."""
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None
                if "pending_backwards" in self.state.get(param, {}):
                    self.state[param]["pending_backwards"] = 0
        self.updated_in_step = self.skipped_nonfinite = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Updates every parameter that has a gradient. With ``per_layer``,
        backward has already updated those parameters and freed their
        gradients, so only gradients set by other means are left (call it once
        per optimizer step, after the last micro-batch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.skipped_nonfinite:
            raise RuntimeError(f"SLAdamW.step: {self.skipped_nonfinite} parameters of this step had a non-finite "
                               "gradient or followed one in backward and were not updated; call discard_step()")
        for group in self.param_groups:
            self._update(group, [p for p in group["params"] if p.grad is not None])
        self.updated_in_step = 0
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # All or nothing: every state is checked before any is loaded.
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            for param_id, param in zip(saved["params"], group["params"]):
                _check_loaded_state(param_id, param, state_dict["state"].get(param_id, {}))
        super().load_state_dict(state_dict)
        # torch.optim replaces the group dicts: per-layer updates must read the new ones.
        self._group_of = {param: group for group in self.param_groups for param in group["params"]}
        # torch.optim casts every floating state tensor to its param's dtype;
        # ours keep their own (float32 moments of bf16 params, 8- and 4-bit codes).
        saved_groups = state_dict["param_groups"]
        for saved, group in zip(saved_groups, self.param_groups):
            for param_id, param in zip(saved["params"], group["params"]):
                for key, value in state_dict["state"].get(param_id, {}).items():
                    if torch.is_tensor(value):
                        self.state[param][key] = value.to(device=param.device, copy=True)


def _code_layout(numel: int, bits: int) -> dict[str, tuple[torch.dtype, int]]:
    """(dtype, entries) of each state tensor of `numel` elements' 8- or 4-bit
    moments: a code per byte (8-bit, int8 for the signed `exp_avg`) or two
    (4-bit, uint8 bytes), and a float32 absmax per block."""
    block = QUANT4_BLOCK if bits == 4 else QUANT_BLOCK
    blocks = -(-numel // block)
    code_bytes = -(-numel // 2) if bits == 4 else numel
    return {"exp_avg": (torch.uint8 if bits == 4 else torch.int8, code_bytes),
            "exp_avg_absmax": (torch.float32, blocks),
            "sqrt_exp_avg_sq": (torch.uint8, code_bytes),
            "sqrt_exp_avg_sq_absmax": (torch.float32, blocks)}


def _check_loaded_state(param_id: Any, param: Tensor, state: dict[str, Any]) -> None:
    """Raises ValueError naming the parameter and the state unless `state` can
    drive `param`'s updates: every moment of its precision, of the size the
    kernels expect, finite, and second moments and absmaxes >= 0. A NaN or
    negative absmax (a damaged or hand-edited state_dict) would make the
    parameters non-finite, or flip their update, without a word."""
    if not state:
        return  # not stepped yet: the first update creates the moments
    where = f"SLAdamW.load_state_dict: parameter {param_id} (shape {tuple(param.shape)})"
    numel = param.numel()
    if "sqrt_exp_avg_sq" in state:  # 8- or 4-bit: (dtype, entries, >= 0) of each moment
        bits = _bits_of(state)
        layout = {key: (dtype, entries, key.endswith("absmax"))
                  for key, (dtype, entries) in _code_layout(numel, bits).items()}
    else:
        moment = torch.float64 if param.dtype == torch.float64 else torch.float32
        layout = {"exp_avg": (moment, numel, False), "exp_avg_sq": (moment, numel, True)}
    for key, (dtype, entries, non_negative) in layout.items():
        value = state.get(key)
        if not torch.is_tensor(value):
            raise ValueError(f"{where}: state `{key}` must be a tensor, got {type(value).__name__}")
        if value.dtype != dtype or value.numel() != entries:
            raise ValueError(f"{where}: state `{key}` must be {dtype} with {entries} entries, got {value.dtype} "
                             f"with {value.numel()}")
        if value.is_floating_point():
            local = _local(value).flatten()
            bad = ~torch.isfinite(local) | (local < 0) if non_negative else ~torch.isfinite(local)
            if bool(bad.any()):
                index = int(bad.nonzero()[0])
                requirement = "finite and >= 0" if non_negative else "finite"
                raise ValueError(f"{where}: state `{key}`[{index}] = {local[index].item()} must be {requirement} "
                                 "(a damaged optimizer state?)")
