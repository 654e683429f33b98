"""``SLLinear``: a drop-in ``nn.Linear`` whose weight is ``s * B @ A + S``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .ops import (
    densify,
    nnz_for_density,
    random_support,
    sl_matmul,
    validate_support,
)

__all__ = ["SLLinear", "LowRankLinear"]

# The widest input whose column indices SLLinear keeps in 16 bits.
COMPACT_INDEX_LIMIT = 1 << 16


def check_alpha(alpha: float, rank: int, dtype: torch.dtype | None) -> None:
    """Raises ValueError naming `alpha` unless it is a finite number whose scale
    ``alpha / rank`` the kernels can represent in the factors' dtype (they
    would refuse the scale only at the first forward)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a finite number, got {alpha!r}")
    dtype = dtype or torch.get_default_dtype()
    largest = torch.finfo(dtype).max
    if abs(alpha / rank) > largest:
        raise ValueError(f"`alpha` = {alpha} gives the scale alpha / rank = {alpha / rank:g}, beyond {dtype}'s "
                         f"largest value {largest:g}")


# The inference op itself rather than ops.sl_matmul_inference, its Python
# wrapper: one call frame less per layer call.
_inference_op = torch.ops.sltrain.sl_matmul_inference.default


_AUTOCAST_AVAILABLE: dict[str, bool] = {}  # by device type: asked at every layer call


@torch.compiler.assume_constant_result
def _has_autocast(device_type: str) -> bool:
    """Whether autocast exists for this device type (the meta device has none:
    asking it whether autocast is enabled would raise). A property of the
    device type, so torch.compile takes it as a constant: dynamo in torch 2.11
    cannot trace ``torch.amp.is_autocast_available`` itself, nor a
    ``functools.cache`` around this function (it traces into the wrapper),
    hence the plain dict. Whether autocast is *enabled* is still asked inside
    the traced code, where dynamo guards it."""
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return available


class _FactoredLinear(nn.Module):
    """What SLLinear and LowRankLinear share: sizes, the factors ``A`` and ``B``
    with SLTrain's initialisation, the bias and the scale ``alpha / rank``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, bias: bool,
                 factory: dict[str, Any]) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            # bool is an int to Python, never a size here.
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        check_alpha(alpha, rank, factory.get("dtype"))
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = float(alpha)
        self.A = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.B = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, all or nothing also for missing and
        unexpected keys under ``strict``: torch writes the keys that fit and
        only then reports the others. (A model holding this layer is loaded by
        torch's own method, which reports them after writing its other layers.)"""
        if strict:
            own = set(self.state_dict())
            missing, unexpected = sorted(own - set(state_dict)), sorted(set(state_dict) - own)
            if missing or unexpected:
                raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: missing key(s) "
                                   f"{missing}, unexpected key(s) {unexpected}; nothing was loaded")
        return super().load_state_dict(state_dict, strict, assign)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.zeros_(self.B)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)


class SLLinear(_FactoredLinear):
    """Applies ``y = x @ (s * B @ A + S).T + bias`` with ``s = alpha / rank``.

    ``B`` (``out x rank``, zeros at init) and ``A`` (``rank x in``,
    Kaiming-uniform) are the low-rank factors; ``S`` is sparse with a support of
    ``round(density * out * in)`` positions drawn uniformly at random once (from
    ``seed``) and kept in CSR buffers: ``row_ptr`` int32, ``col_idx`` uint16
    where ``in_features <= 65536`` (half the bytes of int32, which wider layers
    keep). Only its ``values`` train. Shaped like ``nn.Linear``: input
    ``[..., in_features]``, output ``[..., out_features]``.

    Args:
        in_features, out_features: sizes of each input and output sample.
        rank: inner dimension ``r`` of the low-rank product.
        density: fraction of the ``out x in`` positions in the sparse support, in (0, 1].
        alpha: low-rank scale numerator, ``s = alpha / rank``.
        bias: learn an additive bias, as ``nn.Linear``.
        seed: seed of the support; ``None`` draws one from torch's global RNG, so
            ``torch.manual_seed`` makes the model reproducible.
    """

    __constants__ = ["in_features", "out_features", "rank", "density", "alpha", "seed"]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        density: float,
        alpha: float = 32.0,
        bias: bool = True,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(in_features, out_features, rank, alpha, bias, factory)
        nnz = nnz_for_density(out_features, in_features, density)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.density = density
        self.seed = seed
        row_ptr, col_idx = random_support(out_features, in_features, nnz, seed, device=device)
        if in_features <= COMPACT_INDEX_LIMIT:
            col_idx = col_idx.to(torch.uint16)
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("col_idx", col_idx)
        self.values = nn.Parameter(torch.empty(nnz, **factory))
        self.reset_parameters()

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.values, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # Parameters and buffers straight from nn.Module's dicts: its
        # __getattr__ costs about a microsecond a name, which at decode sizes
        # is a tenth of the layer's whole time (benchmarks/bench_generate.py).
        parameters, buffers = self._parameters, self._buffers
        A, B, values = parameters["A"], parameters["B"], parameters["values"]
        bias = parameters.get("bias")  # None: no bias (a plain attribute then, not a parameter)
        row_ptr, col_idx = buffers["row_ptr"], buffers["col_idx"]
        device_type = x.device.type
        if _has_autocast(device_type) and torch.is_autocast_enabled(device_type):
            # Autocast does not know this op: cast as it would cast nn.Linear.
            dtype = torch.get_autocast_dtype(device_type)
            x, A, B, values = x.to(dtype), A.to(dtype), B.to(dtype), values.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        if torch.is_grad_enabled():
            return sl_matmul(x, A, B, values, row_ptr, col_idx, self.scale, bias)
        # Inference: one C++ op, no autograd formula.
        return _inference_op(x, A, B, values, row_ptr, col_idx, self.scale, bias)

    def __getstate__(self) -> dict[str, Any]:
        # Plain pickle cannot rebuild a uint16 tensor (torch's unpickler asks its
        # storage for a typed dtype that uint16 lacks; torch.save and deepcopy
        # are fine): the columns travel as int32 and are narrowed back on load.
        state = self.__dict__.copy()
        columns = self._buffers["col_idx"]
        if columns is not None and columns.dtype == torch.uint16:
            state["_buffers"] = {**self._buffers, "col_idx": columns.to(torch.int32)}
            state["_pickled_wide_columns"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        narrow = state.pop("_pickled_wide_columns", False)
        super().__setstate__(state)
        if narrow:
            self._buffers["col_idx"] = self._buffers["col_idx"].to(torch.uint16)

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        """The ``out x in`` weight ``s * B @ A + S`` this layer applies."""
        return densify(self.A, self.B, self.values, self.row_ptr, self.col_idx, self.scale)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, density={self.density}, nnz={self.nnz}, alpha={self.alpha}, "
            f"bias={self.bias is not None}, seed={self.seed}"
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # All or nothing: every incoming tensor of this layer is checked before
        # any is written, so a bad state leaves the layer as it was (torch
        # would copy the tensors that fit and only then report the others).
        own = {**self._parameters, **{k: v for k, v in self._buffers.items()
                                      if k not in self._non_persistent_buffers_set}}
        incoming = {name: state_dict[prefix + name] for name in own if prefix + name in state_dict}
        mismatched = [f"size mismatch for {prefix}{name}: copying a param with shape {tuple(value.shape)} "
                      f"from checkpoint, the shape in current model is {tuple(own[name].shape)}."
                      for name, value in incoming.items()
                      if own[name] is not None and value.shape != own[name].shape]
        if mismatched:
            error_msgs.extend(mismatched)
            return
        if "row_ptr" in incoming or "col_idx" in incoming:
            # The support that would result, also when only one half is given,
            # gets the O(nnz) check: a corrupt one must never reach the kernels.
            row_ptr = incoming.get("row_ptr", self.row_ptr)
            col_idx = incoming.get("col_idx", self.col_idx)
            try:
                validate_support(row_ptr, col_idx, self.out_features, self.in_features)
            except (ValueError, TypeError) as error:
                raise type(error)(f"{prefix}row_ptr and {prefix}col_idx: invalid support in state_dict: "
                                  f"{error}") from None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class LowRankLinear(_FactoredLinear):
    """``y = x @ (s * B @ A).T + bias``: the pure low-rank baseline of the
    SLTrain paper, initialised as ``SLLinear``'s low-rank part."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float = 32.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, rank, alpha, bias, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.A) * self.scale, self.B, self.bias)

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        return self.scale * self.B @ self.A

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, bias={self.bias is not None}")
