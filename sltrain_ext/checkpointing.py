"""Checkpoints of sltrain-train.

Each is a torch.distributed.checkpoint folder `<method>/checkpoints/step_N`
that every rank writes its own shards to (replicated tensors once), keyed by
parameter name so that any world size and --dist reads it back. A save goes
to `step_N.partial` and becomes `step_N` by one rename, after its
`manifest.json` (every file's size and SHA-256) is written last; then all but
the newest `keep` checkpoints are deleted. Resuming takes the newest
checkpoint whose manifest matches its files, and says which damaged ones it
passed over. Before a save, the free space of the disk is checked against
the size of the state to write; a save that fails anyway (the disk filled
meanwhile, an I/O error) removes its `.partial` folder and leaves every
earlier checkpoint as it was. Each checkpoint records the model's settings
(config, vocabulary, rank, density, alpha), so that resuming with other
ones names the flag that differs instead of failing on a tensor shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .files import file_sha256
from .optim import SLAdamW
from .schedule import LearningRateSchedule

__all__ = ["Restored", "find_checkpoint", "has_checkpoints", "load_checkpoint", "save_checkpoint",
           "newest_checkpoint_note", "CheckpointError"]

MANIFEST = "manifest.json"
_STEP = re.compile(r"step_(\d+)")
# Room for what a save writes besides the tensors (DCP's pickled metadata,
# the manifest), and for the metrics a run appends meanwhile.
_SAVE_MARGIN_BYTES = 1 << 20
# Which sltrain-train flag sets each recorded model setting.
SETTING_FLAGS = {"method": "--method", "config": "--config", "vocab_size": "--data (its tokenizer's vocabulary)",
                 "rank": "--rank", "density": "--density", "alpha": "--alpha"}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the earlier ones are intact."""


def _trainer_state(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, schedule: LearningRateSchedule,
                   data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    # The data position, model settings and schedule as JSON text: opaque values that any later field can join.
    return {"scheduler": scheduler.state_dict(), "step": step, "steps": schedule.total, "data": json.dumps(data),
            "settings": json.dumps(settings), "schedule": json.dumps(schedule.state())}


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a checkpoint says of the run beyond the model and optimizer: the
    step it was taken at, the data position, and the run's length and
    learning-rate schedule's state (None when written before schedules were
    saved: then the base schedule of `steps`)."""

    step: int
    data: dict[str, Any]
    steps: int
    schedule: dict[str, Any] | None


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


def newest_checkpoint_note(root: Path) -> str:
    """Which checkpoint a run can continue from, for messages after a fault.
    Local to the calling rank (no collective): it may run on one rank alone."""
    kept = _steps(root)
    return (f"the step-{kept[0][0]} checkpoint {kept[0][1]} is intact" if kept
            else f"there is no checkpoint in {root} yet")


def _bytes_to_write(state: Any) -> int:
    """This rank's share of the tensor bytes a save of `state` writes: its
    shards of sharded (DTensor) tensors, and, on the leader alone, the
    replicated ones, which DCP writes once."""
    if isinstance(state, dict):
        return sum(_bytes_to_write(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_bytes_to_write(value) for value in state)
    if not isinstance(state, torch.Tensor):
        return 0
    if hasattr(state, "to_local"):
        state = state.to_local()
    elif not _is_leader():
        return 0
    return state.numel() * state.element_size()


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _check_free_space(root: Path, needed: int, step: int) -> None:
    """Refuses a save that cannot fit before writing anything. Every rank
    gives its share and its disk's free space, so all agree (none blocks in
    dcp.save while another gave up), whether the ranks share a disk or not."""
    mine = (needed, shutil.disk_usage(root).free)
    ranks = [mine]
    if torch.distributed.is_initialized():
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
    total = sum(share for share, _ in ranks) + _SAVE_MARGIN_BYTES
    free = min(space for _, space in ranks)
    if free < total:
        raise CheckpointError(f"not enough free space for the step-{step} checkpoint in {root}: it needs about "
                              f"{_megabytes(total)}, the disk has {_megabytes(free)} free; nothing was written "
                              f"and {newest_checkpoint_note(root)}; free some space (or give another --out) and "
                              "run the same command with --resume")


def _underlying_errors(error: BaseException) -> list[BaseException]:
    """The errors a CheckpointException wraps (one per failed rank), each
    followed by its causes; or the error and its causes."""
    errors = []
    for first in ([failure[0] if isinstance(failure, tuple) else failure for failure in error.failures.values()]
                  if isinstance(error, CheckpointException) else [error]):
        while first is not None and first not in errors:
            errors.append(first)
            first = first.__cause__ or first.__context__
    return errors


def _why_the_save_failed(error: BaseException, root: Path) -> str:
    """One line: 'the disk is full' when it is (torch.save reports ENOSPC as
    a RuntimeError about a stream position, so the free space decides), else
    the first underlying error's message."""
    errors = _underlying_errors(error)
    full = any(getattr(e, "errno", None) == errno.ENOSPC for e in errors)
    free = shutil.disk_usage(root).free
    if full or free < _SAVE_MARGIN_BYTES:
        return f"the disk is full ({_megabytes(free)} free on the filesystem of {root})"
    first = errors[0] if errors else error
    lines = str(first).strip().splitlines()  # a CheckpointException's own text is a traceback per rank
    return f"{type(first).__name__}: {lines[-1] if lines else ''}"


def save_checkpoint(root: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, schedule: LearningRateSchedule,
                    keep: int, data: dict[str, Any], settings: dict[str, Any]) -> Path:
    """Writes `root/step_<step>` (with `data`, the position in the training
    data, and `settings`, the model's) and keeps the newest `keep`
    checkpoints. Collective. Raises CheckpointError (the earlier
    checkpoints intact, no `.partial` folder left) if the disk has no room
    for it or the files cannot be written."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    final = root / f"step_{step:08d}"
    staging = final.with_name(final.name + ".partial")
    if _is_leader():
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob("*.partial"):  # from a save that died
            shutil.rmtree(leftover, ignore_errors=True)
    _barrier()
    _check_free_space(root, _bytes_to_write([model_state, optimizer_state]), step)
    try:
        with _single_process_quiet():
            dcp.save({"model": model_state, "optimizer": optimizer_state,
                      "trainer": _trainer_state(scheduler, step, schedule, data, settings)},
                     checkpoint_id=staging)
        _barrier()
        if _is_leader():
            _test_hold(staging, step)
            _write_manifest(staging, step)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            for _, old in _steps(root)[keep:]:
                shutil.rmtree(old, ignore_errors=True)
    except (OSError, CheckpointException) as error:  # dcp.save wraps the writer's OSError in the latter
        reason = _why_the_save_failed(error, root)
        if _is_leader():
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"could not write the step-{step} checkpoint in {root}: {reason}; the partial "
                              f"checkpoint was removed and {newest_checkpoint_note(root)}") from None
    _barrier()
    return final


def has_checkpoints(root: Path, legacy: Path | None = None) -> bool:
    """Whether a run wrote any checkpoint under root (intact or not), or a
    `legacy` one of sltrain_ext 0.2: whether it got as far as one."""
    legacy_folders = [] if legacy is None else [legacy, legacy.with_name(legacy.name + ".previous")]
    return bool(_steps(root)) or any(p.is_dir() for p in legacy_folders)


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


def _refuse_other_settings(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    for key, flag in SETTING_FLAGS.items():
        if key in saved and saved[key] != current.get(key):
            raise SystemExit(f"sltrain-train: --resume: {folder} holds a model trained with another {flag} "
                             f"({saved[key]!r}, now {current.get(key)!r}); resume with the same settings, "
                             "or give another --out to start a new run")


def load_checkpoint(folder: Path, model: nn.Module, optimizer: SLAdamW,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int,
                    settings: dict[str, Any]) -> Restored:
    """Restores what `save_checkpoint` wrote, resharded to this run's layout.
    Refuses (naming the flag) a checkpoint of a model with other `settings`,
    or of a run longer than `steps` (a run is extended, never shortened).
    Collective."""
    recorded = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    if "trainer.data" not in recorded:
        raise SystemExit(f"{folder} was written by sltrain_ext 0.2, which trained on bytes held in memory and saved "
                         "no data position; this version trains on token shards: start the run again without --resume")
    with _single_process_quiet():
        saved = {"trainer": _trainer_state(scheduler, 0, LearningRateSchedule.fresh(0, 0.0, 0.0), {}, {})}
        for later_field in ("settings", "schedule"):  # absent from checkpoints written before it was recorded
            if f"trainer.{later_field}" not in recorded:
                del saved["trainer"][later_field]
        dcp.load(saved, checkpoint_id=folder)  # the small part first, to check it
        trainer = saved["trainer"]
        if trainer["steps"] > steps:
            raise SystemExit(f"sltrain-train: --steps {steps}: {folder} is from a run of {trainer['steps']} steps "
                             f"(at step {trainer['step']}); a run can be extended to more steps, not shortened")
        _refuse_other_settings(folder, json.loads(trainer.get("settings", "{}")), settings)
        model_state, optimizer_state = get_state_dict(model, optimizer)  # this run's shards, filled in place
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    schedule = json.loads(trainer["schedule"]) if "schedule" in trainer else None
    return Restored(trainer["step"], json.loads(trainer["data"]), trainer["steps"], schedule)
