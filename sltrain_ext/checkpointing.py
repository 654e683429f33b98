"""Checkpoints of sltrain-train: torch.distributed.checkpoint folders that
every rank writes its own shards to (replicated tensors once), keyed by
parameter name so that any world size and --dist reads them back, and that
replace the previous checkpoint only once complete."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .optim import SLAdamW

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]


def _trainer_state(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, steps: int) -> dict[str, Any]:
    return {"scheduler": scheduler.state_dict(), "step": step, "steps": steps}


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """torch.distributed.checkpoint warns on every call without a process
    group; a single process is a supported case here, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent")
        yield


def _staging_and_previous(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".previous")


def latest_checkpoint(folder: Path) -> Path | None:
    """`folder`, or the checkpoint before it if a save died between its two renames."""
    previous = _staging_and_previous(folder)[1]
    return folder if folder.exists() else previous if previous.exists() else None


def save_checkpoint(folder: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, steps: int) -> None:
    """Writes a `torch.distributed.checkpoint` folder, every rank its own
    shards (replicated tensors once), keyed by parameter name so that any world
    size can read it back. Collective; `folder` is replaced only once the new
    checkpoint is complete."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    distributed = torch.distributed.is_initialized()
    leader = not distributed or torch.distributed.get_rank() == 0
    staging, previous = _staging_and_previous(folder)
    if leader:
        shutil.rmtree(staging, ignore_errors=True)
    if distributed:
        torch.distributed.barrier()
    with _single_process_quiet():
        dcp.save({"model": model_state, "optimizer": optimizer_state,
                  "trainer": _trainer_state(scheduler, step, steps)}, checkpoint_id=staging)
    if leader:
        if folder.exists():
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        staging.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
    if distributed:
        torch.distributed.barrier()


def load_checkpoint(folder: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> int:
    """Restores what `save_checkpoint` wrote, resharded to this run's layout,
    and returns the step it was taken at. Collective."""
    with _single_process_quiet():
        saved = {"trainer": _trainer_state(scheduler, 0, 0)}
        dcp.load(saved, checkpoint_id=folder)  # the small part first, to check it
        trainer = saved["trainer"]
        if trainer["steps"] != steps:
            raise SystemExit(f"{folder} is for --steps {trainer['steps']}, not {steps}")
        model_state, optimizer_state = get_state_dict(model, optimizer)  # this run's shards, filled in place
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    return trainer["step"]
