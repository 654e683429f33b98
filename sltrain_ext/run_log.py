"""What a run of sltrain-train writes about itself, per method: its
``metrics.jsonl`` (one JSON record a line: a step's loss, the learning rate
it used, its gradient norm, timings, throughput and memory; a skipped step;
a held-out evaluation), the same scalars to the experiment trackers chosen
by --tracker, the text of its progress bar, and the lines that say where it
starts from. Only the leader of a multi-process job writes; the other ranks
hold a silent RunLog.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .files import write_atomically
from .llama import perplexity
from .run_record import RUN_RECORD
from .throughput import StepCosts

__all__ = ["MEASURED", "TRACKERS", "RunLog", "check_trackers"]

# The fields of metrics.jsonl that measure the machine rather than the
# training: a resumed run, or the same run again, has other values.
MEASURED = ("tokens_per_s", "interval_tokens_per_s", "data_s", "compute_s", "optimizer_s", "step_s", "eval_s", "mfu",
            "peak_memory_gib", "memory_other_gib")

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --tracker name: the package it needs


def check_trackers(names: str) -> list[str]:
    """The trackers --tracker names (comma-separated; none for none), each
    checked to be installed; a ValueError names the flag and the package."""
    chosen = [name.strip() for name in names.split(",") if name.strip() and name.strip() != "none"]
    for name in chosen:
        if name not in TRACKERS:
            raise ValueError(f"--tracker: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} or none")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"--tracker {name} needs the {TRACKERS[name]} package, which is not installed "
                             f"(pip install {TRACKERS[name]}, or sltrain_ext[tracking] for both trackers)")
    return chosen


class _TensorBoard:
    """Event files under <method folder>/tensorboard."""

    def __init__(self, folder: Path, method: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """A W&B run per method, offline unless WANDB_MODE says otherwise (an
    offline run needs no network or account; `wandb sync` uploads it)."""

    def __init__(self, folder: Path, method: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project="sltrain", group=folder.parent.name, name=method, dir=str(folder),
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


_TRACKER_CLASSES: dict[str, Callable[[Path, str, dict[str, Any]], Any]] = {"tensorboard": _TensorBoard,
                                                                          "wandb": _WandB}


class _StepClock:
    """The time between the marks of a step (data, compute, optimizer). On a
    GPU each mark is a CUDA event on the current stream, so a phase is timed
    where its work ran, without synchronising the host at every mark: only
    reading the laps, once per step after the last mark, waits for it."""

    def __init__(self, device: torch.device) -> None:
        self.on_cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []
        self.start()

    def _now(self) -> Any:
        if not self.on_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self.marks = [("start", self._now())]

    def lap(self, phase: str) -> None:
        self.marks.append((phase, self._now()))

    @property
    def laps(self) -> dict[str, float]:
        """Seconds of each phase since start()."""
        times = [mark for _, mark in self.marks]
        if self.on_cuda:
            times[-1].synchronize()
            seconds = [before.elapsed_time(after) / 1e3 for before, after in zip(times, times[1:])]
        else:
            seconds = [after - before for before, after in zip(times, times[1:])]
        return {phase: lap for (phase, _), lap in zip(self.marks[1:], seconds)}


class RunLog:
    def __init__(self, method: str, folder: Path, leader: bool, trackers: Sequence[str] = ()):
        self.method, self.leader, self.folder = method, leader, folder
        self.path = folder / "metrics.jsonl"
        self.progress: tqdm | None = None
        self._postfix: dict[str, str] = {}
        self._tracker_names = trackers if leader else ()
        self._trackers: list[Any] = []
        self._costs: StepCosts | None = None
        self._clock: _StepClock | None = None
        self._began, self._start = 0.0, 0

    def say(self, line: str) -> None:
        """A line for the user, prefixed with the method."""
        self._print(f"{self.method}: {line}")

    def _print(self, text: str) -> None:
        """Above the progress bar if one is open."""
        if not self.leader:
            return
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, flush=True)

    # ---- where the run starts ------------------------------------------------------------------------

    def start_fresh(self) -> None:
        if self.leader:
            self.path.unlink(missing_ok=True)

    def resumed(self, checkpoint: Path, step: int, steps: int, next_window: int, windows_per_epoch: int,
                tokens_per_window: int) -> None:
        """Says what a resumed run continues from, and keeps the records up
        to its step (those after it are written again). A deleted log is
        begun again: the checkpoint, not the log, holds the state."""
        epoch, window = divmod(next_window, windows_per_epoch)
        self.say(f"resuming from {checkpoint} at step {step} of {steps}; data position: training window "
                 f"{next_window:,} (window {window:,} of {windows_per_epoch:,} in epoch {epoch + 1}, "
                 f"{next_window * tokens_per_window:,} tokens read)")
        if not self.leader:
            return
        if not self.path.exists():
            self.say(f"{self.path} is missing; a new one starts at step {step + 1} (earlier records are lost)")
            self.path.touch()
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) is not None
                and _step_of(line) <= step]
        write_atomically(self.path, "".join(line + "\n" for line in kept).encode())

    def passed_over(self, damaged: list[str], intact_found: bool) -> None:
        """Names each damaged checkpoint that resuming passed over."""
        for line in damaged:
            self.say(line + ("; falling back to an older checkpoint" if intact_found else ""))
        if damaged and not intact_found:
            self.say(f"all {len(damaged)} checkpoints are damaged")

    # ---- during the run ---------------------------------------------------------------------------------

    def open_bar(self, start: int, end: int, total: int, costs: StepCosts) -> Iterator[int]:
        """The steps from `start` to `end` under a progress bar, each timed
        from when the loop asks for it (so evaluations and checkpoints
        between steps are not step time); opens the trackers."""
        self.progress = tqdm(range(start, end), desc=f"{self.method:>7}", unit="step", mininterval=1.0,
                             initial=start, total=total, dynamic_ncols=True, disable=not self.leader)
        self._costs, self._clock = costs, _StepClock(costs.memory.device)
        self._began, self._start = time.perf_counter(), start
        record = self.folder.parent / RUN_RECORD  # what W&B shows as the run's config
        config = json.loads(record.read_text()) if record.exists() else {}
        self._trackers = [_TRACKER_CLASSES[name](self.folder, self.method, config) for name in self._tracker_names]
        for step in self.progress:
            self._clock.start()
            costs.memory.start_step()
            yield step

    def close_bar(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []

    def lap(self, phase: str) -> None:
        """Ends the `data` or `compute` part of the step (`compute` is
        forward and backward: the gradients are counted then)."""
        assert self._clock is not None and self._costs is not None
        self._clock.lap(phase)
        if phase == "compute":
            self._costs.memory.after_backward()

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, max_grad_norm: float | None) -> None:
        """A finished step: its loss, the learning rate its update used, the
        gradient norm before clipping (None where --per-layer clipped per
        parameter), its times, throughput and memory."""
        assert self._clock is not None and self._costs is not None
        self._clock.lap("optimizer")
        costs, laps = self._costs, self._clock.laps
        step_seconds = sum(laps.values())
        interval_rate = costs.tokens_per_step / step_seconds
        mfu = costs.mfu(interval_rate)
        memory = costs.memory.breakdown_gib()
        record = {"step": step, "loss": loss, "lr": lr, "tokens": step * costs.tokens_per_step,
                  "tokens_per_s": (step - self._start) * costs.tokens_per_step / (time.perf_counter() - self._began),
                  "interval_tokens_per_s": interval_rate, "grad_norm": grad_norm,
                  "clipped": None if grad_norm is None or not max_grad_norm else grad_norm > max_grad_norm,
                  **{f"{phase}_s": seconds for phase, seconds in laps.items()}, "step_s": step_seconds,
                  "flops_per_token": costs.flops_per_token, "mfu": mfu, **memory}
        # What cannot be measured here (MFU and peak memory on the CPU, the global
        # gradient norm under --per-layer, clipping when it is off) is left out.
        self._write({key: value for key, value in record.items() if value is not None})
        shown = {"loss": f"{loss:.3f}", "tok_s": f"{interval_rate:,.0f}",
                 "mfu": costs.peak_note() if mfu is None else f"{mfu:.1%}"}
        if memory["peak_memory_gib"] is not None:
            shown["mem"] = f"{memory['peak_memory_gib']:.1f}G"
        self._show(**shown)

    def skipped(self, step: int, in_a_row: int) -> None:
        self._write({"step": step, "skipped": "non-finite loss or gradient"})
        self._print(f"{self.method} step {step}: non-finite loss or gradient, update skipped ({in_a_row} in a row)")

    def evaluation(self, step: int, held_out_loss: Callable[[], float],
                   bits_per_byte: Callable[[float], float]) -> None:
        """Runs and records a held-out evaluation, timed apart from the steps."""
        began = time.perf_counter()
        val_loss = held_out_loss()
        seconds, bpb = time.perf_counter() - began, bits_per_byte(val_loss)
        assert self._costs is not None, "evaluations run between the steps of open_bar"
        self._write({"step": step, "val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_bpb": bpb,
                     "tokens": step * self._costs.tokens_per_step, "eval_s": seconds})
        self._print(f"{self.method} step {step}: held-out loss {val_loss:.4f}, perplexity "
                    f"{perplexity(val_loss):.3f}, {bpb:.4f} bits per byte")
        self._show(val_bpb=f"{bpb:.3f}")

    def _show(self, **fields: str) -> None:
        self._postfix.update(fields)
        if self.progress is not None:
            # loss first, then the held-out figure, as the fields first came
            order = ("loss", "val_bpb", "tok_s", "mfu", "mem")
            self.progress.set_postfix({key: self._postfix[key] for key in order if key in self._postfix})

    def _write(self, record: dict[str, Any]) -> None:
        if not self.leader:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {key: float(value) for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float))}  # bools too: clipped as 0 or 1
        for tracker in self._trackers:
            tracker.log(record["step"], scalars)

    # ---- afterwards -------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every record of the log (none if it is gone)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if _step_of(line) is not None]

    def latest(self) -> dict[str, float | None]:
        """For the summary: the last evaluation's perplexity and bits per
        byte, the last step's throughput, the mean MFU of the steps, and the
        memory of the step with the highest peak (else of the last step)."""
        records = self.records()
        evaluation = next((r for r in reversed(records) if "val_loss" in r), {})
        steps = [r for r in records if "tokens_per_s" in r]
        last = steps[-1] if steps else {}
        mfus = [r["mfu"] for r in steps if r.get("mfu") is not None]
        peaks = [r for r in steps if r.get("peak_memory_gib") is not None]
        memory = max(peaks, key=lambda r: r["peak_memory_gib"]) if peaks else last
        return {"val_ppl": evaluation.get("val_ppl"), "val_bpb": evaluation.get("val_bpb"),
                "tokens_per_s": last.get("tokens_per_s"), "flops_per_token": last.get("flops_per_token"),
                "mfu": sum(mfus) / len(mfus) if mfus else None,
                **{key: memory.get(key) for key in ("peak_memory_gib", "memory_parameters_gib",
                                                    "memory_gradients_gib", "memory_optimizer_gib",
                                                    "memory_other_gib")}}


def _step_of(line: str) -> int | None:
    """The step of a record, or None for a line that is not one (the torn
    last line of a run killed while appending)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
