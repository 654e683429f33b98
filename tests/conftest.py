import contextlib
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import torch


def _inductor_cache_of_this_build() -> None:
    """Inductor's on-disk graph cache keys a compiled graph by its code, not by
    the schemas of the C++ ops it calls: a graph compiled against another build
    of the extension (another checkout, an older commit) calls sltrain's ops
    with that build's arguments and fails. So the tests keep one cache per
    build of sltrain_ext/_C, unless the caller chose a cache directory."""
    root = Path(__file__).resolve().parent.parent
    built = sorted((root / "sltrain_ext").glob("_C*.so"))
    if built and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        digest = hashlib.sha256(built[0].read_bytes()).hexdigest()[:16]
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "build" / "torchinductor" / digest)


_inductor_cache_of_this_build()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str | int):
    """A real small filesystem of `size` bytes (e.g. "3M") at `folder`, for the
    full-disk tests; skips the test where mounting is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of request.param bytes (e.g. "3M") mounted for the test."""
    with mounted_tmpfs(tmp_path / "disk", request.param) as folder:
        yield folder
