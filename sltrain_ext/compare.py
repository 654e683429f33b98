"""Compare finished runs of sltrain-train: ``sltrain-compare``.

    sltrain-compare runs/main runs/lr1e-3 --plot comparison.png

Overlays the held-out bits per byte of every method of every run against the
tokens it had seen (one curve per run and method) and prints a table of the
final figures. Bits per byte do not depend on the tokenizer, so runs on
different tokenizers compare. Reads what a run left on disk: its
``summary.json`` (the command, written when the run finished) and each
method's ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .train import METHODS
from .train import parse_args as training_args

__all__ = ["Run", "MethodCurve", "read_run", "curves", "main", "cli"]

SUMMARY, METRICS = "summary.json", "metrics.jsonl"


class RunError(ValueError):
    """A folder that cannot be read as a run, with the path that is wrong."""


@dataclass(frozen=True)
class Run:
    """A run folder: the methods it trained and the flags it was started with."""

    folder: Path
    methods: list[str]
    summary: dict[str, Any] | None  # None until the run has finished
    flags: argparse.Namespace  # the training flags this module reads (data, sizes), defaults filled in

    def method_folder(self, method: str) -> Path:
        return self.folder / method

    def result(self, method: str) -> dict[str, Any]:
        """summary.json's result for ``method`` ({} where the run did not finish)."""
        results = (self.summary or {}).get("results", [])
        return next((r for r in results if isinstance(r, dict) and r.get("method") == method), {})


def _training_flags(argv: list[str]) -> argparse.Namespace:
    """The flags of an sltrain-train command line that say what a step and the
    data were, with sltrain-train's own defaults where the command left them out."""
    defaults = training_args([])  # sltrain-train's defaults, from the one place they are defined
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("config", "data", "tokenizer", "vocab_size", "batch_size", "seq_len"):
        kind = int if flag in ("vocab_size", "batch_size", "seq_len") else str
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, default=getattr(defaults, flag))
    return parser.parse_known_args(argv)[0]


def read_run(folder: str | Path) -> Run:
    """The run in ``folder``; RunError naming the path if it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder")
    methods = [m for m in METHODS if (folder / m / METRICS).is_file()]
    summary_path = folder / SUMMARY
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict) or not isinstance(summary.get("command"), str):
                raise ValueError("expected an object with the command")
        except ValueError as error:
            raise RunError(f"{summary_path}: not a summary of sltrain-train ({error})") from None
    if not methods:
        raise RunError(f"{folder} is not a run of sltrain-train: it holds no <method>/{METRICS} "
                       f"(methods: {', '.join(METHODS)})")
    argv = shlex.split(summary["command"])[1:] if summary else []
    return Run(folder, methods, summary, _training_flags(argv))


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a run killed while
    appending) is left out, any other unreadable line is an error."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if number == len(lines):
                break
            raise RunError(f"{path}, line {number}: not a record of sltrain-train") from None
        records.append(record)
    return records


@dataclass(frozen=True)
class MethodCurve:
    """One method of one run: its held-out curve and final figures (None where not recorded)."""

    run: Path
    method: str
    tokens: list[int]  # tokens seen at each evaluation
    bpb: list[float]
    final_bpb: float
    final_ppl: float | None
    parameters: int | None
    tokens_per_s: float | None
    peak_memory_gib: float | None


def curves(run: Run) -> list[MethodCurve]:
    """Every method's held-out curve in ``run``, against tokens seen."""
    found = []
    for method in run.methods:
        path = run.method_folder(method) / METRICS
        records = _records(path)
        evaluations = [r for r in records if "val_bpb" in r]
        if not evaluations:
            raise RunError(f"{path} has no held-out evaluation (val_bpb) yet: the run stopped before its first "
                           "--eval-every step")
        if run.summary is None and not all("tokens" in r for r in evaluations):
            raise RunError(f"{run.folder / SUMMARY} does not exist (the run has not finished): without its "
                           "command the tokens per step, and so the tokens seen, are unknown; finish the run "
                           "with --resume")
        tokens_per_step = run.flags.batch_size * run.flags.seq_len
        result = run.result(method)
        steps = [r for r in records if "tokens_per_s" in r]
        memory = [r["peak_memory_gib"] for r in records if "peak_memory_gib" in r]
        last = evaluations[-1]
        found.append(MethodCurve(
            run=run.folder, method=method,
            tokens=[r.get("tokens", r["step"] * tokens_per_step) for r in evaluations],
            bpb=[r["val_bpb"] for r in evaluations],
            final_bpb=last["val_bpb"],
            final_ppl=last.get("val_ppl"),
            parameters=result.get("parameters"),
            tokens_per_s=steps[-1]["tokens_per_s"] if steps else None,
            peak_memory_gib=result.get("peak_memory_gib", max(memory) if memory else None)))
    return found


def _run_labels(runs: list[Run]) -> dict[Path, str]:
    """Each run's folder name, or its path as given where two names are alike."""
    names = [run.folder.name or str(run.folder) for run in runs]
    return {run.folder: name if names.count(name) == 1 else str(run.folder) for run, name in zip(runs, names)}


def _title(run: Run, found: list[MethodCurve]) -> str:
    """What a single run's plot says it is: model, methods, data and tokens."""
    return (f"{run.folder.name}: LLaMA-{run.flags.config}, {', '.join(run.methods)}\n"
            f"data {run.flags.data}, {max(max(c.tokens) for c in found):,} tokens "
            f"({run.flags.batch_size} x {run.flags.seq_len} a step)")


def plot(runs: list[Run], found: list[MethodCurve], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _run_labels(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for curve in found:
        ax.plot(curve.tokens, curve.bpb, "o-", label=f"{labels[curve.run]}: {curve.method}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(_title(runs[0], found) if len(runs) == 1 else "held-out bits per byte", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(runs: list[Run], found: list[MethodCurve]) -> str:
    labels = _run_labels(runs)

    def shown(value: float | None, form: str) -> str:
        return "-" if value is None or not math.isfinite(value) else format(value, form)

    width = max(len("run"), *(len(label) for label in labels.values()))
    lines = [f"{'run':<{width}} {'method':<8} {'final bpb':>9} {'perplexity':>11} {'parameters':>12} "
             f"{'tokens/s':>10} {'peak mem':>9}"]
    for c in found:
        lines.append(f"{labels[c.run]:<{width}} {c.method:<8} {c.final_bpb:>9.4f} {shown(c.final_ppl, '.3f'):>11} "
                     f"{shown(c.parameters, ','):>12} {shown(c.tokens_per_s, ',.0f'):>10} "
                     f"{shown(c.peak_memory_gib, '.2f') + (' GiB' if c.peak_memory_gib is not None else ''):>9}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sltrain-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="--out folders of sltrain-train")
    parser.add_argument("--plot", type=Path, default=Path("comparison.png"),
                        help="where to write the plot (default comparison.png)")
    args = parser.parse_args(argv)
    if not args.plot.parent.is_dir():
        parser.error(f"--plot {args.plot}: the folder {args.plot.parent} does not exist")
    try:
        args.read = [read_run(folder) for folder in args.runs]
        args.curves = [curve for run in args.read for curve in curves(run)]
    except RunError as error:
        parser.error(f"RUN {error}")
    return args


def main(argv: list[str] | None = None) -> list[MethodCurve]:
    args = parse_args(argv)
    print(table(args.read, args.curves))
    print(f"plot: {plot(args.read, args.curves, args.plot)}")
    return args.curves


def cli() -> None:
    """The ``sltrain-compare`` console script (exit status 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
