"""Token shards: a corpus tokenized once into fixed-size files, read back
through memory maps.

A prepared folder holds the tokenizer, ``train_NNNNNN.bin`` and
``validation_NNNNNN.bin`` (raw ``uint16`` tokens when the vocabulary fits,
else ``uint32``; every shard but a split's last has exactly ``shard_tokens``)
and ``index.json``: the tokenizer and its SHA-256, the sources, and per split
its documents, UTF-8 bytes, tokens, and each shard's size, SHA-256 and largest
token id. Every ``validation_every``-th document is held out whole. Each
document is followed by the tokenizer's separator.

Preparing is deterministic (the same inputs and settings give byte-identical
files, whatever the number of worker processes) and resumable: whenever a
shard is finished, each split's unfinished one is set aside in a
``.pending`` file and ``progress.json`` records the next document to read; a
re-run starts there. ``index.json`` is written last, so its presence means
the folder is complete.

Opening a folder checks every shard against the SHA-256 in ``index.json``
once per file state: what was verified is remembered (in the cache folder,
by device, inode, size and modification and change times), so a large
corpus is hashed again only where a file changed. ``sltrain-prepare
--verify`` hashes everything.

Training samples windows of ``seq_len + 1`` tokens at multiples of
``seq_len``, each window once per epoch, in an order that a seeded Feistel
permutation gives without a table in memory (``WindowSampler``). The data
position is one number, the windows consumed so far, which checkpoints store.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .corpus import cache_dir, corpus_files, read_documents
from .files import file_sha256, write_atomically
from .tokenization import MIN_BPE_VOCAB, Tokenizer, load_tokenizer, train_bpe

__all__ = ["prepare", "check_settings", "verify_shards", "TokenShards", "WindowSampler", "open_prepared", "INDEX",
           "SPLITS", "DEFAULT_TOKENIZER_TRAIN_BYTES"]

INDEX = "index.json"
PROGRESS = "progress.json"
FORMAT = "sltrain-token-shards"
VERSION = 1
SPLITS = ("train", "validation")
_CHUNK_BYTES = 1 << 20  # text per tokenization task
# The text a byte-level BPE is trained on, for sltrain-prepare and for sltrain-train's raw --data alike.
DEFAULT_TOKENIZER_TRAIN_BYTES = 256_000_000
VERIFIED = "verified_shards.json"  # in cache_dir(): the shard states whose SHA-256 matched


def _write_json(path: Path, value: Any) -> None:
    write_atomically(path, (json.dumps(value, indent=1) + "\n").encode())


@dataclass
class _SplitWriter:
    """Cuts one split's token stream into shards."""

    folder: Path
    name: str
    dtype: np.dtype
    shard_tokens: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0
    bytes: int = 0
    _buffer: list[np.ndarray] = field(default_factory=list)
    _buffered: int = 0

    def add(self, tokens: np.ndarray, nbytes: int) -> bool:
        """Appends a document; True when a shard was finished."""
        self.documents += 1
        self.bytes += nbytes
        finished, position = False, 0
        while position < len(tokens):
            take = min(len(tokens) - position, self.shard_tokens - self._buffered)
            self._buffer.append(tokens[position:position + take])
            self._buffered += take
            position += take
            if self._buffered == self.shard_tokens:
                self._flush()
                finished = True
        return finished

    def save(self, document: int) -> dict[str, Any]:
        """Writes the unfinished shard's tokens aside; returns the state to
        continue from when the next document to read is ``document``."""
        pending = self.folder / f"{self.name}.pending.{document}"
        write_atomically(pending, self._tokens().tobytes())
        return {"shards": self.shards, "documents": self.documents, "bytes": self.bytes, "pending": pending.name}

    @classmethod
    def resumed(cls, folder: Path, name: str, dtype: np.dtype, shard_tokens: int,
                state: dict[str, Any]) -> _SplitWriter:
        writer = cls(folder, name, dtype, shard_tokens, list(state["shards"]), state["documents"], state["bytes"])
        pending = np.fromfile(folder / state["pending"], dtype=dtype)
        writer._buffer, writer._buffered = [pending], pending.size
        return writer

    def finish(self) -> dict[str, Any]:
        if self._buffered:
            self._flush()
        return {"documents": self.documents, "bytes": self.bytes,
                "tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}

    def _tokens(self) -> np.ndarray:
        return np.concatenate(self._buffer).astype(self.dtype) if self._buffer else np.empty(0, self.dtype)

    def _flush(self) -> None:
        tokens = self._tokens()
        data = tokens.tobytes()
        path = self.folder / f"{self.name}_{len(self.shards):06d}.bin"
        write_atomically(path, data)
        self.shards.append({"file": path.name, "tokens": int(tokens.size),
                            "sha256": hashlib.sha256(data).hexdigest(), "max_id": int(tokens.max())})
        self._buffer, self._buffered = [], 0


_worker_tokenizer: Tokenizer | None = None


def _start_worker(spec: str) -> None:
    global _worker_tokenizer
    # One thread per worker: the workers are the parallelism (and a thread
    # pool the parent started before the fork would not be in the child).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(spec)


def _encode(texts: list[str]) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    return _worker_tokenizer.encode_batch(texts)


def _chunks(documents: Iterator[str], first: int) -> Iterator[tuple[int, list[str]]]:
    """Documents in groups of about _CHUNK_BYTES, with the index of each group's first."""
    group: list[str] = []
    size = 0
    for document in documents:
        group.append(document)
        size += len(document)
        if size >= _CHUNK_BYTES:
            yield first, group
            first, group, size = first + len(group), [], 0
    if group:
        yield first, group


def _encoded(tokenizer: Tokenizer, chunks: Iterator[tuple[int, list[str]]],
             workers: int) -> Iterator[tuple[int, list[str], list[np.ndarray]]]:
    """Each chunk with its tokens, in order; at most 4 tasks per worker in
    flight, so memory stays bounded however large the corpus."""
    if workers <= 1:
        for first, texts in chunks:
            yield first, texts, tokenizer.encode_batch(texts)
        return
    with multiprocessing.get_context("fork").Pool(workers, _start_worker, (tokenizer.spec,)) as pool:
        pending: collections.deque = collections.deque()
        for first, texts in chunks:
            pending.append((first, texts, pool.apply_async(_encode, (texts,))))
            if len(pending) >= 4 * workers:
                first, texts, result = pending.popleft()
                yield first, texts, result.get()
        while pending:
            first, texts, result = pending.popleft()
            yield first, texts, result.get()


def _remove_pending(out: Path, keep: int | None) -> None:
    for path in out.glob("*.pending.*"):
        if keep is None or path.suffix != f".{keep}":
            path.unlink(missing_ok=True)


def _is_held_out(document: int, validation_every: int) -> bool:
    return document % validation_every == validation_every - 1


def _sources(files: Sequence[Path]) -> list[dict[str, Any]]:
    return [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in files]


def _settings(files: Sequence[Path], tokenizer: Tokenizer, tokenizer_file: str, shard_tokens: int,
              validation_every: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION,
            "tokenizer": {"file": tokenizer_file, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                          "separator": tokenizer.separator},
            "dtype": "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32",
            "shard_tokens": shard_tokens, "validation_every": validation_every,
            "sources": _sources(files)}


def _trained_tokenizer(out: Path, files: Sequence[Path], vocab_size: int, validation_every: int,
                       train_bytes: int, progress: bool) -> Tokenizer:
    """The BPE trained in ``out`` before with the same recipe, or a new one
    trained on the first ``train_bytes`` of the training documents (never
    the held-out ones). The recipe is written first, the tokenizer atomically
    after it, so a tokenizer file always has its recipe beside it."""
    trained, recipe_path = out / "tokenizer.json", out / "tokenizer_training.json"
    recipe = {"vocab_size": vocab_size, "train_bytes": train_bytes, "validation_every": validation_every,
              "sources": _sources(files)}
    if trained.exists():
        if recipe_path.exists() and json.loads(recipe_path.read_text()) == recipe:
            return load_tokenizer(trained)
        raise ValueError(f"{trained} was trained with another --vocab-size, --tokenizer-train-mb or other inputs "
                         f"(see {recipe_path.name}); use another --out, or delete it to train a new one")

    def sample() -> Iterator[str]:
        seen = 0
        for index, document in enumerate(read_documents(files)):
            if seen >= train_bytes:
                return
            if not _is_held_out(index, validation_every):
                seen += len(document)
                yield document

    if progress:
        print(f"training a byte-level BPE of {vocab_size} tokens on up to {train_bytes / 1e6:,.0f} MB of text",
              flush=True)
    _write_json(recipe_path, recipe)
    tokenizer = train_bpe(sample(), vocab_size, trained)
    if tokenizer.vocab_size < vocab_size and progress:
        print(f"the corpus supports only {tokenizer.vocab_size} tokens (no pairs left to merge)", flush=True)
    return tokenizer


def check_settings(vocab_size: int, shard_tokens: int, validation_every: int, workers: int | None,
                   tokenizer_train_bytes: int) -> None:
    """A ValueError naming the sltrain-prepare flag whose value cannot be used."""
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"--vocab-size must be at least {MIN_BPE_VOCAB} for a byte-level BPE (256 bytes, a "
                         f"separator and one merge), got {vocab_size}")
    if shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if validation_every < 2:
        raise ValueError(f"--validation-every must be at least 2, got {validation_every}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if tokenizer_train_bytes < 1:
        raise ValueError(f"--tokenizer-train-mb must be above 0, got {tokenizer_train_bytes / 1e6:g}")


def prepare(inputs: Sequence[str | Path], out: Path, tokenizer: str | None = None, vocab_size: int = 32000,
            shard_tokens: int = 1 << 25, validation_every: int = 20, workers: int | None = None,
            tokenizer_train_bytes: int = DEFAULT_TOKENIZER_TRAIN_BYTES, progress: bool = True) -> dict[str, Any]:
    """Tokenizes ``inputs`` into shards under ``out`` and returns the index.

    ``tokenizer`` is ``byte``, a ``tokenizer.json`` or a SentencePiece
    ``.model``; None trains a byte-level BPE of ``vocab_size`` tokens on the
    first ``tokenizer_train_bytes`` of training text (or reuses the one
    trained in ``out`` before). A finished folder with the same settings is
    returned as it is, its shards verified; an unfinished one is continued.
    """
    check_settings(vocab_size, shard_tokens, validation_every, workers, tokenizer_train_bytes)
    workers = (os.cpu_count() or 1) if workers is None else workers
    files = corpus_files(inputs)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tok = _trained_tokenizer(out, files, vocab_size, validation_every, tokenizer_train_bytes, progress)
        tokenizer_file = "tokenizer.json"
    else:
        tok = load_tokenizer(tokenizer)
        tokenizer_file = "byte" if tokenizer == "byte" else "tokenizer" + Path(tokenizer).suffix
    settings = _settings(files, tok, tokenizer_file, shard_tokens, validation_every)
    if (out / INDEX).exists():
        index = read_index(out)
        if {k: index.get(k) for k in settings} != settings:
            raise ValueError(f"{out} already holds shards prepared from other inputs or settings; "
                             "use another --out, or delete it")
        verify_shards(out, index, cache_dir() / VERIFIED)
        return index
    if tokenizer not in (None, "byte"):
        copy = out / tokenizer_file  # the folder carries its tokenizer
        if not copy.exists() or file_sha256(copy) != tok.sha256:
            if (out / PROGRESS).exists():
                raise ValueError(f"{out} holds an unfinished preparation with another tokenizer; "
                                 "use another --out, or delete it")
            shutil.copyfile(tokenizer, copy)
        tok = load_tokenizer(copy)
    dtype = np.dtype(settings["dtype"])
    writers = {name: _SplitWriter(out, name, dtype, shard_tokens) for name in SPLITS}
    start = 0  # the first document not yet in a shard or a pending file
    if (out / PROGRESS).exists():
        saved = json.loads((out / PROGRESS).read_text())
        if saved["settings"] != settings:
            raise ValueError(f"{out} holds an unfinished preparation of other inputs or settings; "
                             "use another --out, or delete it")
        writers = {name: _SplitWriter.resumed(out, name, dtype, shard_tokens, saved[name]) for name in SPLITS}
        start = saved["next_document"]
    separator = np.asarray(tok.separator, dtype=np.uint32)

    def from_start() -> Iterator[str]:
        for index, document in enumerate(read_documents(files)):
            if index >= start:
                yield document

    bar = tqdm(desc="tokenizing", unit="B", unit_scale=True, disable=not progress, mininterval=1.0)
    if start and progress:
        bar.write(f"continuing an unfinished preparation in {out} at document {start:,}")
    for first, texts, encoded in _encoded(tok, _chunks(from_start(), start), workers):
        finished = False
        for offset, (text, ids) in enumerate(zip(texts, encoded)):
            name = SPLITS[1] if _is_held_out(first + offset, validation_every) else SPLITS[0]
            nbytes = len(text.encode("utf-8"))
            finished |= writers[name].add(np.concatenate([ids, separator]), nbytes)
            bar.update(nbytes)
        if finished:  # a point to continue from: every finished shard, and the rest set aside
            following = first + len(texts)
            _write_json(out / PROGRESS, {"settings": settings, "next_document": following,
                                         **{n: w.save(following) for n, w in writers.items()}})
            _remove_pending(out, keep=following)
        tokens = sum(sum(s["tokens"] for s in w.shards) for w in writers.values())
        bar.set_postfix(shards=sum(len(w.shards) for w in writers.values()), tokens=f"{tokens:,}", refresh=False)
    bar.close()
    splits = {name: writer.finish() for name, writer in writers.items()}
    if not any(split["documents"] for split in splits.values()):
        raise ValueError(f"--input {', '.join(map(str, inputs))}: no text found")
    for name, split in splits.items():
        if split["documents"] == 0:
            raise ValueError(f"--input {', '.join(map(str, inputs))}: no {name} documents; the corpus needs at least "
                             f"{validation_every} non-blank documents (every {validation_every}th is held out)")
    index = {**settings, "splits": splits}
    _write_json(out / INDEX, index)
    (out / PROGRESS).unlink(missing_ok=True)
    _remove_pending(out, keep=None)
    return index


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX
    if not path.is_file():
        raise ValueError(f"{folder}: no {INDEX}; prepare the corpus with sltrain-prepare first")
    try:
        index = json.loads(path.read_text())
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: not an index of sltrain token shards") from None
    if index.get("version") != VERSION:
        raise ValueError(f"{path}: token shards of format version {index.get('version')}; this sltrain_ext "
                         f"reads version {VERSION}: prepare the corpus again")
    try:
        np.dtype(index["dtype"])
        for key in ("file", "sha256", "vocab_size"):
            index["tokenizer"][key]
        for split in SPLITS:
            meta = index["splits"][split]
            for key in ("documents", "bytes", "tokens"):
                meta[key]
            for shard in meta["shards"]:
                for key in ("file", "tokens", "sha256", "max_id"):
                    shard[key]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: incomplete, no {error} entry where sltrain-prepare writes one (edited or "
                         "damaged); prepare the corpus again") from None
    return index


def _every_shard(folder: Path, index: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for split in SPLITS:
        for shard in index["splits"][split]["shards"]:
            yield folder / shard["file"], shard


def _file_state(path: Path) -> str:
    """Changes whenever the file's bytes may have: a rewrite, a replacement,
    or an edit in place (the change time moves even if the modification time
    is set back)."""
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def verify_shards(folder: Path, index: dict[str, Any], cache: Path | None) -> None:
    """Checks every shard's SHA-256 against the index; a ValueError names
    the first that differs. With a ``cache`` file, shards verified before in
    the same file state are not read again; None hashes everything."""
    remembered: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            remembered = json.loads(cache.read_text())
        except ValueError:
            remembered = {}  # a damaged cache only costs a re-hash
    verified = dict(remembered)
    for path, shard in _every_shard(folder, index):
        key = str(path.resolve())
        state = _file_state(path)
        if remembered.get(key) == [state, shard["sha256"]]:
            continue
        if file_sha256(path) != shard["sha256"]:
            verified.pop(key, None)
            _remember(cache, verified)
            raise ValueError(f"{path}: the shard does not match its SHA-256 in {folder / INDEX} (damaged or changed "
                             "since it was prepared); prepare the corpus again into a new folder")
        verified[key] = [state, shard["sha256"]]
    if verified != remembered:
        _remember(cache, verified)


def _remember(cache: Path | None, verified: dict[str, Any]) -> None:
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, json.dumps(verified).encode())


class TokenShards:
    """One split of a prepared folder, memory-mapped: its tokens are read
    from disk as windows are asked for, never loaded whole."""

    def __init__(self, folder: Path, split: str, index: dict[str, Any] | None = None):
        index = read_index(folder) if index is None else index
        meta = index["splits"][split]
        dtype = np.dtype(index["dtype"])
        self.folder, self.split = folder, split
        self.documents, self.bytes, self.tokens = meta["documents"], meta["bytes"], meta["tokens"]
        self.files: list[Path] = []
        self._maps: list[np.memmap] = []
        for shard in meta["shards"]:
            path = folder / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            if not path.is_file():
                raise ValueError(f"{path}: the shard is missing ({INDEX} lists it)")
            if path.stat().st_size != expected:
                raise ValueError(f"{path}: {path.stat().st_size} bytes, but {INDEX} says {shard['tokens']} "
                                 f"{dtype} tokens ({expected} bytes): truncated or replaced; prepare it again")
            self.files.append(path)
            self._maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["tokens"],)))
        self._ends = np.cumsum([m.size for m in self._maps])

    def file_at(self, position: int) -> Path:
        return self.files[int(np.searchsorted(self._ends, position, side="right"))]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, across shard ends."""
        pieces, shard = [], int(np.searchsorted(self._ends, start, side="right"))
        while length > 0:
            begin = start - (self._ends[shard - 1] if shard else 0)
            piece = self._maps[shard][begin:begin + length]
            pieces.append(piece)
            start, length, shard = start + piece.size, length - piece.size, shard + 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _feistel(values: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, 4**half_bits): four rounds of a balanced Feistel network."""
    mask = np.uint64((1 << half_bits) - 1)
    left, right = values >> np.uint64(half_bits), values & mask
    for key in keys:
        mixed = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
        mixed ^= mixed >> np.uint64(29)
        left, right = right, left ^ (mixed & mask)
    return (left << np.uint64(half_bits)) | right


class WindowSampler:
    """Windows of ``seq_len + 1`` tokens starting at multiples of ``seq_len``,
    numbered 0, 1, 2, ...: window k is window ``k % count`` of the split in
    the order of epoch ``k // count``, a seeded permutation (Feistel with
    cycle walking, O(1) memory). A pure function of (seed, k)."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int, vocab_size: int | None = None):
        self.shards, self.seq_len, self.seed, self.vocab_size = shards, seq_len, seed, vocab_size
        self.count = (shards.tokens - 1) // seq_len
        if self.count < 1:
            raise ValueError(f"the {shards.split} split of {shards.folder} has {shards.tokens} tokens, fewer than "
                             f"one sequence of --seq-len {seq_len} plus one")
        self._half_bits = max(1, math.ceil(math.log2(self.count) / 2))

    def _order(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        keys = np.random.default_rng([self.seed, epoch]).integers(0, 1 << 63, size=4, dtype=np.uint64)
        values = positions.astype(np.uint64)
        outside = np.ones(values.shape, dtype=bool)
        while outside.any():  # cycle walking: at most a few rounds, the domain is < 4x count
            values[outside] = _feistel(values[outside], self._half_bits, keys)
            outside = values >= self.count
        return values.astype(np.int64)

    def windows(self, first: int, count: int) -> torch.Tensor:
        """Windows first .. first + count - 1 as an int64 tensor [count, seq_len + 1]."""
        numbers = np.arange(first, first + count, dtype=np.int64)
        starts = np.empty_like(numbers)
        for epoch in np.unique(numbers // self.count):
            chosen = numbers // self.count == epoch
            starts[chosen] = self._order(int(epoch), numbers[chosen] % self.count) * self.seq_len
        rows = np.stack([self.shards.read(int(s), self.seq_len + 1) for s in starts]).astype(np.int64)
        if self.vocab_size is not None and rows.size and rows.max() >= self.vocab_size:
            bad = int(np.argmax(rows.max(axis=1) >= self.vocab_size))
            raise ValueError(f"{self.shards.file_at(int(starts[bad]))}: token id {int(rows[bad].max())} is beyond "
                             f"the model's vocabulary of {self.vocab_size}; the shard does not match its tokenizer")
        return torch.from_numpy(rows)

    def batch(self, position: int, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Rank ``rank``'s share of the global batch of ``batch_size`` windows
        that starts at window ``position``: consecutive, disjoint slices."""
        share = batch_size // world_size
        return self.windows(position + rank * share, share)


@dataclass
class PreparedCorpus:
    folder: Path
    index: dict[str, Any]
    tokenizer: Tokenizer
    train: TokenShards
    validation: TokenShards
    fingerprint: str  # names this corpus in checkpoints: the SHA-256 of its index

    def position(self, seq_len: int, seed: int, next_window: int = 0) -> dict[str, Any]:
        """The data position that checkpoints store: the training windows
        consumed so far over all ranks, and what gives them their meaning."""
        return {"corpus": self.fingerprint, "seq_len": seq_len, "seed": seed, "next_window": next_window}

    def continue_from(self, saved: dict[str, Any], seq_len: int, seed: int) -> dict[str, Any]:
        """The saved position, if it was taken on this corpus with this
        --seq-len and --seed; else a ValueError naming what differs."""
        current = self.position(seq_len, seed, saved.get("next_window", 0))
        for key, flag in (("corpus", "--data"), ("seq_len", "--seq-len"), ("seed", "--seed")):
            if saved.get(key) != current[key]:
                raise ValueError(f"trained with another {flag} ({saved.get(key)!r}, now {current[key]!r}); "
                                 "it cannot continue on this data")
        return current

    def bits_per_byte(self, loss: float, split: str = "validation") -> float:
        """Mean cross-entropy per token (nats) as bits per UTF-8 byte of text."""
        shards = self.validation if split == "validation" else self.train
        return loss * shards.tokens / shards.bytes / math.log(2)


def open_prepared(folder: Path, tokenizer: str | None = None, full_check: bool = False) -> PreparedCorpus:
    """A prepared folder, checked: its tokenizer file against the index's
    hash (and against ``tokenizer`` if one is named), its shards' largest
    ids against the tokenizer's vocabulary, their sizes, and their SHA-256
    (see verify_shards; ``full_check`` hashes every shard, whatever was
    verified before)."""
    index = read_index(folder)
    recorded = index["tokenizer"]
    tok = load_tokenizer(recorded["file"] if recorded["file"] == "byte" else folder / recorded["file"])
    if tok.sha256 != recorded["sha256"]:
        raise ValueError(f"{tok.spec}: not the tokenizer the shards were made with ({INDEX} records SHA-256 "
                         f"{recorded['sha256'][:12]}..., the file has {tok.sha256[:12]}...)")
    if tokenizer is not None and load_tokenizer(tokenizer).sha256 != tok.sha256:
        raise ValueError(f"--tokenizer {tokenizer}: the shards in {folder} were made with another tokenizer "
                         f"({tok.spec})")
    for path, shard in _every_shard(folder, index):
        if shard["max_id"] >= tok.vocab_size:
            raise ValueError(f"{path}: its largest token id, {shard['max_id']} ({INDEX}), is beyond the vocabulary "
                             f"of {tok.vocab_size} of the tokenizer {tok.spec}; the shard does not match its "
                             "tokenizer: prepare the corpus again")
    # Sizes first (TokenShards, cheap), then contents.
    splits = {split: TokenShards(folder, split, index) for split in SPLITS}
    verify_shards(folder, index, None if full_check else cache_dir() / VERIFIED)
    return PreparedCorpus(folder, index, tok, splits["train"], splits["validation"], file_sha256(folder / INDEX))
