"""The CUDA bindings on the CPU: csrc/cuda/ops.cu and support.cu compiled by
g++ against the project's CUDA emulator into a test-only extension
(tests/cuda_emulator/bindings), whose ops run on CPU tensors as
``torch.ops.sltrain_emulated_cuda.*``. Built once per checkout into
build/emulated_cuda (about a minute on 2 cores), then reused."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

import sltrain_ext  # noqa: F401  (registers the sltrain library, whose schemas the build copies)

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = ROOT / "tests" / "cuda_emulator"


# SLTRAIN_EMULATED_SANITIZERS=1 builds (into a folder of its own) and loads the
# same extension under ASan and UBSan; the Python process must then start with
# the sanitizer runtimes preloaded (tests/test_cuda_bindings_sanitized.py does).
SANITIZED = os.environ.get("SLTRAIN_EMULATED_SANITIZERS") == "1"
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


@cache
def load():
    """The built test extension (a Python module with ``ledger_start`` and
    ``ledger_stop``); its ops are registered as a side effect."""
    from torch.utils.cpp_extension import load as build_and_load

    variant = "emulated_cuda_sanitized" if SANITIZED else "emulated_cuda"
    build_directory = ROOT / "build" / variant
    build_directory.mkdir(parents=True, exist_ok=True)
    return build_and_load(
        name=f"sltrain_{variant}",
        sources=[str(EMULATOR / "bindings" / name) for name in ("runtime.cpp", "ops.cpp", "support.cpp")]
        + [str(ROOT / "csrc" / "checks.cpp")],
        # The shims first, so <ATen/cuda/CUDAContext.h> and friends resolve to them.
        extra_include_paths=[str(EMULATOR / "aten_shim"), str(EMULATOR), str(ROOT / "csrc")],
        extra_cflags=["-O1" if SANITIZED else "-O2", "-DSLTRAIN_CUDA_EMULATOR",
                      "-DSLTRAIN_CUDA_LIBRARY=sltrain_emulated_cuda", "-DSLTRAIN_CUDA_DISPATCH_KEY=CPU"]
        + (SANITIZER_FLAGS if SANITIZED else []),
        extra_ldflags=SANITIZER_FLAGS if SANITIZED else [],
        build_directory=str(build_directory),
        verbose=os.environ.get("SLTRAIN_EMULATED_BUILD_VERBOSE") == "1",
    )


def ops():
    load()
    return torch.ops.sltrain_emulated_cuda


# ATen wraps a Python number in a 0-dim CPU tensor (at most 8 bytes), also
# for CUDA calls: not device memory, so the ledger's sums leave those out.
SCALAR_BYTES = 8


class Ledger:
    """Every allocation and free the bindings make inside the ``with`` block:
    ``events`` (+bytes, -bytes in order), ``peak`` (the most bytes live at
    once, counted from the block's start) and ``live`` (still live at its end),
    both without the scalar wrappers of SCALAR_BYTES or less."""

    def __enter__(self) -> "Ledger":
        load().ledger_start()
        return self

    def __exit__(self, *exc) -> None:
        self.events = load().ledger_stop()
        live = peak = 0
        for event in self.events:
            if abs(event) <= SCALAR_BYTES:
                continue
            live += event
            peak = max(peak, live)
        self.peak, self.live = peak, live


def ledgers_of_a_materialized_layer(b: int, m: int, n: int, r: int, nnz: int, workspace: int, dtype: torch.dtype,
                                    mask=(True, True, True, True), operands_aligned: bool = False,
                                    columns: torch.dtype = torch.int32) -> tuple[Ledger, Ledger]:
    """The ledgers of one materialised forward (its y kept alive, as the caller
    of a layer would keep it) and one backward of the emulated bindings; x and
    the output gradient contiguous, or with rows padded to 8 elements as
    sltrain_ext's LLaMA MLP hands them over (`operands_aligned`); column
    indices of dtype `columns`."""
    import sltrain_ext as sl
    from helpers import make_problem

    cuda_ops = ops()
    p = make_problem(m, n, r, nnz, dtype, seed=b, columns=columns)

    def operand(rows, cols):
        values = torch.randn(rows, cols, dtype=torch.float64).to(dtype)
        if not operands_aligned:
            return values
        return torch.empty(rows, (cols + 7) // 8 * 8, dtype=dtype)[:, :cols].copy_(values)

    x, grad_y = operand(b, n), operand(b, m)
    with sl.matmul_config("materialized", workspace_bytes=workspace):
        with Ledger() as forward:
            y = cuda_ops.sl_matmul(x, *p.operands(), p.bias)
        with Ledger() as backward:
            grads = cuda_ops.sl_matmul_backward(grad_y, x, *p.operands(), list(mask))
    del y, grads
    return forward, backward
