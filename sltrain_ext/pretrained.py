"""Saving and loading SLTrain models: weights (factors, sparse values and the
support: int32 row pointers, uint16 or int32 columns) as safetensors, plus a small JSON of how the model was built."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import files
from .configs import LlamaConfig
from .convert import convert
from .llama import LlamaForCausalLM

__all__ = ["save_pretrained", "load_pretrained"]

WEIGHTS = "model.safetensors"
CONFIG = "sltrain_config.json"
# 2: the configuration (convert settings, alpha included, and the LLaMA config)
# is covered by a checksum too. The version is written both in the JSON and in
# the weights' header, and the higher one counts, so that removing it takes
# editing both files. Version 1 (in neither) covered the tensors only: such a
# directory loads with its tensors verified and a warning that its
# configuration is not.
FORMAT_VERSION = 2


def save_pretrained(model: nn.Module, directory: str | Path,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes ``model.safetensors`` and ``sltrain_config.json`` under ``directory``.

    ``state_dict`` replaces ``model.state_dict()``, e.g. the full state dict of
    a sharded model (``torch.distributed.checkpoint.state_dict.get_model_state_dict``).

    The JSON holds the ``convert`` settings (rank, density, alpha, seed and the
    converted module names) and, for this package's ``LlamaForCausalLM``, its
    config, so that ``load_pretrained(directory)`` rebuilds the model alone;
    and a SHA-256 of every tensor and of that configuration. Both files get
    the mode a new file gets (0644 under the usual umask 022).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "sltrain": getattr(model, "sltrain_settings", None),
        "llama_config": dataclasses.asdict(config) if isinstance(config, LlamaConfig) else None,
    }
    state = model.state_dict() if state_dict is None else state_dict
    state = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    meta["checksums"] = {name: _checksum(tensor) for name, tensor in state.items()}
    meta["config_checksum"] = _config_checksum(meta)
    # Both files are written beside the old ones first, so that a save that
    # fails (a full disk) leaves a model saved here before whole.
    try:
        with files.replacing_together([directory / WEIGHTS, directory / CONFIG]) as (weights, config_file):
            save_file(state, str(weights), metadata={"format": "pt", "sltrain_format_version": str(FORMAT_VERSION)})
            weights.chmod(_new_file_mode())  # safetensors writes 0600 whatever the umask
            config_file.write_text(json.dumps(meta, indent=2) + "\n")
    except Exception as error:
        if "No space left on device" not in str(error) and getattr(error, "errno", None) != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, f"could not save the model in {directory}: the disk is full "
                                    f"({shutil.disk_usage(directory).free / 1e6:.1f} MB free, the weights need "
                                    f"{sum(t.nbytes for t in state.values()) / 1e6:.1f} MB); a model saved "
                                    "there before is unchanged") from error
    return directory


def load_pretrained(directory: str | Path, model: nn.Module | None = None,
                    device: torch.device | str = "cpu", *, verify: bool = True) -> nn.Module:
    """Loads what ``save_pretrained`` wrote, exactly.

    Without ``model`` the directory must hold a ``LlamaForCausalLM`` of this
    package, which is rebuilt from its config. Otherwise pass the dense model
    the SL model was converted from (freshly built, any weights): it is
    converted with the saved settings and then loaded. Every tensor and the
    configuration are checked against their SHA-256 in ``sltrain_config.json``
    (a missing checksum is an error); ``verify=False`` loads a directory
    without them, e.g. after a deliberate edit. The support is validated on
    load either way.
    """
    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} does not exist: not a save_pretrained directory")
    meta = _read_config(directory / CONFIG)
    if verify:
        _verify_config(meta, directory)
    try:
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
    except (KeyError, TypeError) as error:
        raise ValueError(f"{directory / CONFIG}: malformed configuration ({type(error).__name__}: {error})") from None
    state = load_file(str(directory / WEIGHTS), device=str(device))
    if verify:
        _verify_checksums(state, meta["checksums"], directory)
    model.load_state_dict(state)
    return model


def _read_config(path: Path) -> dict[str, Any]:
    """sltrain_config.json as a dict with the keys every version has; a
    ValueError naming the file otherwise."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    absent = [key for key in ("sltrain", "llama_config") if key not in meta]
    if absent:
        raise ValueError(f"{path}: malformed configuration, missing {', '.join(map(repr, absent))}")
    return meta


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process's umask
    (read from /proc where it can be, since setting it to read it is not
    thread-safe)."""
    try:
        match = re.search(r"^Umask:\s+([0-7]+)$", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        umask = int(match.group(1), 8)
    else:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _checksum(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (safetensors has no checksum)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _config_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of what rebuilds the model (the convert settings and the LLaMA
    config) in a canonical JSON form: JSON floats round-trip exactly."""
    covered = {"sltrain": meta["sltrain"], "llama_config": meta["llama_config"]}
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def _verify_config(meta: dict[str, Any], directory: Path) -> None:
    """Raises ValueError unless the configuration matches its checksum; a
    directory without checksums is refused (``verify=False`` loads it)."""
    if not isinstance(meta.get("checksums"), dict):
        raise ValueError(f"{directory / CONFIG} has no checksums: the files cannot be verified; "
                         "load_pretrained(..., verify=False) loads them unverified")
    with safe_open(str(directory / WEIGHTS), "pt") as weights:
        header_version = (weights.metadata() or {}).get("sltrain_format_version", "1")
    try:
        version = max(int(header_version), int(meta.get("format_version", 1)))
    except (TypeError, ValueError):
        raise ValueError(f"{directory}: unreadable format version ({header_version!r} in {WEIGHTS}, "
                         f"{meta.get('format_version')!r} in {CONFIG})") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"{directory} was saved in format {version} by a newer sltrain_ext; this one reads up to "
                         f"{FORMAT_VERSION}")
    if version < 2:
        warnings.warn(f"{directory} was saved by sltrain_ext before its configuration had a checksum: "
                      "its tensors are verified, its configuration (alpha, rms_norm_eps...) is not; "
                      "save_pretrained it again to cover it", UserWarning, stacklevel=3)
        return
    if meta.get("config_checksum") != _config_checksum(meta):
        raise ValueError(f"{directory / CONFIG}: the configuration (convert settings, alpha, model config) does "
                         "not match its checksum: the file is damaged or was modified"
                         + ("" if "config_checksum" in meta else " (its `config_checksum` is missing)"))


def _verify_checksums(state: dict[str, torch.Tensor], checksums: dict[str, str], directory: Path) -> None:
    """Raises ValueError naming the first tensor that differs from what was saved."""
    if set(state) != set(checksums):
        missing, extra = sorted(set(checksums) - set(state)), sorted(set(state) - set(checksums))
        raise ValueError(f"{directory / WEIGHTS} does not hold the tensors {CONFIG} lists: "
                         f"missing {missing}, unexpected {extra}")
    for name, tensor in state.items():
        if _checksum(tensor) != checksums[name]:
            raise ValueError(f"{directory / WEIGHTS}: tensor `{name}` does not match its checksum in "
                             f"{CONFIG}: the file is damaged or was modified")
