"""Analytic training memory of LLaMA 60M-7B: full-rank AdamW against SLTrain,
on one GPU and per GPU as data parallelism scales.

    python benchmarks/memory.py [--batch 4] [--seq 256] [--world-sizes 1,2,4,8]

Counts, per GPU and one training step, in GiB:
  weights      every trainable parameter (and the frozen support) in bf16
  indices      the sparse support: int64 flat indices (naive) or CSR (ours: int32
               row pointers, uint16 columns where the input width is <= 65536)
  gradients    bf16, one per trainable parameter; with per-layer updates only
               the largest single parameter's gradient is ever alive
  states       Adam moments: float32 (8 bytes a parameter), or 8-bit (2 bytes
               plus two float32 absmaxes per 256) or 4-bit (1 byte plus two
               float32 absmaxes per 128) for tensors of >= 4096 elements
  activations  with activation checkpointing: each layer's bf16 input, one
               layer's recomputed activations (Korthikanti et al. 2022,
               s*b*h*(34 + 5*a*s/h) bytes) and the float32 logits
  transient    what the SL layer materialises: naive SLTrain builds a full bf16
               W and dW of the largest matrix; ours at most its 64 MiB workspace
Every configuration uses float32 Adam states unless it says 8- or 4-bit, so
the columns compare like with like.

memory_check.md checks the model against the tensors themselves: the config
built on the meta device and converted, its parameters and index buffers
counted, SLAdamW's own states allocated by a step on meta gradients, the
per-layer schedule's largest gradient, and the largest layer's transient peak
from the allocation plan that the emulated CUDA bindings' ledger verifies
(cuda_layer_model.py; it includes that layer's output and input gradient,
which the activation term also counts, so it bounds the transient from above).

Per GPU at world size W (memory_scaling.md, `sltrain-train --dist ...`; the
micro-batch per GPU stays the same):
  ddp   each GPU holds all of the above; DDP's gradient buckets are the
        gradients (gradient_as_bucket_view), so nothing grows or shrinks
  fsdp  FSDP2 as the training command sets it up (a unit per decoder layer and
        the root, float32 shards, bf16 compute, float32 reduce-scatter):
        weights   float32 shards (4 bytes/W a parameter), the root's bf16
                  copy (embeddings, head; not resharded after forward) and
                  two decoder layers' bf16 copies (current and prefetched)
        gradients float32 shards (4/W a parameter; with per-layer updates
                  only one unit's), plus one unit's bf16 gradients and its
                  float32 reduce-scatter input
        states    32-bit moments, divided by W (8-bit states are refused
                  under FSDP2)
        indices, activations, transient: as on one GPU (supports replicated)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sltrain_ext import configs
from sltrain_ext.nn import COMPACT_INDEX_LIMIT
from common import header, pyplot, write_results

GIB = 2**30
BF16 = 2
WORKSPACE = 64 * 2**20
QUANT_BLOCK = 256
QUANT4_BLOCK = 128
MIN_8BIT_NUMEL = 4096

METHODS = {
    "full-rank AdamW": dict(sl=False, naive=False, bits=32, per_layer=False),
    "naive SLTrain + AdamW": dict(sl=True, naive=True, bits=32, per_layer=False),
    "ours + AdamW": dict(sl=True, naive=False, bits=32, per_layer=False),
    "ours + 8-bit + per-layer": dict(sl=True, naive=False, bits=8, per_layer=True),
    "ours + 4-bit + per-layer": dict(sl=True, naive=False, bits=4, per_layer=True),
    "ours + 8-bit": dict(sl=True, naive=False, bits=8, per_layer=False),
    "ours + AdamW + per-layer": dict(sl=True, naive=False, bits=32, per_layer=True),
}
ONE_GPU = ["full-rank AdamW", "naive SLTrain + AdamW", "ours + AdamW", "ours + 8-bit + per-layer",
           "ours + 4-bit + per-layer"]
CHECKED = ["ours + 8-bit + per-layer", "ours + 4-bit + per-layer"]  # memory_check.md, LLaMA-7B
# (method, --dist) pairs the training command accepts: no per-layer under DDP, no 8-bit under FSDP2.
SCALING = [("full-rank AdamW", "ddp"), ("full-rank AdamW", "fsdp"), ("ours + AdamW", "ddp"), ("ours + 8-bit", "ddp"),
           ("ours + AdamW", "fsdp"), ("ours + AdamW + per-layer", "fsdp")]


def state_bytes(numel: int, bits: int) -> float:
    if bits == 8 and numel >= MIN_8BIT_NUMEL:
        return 2 * numel + 2 * 4 * -(-numel // QUANT_BLOCK)
    if bits == 4 and numel >= MIN_8BIT_NUMEL:
        return 2 * -(-numel // 2) + 2 * 4 * -(-numel // QUANT4_BLOCK)
    return 8 * numel


def activation_bytes(config: configs.LlamaConfig, batch: int, seq: int) -> float:
    h, a, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    tokens = batch * seq
    checkpoints = layers * tokens * h * BF16
    one_layer = tokens * h * (34 + 5 * a * seq / h)
    logits = tokens * config.vocab_size * 4
    return checkpoints + one_layer + logits


def breakdown(config: configs.LlamaConfig, method: dict, batch: int, seq: int) -> dict[str, float]:
    tensors = config.parameter_numels(sltrain=method["sl"])
    nnz = config.sltrain_nnz() if method["sl"] else 0
    if not method["sl"]:
        indices = 0
    elif method["naive"]:
        indices = 8 * nnz
    else:
        # int32 row pointers; uint16 columns where the layer's input width allows (SLLinear).
        indices = sum((4 * (m + 1) + (2 if n <= COMPACT_INDEX_LIMIT else 4) * round(config.density * m * n)) * c
                      for (m, n), c in config.linear_shapes().items())
    largest = max(m * n for m, n in config.linear_shapes())
    if not method["sl"]:
        transient = 0
    elif method["naive"]:
        transient = 2 * BF16 * largest
    else:
        transient = min(WORKSPACE, 2 * BF16 * largest)
    parts = {
        "weights": BF16 * sum(tensors),
        "indices": indices,
        "gradients": BF16 * (max(tensors) if method["per_layer"] else sum(tensors)),
        "states": sum(state_bytes(t, method["bits"]) for t in tensors),
        "activations": activation_bytes(config, batch, seq),
        "transient": transient,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def measured_breakdown(config: configs.LlamaConfig, method: dict, batch: int, seq: int) -> dict[str, float]:
    """`breakdown`'s parts from the tensors: the SLTrain model built on the
    meta device (no memory) in bf16, SLAdamW's states as its own step
    allocates them, and the largest SL layer's transient peak from the
    allocation plan of the CUDA bindings (activations stay analytic)."""
    import torch

    import sltrain_ext as sl
    from cuda_layer_model import Layer, materialized_peak
    from sltrain_ext.llama import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    sl.convert(model, rank=config.rank, density=config.density, alpha=config.alpha)
    model = model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = sl.SLAdamW(params, state_bits=method["bits"], min_8bit_numel=MIN_8BIT_NUMEL)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()  # on meta tensors: allocates the states, checks the op's arguments, computes nothing
    grads = [p.grad.numel() * p.grad.element_size() for p in params]
    layers = [m for m in model.modules() if isinstance(m, sl.SLLinear)]
    tokens = batch * seq
    transient = max(materialized_peak(Layer(b=tokens, m=m.out_features, n=m.in_features, r=m.rank,
                                            nnz=m.col_idx.numel(), column_bytes=m.col_idx.element_size()))
                    for m in layers)
    parts = {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "indices": sum(b.numel() * b.element_size() for b in model.buffers() if b.dtype in (torch.int32, torch.uint16)),
        "gradients": max(grads) if method["per_layer"] else sum(grads),
        "states": sum(t.numel() * t.element_size() for state in optimizer.state.values()
                      for t in state.values() if torch.is_tensor(t)),
        "activations": activation_bytes(config, batch, seq),
        "transient": transient,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def decoder_layer_numel(config: configs.LlamaConfig, sl: bool) -> int:
    """Trainable elements of one decoder layer: one FSDP2 unit."""
    layers = config.num_hidden_layers
    projections = sum((config.rank * (m + n) + round(config.density * m * n) if sl else m * n) * count // layers
                      for (m, n), count in config.linear_shapes().items())
    return 2 * config.hidden_size + projections


def per_gpu(config: configs.LlamaConfig, method: dict, dist: str, world: int, batch: int, seq: int) -> dict[str, float]:
    parts = breakdown(config, method, batch, seq)
    if dist == "ddp":
        return parts
    tensors = config.parameter_numels(sltrain=method["sl"])
    layer = decoder_layer_numel(config, method["sl"])
    root = sum(tensors) - config.num_hidden_layers * layer
    unit = max(layer, root)
    parts["weights"] = (4 * sum(tensors) / world + BF16 * root + 2 * BF16 * layer) / GIB
    parts["gradients"] = (4 * (unit if method["per_layer"] else sum(tensors)) / world + (BF16 + 4) * unit) / GIB
    parts["states"] = sum(state_bytes(t, 32) for t in tensors) / world / GIB
    parts["total"] = sum(v for k, v in parts.items() if k != "total")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences per GPU micro-batch (default 4)")
    parser.add_argument("--seq", type=int, default=256, help="sequence length (default 256)")
    parser.add_argument("--world-sizes", default="1,2,4,8", help="GPUs per data-parallel run (default 1,2,4,8)")
    parser.add_argument("--scaling-configs", default="1b,7b", help="configs of the scaling table (default 1b,7b)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    worlds = [int(w) for w in args.world_sizes.split(",")]
    if any(w < 1 for w in worlds):
        parser.error("--world-sizes: every world size must be at least 1")
    try:
        scaling_configs = {name: configs.load(name) for name in args.scaling_configs.split(",")}
    except ValueError as error:
        parser.error(f"--scaling-configs: {error}")

    rows = []
    for name in ("60m", "130m", "350m", "1b", "7b"):
        config = configs.load(name)
        full_total = None
        for method_name in ONE_GPU:
            method = METHODS[method_name]
            parts = breakdown(config, method, args.batch, args.seq)
            full_total = full_total or parts["total"]
            rows.append({"config": name.upper(), "method": method_name, **parts,
                         "saving_vs_full_rank": 1 - parts["total"] / full_total})

    meta = header() | {"batch": args.batch, "seq": args.seq}
    keys = ["weights", "indices", "gradients", "states", "activations", "transient", "total"]
    lines = [f"Analytic per-GPU training memory in GiB, micro-batch {args.batch} x {args.seq} tokens, "
             f"activation checkpointing, bf16 weights. Command: `{meta['command']}` ({meta['date']}).", "",
             "| config | method | " + " | ".join(keys) + " | saving vs full-rank |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for row in rows:
        cells = [row["config"], row["method"], *(f"{row[k]:.2f}" for k in keys), f"{100 * row['saving_vs_full_rank']:.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    write_results(args.out, "memory", meta | {"rows": rows}, "\n".join(lines))
    plot(args.out / "memory.png", rows, keys[:-1])

    check_config = configs.load("7b")
    checked = [{"method": name, "source": source, **parts} for name in CHECKED
               for source, parts in (("analytic", breakdown(check_config, METHODS[name], args.batch, args.seq)),
                                     ("measured", measured_breakdown(check_config, METHODS[name], args.batch,
                                                                     args.seq)))]
    lines = [f"LLaMA-7B SLTrain, per-layer updates, micro-batch {args.batch} x {args.seq}, activation checkpointing: "
             "the analytic model against the tensors (built on the meta device; states from SLAdamW's own step; "
             "transient: the largest layer's peak from the ledger-checked allocation plan), GiB. "
             f"Command: `{meta['command']}` ({meta['date']}).", "",
             "| method | source | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for row in checked:
        lines.append(f"| {row['method']} | {row['source']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    lines.append("")
    write_results(args.out, "memory_check", meta | {"rows": checked}, "\n".join(lines))

    scaling = [{"config": name.upper(), "method": method_name, "dist": dist, "world_size": world,
                **per_gpu(config, METHODS[method_name], dist, world, args.batch, args.seq)}
               for name, config in scaling_configs.items() for method_name, dist in SCALING for world in worlds]
    lines = [f"Analytic training memory per GPU in GiB against the number of GPUs (`sltrain-train --dist ddp|fsdp`), "
             f"micro-batch {args.batch} x {args.seq} tokens per GPU, activation checkpointing. "
             f"Command: `{meta['command']}` ({meta['date']}).", "",
             "| config | method | --dist | " + " | ".join(f"{w} GPU{'s' * (w > 1)}" for w in worlds) + " |",
             "|---|---|---|" + "---|" * len(worlds)]
    for name in scaling_configs:
        for method_name, dist in SCALING:
            totals = [r["total"] for r in scaling if (r["config"], r["method"], r["dist"]) == (name.upper(), method_name, dist)]
            lines.append(f"| {name.upper()} | {method_name} | {dist} | " + " | ".join(f"{t:.2f}" for t in totals) + " |")
    lines.append("")
    write_results(args.out, "memory_scaling", meta | {"rows": scaling}, "\n".join(lines))
    plot_scaling(args.out / "memory_scaling.png", scaling, worlds)


def panels_per_config(rows: list[dict], panel_width: float) -> tuple[Any, list[tuple[Any, str]]] | None:
    """A figure with a panel per config in `rows`, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    shown = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(shown), figsize=(panel_width * len(shown), 4.2), squeeze=False)
    return fig, list(zip(axes[0], shown))


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot(path: Path, rows: list[dict], parts: list[str]) -> None:
    figure = panels_per_config(rows, panel_width=3.2)
    if figure is None:
        return
    fig, panels = figure
    for ax, config in panels:
        subset = [r for r in rows if r["config"] == config]
        bottom = [0.0] * len(subset)
        for part in parts:
            values = [r[part] for r in subset]
            ax.bar(range(len(subset)), values, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(subset)), ["full", "naive SL", "ours", "ours 8b+PL", "ours 4b+PL"], rotation=30,
                      ha="right")
        ax.set_title(f"LLaMA-{config}")
    panels[0][0].set_ylabel("GiB per GPU")
    panels[-1][0].legend(fontsize=8)
    save_figure(fig, path)


def plot_scaling(path: Path, rows: list[dict], worlds: list[int]) -> None:
    figure = panels_per_config(rows, panel_width=5.2)
    if figure is None:
        return
    fig, panels = figure
    for ax, config in panels:
        for i, (method, dist) in enumerate(SCALING):
            totals = [r["total"] for r in rows if (r["config"], r["method"], r["dist"]) == (config, method, dist)]
            ax.plot(worlds, totals, "o-" if dist == "fsdp" else "s--", color=f"C{i}", label=f"{method}, {dist}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(worlds, [str(w) for w in worlds])
        ax.set_xlabel("GPUs")
        ax.set_title(f"LLaMA-{config}")
        ax.grid(alpha=0.3)
    panels[0][0].set_ylabel("GiB per GPU (analytic)")
    panels[-1][0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
