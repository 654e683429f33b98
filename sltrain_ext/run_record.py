"""``<out>/run.json``: what a run of sltrain-train is, written before its
first step so that a run killed at any point says what it was. Every
resolved setting, keyed by its flag (the learning rate, rank, alpha and
density per method, as each method uses them), the model config, the recipe
it was given (file, SHA-256, contents, the keys the command line overrode),
the data (its fingerprint, folder and tokenizer), the software (package
version, git commit when the package is a git checkout, torch, CUDA) and the
devices.

``--resume`` compares the new run's settings with the recorded ones and
refuses, naming every flag that differs, except the flags in
``MAY_CHANGE_ON_RESUME``: they change how the run is watched, saved or
spread over devices, not what it computes; and ``--steps``, which may grow:
the run is extended (see ``schedule``), and each method's extension (the
step it was extended from, the steps and the learning-rate schedule before
and after) is added to the record's ``extensions`` when it takes effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .files import write_atomically
from .schedule import LearningRateSchedule
from .shards import PreparedCorpus

__all__ = ["MAY_CHANGE_ON_RESUME", "RUN_RECORD", "ChangedSettings", "check_resumed_settings", "record_extension",
           "run_record", "write_run_record"]

RUN_RECORD = "run.json"

# Flags a resumed run may change. --method may name fewer or more methods
# (each has its own checkpoints; the settings of the methods both runs train
# are compared). --data, --tokenizer and --vocab-size are compared through
# the data's fingerprint (a moved folder is the same data). --device, --dist
# and the number of processes: checkpoints reshard to any layout (--dtype,
# which "auto" derives from --device, is compared). --recipe: the settings it
# gave are compared one by one, so a run may go on with them spelled out.
MAY_CHANGE_ON_RESUME = ("--method", "--stop-after", "--eval-every", "--save-every", "--keep-checkpoints",
                        "--max-bad-steps", "--checkpointing", "--compile", "--tracker", "--out", "--resume",
                        "--device", "--dist", "--tokenizer", "--vocab-size", "--recipe")

# Derived attributes of the parsed flags that are not flags of their own.
_DERIVED = {"methods", "world_size", "dist_rank", "llama", "trackers", "recipe_file"}
_PER_METHOD = ("--lr", "--rank", "--alpha", "--density")
_PER_METHOD_FIELDS = {flag.removeprefix("--") for flag in _PER_METHOD}


class ChangedSettings(SystemExit):
    """A resumed run whose settings differ from its record: exit status 2,
    as for argparse's usage errors; the message is on stderr already."""

    def __init__(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        super().__init__(message)
        self.code = 2


def _git_commit(package: Path) -> str | None:
    """HEAD of the git checkout the package was imported from, or None (an
    installed package, no git, or a package inside some other repository)."""
    try:
        def git(*arguments: str) -> str:
            return subprocess.run(["git", "-C", str(package), *arguments], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent.resolve():
            return None
        return git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(args: argparse.Namespace, corpus: PreparedCorpus, methods: dict[str, dict[str, Any]],
               argv: list[str] | None) -> dict[str, Any]:
    """The record of this run: `methods` maps each method to the settings
    that shape it (see train.model_settings) and its learning rate."""
    settings = {"--" + key.replace("_", "-"): value for key, value in vars(args).items() if key not in _DERIVED}
    settings["--dtype"] = str(args.dtype).removeprefix("torch.")
    settings["--data"] = {"fingerprint": corpus.fingerprint, "vocabulary": corpus.tokenizer.vocab_size}
    settings["--method"] = list(methods)
    for flag in _PER_METHOD:
        settings[flag] = {method: shaped[flag.removeprefix("--")] for method, shaped in methods.items()}
    # The config's own rank, alpha and density are defaults: the resolved ones are under their flags.
    settings["--config"] = {key: value for key, value in dataclasses.asdict(args.llama).items()
                            if key not in _PER_METHOD_FIELDS}
    cuda = torch.cuda.is_available()
    return {
        "command": shlex.join(["sltrain-train", *(sys.argv[1:] if argv is None else argv)]),
        # As JSON gives them back, so a resumed run compares like with like (a tuple is a list).
        "settings": json.loads(json.dumps(settings, default=str)),
        "derived": {
            "methods": methods, "tokens_per_step": args.batch_size * args.seq_len,
            "total_tokens": args.steps * args.batch_size * args.seq_len, "world_size": args.world_size,
            "schedule": LearningRateSchedule.fresh(args.steps, args.warmup, args.min_lr_ratio).describe(),
        },
        "recipe": args.recipe_file.record() if args.recipe_file else None,
        "extensions": [],
        "data": {"folder": str(corpus.folder), "argument": str(args.data), "fingerprint": corpus.fingerprint,
                 "tokenizer": corpus.index["tokenizer"], "train_tokens": corpus.train.tokens,
                 "validation_tokens": corpus.validation.tokens},
        "software": {"sltrain_ext": __version__, "git_commit": _git_commit(Path(__file__).parent),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "devices": ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [])
                   + [f"cpu ({platform.processor() or platform.machine()})"],
    }


def _difference(before: Any, after: Any) -> str | None:
    """How a setting changed, or None: dicts (per method, the model config)
    by the keys both have."""
    if isinstance(before, dict) and isinstance(after, dict):
        changed = [f"{key}: {before[key]!r}, now {after[key]!r}" for key in before
                   if key in after and before[key] != after[key]]
        return "; ".join(changed) or None
    return None if before == after else f"{before!r}, now {after!r}"


def check_resumed_settings(out: Path, record: dict[str, Any]) -> None:
    """Exits with status 2 naming every flag whose value differs from the
    run's record in `out` (a run begun before records were written has none
    and is not checked here; its checkpoints still check the model shape).
    Keeps in `record` the recorded settings of methods this command leaves out."""
    path = out / RUN_RECORD
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
        recorded, recorded_methods = saved["settings"], saved["derived"]["methods"]
    except (ValueError, KeyError, TypeError) as error:
        raise ChangedSettings(f"sltrain-train: --resume: {path} is not a run record ({error!r}); move it away to "
                              "resume without the check") from None
    steps, recorded_steps = record["settings"]["--steps"], recorded.get("--steps", record["settings"]["--steps"])
    differences = [f"another {flag} ({change})" for flag in record["settings"]
                   if flag in recorded and flag not in MAY_CHANGE_ON_RESUME and flag != "--steps"
                   and (change := _difference(recorded[flag], record["settings"][flag])) is not None]
    if steps < recorded_steps:
        differences.append(f"--steps {steps} is below the {recorded_steps} steps of the run: a run can be extended "
                           "to more steps, not shortened")
    if differences:
        raise ChangedSettings(f"sltrain-train: --resume: the run in {out} was started with other settings "
                              f"({path}):\n  " + "\n  ".join(differences)
                              + "\nresume with the recorded values, or start a new run in another --out")
    # The methods this command leaves out keep their recorded settings.
    for flag in _PER_METHOD:
        record["settings"][flag] = {**recorded.get(flag, {}), **record["settings"][flag]}
    record["derived"]["methods"] = {**recorded_methods, **record["derived"]["methods"]}
    # The schedule the run began with; how each extension changed it is in "extensions".
    record["derived"]["schedule"] = saved["derived"].get("schedule", record["derived"]["schedule"])
    record["extensions"] = saved.get("extensions", [])


def record_extension(out: Path, method: str, extension: dict[str, Any]) -> None:
    """Adds to the run record in `out` that `method` was extended to more
    steps (see schedule.resumed_schedule), once however often it is replayed."""
    path = out / RUN_RECORD
    record = json.loads(path.read_text())
    entry = {"method": method, **extension}
    if entry not in record["extensions"]:
        record["extensions"].append(entry)
        write_run_record(out, record)


def write_run_record(out: Path, record: dict[str, Any]) -> None:
    write_atomically(out / RUN_RECORD, (json.dumps(record, indent=2) + "\n").encode())
