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
import contextlib
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from . import configs, recipes
from .checkpointing import (CheckpointError, find_checkpoint, has_checkpoints, load_checkpoint,
                            newest_checkpoint_note, save_checkpoint)
from .convert import convert
from .corpus import BUILTIN
from .launch import exit_without_finalizing
from .llama import LlamaForCausalLM, causal_lm_loss
from .nonfinite import ReplayWithout, gradients_finite, on_every_rank
from .optim import SLAdamW
from .preemption import PREEMPTED_EXIT_STATUS, StopOnSignal
from .prepare import training_corpus
from .pretrained import save_pretrained
from .run_log import RunLog, check_trackers
from .run_record import check_resumed_settings, record_extension, run_record, write_run_record
from .schedule import LearningRateSchedule, resumed_schedule
from .shards import PreparedCorpus, WindowSampler
from .throughput import step_costs
from .tokenization import MIN_BPE_VOCAB, padded_vocab_size

METHODS = ("full", "lowrank", "sltrain")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sltrain-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe",
                        help=f"a file of settings: JSON (or TOML on Python 3.11+) whose keys are these flags without "
                             f"their dashes, or a shipped recipe: {', '.join(recipes.available())} (the SLTrain "
                             f"paper's runs); flags given here override it")
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
    train.add_argument("--stop-after", type=int,
                       help="train at most this many steps in this command, then stop with a checkpoint; "
                            "the same command with --resume trains as many more (up to --steps)")
    train.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (default 16)")
    train.add_argument("--accumulation", type=int, default=1, help="micro-batches per step (default 1)")
    train.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    train.add_argument("--lr", type=float,
                       help="peak learning rate (default: the config's for each method: for 9m, the main job's, the "
                            "best of benchmarks/results/lr_sweep.md; for the others the paper's, 1e-3 full, 3e-3 "
                            "lowrank and sltrain)")
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    train.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 disables (default 1)")
    train.add_argument("--max-bad-steps", type=int, default=10,
                       help="stop after this many consecutive steps with a non-finite loss or gradient, "
                            "each skipped without an update (default 10)")
    train.add_argument("--state-bits", type=int, choices=(4, 8, 32), default=32, help="SLAdamW moment precision")
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
    run.add_argument("--tracker", default="none",
                     help="experiment trackers that get the scalars of metrics.jsonl, comma-separated: tensorboard "
                          "(event files in --out/METHOD/tensorboard), wandb (offline unless WANDB_MODE says "
                          "otherwise) or none (the default); each needs its package (sltrain_ext[tracking])")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    run.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="parameter dtype: auto is bfloat16 on a GPU, float32 on the CPU")
    try:
        recipe = recipes.apply(parser, argv)
    except recipes.RecipeError as error:
        parser.error(str(error))
    args = parser.parse_args(argv)
    args.recipe_file = recipe
    try:
        validate_settings(args)
    except ValueError as error:
        parser.error(recipes.blame(str(error), recipe))
    return args


def _positive_int(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _finite_at_least_zero(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _load_config(name: str) -> configs.LlamaConfig:
    """--config, with every field checked: a hand-written JSON fails here,
    naming the field, not inside the model."""
    try:
        config = configs.load(name)
        configs.learning_rates(name)  # checked here, used per method
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {name}: not valid JSON ({error})") from None
    except KeyError as error:
        raise ValueError(f"--config {name}: the JSON has no {error} field (see the configs in "
                         f"{Path(configs.__file__).parent} for the form)") from None
    except (ValueError, AttributeError, OSError) as error:
        raise ValueError(f"--config {name}: {error}") from None
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        wanted = {"int": int, "float": (int, float), "bool": bool, "str": str}[str(field.type)]
        if not isinstance(value, wanted) or (field.type != "bool" and isinstance(value, bool)):
            raise ValueError(f"--config {name}: {field.name!r} must be of type {field.type}, got {value!r}")
        if field.type in ("int", "float") and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--config {name}: {field.name!r} must be positive, got {value!r}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"--config {name}: hidden_size {config.hidden_size} is not a multiple of "
                         f"num_attention_heads {config.num_attention_heads}")
    return config


def _device(name: str) -> torch.device:
    try:
        device = torch.device("cuda" if name == "auto" and torch.cuda.is_available()
                              else "cpu" if name == "auto" else name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: not a device of this program; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device


def validate_settings(args: argparse.Namespace) -> None:
    """Checks every flag of sltrain-train and derives the settings the run
    uses (methods, config, device, dtype, processes); a ValueError names the
    flag at fault. Nothing is written before this has passed."""
    args.methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not args.methods:
        raise ValueError("--method: no method given; choose from " + ", ".join(METHODS))
    for method in args.methods:
        if method not in METHODS:
            raise ValueError(f"--method: unknown method {method!r}; choose from {', '.join(METHODS)}")
    for name in ("steps", "batch_size", "accumulation", "seq_len", "eval_every", "eval_batches", "save_every",
                 "keep_checkpoints", "max_bad_steps", "rank"):
        _positive_int("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("lr", "alpha", "weight_decay", "max_grad_norm"):
        _finite_at_least_zero("--" + name.replace("_", "-"), getattr(args, name))
    if args.vocab_size is not None and args.vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"--vocab-size must be at least {MIN_BPE_VOCAB} (256 bytes, a separator and one merge), "
                         f"got {args.vocab_size}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2**63), got {args.seed}")
    distributed = args.dist != "none"
    args.world_size = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    args.dist_rank = int(os.environ.get("RANK", "0")) if distributed else 0
    if distributed and "WORLD_SIZE" not in os.environ:
        raise ValueError(f"--dist {args.dist} runs under torchrun "
                         f"(torchrun --nproc_per_node N -m sltrain_ext.train --dist {args.dist})")
    if args.dist == "ddp" and args.per_layer:
        raise ValueError("--per-layer cannot be combined with --dist ddp: DDP keeps every gradient in its "
                         "all-reduce buckets (so nothing would be freed) and reduces them after the per-layer "
                         "hooks run; use --dist fsdp, which reduces each gradient before its update")
    if args.dist == "fsdp" and args.state_bits != 32:
        raise ValueError(f"--state-bits {args.state_bits} cannot be combined with --dist fsdp yet: "
                         f"{args.state_bits}-bit state blocks do not reshard")
    if args.batch_size % (args.accumulation * args.world_size):
        raise ValueError("--batch-size must be a multiple of --accumulation times the number of processes")
    if args.density is not None and not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        raise ValueError("--stop-after must be between 1 and --steps")
    if not 0.0 <= args.warmup < 1.0:
        raise ValueError(f"--warmup must be in [0, 1), got {args.warmup}")
    if not 0.0 <= args.min_lr_ratio <= 1.0:
        raise ValueError(f"--min-lr-ratio must be in [0, 1], got {args.min_lr_ratio}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: a file, not a folder")
    args.trackers = check_trackers(args.tracker)
    args.llama = _load_config(args.config)
    if args.seq_len > args.llama.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the {args.llama.max_position_embeddings} positions of "
                         f"--config {args.config} (max_position_embeddings)")
    args.device = _device(args.device)
    if args.device.type == "cuda" and distributed:
        args.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    args.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if args.device.type == "cuda" else torch.float32)


def model_settings(args: argparse.Namespace, method: str, vocab_size: int) -> dict[str, Any]:
    """What shapes the model of a method: the flags' values or the config's
    defaults. Checkpoints record it, and resuming compares it first."""
    config = args.llama
    low_rank = method != "full"
    return {"method": method, "vocab_size": vocab_size,
            "config": f"{config.name}: hidden {config.hidden_size}, intermediate {config.intermediate_size}, "
                      f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads",
            "rank": (config.rank if args.rank is None else args.rank) if low_rank else None,
            "alpha": float(config.alpha if args.alpha is None else args.alpha) if low_rank else None,
            "density": float(config.density if args.density is None else args.density) if method == "sltrain"
            else None}


def learning_rate(args: argparse.Namespace, method: str) -> float:
    return configs.learning_rates(args.config)[method][0] if args.lr is None else args.lr


def learning_rate_source(args: argparse.Namespace, method: str) -> str:
    return configs.learning_rates(args.config)[method][1] if args.lr is None else "--lr"


def clip_gradients(model: nn.Module, max_norm: float | None) -> float:
    """The gradients' global norm before clipping, and clipped to `max_norm` if given."""
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(gradients)
    if max_norm:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP


def build_model(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[nn.Module, int]:
    config = dataclasses.replace(args.llama, vocab_size=settings["vocab_size"])
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    if settings["method"] != "full":
        try:
            convert(model, rank=settings["rank"], alpha=settings["alpha"], seed=args.seed,
                    density=settings["density"])
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


def micro_batch(args: argparse.Namespace) -> int:
    """Sequences in one forward of a rank: --batch-size split over the
    processes and the --accumulation steps."""
    return args.batch_size // args.world_size // args.accumulation


@torch.no_grad()
def evaluate(model: nn.Module, held_out: WindowSampler, args: argparse.Namespace) -> float:
    """Mean loss (nats a token) over the same --eval-batches held-out batches
    every time, each in forwards of a training micro-batch: a whole
    --batch-size at once (512 x 256 tokens in the 1B and 7B recipes: 16 GB of
    float32 logits) would not fit where training's micro-batches just do."""
    model.eval()
    losses = [model.loss(chunk.to(args.device)).item()
              for i in range(args.eval_batches)
              for chunk in held_out.windows(i * args.batch_size, args.batch_size).split(micro_batch(args))]
    model.train()
    return sum(losses) / len(losses)



def restore(method: str, folder: Path, args: argparse.Namespace, model: nn.Module, optimizer: SLAdamW,
            scheduler: torch.optim.lr_scheduler.LRScheduler, corpus: PreparedCorpus, settings: dict[str, Any],
            windows_per_epoch: int, log: RunLog) -> tuple[int, dict[str, Any], LearningRateSchedule | None]:
    """The step and data position `method` starts from, and the learning-rate
    schedule it resumes: under --resume its newest intact checkpoint, loaded
    into the model, optimizer and scheduler, its schedule extended when
    --steps grew; else (or when it has none yet) step 0 and None (a fresh
    schedule)."""
    root = folder / "checkpoints"
    fresh = corpus.position(args.seq_len, args.seed)
    if not args.resume:
        log.start_fresh()
        return 0, fresh, None
    saved, damaged = find_checkpoint(root, legacy=folder / "checkpoint")
    log.passed_over(damaged, intact_found=saved is not None)
    if saved is not None:
        restored = load_checkpoint(saved, model, optimizer, scheduler, args.steps, settings)
        try:
            data_state = corpus.continue_from(restored.data, args.seq_len, args.seed)
        except ValueError as error:
            raise SystemExit(f"sltrain-train: --resume: {saved}: {error}") from None
        log.resumed(saved, restored.step, restored.steps, data_state["next_window"], windows_per_epoch, args.seq_len)
        schedule, extension = resumed_schedule(restored.schedule, restored.steps, args.warmup, args.min_lr_ratio,
                                               restored.step, args.steps)
        if extension is not None:
            log.say(f"--steps {args.steps}: {method} extended from step {restored.step} of {restored.steps}; the "
                    f"learning rate was {extension['schedule_before']}, and is now {extension['schedule_after']}")
            if args.dist_rank == 0:
                record_extension(args.out, method, extension)
        return restored.step, data_state, schedule
    if (folder / "checkpoint.pt").exists():
        raise SystemExit(f"{folder / 'checkpoint.pt'} is a single-file checkpoint of sltrain_ext 0.1.x; "
                         "resume it with that version (this one reads torch.distributed.checkpoint folders)")
    if damaged and args.resume == "required":
        raise SystemExit(f"sltrain-train: --resume: every checkpoint of {method} in {root} is damaged (listed "
                         f"above); `--resume if-exists` starts {method} again from step 0")
    log.say(f"no {'intact ' if damaged else ''}checkpoint in {folder}, starting from step 0")
    log.start_fresh()
    return 0, fresh, None


def train_one(method: str, args: argparse.Namespace, corpus: PreparedCorpus, stop: StopOnSignal,
              skip: frozenset[int] = frozenset(), replay_end: int | None = None) -> dict[str, Any]:
    """Trains one method; steps in `skip` are skipped as bad and a replay
    ends at `replay_end`, where the command was to end (see ReplayWithout)."""
    folder = args.out / method
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = padded_vocab_size(corpus.tokenizer.vocab_size)
    settings = model_settings(args, method, vocab_size)
    model, parameters = build_model(args, settings)
    train_windows = WindowSampler(corpus.train, args.seq_len, args.seed, vocab_size)
    held_out = WindowSampler(corpus.validation, args.seq_len, 10_000 + args.seed, vocab_size)
    forward_module: nn.Module = model
    if args.dist == "ddp":
        # Gradients as views of the all-reduce buckets: one copy of them, not
        # two. No buffer broadcast, at the start or before every forward: every
        # rank builds the same model from --seed, its supports included, and
        # neither gloo nor NCCL can send the uint16 column indices (a 7B
        # model's 0.6 GiB of them would otherwise go out at every step).
        forward_module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.device.index] if args.device.type == "cuda" else None,
            gradient_as_bucket_view=True, broadcast_buffers=False)
    loss_of = torch.compile(causal_lm_loss) if args.compile else causal_lm_loss
    leader = args.dist_rank == 0
    log = RunLog(method, folder, leader, args.trackers)
    clip = args.max_grad_norm or None
    optimizer = SLAdamW(model.parameters(), lr=learning_rate(args, method),
                        weight_decay=args.weight_decay, state_bits=args.state_bits,
                        per_layer=args.per_layer, accumulation_steps=args.accumulation if args.per_layer else 1,
                        max_grad_norm=clip if args.per_layer else None)
    schedule = LearningRateSchedule.fresh(args.steps, args.warmup, args.min_lr_ratio)
    # The lambda looks `schedule` up at each step, so a resumed (or extended) one set below is the one used.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
    checkpoint = folder / "checkpoints"
    start, data_state, resumed = restore(method, folder, args, model, optimizer, scheduler, corpus, settings,
                                         train_windows.count, log)
    schedule = resumed or schedule

    def save(step: int) -> None:
        try:
            save_checkpoint(checkpoint, model, optimizer, scheduler, step, schedule, args.keep_checkpoints,
                            data=data_state, settings=settings)
        except CheckpointError as error:
            log.close_bar()
            raise SystemExit(f"sltrain-train: {method}: {error}") from None

    # --stop-after counts the steps of this command, so the same command with --resume goes on
    # (a replay, which starts again from a later checkpoint, keeps the end the command began with).
    end = replay_end or (min(start + args.stop_after, args.steps) if args.stop_after else args.steps)
    micro = micro_batch(args)
    costs = step_costs(model, optimizer, args.device, args.batch_size * args.seq_len, micro * args.seq_len,
                       args.seq_len, args.world_size)
    began = time.perf_counter()
    bad_steps = 0
    for step in log.open_bar(start, end, args.steps, costs):
        batch = train_windows.batch(data_state["next_window"], args.batch_size, args.dist_rank, args.world_size)
        batch = batch.to(args.device)
        log.lap("data")
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
        log.lap("compute")
        done = step + 1
        if args.per_layer:
            # SLAdamW checked each gradient inside backward before using it,
            # and updated nothing from the first non-finite one on.
            finite = (not replayed_bad and math.isfinite(loss_sum)
                      and on_every_rank(optimizer.skipped_nonfinite == 0, args.device))
            if not finite and not on_every_rank(optimizer.updated_in_step == 0, args.device):
                log.close_bar()
                log.say(f"step {done}: a non-finite gradient after --per-layer had updated "
                        f"{optimizer.updated_in_step} parameters in backward; going back to the newest checkpoint "
                        f"(or step 0) to replay without step {done}")
                raise ReplayWithout(done, end)
            if not finite:
                optimizer.discard_step()
        else:
            finite = math.isfinite(loss_sum) and gradients_finite(model, args.device)
        lr_used = optimizer.param_groups[0]["lr"]
        # With --per-layer, SLAdamW clipped each parameter on its own: there is no global norm.
        grad_norm = clip_gradients(model, clip) if finite and not args.per_layer else None
        if finite:
            bad_steps = 0
            optimizer.step()  # with --per-layer the update already happened inside backward
        else:
            bad_steps += 1
            log.skipped(done, bad_steps)
            if bad_steps >= args.max_bad_steps:
                log.close_bar()
                raise SystemExit(f"sltrain-train: {method}: {bad_steps} consecutive steps up to step {done} had a "
                                 "non-finite loss or gradient (--max-bad-steps); stopped without saving, so "
                                 f"{checkpoint} still holds the last good state")
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if finite:
            log.step(done, loss_sum, lr_used, grad_norm, clip)
        if done % args.eval_every == 0 or done == args.steps:
            log.evaluation(done, lambda: evaluate(model, held_out, args), corpus.bits_per_byte)
        checkpointed = done % args.save_every == 0 or done == end
        if checkpointed:
            save(done)
        if done < end and stop.requested(args.device):
            if not checkpointed:
                save(done)
            log.close_bar()
            log.say(f"stopped by {stop.name} after step {done} of {args.steps}; checkpoint in "
                    f"{checkpoint}; the same command with --resume continues")
            raise SystemExit(PREEMPTED_EXIT_STATUS)
    log.close_bar()
    if end == args.steps:
        model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if leader:
            save_pretrained(model, folder / "model", state_dict=model_state)
    if args.dist != "none":
        torch.distributed.barrier()  # every rank sees the leader's files from here on
    return {"method": method, "parameters": parameters, "steps": end, **log.latest(),
            "seconds": time.perf_counter() - began, "folder": str(folder)}


@contextlib.contextmanager
def _names_the_checkpoint_on_error(method: str, args: argparse.Namespace) -> Iterator[None]:
    """An error in the middle of a run (unreadable data, a full disk, a bug)
    ends it saying which checkpoint is intact and that --resume continues
    from it: data and disk faults as one message, anything else after its
    traceback."""
    def note() -> str:
        return (f"{newest_checkpoint_note(args.out / method / 'checkpoints')}; once the cause is fixed, the same "
                "command with --resume continues from it")

    try:
        yield
    except (OSError, ValueError) as error:
        raise SystemExit(f"sltrain-train: {method}: {error}\n{note()}") from None
    except Exception:
        print(f"sltrain-train: {method} stopped by the error below; {note()}", file=sys.stderr, flush=True)
        raise


def train_with_replays(method: str, args: argparse.Namespace, corpus: PreparedCorpus,
                       stop: StopOnSignal) -> dict[str, Any]:
    """train_one, started again from the newest checkpoint (or step 0) after a
    ReplayWithout, as many times as it takes."""
    skip: set[int] = set()
    end: int | None = None
    while True:
        try:
            with _names_the_checkpoint_on_error(method, args):
                return train_one(method, args, corpus, stop, frozenset(skip), end)
        except ReplayWithout as replay:
            skip.add(replay.step)
            end = replay.end
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
        records = RunLog(result["method"], Path(result["folder"]), leader=True).records()
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
    if args.resume == "required" and not any(has_checkpoints(args.out / m / "checkpoints", args.out / m / "checkpoint")
                                             or (args.out / m / "checkpoint.pt").exists() for m in args.methods):
        # A method without a checkpoint of its own starts from step 0 (a
        # preempted run may not have reached it); none at all is a mistake.
        raise SystemExit("sltrain-train: --resume: no checkpoint "
                         + " or ".join(f"of {m} in {args.out / m / 'checkpoints'}" for m in args.methods)
                         + "; use `--resume if-exists` to start from step 0 where there is none")
    record(args, corpus, argv)
    with StopOnSignal() as stop:
        results = [train_with_replays(method, args, corpus, stop) for method in args.methods]
    if not leader:
        return results
    finished = all(r["steps"] == args.steps for r in results)
    print(f"\n{'method':<8} {'parameters':>12} {'held-out ppl':>13} {'bits/byte':>10} {'tokens/s':>10} "
          f"{'GFLOP/token':>11} {'MFU':>10} {'peak mem':>9} {'time':>8}")
    for r in results:
        def shown(key: str, form: str, scale: float = 1.0, unit: str = "") -> str:
            return format(r[key] * scale, form) + unit if r[key] is not None else "-"

        mfu = "n/a (CPU)" if args.device.type != "cuda" else shown("mfu", ".1%")
        print(f"{r['method']:<8} {r['parameters']:>12,} {shown('val_ppl', '.3f'):>13} {shown('val_bpb', '.4f'):>10} "
              f"{shown('tokens_per_s', ',.0f'):>10} {shown('flops_per_token', '.3f', 1e-9):>11} {mfu:>10} "
              f"{shown('peak_memory_gib', '.2f', unit=' GiB'):>9} {r['seconds']:>7.1f}s")
    for line in comparison_notes(args, results):
        print(line)
    (args.out / "summary.json").write_text(json.dumps(
        {"command": shlex.join(["sltrain-train", *(sys.argv[1:] if argv is None else argv)]), "results": results},
        indent=2) + "\n")
    chart = plot(results, corpus, args.out / "loss_curves.png")
    print(f"summary: {args.out / 'summary.json'}" + (f"; loss curves: {chart}" if chart else ""))
    if not finished:
        print(f"stopped at step {', '.join(str(r['steps']) for r in results)} of {args.steps} (--stop-after "
              f"{args.stop_after} steps a command): the same command with --resume trains on")
    return results


def comparison_notes(args: argparse.Namespace, results: list[dict[str, Any]]) -> list[str]:
    """What the summary table compares, in words: the learning rate of each
    method and where it comes from, and, for several methods, what one seed
    at this budget cannot show."""
    by_source: dict[str, list[str]] = {}
    for result in results:
        method = result["method"]
        by_source.setdefault(learning_rate_source(args, method), []).append(
            f"{method} {learning_rate(args, method):g}")
    notes = ["learning rates: " + "; ".join(f"{', '.join(rates)} ({source})" for source, rates in by_source.items())]
    if len(results) > 1:
        notes.append(f"one seed, {args.steps} steps of LLaMA-{args.config}: a small gap may be noise, and a short run "
                     "of a small model does not predict larger ones (the SLTrain paper finds SLTrain close to, not "
                     "better than, full-rank from 60M to 7B)")
    return notes


def record(args: argparse.Namespace, corpus: PreparedCorpus, argv: list[str] | None) -> None:
    """Writes <out>/run.json before the first step; under --resume first
    checks that the run goes on with the settings it began with. Every rank
    checks before the leader writes."""
    vocab_size = padded_vocab_size(corpus.tokenizer.vocab_size)
    methods = {m: {**model_settings(args, m, vocab_size), "lr": learning_rate(args, m)} for m in args.methods}
    this_run = run_record(args, corpus, methods, argv)
    if args.resume:
        check_resumed_settings(args.out, this_run)
    if args.dist != "none":
        torch.distributed.barrier()
    if args.dist_rank == 0:
        write_run_record(args.out, this_run)


def cli() -> None:
    """The `sltrain-train` console script: main() without its return value,
    which the script wrapper would pass to sys.exit (status 1, the list on
    stderr). Under torchrun, a rank ends without finalizing the interpreter
    (launch.exit_without_finalizing says why)."""
    if "LOCAL_RANK" in os.environ:
        exit_without_finalizing(main)
    main()


if __name__ == "__main__":
    cli()
