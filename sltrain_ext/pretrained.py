"""Saving and loading SLTrain models: weights (factors, sparse values and the
int32 support) as safetensors, plus a small JSON of how the model was built."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .configs import LlamaConfig
from .convert import convert
from .llama import LlamaForCausalLM

__all__ = ["save_pretrained", "load_pretrained"]

WEIGHTS = "model.safetensors"
CONFIG = "sltrain_config.json"


def save_pretrained(model: nn.Module, directory: str | Path,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes ``model.safetensors`` and ``sltrain_config.json`` under ``directory``.

    ``state_dict`` replaces ``model.state_dict()``, e.g. the full state dict of
    a sharded model (``torch.distributed.checkpoint.state_dict.get_model_state_dict``).

    The JSON holds the ``convert`` settings (rank, density, alpha, seed and the
    converted module names) and, for this package's ``LlamaForCausalLM``, its
    config, so that ``load_pretrained(directory)`` rebuilds the model alone.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    meta = {
        "sltrain": getattr(model, "sltrain_settings", None),
        "llama_config": dataclasses.asdict(config) if isinstance(config, LlamaConfig) else None,
    }
    state = model.state_dict() if state_dict is None else state_dict
    state = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    meta["checksums"] = {name: _checksum(tensor) for name, tensor in state.items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_pretrained(directory: str | Path, model: nn.Module | None = None,
                    device: torch.device | str = "cpu") -> nn.Module:
    """Loads what ``save_pretrained`` wrote, exactly.

    Without ``model`` the directory must hold a ``LlamaForCausalLM`` of this
    package, which is rebuilt from its config. Otherwise pass the dense model
    the SL model was converted from (freshly built, any weights): it is
    converted with the saved settings and then loaded. The support is
    validated on load.
    """
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} does not exist: not a save_pretrained directory")
    meta = json.loads((directory / CONFIG).read_text())
    if model is None:
        if meta["llama_config"] is None:
            raise ValueError(f"{directory} holds no LlamaForCausalLM config (a converted model of another "
                             "class): call load_pretrained(directory, model=...) with a freshly built dense "
                             "instance of the model it was converted from")
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**meta["llama_config"]))
    settings = meta["sltrain"]
    if settings is not None and not hasattr(model, "sltrain_settings"):
        names = set(settings["target_modules"])
        convert(model, rank=settings["rank"], density=settings["density"], alpha=settings["alpha"],
                seed=settings["seed"], target_modules=lambda name, module: name in names)
    state = load_file(str(directory / WEIGHTS), device=str(device))
    _verify_checksums(state, meta.get("checksums"), directory)
    model.load_state_dict(state)
    return model


def _checksum(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (safetensors has no checksum)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _verify_checksums(state: dict[str, torch.Tensor], checksums: dict[str, str] | None, directory: Path) -> None:
    """Raises ValueError naming the first tensor that differs from what was saved.
    Directories written before checksums existed (no "checksums" entry) load unverified."""
    if checksums is None:
        return
    if set(state) != set(checksums):
        missing, extra = sorted(set(checksums) - set(state)), sorted(set(state) - set(checksums))
        raise ValueError(f"{directory / WEIGHTS} does not hold the tensors {CONFIG} lists: "
                         f"missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        if _checksum(tensor) != checksums[name]:
            raise ValueError(f"{directory / WEIGHTS}: tensor `{name}` does not match its checksum in "
                             f"{CONFIG}: the file is damaged or was modified")
