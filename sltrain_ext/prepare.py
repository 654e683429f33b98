"""Tokenize a corpus on local disk into token shards: ``sltrain-prepare``.

    sltrain-prepare --input c4/en --out data/c4 --tokenizer t5/spiece.model
    sltrain-prepare --input books.jsonl --out data/books --vocab-size 32000   # trains a byte-level BPE
    sltrain-train --data data/c4 --config 60m ...

Inputs: .txt (a document per file), .jsonl and C4's .json.gz (a "text" field
per line), .parquet (a "text" column), folders of them, or `builtin`. Every
--validation-every-th document is held out of training. Running the command
again continues an unfinished preparation and, for a finished one, checks its
shards against index.json (those changed since they were last verified;
`sltrain-prepare --verify --out data/c4` checks every shard).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from . import shards
from .corpus import BUILTIN, builtin_tag, cache_dir
from .shards import INDEX, PreparedCorpus, open_prepared
from .tokenization import load_tokenizer

__all__ = ["training_corpus", "main", "cli"]

BUILTIN_VOCAB = 1024  # what a 2 MB corpus supports; real corpora default to 32000
# Part of the prepared built-in corpus's folder name: bump it whenever the recipe of its shards changes
# (2: the BPE budget became shards.DEFAULT_TOKENIZER_TRAIN_BYTES, sltrain-prepare's default).
BUILTIN_RECIPE = 2


def training_corpus(data: str, out: Path, tokenizer: str | None, vocab_size: int | None,
                    leader: bool) -> PreparedCorpus:
    """What ``sltrain-train --data`` names, prepared: the built-in corpus
    (cached once per tokenizer), a folder of shards, or raw files (prepared
    into ``out/data`` on first use). Only the leader of a multi-process job
    prepares and verifies; the others wait for it, then open what it checked,
    or raise its error."""
    if data == BUILTIN:
        tag = f"bpe{vocab_size or BUILTIN_VOCAB}" if tokenizer is None else load_tokenizer(tokenizer).sha256[:16]
        folder = cache_dir() / f"builtin_{builtin_tag()}_r{BUILTIN_RECIPE}_{tag}"
        inputs, workers = [BUILTIN], 1  # 2 MB: one process, the tokenizer's own threads
    elif (Path(data) / INDEX).is_file():
        folder, inputs, workers = Path(data), None, None
    else:
        folder, inputs, workers = out / "data", [data], None
    named_tokenizer = tokenizer if inputs is None else None
    corpus, failure = None, None
    if leader:
        try:
            if inputs is not None:
                shards.prepare(inputs, folder, tokenizer=tokenizer, vocab_size=vocab_size or
                               (BUILTIN_VOCAB if data == BUILTIN else 32000), workers=workers)
            corpus = open_prepared(folder, tokenizer=named_tokenizer)  # hashes the shards, once per machine
        except ValueError as error:  # the inputs are sltrain-train's --data, sltrain-prepare's --input
            message = str(error)
            failure = ValueError("--data" + message.removeprefix("--input") if message.startswith("--input ")
                                 else message)
        except Exception as error:  # noqa: BLE001 (told to every rank below, so that none waits for ever)
            failure = error
    if torch.distributed.is_initialized():
        told = [None if failure is None else
                str(failure) if isinstance(failure, ValueError) else f"{type(failure).__name__}: {failure}"]
        torch.distributed.broadcast_object_list(told, src=0)
        if told[0] is not None and not leader:
            raise ValueError(f"rank 0: {told[0]}")
    if failure is not None:
        raise failure
    # The other ranks find the leader's shard hashes in the cache (cache_dir()).
    return corpus if corpus is not None else open_prepared(folder, tokenizer=named_tokenizer)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sltrain-prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+",
                        help="corpus files or folders (.txt, .jsonl, .json.gz, .parquet), or 'builtin'")
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards, index.json and tokenizer")
    parser.add_argument("--verify", action="store_true",
                        help="check a prepared --out instead: every shard against the SHA-256 in index.json "
                             "(opening a folder checks only the shards that changed since they were last verified)")
    parser.add_argument("--tokenizer", help="a tokenizer.json, a SentencePiece .model, or 'byte' "
                                            "(default: train a byte-level BPE on the corpus)")
    parser.add_argument("--vocab-size", type=int, default=32000,
                        help="vocabulary of the BPE trained when no --tokenizer is given (default 32000)")
    parser.add_argument("--tokenizer-train-mb", type=float, default=shards.DEFAULT_TOKENIZER_TRAIN_BYTES / 1e6,
                        help="text the BPE is trained on, from the start of the corpus (default "
                             f"{shards.DEFAULT_TOKENIZER_TRAIN_BYTES / 1e6:g} MB, as sltrain-train uses)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 25, help="tokens per shard (default 2**25)")
    parser.add_argument("--validation-every", type=int, default=20,
                        help="hold out every N-th document for evaluation (default 20)")
    parser.add_argument("--workers", type=int, help="tokenizing processes (default: one per core)")
    args = parser.parse_args(argv)
    if not args.verify and not args.input:
        parser.error("--input is required (or --verify, to check a prepared --out)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: a file, not a folder")
    if not math.isfinite(args.tokenizer_train_mb):
        parser.error(f"--tokenizer-train-mb must be a finite number, got {args.tokenizer_train_mb}")
    try:
        shards.check_settings(args.vocab_size, args.shard_tokens, args.validation_every, args.workers,
                              int(args.tokenizer_train_mb * 1e6))
    except ValueError as error:
        parser.error(str(error))
    return args


def verify(folder: Path) -> dict:
    """sltrain-prepare --verify: the whole folder, every shard hashed; its index."""
    try:
        corpus = open_prepared(folder, full_check=True)
    except ValueError as error:
        raise SystemExit(f"sltrain-prepare: --verify: {error}") from None
    count = sum(len(corpus.index["splits"][name]["shards"]) for name in shards.SPLITS)
    print(f"{folder}: all {count} shards match {INDEX}")
    return corpus.index


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.verify:
        return verify(args.out)
    try:
        index = shards.prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                               shard_tokens=args.shard_tokens, validation_every=args.validation_every,
                               workers=args.workers, tokenizer_train_bytes=int(args.tokenizer_train_mb * 1e6))
    except ValueError as error:
        raise SystemExit(f"sltrain-prepare: {error}") from None
    for name, split in index["splits"].items():
        print(f"{name:>10}: {split['documents']:,} documents, {split['tokens']:,} tokens "
              f"({split['bytes'] / max(1, split['tokens']):.2f} bytes a token) in {len(split['shards'])} shards")
    print(f"{args.out / INDEX}: vocabulary {index['tokenizer']['vocab_size']:,} ({index['dtype']})")
    return index


def cli() -> None:
    """The ``sltrain-prepare`` console script (exit status 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
