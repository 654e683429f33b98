"""Turning a dense model into an SLTrain one (``convert``) and back (``merge``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .nn import LowRankLinear, SLLinear

__all__ = ["ConversionReport", "convert", "merge"]

Target = Sequence[str] | Callable[[str, nn.Linear], bool]


@dataclass
class ModuleConversion:
    name: str
    out_features: int
    in_features: int
    rank: int
    nnz: int
    dense_parameters: int
    parameters: int


@dataclass
class ConversionReport:
    """What ``convert`` replaced, and the trainable parameters before and after."""

    modules: list[ModuleConversion] = field(default_factory=list)
    trainable_before: int = 0
    trainable_after: int = 0
    settings: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{'module':<40} {'shape (out x in)':>18} {'rank':>6} {'nnz':>10} {'params':>12}"]
        for m in self.modules:
            lines.append(f"{m.name:<40} {f'{m.out_features} x {m.in_features}':>18} {m.rank:>6} {m.nnz:>10,} "
                         f"{m.parameters:>12,}")
        lines.append(f"{len(self.modules)} linear layers converted; trainable parameters "
                     f"{self.trainable_before:,} -> {self.trainable_after:,} "
                     f"({100 * self.trainable_after / max(self.trainable_before, 1):.1f} %)")
        return "\n".join(lines)


def _count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _matcher(target_modules: Target) -> Callable[[str, nn.Linear], bool]:
    if callable(target_modules):
        return target_modules
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    keys = tuple(target_modules)
    if not keys:
        raise ValueError("`target_modules` is empty: nothing would be converted")
    return lambda name, module: any(key in name for key in keys)


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Puts `module` where the submodule called `name` (a qualified name) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def convert(
    model: nn.Module,
    *,
    rank: int,
    density: float | None,
    alpha: float = 32.0,
    target_modules: Target = ("attn", "mlp"),
    seed: int = 0,
) -> ConversionReport:
    """Replaces, in place, every ``nn.Linear`` of ``model`` whose qualified name
    contains one of ``target_modules`` (or for which the callable
    ``target_modules(name, module)`` is true) by an ``SLLinear`` of the same
    shape, bias, device and dtype.

    ``density=None`` converts to the pure low-rank baseline (``LowRankLinear``).
    Layer ``i`` (in module order) draws its support from ``seed + i``. Modules
    are replaced one at a time, so no dense weight exists twice at once. The
    new layers start from SLTrain's initialisation, not from the dense weights.
    Returns a ``ConversionReport``; the settings are also kept on the model as
    ``model.sltrain_settings`` for ``save_pretrained``.
    """
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    matches = _matcher(target_modules)
    report = ConversionReport(trainable_before=_count_trainable(model))
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and matches(name, module)]
    if not targets:
        raise ValueError(f"no nn.Linear in the model matches `target_modules` = {target_modules!r}")
    for name, dense in targets:
        bound = min(dense.in_features, dense.out_features)
        if rank > bound:
            raise ValueError(f"`rank` = {rank} exceeds min(in, out) = {bound} of `{name}` "
                             f"({dense.out_features} x {dense.in_features}): the factors would hold more "
                             "parameters than the dense weight")
    for index, (name, dense) in enumerate(targets):
        factory = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        bias = dense.bias is not None
        if density is None:
            replacement = LowRankLinear(dense.in_features, dense.out_features, rank, alpha, bias, **factory)
            nnz = 0
        else:
            replacement = SLLinear(dense.in_features, dense.out_features, rank, density, alpha, bias,
                                   seed=seed + index, **factory)
            nnz = replacement.nnz
        _replace_module(model, name, replacement)
        report.modules.append(ModuleConversion(
            name, dense.out_features, dense.in_features, rank, nnz,
            sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in replacement.parameters())))
        del dense
    report.trainable_after = _count_trainable(model)
    report.settings = {"rank": rank, "density": density, "alpha": alpha, "seed": seed,
                       "target_modules": [m.name for m in report.modules]}
    model.sltrain_settings = report.settings
    return report


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Replaces, in place, every ``SLLinear``/``LowRankLinear`` by the ``nn.Linear``
    with ``W = s * B @ A + S`` (exact to the dtype's rounding) and its bias:
    for export, inference and ``save_pretrained`` of other libraries."""
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (SLLinear, LowRankLinear))]
    for name, layer in targets:
        weight = layer.dense_weight()
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        dense.weight.copy_(weight)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        _replace_module(model, name, dense)
    if hasattr(model, "sltrain_settings"):
        del model.sltrain_settings
    return model
