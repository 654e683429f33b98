"""Turning a dense model into an SLTrain one (``convert``) and back (``merge``)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .nn import LowRankLinear, SLLinear, check_alpha
from .ops import nnz_for_density

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
    aliases: list[str] = field(default_factory=list)  # further names of a shared layer, converted with it


@dataclass
class ConversionReport:
    """What ``convert`` replaced, the ``nn.Linear`` layers it left dense
    (``skipped``: no name matches ``target_modules``), and the trainable
    parameters before and after."""

    modules: list[ModuleConversion] = field(default_factory=list)
    trainable_before: int = 0
    trainable_after: int = 0
    settings: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'module':<40} {'shape (out x in)':>18} {'rank':>6} {'nnz':>10} {'params':>12}"]
        for m in self.modules:
            lines.append(f"{m.name:<40} {f'{m.out_features} x {m.in_features}':>18} {m.rank:>6} {m.nnz:>10,} "
                         f"{m.parameters:>12,}")
            lines.extend(f"  (also named {alias})" for alias in m.aliases)
        lines.append(f"{len(self.modules)} linear layers converted; trainable parameters "
                     f"{self.trainable_before:,} -> {self.trainable_after:,} "
                     f"({100 * self.trainable_after / max(self.trainable_before, 1):.1f} %)")
        if self.skipped:
            lines.append(f"{len(self.skipped)} nn.Linear layers left dense (no `target_modules` match): "
                         f"{_summarise_names(self.skipped)}")
        return "\n".join(lines)


def _summarise_names(names: list[str]) -> str:
    """`a.0.fc1, a.1.fc1, lm_head` as `a.*.fc1 (x2), lm_head`: one entry per
    pattern of layer numbers, so a deep model's list stays one line."""
    patterns: dict[str, int] = {}
    for name in names:
        pattern = re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)
        patterns[pattern] = patterns.get(pattern, 0) + 1
    return ", ".join(p if count == 1 else f"{p} (x{count})" for p, count in patterns.items())


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


def _layers_of(model: nn.Module, kinds: type | tuple[type, ...]) -> dict[int, tuple[Any, list[str]]]:
    """Every layer of `model` of these kinds (by identity, in module order) with
    all the names it is registered under: a layer shared by two parents is one layer."""
    layers: dict[int, tuple[Any, list[str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, kinds):
            layers.setdefault(id(module), (module, []))[1].append(name)
    return layers


def _why_not_convertible(model: nn.Module, name: str, module: nn.Linear) -> str | None:
    """Why replacing `module` (at `name`) by an SLLinear would change what the model computes, if it would."""
    if name == "":
        return ("it is the model itself: convert replaces submodules in place and cannot replace the object you "
                "hold (wrap it, e.g. nn.Sequential(layer))")
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its `.weight` and `.bias` directly instead of calling it"
    if type(module).forward is not nn.Linear.forward:
        return f"{type(module).__qualname__} overrides forward: its own behaviour would be lost"
    return None


def _dense_layers_named(model: nn.Module, target_modules: Target) -> str:
    """The classes of the layers with a 2-D weight that are not nn.Linear but
    whose names match `target_modules` (GPT-2's `Conv1D`), to say why nothing
    was found. (A callable `target_modules` expects nn.Linear: it is not asked.)"""
    if callable(target_modules):
        return ""
    matches = _matcher(target_modules)
    kinds = sorted({type(module).__name__ for name, module in model.named_modules()
                    if not isinstance(module, nn.Linear) and isinstance(getattr(module, "weight", None), torch.Tensor)
                    and module.weight.dim() == 2 and matches(name, module)})
    return f" (the matching layers are {', '.join(kinds)}, not nn.Linear: convert handles nn.Linear only)" if kinds else ""


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
    Layer ``i`` (in module order) draws its support from ``seed + i``. A layer
    registered under several names is converted once and stays shared. All or
    nothing: every setting is checked for every layer before the first is
    replaced, and a failure while replacing puts the dense layers back. Layers
    that cannot be replaced faithfully (the model itself, the ``out_proj`` of
    an ``nn.MultiheadAttention``, a subclass with its own ``forward``) are
    refused, naming them. The new layers start from SLTrain's initialisation,
    not from the dense weights. Returns a ``ConversionReport`` (its
    ``skipped`` lists the ``nn.Linear`` layers left dense); the settings are
    also kept on the model as ``model.sltrain_settings`` for ``save_pretrained``.
    """
    if isinstance(rank, bool) or not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}")
    matches = _matcher(target_modules)
    report = ConversionReport(trainable_before=_count_trainable(model))
    targets, skipped = [], []
    for module, names in _layers_of(model, nn.Linear).values():
        (targets if any(matches(name, module) for name in names) else skipped).append((names, module))
    if not targets:
        raise ValueError(f"no nn.Linear in the model matches `target_modules` = {target_modules!r}"
                         f"{_dense_layers_named(model, target_modules)}")
    _check_targets(model, targets, rank, density, alpha, seed)
    replaced: list[tuple[list[str], nn.Linear]] = []
    try:
        for index, (names, dense) in enumerate(targets):
            replacement = _replacement(dense, rank, density, alpha, seed + index)
            for name in names:
                _replace_module(model, name, replacement)
            replaced.append((names, dense))
            report.modules.append(ModuleConversion(
                names[0], dense.out_features, dense.in_features, rank,
                replacement.nnz if isinstance(replacement, SLLinear) else 0,
                sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in replacement.parameters()),
                names[1:]))
    except BaseException:
        for names, dense in replaced:  # all or nothing: the model as it was
            for name in names:
                _replace_module(model, name, dense)
        raise
    report.trainable_after = _count_trainable(model)
    report.skipped = [name for names, _ in skipped for name in names]
    report.settings = {"rank": rank, "density": density, "alpha": alpha, "seed": seed,
                       "target_modules": [name for names, _ in targets for name in names]}
    model.sltrain_settings = report.settings
    _warn_on_foreign_save(model)
    return report


def _check_targets(model: nn.Module, targets: list[tuple[list[str], nn.Linear]], rank: int,
                   density: float | None, alpha: float, seed: int) -> None:
    """Everything that could fail while replacing, for every layer, before the first is replaced."""
    refused = []
    for names, module in targets:
        reasons = [why for name in names if (why := _why_not_convertible(model, name, module))]
        if reasons:
            refused.append(f"`{names[0]}`: {reasons[0]}")
    if refused:
        raise ValueError("convert cannot replace these layers faithfully; exclude them with `target_modules`:\n  "
                         + "\n  ".join(refused))
    if not (-(2**63) <= seed and seed + len(targets) - 1 < 2**63):
        raise ValueError(f"`seed` = {seed}: layer i draws its support from seed + i, and seed + {len(targets) - 1} "
                         "must be in [-2**63, 2**63) (an int64)")
    for names, dense in targets:
        bound = min(dense.in_features, dense.out_features)
        if rank > bound:
            raise ValueError(f"`rank` = {rank} exceeds min(in, out) = {bound} of `{names[0]}` "
                             f"({dense.out_features} x {dense.in_features}): the factors would hold more "
                             "parameters than the dense weight")
        check_alpha(alpha, rank, dense.weight.dtype)
        if density is not None:
            nnz = nnz_for_density(dense.out_features, dense.in_features, density)
            if nnz > 2**31 - 1:
                raise ValueError(f"`density` = {density} gives `{names[0]}` ({dense.out_features} x "
                                 f"{dense.in_features}) {nnz:,} nonzeros, beyond the 2^31 - 1 of int32 indices")


def _replacement(dense: nn.Linear, rank: int, density: float | None, alpha: float, seed: int) -> nn.Module:
    factory = {"device": dense.weight.device, "dtype": dense.weight.dtype}
    bias = dense.bias is not None
    if density is None:
        return LowRankLinear(dense.in_features, dense.out_features, rank, alpha, bias, **factory)
    return SLLinear(dense.in_features, dense.out_features, rank, density, alpha, bias, seed=seed, **factory)


_FOREIGN_SAVE_WARNING = (
    "{cls}.save_pretrained: this model holds SLTrain layers (SLLinear/LowRankLinear), which are saved as "
    "A, B, values, row_ptr and col_idx; {cls}.from_pretrained finds no `weight` for them and initialises those "
    "layers at random. Call sltrain_ext.merge(model) first to save dense weights, or keep the SLTrain form "
    "with sltrain_ext.save_pretrained(model, directory)")


class _WarnBeforeForeignSave:
    """Stands for a converted model's own ``save_pretrained`` (a Hugging Face
    model's), whose files load back as random dense layers: it warns, then
    calls the class's method. An object, not a closure, so that the model
    still pickles and a deep copy's wrapper calls the copy."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        if any(isinstance(m, (SLLinear, LowRankLinear)) for m in model.modules()):
            warnings.warn(_FOREIGN_SAVE_WARNING.format(cls=type(model).__name__), UserWarning, stacklevel=2)
        return type(model).save_pretrained(model, *args, **kwargs)


def _warn_on_foreign_save(model: nn.Module) -> None:
    """Makes a model with a ``save_pretrained`` of its own warn before using it (until ``merge``)."""
    if callable(getattr(type(model), "save_pretrained", None)):
        model.save_pretrained = _WarnBeforeForeignSave(model)


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Replaces, in place, every ``SLLinear``/``LowRankLinear`` by the ``nn.Linear``
    with ``W = s * B @ A + S`` (exact to the dtype's rounding) and its bias:
    for export, inference and ``save_pretrained`` of other libraries."""
    for layer, names in _layers_of(model, (SLLinear, LowRankLinear)).values():
        weight = layer.dense_weight()
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        dense.weight.copy_(weight)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
        for name in names:  # a shared layer stays shared
            _replace_module(model, name, dense)
    if hasattr(model, "sltrain_settings"):
        del model.sltrain_settings
    model.__dict__.pop("save_pretrained", None)  # convert's warning wrapper: the layers are dense again
    return model
