"""Pretrain LLaMA with SLTrain, low-rank or full-rank weights.

    python -m sltrain_ext.train                      # the main job: a small model, SLTrain and full-rank, on the CPU
    sltrain-train --config 60m --method sltrain --steps 2000 --device cuda

Each method trains in its own folder under --out (metrics.jsonl, checkpoints/,
and the final model via save_pretrained); at the end the run prints a summary,
writes summary.json and plots the loss curves to loss_curves.png.

Data comes from token shards (see sltrain-prepare): --data names a prepared
folder, raw files (prepared into --out/data on first use) or the built-in
corpus (prepared once, with a BPE trained on it, under ~/.cache/sltrain_ext).
Held-out loss is also reported in bits per UTF-8 byte, which does not depend
on the tokenizer.

Data parallel on several processes (GPUs, or CPU processes with gloo):
    torchrun --nproc_per_node 2 -m sltrain_ext.train --dist ddp ...    # or --dist fsdp
Each step's global batch is the same as in a single process and is split
across the ranks. Checkpoints are torch.distributed.checkpoint folders that
each rank writes its own shards to; they resume at any world size and under
any --dist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

from . import configs
from .checkpointing import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from .convert import convert
from .corpus import BUILTIN
from .llama import LlamaForCausalLM, causal_lm_loss, perplexity
from .nonfinite import ReplayWithout, gradients_finite, on_every_rank
from .optim import SLAdamW
from .preemption import PREEMPTED_EXIT_STATUS, StopOnSignal
from .prepare import training_corpus
from .pretrained import save_pretrained
from .shards import PreparedCorpus, WindowSampler
from .tokenization import padded_vocab_size

METHODS = ("full", "lowrank", "sltrain")
DEFAULT_LR = {"full": 1e-3, "lowrank": 3e-3, "sltrain": 3e-3}  # the SLTrain paper's settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sltrain-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--config", default="9m",
                       help=f"LLaMA config: one of {', '.join(configs.available())} or a JSON path (default 9m)")
    model.add_argument("--method", default="sltrain,full",
                       help="comma-separated methods to train, of full, lowrank, sltrain (default sltrain,full)")
    model.add_argument("--rank", type=int, help="low-rank r (default: the config's)")
    model.add_argument("--density", type=float, help="sparse density (default: the config's)")
    model.add_argument("--alpha", type=float, help="low-rank scale numerator, s = alpha / r (default: the config's)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200: the main job)")
    train.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step; --resume continues")
    train.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (default 16)")
    train.add_argument("--accumulation", type=int, default=1, help="micro-batches per step (default 1)")
    train.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    train.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 full, 3e-3 lowrank/sltrain)")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    train.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 disables (default 1)")
    train.add_argument("--max-bad-steps", type=int, default=10,
                       help="stop after this many consecutive steps with a non-finite loss or gradient, "
                            "each skipped without an update (default 10)")
    train.add_argument("--state-bits", type=int, choices=(8, 32), default=32, help="SLAdamW moment precision")
    train.add_argument("--per-layer", action="store_true",
                       help="update each parameter during backward and free its gradient (clipping per parameter)")
    train.add_argument("--checkpointing", action="store_true", help="activation checkpointing per decoder layer")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("data and run")
    run.add_argument("--data", default=BUILTIN,
                     help="a folder prepared by sltrain-prepare; corpus files or a folder of them (.txt, .jsonl, "
                          "C4's .json.gz, .parquet), prepared into --out/data on first use; or 'builtin' "
                          "(Python's own documentation, offline; the default)")
    run.add_argument("--tokenizer", help="for raw --data: a tokenizer.json, a SentencePiece .model or 'byte' "
                                         "(default: a byte-level BPE trained on the corpus)")
    run.add_argument("--vocab-size", type=int, help="vocabulary of that BPE (default 1024 for builtin, else 32000)")
    run.add_argument("--eval-every", type=int, default=50, help="held-out evaluation period in steps (default 50)")
    run.add_argument("--eval-batches", type=int, default=8, help="held-out batches per evaluation (default 8)")
    run.add_argument("--save-every", type=int, default=200, help="checkpoint period in steps (default 200)")
    run.add_argument("--keep-checkpoints", type=int, default=2,
                     help="how many of the newest checkpoints to keep (default 2)")
    run.add_argument("--out", type=Path, default=Path("runs/main"), help="output folder (default runs/main)")
    run.add_argument("--resume", nargs="?", const="required", choices=("required", "if-exists"),
                     help="continue from the checkpoints in --out; an error if there is none, unless "
                          "`--resume if-exists` (then a method without one starts from step 0)")
    run.add_argument("--dist", choices=("none", "ddp", "fsdp"), default="none",
                     help="ddp: DistributedDataParallel; fsdp: FSDP2 (fully_shard per decoder layer); across "
                          "the processes torchrun starts (NCCL on GPUs, gloo on the CPU)")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    run.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="parameter dtype: auto is bfloat16 on a GPU, float32 on the CPU")
    args = parser.parse_args(argv)

    args.methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for method in args.methods:
        if method not in METHODS:
            parser.error(f"--method: unknown method {method!r}; choose from {', '.join(METHODS)}")
    for name in ("steps", "batch_size", "accumulation", "seq_len", "eval_every", "eval_batches", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    distributed = args.dist != "none"
    args.world_size = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    args.dist_rank = int(os.environ.get("RANK", "0")) if distributed else 0
    if distributed and "WORLD_SIZE" not in os.environ:
        parser.error(f"--dist {args.dist} runs under torchrun "
                     f"(torchrun --nproc_per_node N -m sltrain_ext.train --dist {args.dist})")
    if args.dist == "ddp" and args.per_layer:
        parser.error("--per-layer cannot be combined with --dist ddp: DDP keeps every gradient in its all-reduce "
                     "buckets (so nothing would be freed) and reduces them after the per-layer hooks run; "
                     "use --dist fsdp, which reduces each gradient before its update")
    if args.dist == "fsdp" and args.state_bits == 8:
        parser.error("--state-bits 8 cannot be combined with --dist fsdp yet: 8-bit state blocks do not reshard")
    if args.batch_size % (args.accumulation * args.world_size):
        parser.error("--batch-size must be a multiple of --accumulation times the number of processes")
    if args.density is not None and not 0.0 < args.density <= 1.0:
        parser.error(f"--density must be in (0, 1], got {args.density}")
    if args.keep_checkpoints < 1:
        parser.error("--keep-checkpoints must be at least 1")
    if args.max_bad_steps < 1:
        parser.error("--max-bad-steps must be at least 1")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        parser.error("--stop-after must be between 1 and --steps")
    if not 0.0 <= args.warmup < 1.0:
        parser.error("--warmup must be in [0, 1)")
    try:
        args.llama = configs.load(args.config)
    except ValueError as error:
        parser.error(f"--config: {error}")
    args.device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                               else "cpu" if args.device == "auto" else args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.device.type == "cuda" and distributed:
        args.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    args.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if args.device.type == "cuda" else torch.float32)
    return args


def build_model(args: argparse.Namespace, method: str, vocab_size: int) -> tuple[nn.Module, int]:
    config = dataclasses.replace(args.llama, vocab_size=vocab_size)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    if method != "full":
        try:
            convert(model, rank=args.rank or config.rank, alpha=args.alpha or config.alpha, seed=args.seed,
                    density=None if method == "lowrank" else (args.density or config.density))
        except ValueError as error:
            raise SystemExit(f"sltrain-train: {error}") from None
    parameters = sum(p.numel() for p in model.parameters())
    if args.dist != "fsdp":
        return model.to(device=args.device, dtype=args.dtype), parameters
    # FSDP2 keeps float32 shards and computes in --dtype; the support buffers stay replicated.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device=args.device, dtype=torch.float32)
    policy = MixedPrecisionPolicy(param_dtype=args.dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model, parameters


def lr_factor(step: int, total: int, warmup_fraction: float, floor: float) -> float:
    """Linear warm-up, then cosine decay to `floor` (step counts from 0)."""
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, held_out: WindowSampler, args: argparse.Namespace) -> float:
    """Mean loss (nats a token) over the same --eval-batches held-out batches every time."""
    model.eval()
    losses = [model.loss(held_out.windows(i * args.batch_size, args.batch_size).to(args.device)).item()
              for i in range(args.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train_one(method: str, args: argparse.Namespace, corpus: PreparedCorpus, stop: StopOnSignal,
              skip: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Trains one method; steps in `skip` are skipped as bad (see ReplayWithout)."""
    folder = args.out / method
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = padded_vocab_size(corpus.tokenizer.vocab_size)
    model, parameters = build_model(args, method, vocab_size)
    train_windows = WindowSampler(corpus.train, args.seq_len, args.seed, vocab_size)
    held_out = WindowSampler(corpus.validation, args.seq_len, 10_000 + args.seed, vocab_size)
    data_state = corpus.position(args.seq_len, args.seed)
    forward_module: nn.Module = model
    if args.dist == "ddp":
        # Gradients as views of the all-reduce buckets: one copy of them, not two.
        forward_module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.device.index] if args.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    loss_of = torch.compile(causal_lm_loss) if args.compile else causal_lm_loss
    leader = args.dist_rank == 0
    lr = args.lr or DEFAULT_LR[method]
    clip = args.max_grad_norm or None
    optimizer = SLAdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay, state_bits=args.state_bits,
                        per_layer=args.per_layer, accumulation_steps=args.accumulation if args.per_layer else 1,
                        max_grad_norm=clip if args.per_layer else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, args.steps, args.warmup, args.min_lr_ratio))
    checkpoint, metrics_path = folder / "checkpoints", folder / "metrics.jsonl"
    start = 0
    saved, damaged = find_checkpoint(checkpoint, legacy=folder / "checkpoint") if args.resume else (None, [])
    for line in damaged if leader else []:
        print(f"{method}: {line}; falling back to an older checkpoint", flush=True)
    if saved is not None:
        start, saved_data = load_checkpoint(saved, model, optimizer, scheduler, args.steps)
        try:
            data_state = corpus.continue_from(saved_data, args.seq_len, args.seed)
        except ValueError as error:
            raise SystemExit(f"sltrain-train: --resume: {saved}: {error}") from None
        if leader:
            kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= start]
            metrics_path.write_text("".join(line + "\n" for line in kept))
    elif args.resume and (folder / "checkpoint.pt").exists():
        raise SystemExit(f"{folder / 'checkpoint.pt'} is a single-file checkpoint of sltrain_ext 0.1.x; "
                         "resume it with that version (this one reads torch.distributed.checkpoint folders)")
    elif args.resume == "required":
        raise SystemExit(f"sltrain-train: --resume: no checkpoint of {method} in {checkpoint}; "
                         "use `--resume if-exists` to start from step 0 where there is none")
    else:
        if args.resume and leader:
            print(f"{method}: no checkpoint in {folder}, starting from step 0")
        if metrics_path.exists() and leader:
            metrics_path.unlink()

    def save(step: int) -> None:
        try:
            save_checkpoint(checkpoint, model, optimizer, scheduler, step, args.steps, args.keep_checkpoints,
                            data=data_state)
        except CheckpointError as error:
            raise SystemExit(f"sltrain-train: {method}: {error}") from None

    def log(record: dict[str, Any]) -> None:
        if not leader:
            return
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    end = args.stop_after or args.steps
    share = args.batch_size // args.world_size
    micro = share // args.accumulation
    tokens_per_step = args.batch_size * args.seq_len
    began = time.perf_counter()
    bad_steps, bpb = 0, None
    progress = tqdm(range(start, end), desc=f"{method:>7}", unit="step", mininterval=1.0, initial=start,
                    total=args.steps, dynamic_ncols=True, disable=not leader)
    for step in progress:
        batch = train_windows.batch(data_state["next_window"], args.batch_size, args.dist_rank, args.world_size)
        batch = batch.to(args.device)
        data_state["next_window"] += args.batch_size
        loss_sum = torch.zeros((), device=args.device)
        replayed_bad = step + 1 in skip
        for chunk in () if replayed_bad else batch.split(micro):
            loss = loss_of(forward_module, chunk, checkpoint=args.checkpointing)
            loss_sum += loss.detach() / args.accumulation
            if args.per_layer and not on_every_rank(loss.detach().isfinite(), args.device):
                break  # its backward would update parameters inside the hooks
            (loss / args.accumulation).backward()
        if args.dist != "none":
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= args.world_size
        loss_sum = loss_sum.item()
        done = step + 1
        if args.per_layer:
            # SLAdamW checked each gradient inside backward before using it,
            # and updated nothing from the first non-finite one on.
            finite = (not replayed_bad and math.isfinite(loss_sum)
                      and on_every_rank(optimizer.skipped_nonfinite == 0, args.device))
            if not finite and not on_every_rank(optimizer.updated_in_step == 0, args.device):
                progress.close()
                if leader:
                    print(f"{method} step {done}: a non-finite gradient after --per-layer had updated "
                          f"{optimizer.updated_in_step} parameters in backward; going back to the newest checkpoint "
                          f"(or step 0) to replay without step {done}", flush=True)
                raise ReplayWithout(done)
            if not finite:
                optimizer.discard_step()
        else:
            finite = math.isfinite(loss_sum) and gradients_finite(model, args.device)
        if finite:
            bad_steps = 0
            if clip and not args.per_layer:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()  # with --per-layer the update already happened inside backward
        else:
            bad_steps += 1
            log({"step": done, "skipped": "non-finite loss or gradient"})
            progress.write(f"{method} step {done}: non-finite loss or gradient, update skipped "
                           f"({bad_steps} in a row)")
            if bad_steps >= args.max_bad_steps:
                raise SystemExit(f"sltrain-train: {method}: {bad_steps} consecutive steps up to step {done} had a "
                                 "non-finite loss or gradient (--max-bad-steps); stopped without saving, so "
                                 f"{checkpoint} still holds the last good state")
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        rate = (done - start) * tokens_per_step / (time.perf_counter() - began)
        if finite:
            log({"step": done, "loss": loss_sum, "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate})
        progress.set_postfix(loss=f"{loss_sum:.3f}", **({"val_bpb": f"{bpb:.3f}"} if bpb is not None else {}),
                             tok_s=f"{rate:,.0f}", mem=f"{memory_gib(args.device):.1f}G")
        if done % args.eval_every == 0 or done == args.steps:
            val_loss = evaluate(model, held_out, args)
            bpb = corpus.bits_per_byte(val_loss)
            log({"step": done, "val_loss": val_loss, "val_ppl": perplexity(val_loss), "val_bpb": bpb})
            progress.write(f"{method} step {done}: held-out loss {val_loss:.4f}, perplexity {perplexity(val_loss):.3f}, "
                           f"{bpb:.4f} bits per byte")
        checkpointed = done % args.save_every == 0 or done == end
        if checkpointed:
            save(done)
        if done < end and stop.requested(args.device):
            if not checkpointed:
                save(done)
            progress.close()
            if leader:
                print(f"{method}: stopped by {stop.name} after step {done} of {args.steps}; checkpoint in "
                      f"{checkpoint}; the same command with --resume continues", flush=True)
            raise SystemExit(PREEMPTED_EXIT_STATUS)
    progress.close()
    if end == args.steps:
        model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if leader:
            save_pretrained(model, folder / "model", state_dict=model_state)
    if args.dist != "none":
        torch.distributed.barrier()  # every rank sees the leader's files from here on
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    evaluations = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "tokens_per_s" in r]
    return {"method": method, "parameters": parameters, "steps": end,
            "val_ppl": evaluations[-1]["val_ppl"] if evaluations else None,
            "val_bpb": evaluations[-1]["val_bpb"] if evaluations else None,
            "tokens_per_s": steps[-1]["tokens_per_s"] if steps else None,
            "seconds": time.perf_counter() - began, "folder": str(folder)}


def train_with_replays(method: str, args: argparse.Namespace, corpus: PreparedCorpus,
                       stop: StopOnSignal) -> dict[str, Any]:
    """train_one, started again from the newest checkpoint (or step 0) after a
    ReplayWithout, as many times as it takes."""
    skip: set[int] = set()
    while True:
        try:
            return train_one(method, args, corpus, stop, frozenset(skip))
        except ReplayWithout as replay:
            skip.add(replay.step)
        args = argparse.Namespace(**{**vars(args), "resume": args.resume or "if-exists"})


def plot(results: list[dict[str, Any]], corpus: PreparedCorpus, path: Path) -> Path | None:
    """Training and held-out loss in bits per byte, so runs with different tokenizers compare."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, result in enumerate(results):
        records = [json.loads(line) for line in (Path(result["folder"]) / "metrics.jsonl").read_text().splitlines()]
        train = [(r["step"], corpus.bits_per_byte(r["loss"], "train")) for r in records if "loss" in r]
        window = max(1, len(train) // 50)
        smooth = [sum(loss for _, loss in train[max(0, j - window + 1): j + 1]) / len(train[max(0, j - window + 1): j + 1])
                  for j in range(len(train))]
        color = f"C{i}"
        ax.plot([s for s, _ in train], smooth, color=color, alpha=0.6, label=f"{result['method']} train")
        val = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", color=color, label=f"{result['method']} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (bits per byte)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)  # main() may run many times in one process
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.dist != "none":
        torch.distributed.init_process_group("nccl" if args.device.type == "cuda" else "gloo")
        if args.device.type == "cuda":
            torch.cuda.set_device(args.device)
    try:
        return run(args, argv)
    finally:
        if args.dist != "none":
            torch.distributed.destroy_process_group()


def run(args: argparse.Namespace, argv: list[str] | None) -> list[dict[str, Any]]:
    leader = args.dist_rank == 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        corpus = training_corpus(args.data, args.out, args.tokenizer, args.vocab_size, leader)
    except ValueError as error:
        raise SystemExit(f"sltrain-train: {error}") from None
    if leader:
        print(f"data: {corpus.folder}, {corpus.train.tokens:,} training and {corpus.validation.tokens:,} held-out "
              f"tokens (vocabulary {corpus.tokenizer.vocab_size:,}); LLaMA-{args.config} on {args.device} in "
              f"{str(args.dtype).removeprefix('torch.')}" + (f", {args.world_size} processes" if args.world_size > 1 else ""))
    with StopOnSignal() as stop:
        results = [train_with_replays(method, args, corpus, stop) for method in args.methods]
    if not leader:
        return results
    finished = all(r["steps"] == args.steps for r in results)
    print(f"\n{'method':<8} {'parameters':>12} {'held-out ppl':>13} {'bits/byte':>10} {'tokens/s':>10} {'time':>8}")
    for r in results:
        ppl = f"{r['val_ppl']:.3f}" if r["val_ppl"] is not None else "-"
        bpb = f"{r['val_bpb']:.4f}" if r["val_bpb"] is not None else "-"
        print(f"{r['method']:<8} {r['parameters']:>12,} {ppl:>13} {bpb:>10} {r['tokens_per_s']:>10,.0f} "
              f"{r['seconds']:>7.1f}s")
    (args.out / "summary.json").write_text(json.dumps(
        {"command": " ".join(["sltrain-train", *(sys.argv[1:] if argv is None else argv)]), "results": results},
        indent=2) + "\n")
    chart = plot(results, corpus, args.out / "loss_curves.png")
    print(f"summary: {args.out / 'summary.json'}" + (f"; loss curves: {chart}" if chart else ""))
    if not finished:
        print(f"stopped at step {args.stop_after} of {args.steps}: run again with --resume to continue")
    return results


def cli() -> None:
    """The `sltrain-train` console script: main() without its return value,
    which the script wrapper would pass to sys.exit (status 1, the list on stderr)."""
    main()


if __name__ == "__main__":
    cli()
