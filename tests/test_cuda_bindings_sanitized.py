"""The CUDA bindings' emulated build again, under ASan and UBSan: a subset of
tests/test_cuda_bindings.py in a Python process with the sanitizer runtimes
preloaded (a sanitised extension cannot load into an unsanitised process
otherwise), so an out-of-bounds access or undefined behaviour of the bindings
or the kernels they launch, on torch's CPU allocations, stops the run with a
report instead of passing by luck."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Both paths, many chunks and staging tiles, every mask, odd widths, strided
# inputs, the Adam groups, 16-bit columns (widened, cached, read by the decode
# kernels): the bindings' own index arithmetic.
SELECTION = ("edge_shapes or every_output_mask or staging or strided or adam or zero_tokens or densify "
             "or 16_bit_columns")


def sanitizer_runtimes() -> list[str]:
    found = []
    for library in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["g++", f"-print-file-name={library}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path):
            pytest.skip(f"g++ has no {library}")
        found.append(path)
    return found


def test_the_bindings_pass_under_asan_and_ubsan():
    env = dict(os.environ, SLTRAIN_EMULATED_SANITIZERS="1", LD_PRELOAD=":".join(sanitizer_runtimes()),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    # -s: a sanitizer report goes to the process's stderr, which pytest's own
    # capture would lose when the sanitizer ends the process.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_cuda_bindings.py"), "-k", SELECTION],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    report = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, report
    assert "AddressSanitizer" not in report and "runtime error" not in report, report
    assert " passed" in done.stdout, report
