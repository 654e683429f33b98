"""Documents of a text corpus on local disk, read lazily in a fixed order.

Formats: plain text (``.txt``, one document per file), JSON lines
(``.jsonl``, a ``text`` field per line), C4's layout (``.json.gz``, JSON
lines compressed) and Parquet (a ``text`` column; needs ``pyarrow``). A
folder stands for every such file under it, in sorted order. ``builtin`` is
real English text that installs with Python itself: the language reference
and library documentation topics of ``pydoc_data`` followed by the docstrings
of the standard library (read once, then cached under ``~/.cache/sltrain_ext``
or ``$SLTRAIN_CACHE``).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import sys
import sysconfig
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from .files import write_atomically

__all__ = ["BUILTIN", "builtin_documents", "builtin_tag", "cache_dir", "corpus_files", "read_documents"]

BUILTIN = "builtin"
# Part of the cache's name: bump it whenever builtin_documents would return other text.
BUILTIN_CORPUS_VERSION = 2
SUFFIXES = (".txt", ".jsonl", ".json.gz", ".parquet")


def cache_dir() -> Path:
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


def builtin_tag() -> str:
    """Names what is cached of the built-in corpus: its version and the Python
    whose documentation it is (the text differs between Python versions)."""
    return f"v{BUILTIN_CORPUS_VERSION}_py{sys.version_info.major}{sys.version_info.minor}"


def builtin_path() -> Path:
    """The built-in corpus as a JSON-lines file, ``{"text": ...}`` per line (written on first use)."""
    cache = cache_dir() / f"builtin_corpus_{builtin_tag()}.jsonl"
    if cache.exists():
        return cache
    from pydoc_data.topics import topics

    documents = [topics[key] for key in sorted(topics)] + _stdlib_docstrings(6_000_000)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, "".join(json.dumps({"text": d}) + "\n" for d in documents).encode("utf-8"))
    return cache


def builtin_documents() -> list[str]:
    return list(read_documents([builtin_path()]))


def _has_corpus_suffix(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in SUFFIXES)


def corpus_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files that ``inputs`` (files, folders or ``builtin``) stand for, in reading order."""
    if not inputs:
        raise ValueError("--input: no corpus given")
    files: list[Path] = []
    for spec in inputs:
        if str(spec) == BUILTIN:
            files.append(builtin_path())
            continue
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _has_corpus_suffix(p))
            if not found:
                raise ValueError(f"--input {spec}: the folder has no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if not _has_corpus_suffix(path):
                raise ValueError(f"--input {spec}: unknown format; expected one of {', '.join(SUFFIXES)} "
                                 "or a folder of them")
            files.append(path)
        else:
            raise ValueError(f"--input {spec}: no such file or directory")
    return files


def _json_lines(path: Path, lines: Iterator[bytes]) -> Iterator[str]:
    """The 'text' of each line, decoded line by line so that bad UTF-8 is named by its line."""
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: line {number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} at "
                             f"column {error.start + 1})") from None
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}: line {number} is not a JSON object with a 'text' field") from None
        if not isinstance(text, str):
            raise ValueError(f"{path}: line {number}: 'text' is not a string")
        yield text


def _documents_of(path: Path) -> Iterator[str]:
    if path.name.endswith(".txt"):
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.name.endswith(".jsonl"):
        with path.open("rb") as f:
            yield from _json_lines(path, f)
    elif path.name.endswith(".json.gz"):
        try:
            with gzip.open(path, "rb") as f:
                yield from _json_lines(path, f)
        except (EOFError, OSError, zlib.error) as error:
            raise ValueError(f"{path}: truncated or corrupt gzip file ({error or error.__class__.__name__})") from None
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading Parquet needs the `pyarrow` package (pip install pyarrow)") from None
        try:
            table = pq.ParquetFile(path)
            if "text" not in table.schema_arrow.names:
                raise ValueError(f"{path}: no 'text' column (columns: {', '.join(table.schema_arrow.names)})")
            for batch in table.iter_batches(columns=["text"]):
                yield from (text for text in batch.column(0).to_pylist() if text is not None)
        except OSError as error:
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from None


def read_documents(files: Sequence[Path]) -> Iterator[str]:
    """Every non-blank document of ``files``, in order."""
    for path in files:
        for document in _documents_of(path):
            if document.strip():
                yield document
