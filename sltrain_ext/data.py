"""Text for pretraining: the built-in corpus, local files, or C4; a byte-level
tokenizer; deterministic batches.

The built-in corpus is real English text that installs with Python itself:
the language reference and library documentation topics of ``pydoc_data``
followed by the docstrings of the standard library's modules, classes and
functions (read once, then cached under ``~/.cache/sltrain_ext``).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ByteTokenizer", "TokenSplits", "load_documents", "tokenize_splits", "batch_at"]

BUILTIN = "builtin"
# Part of the cache's name: bump it whenever builtin_documents would return other text.
BUILTIN_CORPUS_VERSION = 1


class ByteTokenizer:
    """UTF-8 bytes as tokens: nothing to train, nothing to download."""

    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)

    def decode(self, tokens: Tensor) -> str:
        return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def _cache_dir() -> Path:
    return Path(os.environ.get("SLTRAIN_CACHE", Path.home() / ".cache" / "sltrain_ext"))


def _stdlib_docstrings(max_chars: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents, total = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 100:
                    documents.append(doc)
                    total += len(doc)
        if total >= max_chars:
            break
    return documents


def builtin_documents(max_chars: int = 6_000_000) -> list[str]:
    """The built-in corpus as a list of documents (cached after the first call)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    cache = _cache_dir() / f"builtin_corpus_v{BUILTIN_CORPUS_VERSION}_{python}.jsonl"
    if cache.exists():
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    from pydoc_data.topics import topics

    documents = [topics[key] for key in sorted(topics)] + _stdlib_docstrings(max_chars)
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(f".{os.getpid()}.tmp")  # ranks of one job may build it at once
    temporary.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    temporary.replace(cache)
    return documents


def load_documents(spec: str) -> list[str]:
    """Documents from ``spec``: ``builtin``; a ``.txt`` file or a directory of
    them (one document per file); a ``.jsonl`` file with a ``text`` field; or
    ``c4`` (streamed with the ``datasets`` package; needs a network)."""
    if spec == BUILTIN:
        return builtin_documents()
    if spec == "c4":
        try:
            import datasets
        except ImportError:
            raise ValueError("--data c4 needs the `datasets` package (pip install datasets) and a network") from None
        stream = datasets.load_dataset("allenai/c4", "en", split="train", streaming=True)
        return [row["text"] for _, row in zip(range(200_000), stream)]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"--data {spec!r}: no such file or directory (or use 'builtin' or 'c4')")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"--data {spec}: line {number} is not a JSON object with a 'text' field") from None
    else:
        documents = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError(f"--data {spec}: no text found")
    return documents


@dataclass
class TokenSplits:
    train: Tensor  # uint8 or int32 token stream
    validation: Tensor


def tokenize_splits(documents: list[str], tokenizer: ByteTokenizer, validation_fraction: float = 0.05) -> TokenSplits:
    """Every 1/validation_fraction-th document is held out; each split is one
    token stream with documents joined by a blank line."""
    stride = max(2, round(1 / validation_fraction))
    held_out = [d for i, d in enumerate(documents) if i % stride == stride - 1]
    kept = [d for i, d in enumerate(documents) if i % stride != stride - 1]
    if not held_out:
        raise ValueError(f"need at least {stride} documents to hold some out, got {len(documents)}")
    return TokenSplits(tokenizer.encode("\n\n".join(kept)), tokenizer.encode("\n\n".join(held_out)))


def batch_at(tokens: Tensor, step: int, batch_size: int, seq_len: int, seed: int) -> Tensor:
    """The batch of step ``step``: ``batch_size`` random windows of ``seq_len + 1``
    tokens, a pure function of its arguments (so resuming needs no RNG state)."""
    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"the token stream ({tokens.numel()} tokens) is shorter than one sequence ({seq_len + 1})")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    return tokens[starts[:, None] + torch.arange(seq_len + 1)].long()
