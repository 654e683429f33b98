"""One optimizer step over every trainable tensor of an SLTrain LLaMA config.

    python benchmarks/bench_optim.py                          # CPU: LLaMA-60M
    python benchmarks/bench_optim.py --config 1b --device cuda

Part 1, bandwidth: SLAdamW (32-bit and 8-bit states) against
torch.optim.AdamW with its foreach and fused implementations, on the same
parameters (float32, random gradients). Effective bandwidth counts the bytes
every step must move: param, grad and every state tensor read, param and
states written. The same run measures this machine's copy bandwidth (a large
``Tensor.copy_``: bytes read plus bytes written) and reports each optimizer as
a fraction of it.

Part 2, host time: the wall time of ``step()`` over LLaMA-1B's 555 trainable
tensors as one-element stand-ins, where the kernels cost next to nothing and
what is left is the per-parameter bookkeeping (on a GPU: the time until every
kernel is queued, no synchronisation).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sltrain_ext as sl
from sltrain_ext import configs
from common import header, measure, pyplot, write_results

HOST_CONFIG = "1b"  # the parameter list whose bookkeeping part 2 times
COPY_BYTES = 1 << 28  # per buffer: far beyond any cache

Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "SLAdamW (fp32 states)": lambda ps: sl.SLAdamW(ps, lr=1e-4),
    "SLAdamW (8-bit states)": lambda ps: sl.SLAdamW(ps, lr=1e-4, state_bits=8),
    "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True),
    "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
}
HOST_OPTIMIZERS: dict[str, Factory] = {
    "SLAdamW (fp32 states)": OPTIMIZERS["SLAdamW (fp32 states)"],
    "SLAdamW (8-bit states)": lambda ps: sl.SLAdamW(ps, lr=1e-4, state_bits=8, min_8bit_numel=0),
    "SLAdamW (fp32, max_grad_norm)": lambda ps: sl.SLAdamW(ps, lr=1e-4, max_grad_norm=1.0),
    "torch AdamW foreach": OPTIMIZERS["torch AdamW foreach"],
    "torch AdamW fused": OPTIMIZERS["torch AdamW fused"],
}


def make_params(numels: list[int], device: torch.device) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for numel in numels:
        p = torch.nn.Parameter(torch.randn(numel, device=device, generator=gen))
        p.grad = torch.randn(numel, device=device, generator=gen)
        params.append(p)
    return params


def device_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call's time until the device has finished it (CUDA events on a GPU)."""
    return measure(fn, device, 1, warmup=0)


def host_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call's wall time on the host, from an idle device until fn returns
    (on a GPU: every kernel queued, none waited for)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved_ms(steps: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                   clock: Callable[[Callable[[], object], torch.device], float] = device_ms) -> dict[str, float]:
    """Median milliseconds of each function, timed round-robin (one call of
    each per round), so that a shared machine's changing load falls on all of
    them alike rather than on whichever ran during a busy spell."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for round_ in range(repeats + 2):  # two warm-up rounds
        for label, step in steps.items():
            ms = clock(step, device)
            if round_ >= 2:
                times[label].append(ms)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {label: statistics.median(values) for label, values in times.items()}


def stand_in_optimizer(make: Factory, numels: list[int], device: torch.device) -> torch.optim.Optimizer:
    """The optimizer over one-element stand-ins of the given parameter list, every gradient set."""
    params = [torch.nn.Parameter(torch.zeros(1, device=device)) for _ in numels]
    for p in params:
        p.grad = torch.ones(1, device=device)
    return make(params)


def chart(path: Path, rows: list[dict], copy_gb_per_s: float, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [r["optimizer"] for r in rows]
    ax.barh(labels, [r["gb_per_s"] for r in rows], color="tab:blue")
    ax.axvline(copy_gb_per_s, color="tab:red", linestyle="--", label=f"copy_ {copy_gb_per_s:.1f} GB/s")
    ax.set_xlim(0, 1.15 * max(copy_gb_per_s, *(r["gb_per_s"] for r in rows)))
    ax.set_xlabel("effective GB/s (bytes a step must move / step time)")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=configs.available(), default=None,
                        help="default: 1b on a GPU, 60m on the CPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per optimizer (median)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    name = args.config or ("1b" if on_gpu else "60m")
    repeats = args.repeats or (20 if on_gpu else 5)
    numels = configs.load(name).parameter_numels(sltrain=True)
    total = sum(numels)

    # Every optimizer on its own copy of the parameters, all alive at once.
    optimizers = {label: make(make_params(numels, device)) for label, make in OPTIMIZERS.items()}
    copy_source = torch.ones(COPY_BYTES // 4, device=device)
    copy_target = torch.empty_like(copy_source)
    steps = {label: optimizer.step for label, optimizer in optimizers.items()}
    ms_of = interleaved_ms({"copy_": lambda: copy_target.copy_(copy_source), **steps}, device, repeats)
    copy_bytes_per_s = 2 * COPY_BYTES / (ms_of["copy_"] / 1e3)  # read + write
    del copy_source, copy_target
    rows = []
    for label, optimizer in optimizers.items():
        ms = ms_of[label]
        state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        moved = total * 4 * 3 + 2 * state_bytes  # param r+w, grad r, states r+w
        rows.append({"optimizer": label, "ms": ms, "gb_per_s": moved / ms / 1e6,
                     "copy_fraction": moved / (ms / 1e3) / copy_bytes_per_s, "state_bytes": state_bytes})
    del optimizers

    host_numels = configs.load(HOST_CONFIG).parameter_numels(sltrain=True)
    host_steps = {label: stand_in_optimizer(make, host_numels, device).step for label, make in HOST_OPTIMIZERS.items()}
    host_rows = [{"optimizer": label, "ms": ms}
                 for label, ms in interleaved_ms(host_steps, device, max(repeats, 20), clock=host_ms).items()]
    fused_host = next(r["ms"] for r in host_rows if r["optimizer"] == "torch AdamW fused")

    base = {r["optimizer"]: r["ms"] for r in rows}
    copy_gb_per_s = copy_bytes_per_s / 1e9
    meta = header() | {"config": name, "tensors": len(numels), "elements": total, "repeats": repeats,
                       "copy_gb_per_s": copy_gb_per_s, "host_config": HOST_CONFIG,
                       "host_tensors": len(host_numels)}
    lines = [f"One step over the {len(numels)} trainable tensors ({total / 1e6:.1f} M float32 elements) of "
             f"SLTrain LLaMA-{name.upper()}; {meta['machine']}, torch {meta['torch']}, {meta['date']}, "
             f"median of {repeats} rounds, each timing every optimizer and the copy once. "
             f"Command: `{meta['command']}`", "",
             f"Copy bandwidth measured in the same run (`Tensor.copy_` of {COPY_BYTES >> 20} MiB, "
             f"read + write): **{copy_gb_per_s:.1f} GB/s**.", "",
             "| optimizer | ms | effective GB/s | of copy bandwidth | vs torch foreach | vs torch fused | "
             "state MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['ms']:.2f} | {r['gb_per_s']:.1f} | {r['copy_fraction']:.2f} | "
                     f"{base['torch AdamW foreach'] / r['ms']:.2f}x | {base['torch AdamW fused'] / r['ms']:.2f}x | "
                     f"{r['state_bytes'] / 2**20:.0f} |")
    lines += ["", f"Host time of one `step()` over LLaMA-{HOST_CONFIG.upper()}'s {len(host_numels)} trainable "
              f"tensors as one-element stand-ins on {device.type} (bookkeeping and launches; median of "
              f"{max(repeats, 20)} interleaved rounds):", "",
              "| optimizer | host ms | vs torch fused |", "|---|---|---|"]
    for r in host_rows:
        lines.append(f"| {r['optimizer']} | {r['ms']:.3f} | {r['ms'] / fused_host:.2f} |")
    lines.append("")
    stem = f"bench_optim_{name}_{device.type}"
    write_results(args.out, stem, meta | {"rows": rows, "host_rows": host_rows}, "\n".join(lines))
    chart(args.out / f"{stem}.png", rows, copy_gb_per_s,
          f"LLaMA-{name.upper()} optimizer step, {meta['machine']}, {meta['date']}")


if __name__ == "__main__":
    main()
