"""Checkpoints of sltrain-train.

Each is a torch.distributed.checkpoint folder `<method>/checkpoints/step_N`
that every rank writes its own shards to (replicated tensors once), keyed by
parameter name so that any world size and --dist reads it back. A save goes
to `step_N.partial` and becomes `step_N` by one rename, after its
`manifest.json` (every file's size and SHA-256) is written last; then all but
the newest `keep` checkpoints are deleted. Resuming takes the newest
checkpoint whose manifest matches its files, and says which damaged ones it
passed over. A failed save (a full disk, say) leaves every earlier
checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .files import file_sha256
from .optim import SLAdamW

__all__ = ["find_checkpoint", "load_checkpoint", "save_checkpoint", "CheckpointError"]

MANIFEST = "manifest.json"
_STEP = re.compile(r"step_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the earlier ones are intact."""


def _trainer_state(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, steps: int,
                   data: dict[str, Any]) -> dict[str, Any]:
    # The data position as JSON text: one opaque value that any later field can join.
    return {"scheduler": scheduler.state_dict(), "step": step, "steps": steps, "data": json.dumps(data)}


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """torch.distributed.checkpoint warns on every call without a process
    group; a single process is a supported case here, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent")
        yield


def _is_leader() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _write_manifest(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder, or None if its manifest
    matches its files (names, sizes and checksums)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        return f"no readable {MANIFEST} ({error.__class__.__name__})"
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, not {expected['bytes']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _test_hold(staging: Path, step: int) -> None:
    """A test hook: with SLTRAIN_TEST_HOLD_SAVE=<step>, the leader's save of
    that step stops once the shards are written, before the manifest, creates
    `held` in the staging folder and waits there for ever, so that
    tests/test_fault_tolerance.py can SIGKILL it in the middle of a save."""
    if os.environ.get("SLTRAIN_TEST_HOLD_SAVE") == str(step):
        (staging / "held").touch()
        while True:
            time.sleep(1)


def _steps(root: Path) -> list[tuple[int, Path]]:
    """The complete (renamed) checkpoint folders under root, newest first."""
    found = []
    for path in root.glob("step_*") if root.is_dir() else []:
        match = _STEP.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_checkpoint(root: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, steps: int,
                    keep: int, data: dict[str, Any]) -> Path:
    """Writes `root/step_<step>` (with `data`, the position in the training
    data) and keeps the newest `keep` checkpoints. Collective. Raises
    CheckpointError (the earlier checkpoints intact) if the
    files cannot be written."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    final = root / f"step_{step:08d}"
    staging = final.with_name(final.name + ".partial")
    if _is_leader():
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob("*.partial"):  # from a save that died
            shutil.rmtree(leftover, ignore_errors=True)
    _barrier()
    try:
        with _single_process_quiet():
            dcp.save({"model": model_state, "optimizer": optimizer_state,
                      "trainer": _trainer_state(scheduler, step, steps, data)},
                     checkpoint_id=staging)
        _barrier()
        if _is_leader():
            _test_hold(staging, step)
            _write_manifest(staging, step)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            for _, old in _steps(root)[keep:]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        if _is_leader():
            shutil.rmtree(staging, ignore_errors=True)
        kept = _steps(root)
        raise CheckpointError(f"could not write the step-{step} checkpoint in {root}: {error}; "
                              + (f"the step-{kept[0][0]} checkpoint {kept[0][1]} is intact" if kept
                                 else "there is no earlier checkpoint")) from error
    _barrier()
    return final


def find_checkpoint(root: Path, legacy: Path | None = None) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint under root (or, failing that, a `legacy`
    folder of sltrain_ext 0.2, which has no manifest), and a line for each
    damaged one passed over. The leader checks and tells the other ranks."""
    choice: list[Any] = [None, []]
    if _is_leader():
        skipped = []
        for _, folder in _steps(root):
            problem = damage(folder)
            if problem is None:
                choice = [str(folder), skipped]
                break
            skipped.append(f"{folder} is damaged ({problem})")
        else:
            candidates = [] if legacy is None else [legacy, legacy.with_name(legacy.name + ".previous")]
            found = next((str(p) for p in candidates if p.is_dir()), None)
            choice = [found, skipped]
    if torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(choice, src=0)
    return (Path(choice[0]) if choice[0] else None), choice[1]


def load_checkpoint(folder: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> tuple[int, dict[str, Any]]:
    """Restores what `save_checkpoint` wrote, resharded to this run's layout,
    and returns the step it was taken at and its data position. Collective."""
    if "trainer.data" not in dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata:
        raise SystemExit(f"{folder} was written by sltrain_ext 0.2, which trained on bytes held in memory and saved "
                         "no data position; this version trains on token shards: start the run again without --resume")
    with _single_process_quiet():
        saved = {"trainer": _trainer_state(scheduler, 0, 0, {})}
        dcp.load(saved, checkpoint_id=folder)  # the small part first, to check it
        trainer = saved["trainer"]
        if trainer["steps"] != steps:
            raise SystemExit(f"{folder} is for --steps {trainer['steps']}, not {steps}")
        model_state, optimizer_state = get_state_dict(model, optimizer)  # this run's shards, filled in place
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    return trainer["step"], json.loads(trainer["data"])
