"""Tokenizers for pretraining, all offline: UTF-8 bytes, a Hugging Face
``tokenizer.json``, a SentencePiece ``.model`` (T5's, which the SLTrain paper
used), or a byte-level BPE trained here on the user's own corpus.

Every tokenizer is identified by the SHA-256 of its file, which the token
shards record, so shards are never read back with another tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .files import file_sha256, write_atomically

__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer", "load_tokenizer", "train_bpe",
           "padded_vocab_size", "END_OF_TEXT", "MIN_BPE_VOCAB"]

END_OF_TEXT = "<|endoftext|>"  # the document separator of the BPE tokenizers trained here
MIN_BPE_VOCAB = 256 + 1 + 1  # the bytes, END_OF_TEXT and one merge
# Tokens that end a document in common tokenizer.json files, in order of preference.
_SEPARATOR_NAMES = (END_OF_TEXT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
_VOCAB_MULTIPLE = 64  # embedding and head rows padded to this: whole tiles for the kernels


def padded_vocab_size(vocab_size: int) -> int:
    """The model's vocabulary: the tokenizer's rounded up to a multiple of 64."""
    return -(-vocab_size // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE


class Tokenizer:
    """What pretraining needs of a tokenizer. ``spec`` is how to load it
    again (``byte`` or a file path), in a worker process or a later run."""

    spec: str
    vocab_size: int
    sha256: str
    separator: list[int]  # appended after every document

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens; documents end with a blank line."""

    spec = "byte"
    vocab_size = 256
    sha256 = "byte"
    separator = list(b"\n\n")

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as Backend

        try:
            self._backend = Backend.from_file(str(path))
        except Exception as error:  # the library raises plain Exceptions for unreadable files
            raise ValueError(f"--tokenizer {path}: not a readable tokenizer.json ({error})") from None
        self.spec, self.sha256 = str(path), file_sha256(path)
        self.vocab_size = self._backend.get_vocab_size(with_added_tokens=True)
        vocab = self._backend.get_vocab(with_added_tokens=True)
        named = next((vocab[name] for name in _SEPARATOR_NAMES if name in vocab), None)
        self.separator = [named] if named is not None else self._backend.encode("\n\n").ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` file, T5's for example."""

    def __init__(self, path: Path):
        try:
            import sentencepiece
        except ImportError:
            raise ValueError(f"--tokenizer {path}: SentencePiece models need the `sentencepiece` package "
                             "(pip install sentencepiece)") from None
        self._backend = sentencepiece.SentencePieceProcessor()
        try:
            self._backend.Load(str(path))
        except (OSError, RuntimeError) as error:
            raise ValueError(f"--tokenizer {path}: not a readable SentencePiece model ({error})") from None
        self.spec, self.sha256 = str(path), file_sha256(path)
        self.vocab_size = self._backend.GetPieceSize()
        eos = self._backend.eos_id()
        self.separator = [eos] if eos >= 0 else self._backend.EncodeAsIds("\n\n")

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.uint32) for ids in self._backend.EncodeAsIds(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.DecodeIds([int(i) for i in ids])


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """``byte``, a ``tokenizer.json`` (any ``.json``) or a SentencePiece ``.model``."""
    if str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--tokenizer {spec}: no such file (give a tokenizer.json, a SentencePiece .model, "
                         "or 'byte')")
    if path.suffix == ".json":
        return HFTokenizer(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    raise ValueError(f"--tokenizer {spec}: unknown kind of file; expected a tokenizer.json (.json) or a "
                     "SentencePiece model (.model)")


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` tokens (256 byte tokens, the
    document separator, merges) trained on ``texts`` and saved to ``path``.
    The same texts give the same file."""
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"--vocab-size must be at least {MIN_BPE_VOCAB} for a byte-level BPE (256 bytes, "
                         f"{END_OF_TEXT} and one merge), got {vocab_size}")
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, backend.to_str(pretty=True).encode("utf-8"))  # the bytes Tokenizer.save writes
    return HFTokenizer(path)
