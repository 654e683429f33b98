"""What a run of sltrain-train writes about itself, per method: its
``metrics.jsonl`` (one JSON record a line: a step's loss and the learning
rate it used, a skipped step, a held-out evaluation), the text of its
progress bar, and the lines that say where it starts from. Only the leader
of a multi-process job writes; the other ranks hold a silent RunLog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .files import write_atomically
from .llama import perplexity

__all__ = ["RunLog"]


class RunLog:
    def __init__(self, method: str, folder: Path, leader: bool):
        self.method, self.leader = method, leader
        self.path = folder / "metrics.jsonl"
        self.progress: tqdm | None = None
        self._postfix: dict[str, str] = {}

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

    def open_bar(self, start: int, end: int, total: int) -> tqdm:
        self.progress = tqdm(range(start, end), desc=f"{self.method:>7}", unit="step", mininterval=1.0,
                             initial=start, total=total, dynamic_ncols=True, disable=not self.leader)
        return self.progress

    def close_bar(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float, memory_gib: float) -> None:
        """A finished step: its loss and the learning rate its update used."""
        self._write({"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        self._show(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", mem=f"{memory_gib:.1f}G")

    def skipped(self, step: int, in_a_row: int) -> None:
        self._write({"step": step, "skipped": "non-finite loss or gradient"})
        self._print(f"{self.method} step {step}: non-finite loss or gradient, update skipped ({in_a_row} in a row)")

    def evaluation(self, step: int, val_loss: float, bpb: float) -> None:
        self._write({"step": step, "val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_bpb": bpb})
        self._print(f"{self.method} step {step}: held-out loss {val_loss:.4f}, perplexity "
                    f"{perplexity(val_loss):.3f}, {bpb:.4f} bits per byte")
        self._show(val_bpb=f"{bpb:.3f}")

    def _show(self, **fields: str) -> None:
        self._postfix.update(fields)
        if self.progress is not None:
            # loss first, then the held-out figure, as the fields first came
            order = ("loss", "val_bpb", "tok_s", "mem")
            self.progress.set_postfix({key: self._postfix[key] for key in order if key in self._postfix})

    def _write(self, record: dict[str, Any]) -> None:
        if self.leader:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- afterwards -------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every record of the log (none if it is gone)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if _step_of(line) is not None]

    def latest(self) -> dict[str, float | None]:
        """The last evaluation's perplexity and bits per byte, and the last step's throughput."""
        records = self.records()
        evaluation = next((r for r in reversed(records) if "val_loss" in r), {})
        step = next((r for r in reversed(records) if "tokens_per_s" in r), {})
        return {"val_ppl": evaluation.get("val_ppl"), "val_bpb": evaluation.get("val_bpb"),
                "tokens_per_s": step.get("tokens_per_s")}


def _step_of(line: str) -> int | None:
    """The step of a record, or None for a line that is not one (the torn
    last line of a run killed while appending)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
