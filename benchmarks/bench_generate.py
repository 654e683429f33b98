"""Greedy generation with Hugging Face ``generate`` (issue 24.4), on the CPU.

    python benchmarks/bench_generate.py

For each of LLaMA-60M and 350M shapes (random weights: speed does not depend
on them): a Hugging Face LlamaForCausalLM converted to SL form with the
paper's rank and density (SLLinear runs sl_matmul_inference on its 16-bit
columns), against the same model merged to dense. Times
max_new_tokens greedy tokens after an 8-token prompt at batch 1 and 16 (the
first generate call is a warm-up; the median of --repeats calls) and reports tokens/s and the weight bytes
a decode step reads: every parameter and support buffer except the input
embedding, of which a step reads one row per token. Writes
benchmarks/results/bench_generate_cpu.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import sltrain_ext as sl
from common import header, provenance, pyplot, write_results
from sltrain_ext import configs

RESULTS = Path(__file__).resolve().parent / "results"


def build(name: str) -> tuple[nn.Module, nn.Module]:
    import transformers

    config = configs.load(name)
    hf_config = transformers.LlamaConfig(
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        vocab_size=config.vocab_size, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config)
    sl.convert(model, rank=config.rank, density=config.density, alpha=config.alpha)
    for module in model.modules():
        if isinstance(module, sl.SLLinear):
            nn.init.normal_(module.B, std=0.02)
    model.eval()
    return model, sl.merge(copy.deepcopy(model)).eval()


def decode_step_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads (the input embedding table aside)."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)
    for module in model.modules():
        if isinstance(module, sl.SLLinear):
            total += module.row_ptr.numel() * 4 + module.col_idx.numel() * module.col_idx.element_size()
    return total


def tokens_per_second(model: nn.Module, batch: int, new_tokens: int, vocab: int, repeats: int) -> float:
    """New tokens per second of the median of `repeats` generate calls."""
    prompt = torch.randint(0, vocab, (batch, 8), generator=torch.Generator().manual_seed(batch))
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(prompt, **{**settings, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(prompt, **settings)
            times.append(time.perf_counter() - start)
        return batch * new_tokens / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["60m", "350m"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="generate calls timed per setting (median)")
    args = parser.parse_args()

    rows = []
    for name in args.models:
        model, merged = build(name)
        vocab = model.config.vocab_size
        sl_bytes, dense_bytes = decode_step_bytes(model), decode_step_bytes(merged)
        for batch in args.batches:
            sl_rate = tokens_per_second(model, batch, args.new_tokens, vocab, args.repeats)
            dense_rate = tokens_per_second(merged, batch, args.new_tokens, vocab, args.repeats)
            rows.append({"model": name, "batch": batch, "sl_tokens_per_s": sl_rate,
                         "dense_tokens_per_s": dense_rate, "speedup": sl_rate / dense_rate,
                         "sl_bytes_per_step": sl_bytes, "dense_bytes_per_step": dense_bytes,
                         "bytes_ratio": dense_bytes / sl_bytes})
        del model, merged
    payload = {**header(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spinning)"),
               "new_tokens": args.new_tokens, "rows": rows}
    lines = ["## Greedy generation, HF generate, fp32, CPU", "",
             "| model | batch | SL tokens/s | merged dense tokens/s | SL / dense speed | dense / SL bytes per step | "
             "SL MB per step | dense MB per step |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['sl_tokens_per_s']:.1f} | {r['dense_tokens_per_s']:.1f} | "
              f"{r['speedup']:.2f} | {r['bytes_ratio']:.2f} | {r['sl_bytes_per_step'] / 1e6:.0f} | "
              f"{r['dense_bytes_per_step'] / 1e6:.0f} |" for r in rows]
    lines += ["", provenance(payload, f"OMP_WAIT_POLICY {payload['omp_wait_policy']}",
                             f"{args.new_tokens} new tokens", f"median of {args.repeats}"), ""]
    write_results(RESULTS, "bench_generate_cpu", payload, "\n".join(lines))

    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [f"{r['model']} b={r['batch']}" for r in rows]
    axis.bar(labels, [r["speedup"] for r in rows], label="SL / dense tokens/s")
    axis.plot(labels, [r["bytes_ratio"] for r in rows], "ko", label="dense / SL bytes per step")
    axis.axhline(1.0, color="gray", linewidth=0.8)
    axis.set_title("Greedy generation on the CPU, SL vs merged dense")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "bench_generate_cpu.png", dpi=120)
    print(f"wrote {RESULTS / 'bench_generate_cpu.png'}")


if __name__ == "__main__":
    main()
