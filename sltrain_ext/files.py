"""File helpers shared by checkpoints, token shards and tokenizers."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_sha256", "write_atomically", "replacing_together"]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    # Named per process: ranks of one job may write the same file at once.
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader (or a re-run after a
    crash) sees the old file or the new one, never half of one."""
    with replacing_together([path]) as (temporary,):
        temporary.write_bytes(data)


@contextlib.contextmanager
def replacing_together(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths`` for the block to write; once all are
    written (and synced), each replaces its path. If the block raises (a full
    disk, say), the temporaries are removed and the old files stay whole: a
    new set of files never overwrites an old one before it exists entirely."""
    temporaries = [_temporary(Path(path)) for path in paths]
    try:
        yield temporaries
        for temporary in temporaries:
            _sync(temporary)
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, path in zip(temporaries, paths):
        temporary.replace(path)
