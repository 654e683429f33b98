"""What quantised optimizer states cost in quality: LLaMA SLTrain trained with
32-, 8- and 4-bit SLAdamW moments, same seed, data and schedule.

    python benchmarks/bench_state_bits.py                    # 9M and 20M, three seeds: the committed run
    python benchmarks/bench_state_bits.py --configs 9m --seeds 0 --steps 20 --eval-every 10   # a smoke run

Runs are independent: ``--state-bits 4`` (say) trains only those, so that
the runs can go in parallel processes; a last call without it finds them
finished (``--resume if-exists``) and writes the report. ``--report`` writes
it from the runs' metrics as they stand, without training: a run that has not
reached ``--steps`` is compared with the 32-bit run at its last evaluation.

Each run is ``sltrain-train --method sltrain --state-bits B`` on the built-in
corpus (its BPE of 1024 tokens) on the CPU, in float32; only the moments'
precision differs between the three runs of a config and seed. Each
evaluation reads the whole held-out split (--eval-batches x --batch-size x
--seq-len tokens: 32 x 8 x 128 = 32,768 of its 33,060). Reports the held-out
bits per byte at every evaluation and at the end, and each quantised run's
final value relative to the 32-bit run's of the same seed; a config's verdict
is on the mean of those over the seeds (the issue's targets at 20M: 4-bit
within 1 %, 8-bit within 0.5 %), beside the spread between seeds of the
32-bit runs themselves, which says what difference the runs can resolve.
Writes bench_state_bits.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from common import header, pyplot, write_results
from sltrain_ext import train
from sltrain_ext.run_log import RunLog

STATE_BITS = (32, 8, 4)
TARGETS = {8: 0.005, 4: 0.01}  # relative excess of the final held-out loss over 32-bit's, at 20M


def run_one(config: str, bits: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains one run to --steps (unless --report) and returns its held-out curve."""
    out = args.work / f"{config}_{bits}bit_seed{seed}"
    argv = ["--config", config, "--method", "sltrain", "--state-bits", str(bits), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--eval-every",
            str(args.eval_every), "--eval-batches", str(args.eval_batches), "--save-every", str(args.steps),
            "--seed", str(seed), "--device", "cpu", "--out", str(out), "--resume", "if-exists"]
    if not args.report:
        train.main(argv)
    records = RunLog("sltrain", out / "sltrain", leader=True).records()
    curve = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
    if not curve:
        raise SystemExit(f"bench_state_bits: {out} has no held-out evaluation yet")
    # Training seconds from the steps' own timings (a resumed or reported run has no single wall clock).
    seconds = sum(r.get("data_s", 0.0) + r.get("compute_s", 0.0) + r.get("optimizer_s", 0.0) for r in records)
    return {"config": config, "state_bits": bits, "seed": seed, "steps": curve[-1][0], "final_val_bpb": curve[-1][1],
            "curve": curve, "seconds": seconds, "command": "sltrain-train " + " ".join(argv)}


def excess_over_32_bit(run: dict[str, Any], runs: list[dict[str, Any]]) -> float | None:
    """The run's final held-out bpb relative to the 32-bit run of its config and
    seed at the same step (None if that run has no evaluation there)."""
    full = next(r for r in runs if r["config"] == run["config"] and r["seed"] == run["seed"]
                and r["state_bits"] == 32)
    reference = dict(full["curve"]).get(run["steps"])
    return None if reference is None else run["final_val_bpb"] / reference - 1.0


def summaries(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per config and precision: the mean final bpb over the seeds, the mean and
    range of the paired excess over 32-bit, and the verdict on the mean."""
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        for bits in STATE_BITS:
            group = [r for r in runs if r["config"] == config and r["state_bits"] == bits]
            finals = [r["final_val_bpb"] for r in group]
            excesses = [excess_over_32_bit(r, runs) for r in group]
            row = {"config": config, "state_bits": bits, "seeds": [r["seed"] for r in group],
                   "mean_final_val_bpb": statistics.fmean(finals),
                   "seed_spread": (max(finals) - min(finals)) / statistics.fmean(finals),
                   "finished": all(r["steps"] == args.steps for r in group)}
            if bits != 32 and None not in excesses:
                row.update(mean_excess=statistics.fmean(excesses), min_excess=min(excesses),
                           max_excess=max(excesses), target=TARGETS[bits],
                           met=statistics.fmean(excesses) <= TARGETS[bits])
            rows.append(row)
    return rows


def markdown(runs: list[dict[str, Any]], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    tokens = args.batch_size * args.seq_len
    lines = [f"# Optimizer state precision: held-out bits per byte ({args.steps} steps, "
             f"{args.batch_size} x {args.seq_len} tokens a step, CPU)", "",
             "Per config and precision, over the seeds: the mean final held-out bpb; each quantised run "
             "against the 32-bit run of its seed (mean and range of the relative difference); for 32-bit, "
             "the spread of its final values between seeds (max - min over the mean).", "",
             "| config | state bits | seeds | mean held-out bpb | vs 32-bit, mean | vs 32-bit, range | "
             "32-bit spread between seeds | target | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        seeds = ",".join(map(str, row["seeds"]))
        if row["state_bits"] == 32:
            lines.append(f"| {row['config']} | 32 | {seeds} | {row['mean_final_val_bpb']:.4f} | - | - | "
                         f"{row['seed_spread']:.2%} | - | - |")
            continue
        if "mean_excess" not in row:
            lines.append(f"| {row['config']} | {row['state_bits']} | {seeds} | {row['mean_final_val_bpb']:.4f} | "
                         "- | - | - | - | no 32-bit evaluation at that step |")
            continue
        verdict = ("met" if row["met"] else "NOT met") + ("" if row["finished"] else " (runs unfinished)")
        lines.append(f"| {row['config']} | {row['state_bits']} | {seeds} | {row['mean_final_val_bpb']:.4f} | "
                     f"{row['mean_excess']:+.2%} | {row['min_excess']:+.2%} to {row['max_excess']:+.2%} | - | "
                     f"<= {row['target']:.1%} | {verdict} |")
    lines += ["", "Every run (training seconds from the steps' own timings):", "",
              "| config | state bits | seed | steps | held-out bpb | vs 32-bit, same seed | training seconds |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        excess = excess_over_32_bit(run, runs)
        lines.append(f"| {run['config']} | {run['state_bits']} | {run['seed']} | {run['steps']} | "
                     f"{run['final_val_bpb']:.4f} | {'-' if excess is None else format(excess, '+.2%')} | "
                     f"{run['seconds']:.0f} |")
    lines += ["", f"{tokens} tokens a step; command: `python benchmarks/bench_state_bits.py "
              f"--configs {args.configs} --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
              f"--batch-size {args.batch_size} --seq-len {args.seq_len} --eval-every {args.eval_every} "
              f"--eval-batches {args.eval_batches}`"]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Top: the held-out curves, one line a run. Bottom: each quantised run
    against the 32-bit run of its seed at every evaluation, in percent (the
    curves overlap at the top's scale)."""
    plt = pyplot()
    if plt is None:
        return
    configs = list(dict.fromkeys(r["config"] for r in runs))
    fig, axes = plt.subplots(2, len(configs), figsize=(6.5 * len(configs), 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = dict(zip(STATE_BITS, ("C0", "C1", "C2")))
    first_seed = min(r["seed"] for r in runs)
    for column, config in enumerate(configs):
        curves, excess = axes[0][column], axes[1][column]
        for run in (r for r in runs if r["config"] == config):
            bits, label = run["state_bits"], f"{run['state_bits']}-bit states" if run["seed"] == first_seed else None
            steps, bpb = zip(*run["curve"])
            curves.plot(steps, bpb, "-", color=colors[bits], linewidth=1.2, alpha=0.8, label=label)
            if bits != 32:
                full = dict(next(r for r in runs if r["config"] == config and r["seed"] == run["seed"]
                                 and r["state_bits"] == 32)["curve"])
                shared = [(s, 100 * (v / full[s] - 1)) for s, v in run["curve"] if s in full]
                excess.plot(*zip(*shared), "-", color=colors[bits], linewidth=1.2, alpha=0.8, label=label)
        for bits, target in TARGETS.items():
            excess.axhline(100 * target, color=colors[bits], linestyle=":", linewidth=1,
                           label=f"{bits}-bit target at 20M")
        excess.axhline(0, color="gray", linewidth=0.8)
        curves.set_title(f"LLaMA-{config} SLTrain (one line a seed)")
        curves.set_ylabel("held-out bits per byte")
        excess.set_ylabel("vs 32-bit, same seed (%)")
        excess.set_xlabel("step")
        for axis in (curves, excess):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="9m,20m", help="comma-separated configs (default 9m,20m)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run (default 1000)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences a step (default 8)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens a sequence (default 128)")
    parser.add_argument("--eval-every", type=int, default=50, help="held-out evaluation period (default 50)")
    parser.add_argument("--eval-batches", type=int, default=32,
                        help="held-out batches an evaluation (default 32: the whole split at 8 x 128)")
    parser.add_argument("--state-bits", type=int, choices=STATE_BITS, help="train only this precision (no report)")
    parser.add_argument("--report", action="store_true", help="report the runs as they stand, without training")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="each precision trains once a seed (default 0 1 2)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_state_bits"),
                        help="training folders (a rerun resumes finished runs from their checkpoints)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.state_bits is not None:
        for config in args.configs.split(","):
            for seed in args.seeds:
                run_one(config, args.state_bits, seed, args)
        return
    runs = [run_one(config, bits, seed, args) for config in args.configs.split(",") for seed in args.seeds
            for bits in STATE_BITS]
    rows = summaries(runs, args)
    text = markdown(runs, rows, args)
    write_results(args.out, "bench_state_bits", {**header(), "settings": {k: str(v) for k, v in vars(args).items()},
                                                "summary": rows, "runs": runs}, text)
    plot(runs, args.out / "bench_state_bits.png")


if __name__ == "__main__":
    main()
