"""The learning-rate sweep behind the main job's learning rates.

    nice -n 10 python benchmarks/lr_sweep.py                 # the main job's size: 9m, 200 steps of 16 x 256
    python benchmarks/lr_sweep.py --methods sltrain --lrs 3e-3 1e-2 --steps 50

Trains each method at each learning rate with every other setting of the main
job (`python -m sltrain_ext.train`), each run a process of its own, and writes
the final held-out bits per byte per run to benchmarks/results/lr_sweep.json,
.md and .png. A method's best learning rate is the one with the lowest final
held-out bits per byte; the 9m config's `learning_rates` (the main job's
defaults) are set from it, and tests/test_recipes.py checks that they agree.
One seed per point: a gap under a few thousandths of a bit is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import header, pyplot, write_results

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results"
GRID = (1e-3, 3e-3, 1e-2)  # a factor of about 3 apart, both sides of the paper's 1e-3 and 3e-3


def train(method: str, lr: float, steps: int, threads: int, out: Path) -> dict[str, Any]:
    """One run of the main job's settings for `method` at `lr`: its final
    held-out figures and its held-out curve."""
    command = [sys.executable, "-m", "sltrain_ext.train", "--method", method, "--lr", str(lr),
               "--steps", str(steps), "--out", str(out)]
    log = out.parent / f"{out.name}.log"
    with log.open("w") as output:  # the package of this checkout
        done = subprocess.run(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed (exit status {done.returncode}):\n{log.read_text()[-2000:]}")
    records = [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "val_bpb" in r]
    final = evaluations[-1]
    seconds = json.loads((out / "summary.json").read_text())["results"][0]["seconds"]
    return {"method": method, "lr": lr, "val_bpb": final["val_bpb"], "val_ppl": final["val_ppl"],
            "seconds": seconds, "curve": [(r["step"], r["val_bpb"]) for r in evaluations]}


def best_per_method(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run["method"] not in best or run["val_bpb"] < best[run["method"]]["val_bpb"]:
            best[run["method"]] = run
    return best


def markdown(payload: dict[str, Any]) -> str:
    best = payload["best"]
    lines = [f"# Learning-rate sweep at the main job's size ({payload['steps']} steps)", "",
             f"`{payload['command']}` on {payload['machine']}, torch {payload['torch']}, {payload['date']}.",
             f"Every setting of `python -m sltrain_ext.train` but `--method` and `--lr` ({payload['threads_per_run']} "
             "torch thread a run); one seed per point.", "",
             "| method | lr | held-out bits/byte | held-out ppl | training time |", "|---|---|---|---|---|"]
    for run in payload["runs"]:
        mark = " (best)" if best[run["method"]]["lr"] == run["lr"] else ""
        lines.append(f"| {run['method']} | {run['lr']:g}{mark} | {run['val_bpb']:.4f} | {run['val_ppl']:.3f} "
                     f"| {run['seconds']:.0f} s |")
    lines += ["", "Best per method: " + ", ".join(f"{m} at lr {b['lr']:g} ({b['val_bpb']:.4f} bits/byte)"
                                                    for m, b in best.items()) + ".", ""]
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (by_lr, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, method in enumerate(payload["best"]):
        runs = [r for r in payload["runs"] if r["method"] == method]
        by_lr.plot([r["lr"] for r in runs], [r["val_bpb"] for r in runs], "o-", color=f"C{i}", label=method)
        best = payload["best"][method]
        curves.plot(*zip(*best["curve"]), "o-", color=f"C{i}", label=f"{method}, lr {best['lr']:g}")
    by_lr.set_xscale("log")
    by_lr.set_xlabel("peak learning rate")
    by_lr.set_ylabel("final held-out bits per byte")
    by_lr.set_title(f"LLaMA-9m, {payload['steps']} steps of 16 x 256 tokens, builtin corpus")
    curves.set_xlabel("step")
    curves.set_ylabel("held-out bits per byte")
    curves.set_title("each method at its best learning rate")
    for ax in (by_lr, curves):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["full", "sltrain"])
    parser.add_argument("--lrs", nargs="+", type=float, default=list(GRID))
    parser.add_argument("--steps", type=int, default=200, help="steps per run (default 200: the main job's)")
    parser.add_argument("--name", default="lr_sweep", help="result file name in benchmarks/results")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads a run (default 1: on a shared machine, runs of one thread each waste "
                             "no time waiting for a descheduled sibling thread)")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    # Learning rate by learning rate, both methods at each, and the results
    # rewritten after every run: a sweep cut short still says what it found.
    with tempfile.TemporaryDirectory(prefix="lr_sweep_") as scratch, ThreadPoolExecutor(args.jobs) as pool:
        pending = [pool.submit(train, method, lr, args.steps, args.threads, Path(scratch) / f"{method}_{lr:g}")
                   for lr in args.lrs for method in args.methods]
        for finished in as_completed(pending):
            runs.append(finished.result())
            payload = {**header(), "steps": args.steps, "threads_per_run": args.threads, "methods": args.methods,
                       "lrs": args.lrs, "runs": sorted(runs, key=lambda run: (run["method"], run["lr"])),
                       "best": best_per_method(runs)}
            write_results(RESULTS, args.name, payload, markdown(payload))
            plot(payload, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
