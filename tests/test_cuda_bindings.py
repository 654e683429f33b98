"""The CUDA bindings (csrc/cuda/ops.cu, support.cu) run on the CPU through the
emulated build (tests/emulated_cuda.py): every op against the CPU ops and a
float64 reference, on both paths, many row chunks, widths that need padding,
bias, every output mask, strided and offset inputs, every dtype, empty sizes,
and the Adam groups with mixed dtypes. What the real GPU adds (cuBLAS,
timing, concurrency) is tests/test_gpu.py's."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import emulated_cuda
import sltrain_ext as sl
from helpers import (DTYPES, assert_close, codes_in_order, make_problem, reference_forward_backward,
                     reference_weight)

PATHS = ["factored", "materialized"]
FAKE_LIBRARY = torch.library.Library("sltrain_emulated_cuda", "FRAGMENT")  # fake kernels the tests add
MASKS = list(itertools.product([False, True], repeat=4))


@pytest.fixture(scope="module")
def cuda_ops():
    return emulated_cuda.ops()


@pytest.fixture(params=PATHS)
def path(request):
    # 4 KiB of workspace: the materialised path runs a row chunk per 8 rows or so.
    with sl.matmul_config(request.param, workspace_bytes=4096):
        yield request.param


def run_and_check(cuda_ops, p, x, dtype, masks=(True,) * 4):
    """Forward and backward of the emulated bindings against the float64
    reference; the masked-off gradients must come back empty."""
    y = cuda_ops.sl_matmul(x, *p.operands(), p.bias)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    expected = reference_forward_backward(p, x, grad_y)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], p.m)
    assert_close(y, expected[0], dtype, "y")
    grads = cuda_ops.sl_matmul_backward(grad_y, x, *p.operands(), list(masks))
    for name, wanted, grad, ref in zip(("dx", "dA", "dB", "dvalues"), masks, grads, expected[1:5]):
        if wanted:
            assert grad.dtype == dtype
            assert_close(grad, ref, dtype, name)
        else:
            assert grad.numel() == 0, f"{name} was masked off but computed"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_random_shapes_against_float64(cuda_ops, seed, dtype, columns, path):
    rng = random.Random(seed)
    m, n, r = rng.randint(1, 70), rng.randint(1, 70), rng.randint(1, 12)
    lead = [rng.randint(1, 6) for _ in range(rng.randint(1, 3))]
    p = make_problem(m, n, r, rng.randint(0, m * n), dtype, seed=seed, bias=bool(seed % 2), columns=columns)
    x = torch.randn(*lead, n, dtype=torch.float64).to(dtype)
    run_and_check(cuda_ops, p, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,m,n,r,nnz",
    [
        (0, 5, 7, 2, 9),  # no tokens
        (4, 0, 7, 2, 0),  # no outputs
        (3, 4, 0, 2, 0),  # no inputs: y is the bias
        (4, 1, 9, 1, 3),  # m = 1
        (4, 9, 1, 3, 4),  # n = 1
        (3, 6, 8, 2, 0),  # empty support
        (3, 6, 8, 2, 48),  # density 1
        (2, 3, 5461, 4, 1500),  # LLaMA-1B's odd width as the input: padded leading dimensions
        (2, 5461, 3, 4, 1500),  # and as the output
        (3, 13, 21, 3, 60),  # odd on both sides
        (1, 300, 40, 8, 1200),  # one token: the SpMV
    ],
)
def test_edge_shapes_against_float64(cuda_ops, b, m, n, r, nnz, dtype, path):
    p = make_problem(m, n, r, nnz, dtype, seed=b + m + n)
    x = torch.randn(b, n, dtype=torch.float64).to(dtype)
    run_and_check(cuda_ops, p, x, dtype)


@pytest.mark.parametrize("masks", MASKS, ids=lambda masks: "".join("1" if k else "0" for k in masks))
def test_every_output_mask(cuda_ops, masks, path):
    p = make_problem(23, 19, 4, 90, seed=5)
    x = torch.randn(6, 19, dtype=torch.float64).float()
    run_and_check(cuda_ops, p, x, torch.float32, masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_and_offset_inputs(cuda_ops, dtype, path):
    p = make_problem(17, 11, 3, 50, dtype, seed=2)
    base = torch.randn(40, 30, dtype=torch.float64).to(dtype)
    x = base[3:15:2, 5:16]  # an offset, strided view of 6 tokens x 11 features
    assert not x.is_contiguous() and x.storage_offset() > 0
    p.bias = torch.randn(34, dtype=torch.float64).to(dtype)[::2]  # a strided bias
    p.A = p.A.t().contiguous().t()  # column-major factor
    run_and_check(cuda_ops, p, x, dtype)


def test_both_paths_agree_with_the_cpu_ops(cuda_ops):
    p = make_problem(45, 38, 6, 400, seed=9)
    x = torch.randn(12, 38, dtype=torch.float64).float()
    grad_y = torch.randn(12, 45, dtype=torch.float64).float()
    cpu = (torch.ops.sltrain.sl_matmul(x, *p.operands(), p.bias),
           *torch.ops.sltrain.sl_matmul_backward(grad_y, x, *p.operands(), [True] * 4))
    for path in PATHS:
        with sl.matmul_config(path, workspace_bytes=2048):
            emulated = (cuda_ops.sl_matmul(x, *p.operands(), p.bias),
                        *cuda_ops.sl_matmul_backward(grad_y, x, *p.operands(), [True] * 4))
        for name, a, b in zip(("y", "dx", "dA", "dB", "dvalues"), emulated, cpu):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{path}: {name}")


@pytest.mark.parametrize("m,n,nnz", [(31, 27, 200), (9, 4096, 700), (6, 5461, 900), (5, 3, 0)])
def test_transpose_support_equals_the_cpu_op(cuda_ops, m, n, nnz):
    row_ptr, col_idx = sl.random_support(m, n, nnz, seed=m)
    assert torch.equal(cuda_ops.transpose_support(row_ptr, col_idx, n), sl.transpose_support(row_ptr, col_idx, n))


def csc_bytes(p) -> int:
    return sl.transpose_support(p.row_ptr, p.col_idx, p.n).nbytes


def factored_backward(cuda_ops, p, x, grad_y, mask=(True,) * 4):
    """The emulated factored backward inside an allocation ledger: (dx, dA,
    dB, dvalues) and the ledger."""
    with sl.matmul_config("factored"), emulated_cuda.Ledger() as ledger:
        grads = cuda_ops.sl_matmul_backward(grad_y, x, *p.operands(), list(mask))
    return grads, ledger


def test_the_factored_backward_builds_the_csc_once_per_support(cuda_ops):
    p = make_problem(31, 27, 4, 203, seed=4)  # 203 entries: a pad before `entry`
    x, grad_y = torch.randn(5, 27), torch.randn(5, 31)
    expected = torch.ops.sltrain.sl_matmul_backward(grad_y, x, *p.operands(), [True] * 4)
    first, built = factored_backward(cuda_ops, p, x, grad_y)
    again, reused = factored_backward(cuda_ops, p, x, grad_y)
    # The first call builds the CSC (once); the second allocates its gradients only.
    assert built.events.count(csc_bytes(p)) == 1
    assert csc_bytes(p) not in reused.events and reused.live == sum(g.nbytes for g in again)
    for name, a, b, want in zip(("dx", "dA", "dB", "dvalues"), first, again, expected):
        assert torch.equal(a, b), name
        torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-5, msg=name)


def test_a_csc_is_built_only_for_dx(cuda_ops):
    p = make_problem(12, 10, 2, 50, seed=8)
    _, ledger = factored_backward(cuda_ops, p, torch.randn(3, 10), torch.randn(3, 12), (False, True, True, True))
    assert csc_bytes(p) not in ledger.events


def test_the_csc_follows_a_support_written_in_place_or_replaced(cuda_ops):
    """A CSC cached for one support must never serve another: dx equals the
    CPU op's after col_idx is overwritten in place (its version changes, its
    storage does not), after row_ptr and col_idx are replaced, and after the
    old support is freed and a new one allocated in its place."""
    m, n, nnz = 23, 19, 90
    p = make_problem(m, n, 3, nnz, seed=1)
    x, grad_y = torch.randn(4, n), torch.randn(4, m)

    def dx_matches_the_cpu():
        dx = factored_backward(cuda_ops, p, x, grad_y)[0][0]
        expected = torch.ops.sltrain.sl_matmul_backward(grad_y, x, *p.operands(), [True] * 4)[0]
        torch.testing.assert_close(dx, expected, rtol=1e-5, atol=1e-5)

    dx_matches_the_cpu()
    for seed in (2, 3):
        row_ptr, col_idx = sl.random_support(m, n, nnz, seed=seed)
        p.row_ptr.copy_(row_ptr)
        p.col_idx.copy_(col_idx)
        dx_matches_the_cpu()
    p.row_ptr, p.col_idx = sl.random_support(m, n, nnz, seed=4)
    dx_matches_the_cpu()
    for seed in (5, 6):
        p.row_ptr = p.col_idx = None  # the cached support's storages die
        p.row_ptr, p.col_idx = sl.random_support(m, n, nnz, seed=seed)
        dx_matches_the_cpu()


def test_a_compiled_factored_backward_builds_the_csc_once(cuda_ops):
    """torch.compile keeps no Python state between backward calls, so a cache
    outside the op was skipped there and the CSC rebuilt every call."""
    # The emulated op traces with the real op's fake kernel (their schemas are one).
    torch.library.register_fake("sltrain_emulated_cuda::sl_matmul_backward", lib=FAKE_LIBRARY)(
        torch.ops.sltrain.sl_matmul_backward)
    p = make_problem(29, 21, 3, 150, seed=6)
    x, grad_y = torch.randn(4, 21), torch.randn(4, 29)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def backward(grad_y, x, A, B, values, row_ptr, col_idx):
        return cuda_ops.sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, p.scale, [True] * 4)

    operands = (grad_y, x, *p.operands()[:5])
    with sl.matmul_config("factored"):
        with emulated_cuda.Ledger() as first:
            expected = backward(*operands)
        for _ in range(2):
            with emulated_cuda.Ledger() as again:
                grads = backward(*operands)
            assert csc_bytes(p) not in again.events, again.events
            assert all(torch.equal(a, b) for a, b in zip(grads, expected))
    assert csc_bytes(p) in first.events


def test_a_freed_support_releases_its_csc(cuda_ops):
    p = make_problem(17, 13, 2, 60, seed=2)
    x, grad_y = torch.randn(3, 13), torch.randn(3, 17)
    factored_backward(cuda_ops, p, x, grad_y)
    size = csc_bytes(p)
    p.row_ptr, p.col_idx = sl.random_support(17, 13, 60, seed=9)
    # The next lookup frees the dead support's copy, then builds (and keeps) the new one's.
    grads, ledger = factored_backward(cuda_ops, p, x, grad_y)
    assert ledger.events.index(-size) < ledger.events.index(size)
    assert ledger.live == sum(g.nbytes for g in grads)  # the new copy replaced the old one


def test_a_transposed_support_cannot_be_passed_in(cuda_ops):
    """Nothing made outside the library reaches the transposed SpMM: the
    argument that took a caller's CSC copy is gone, and passing one is refused."""
    p = make_problem(8, 6, 2, 10, seed=0)
    x, grad_y = torch.randn(3, 6), torch.randn(3, 8)
    hostile = torch.full((40,), 2**31 - 1, dtype=torch.int32)
    with pytest.raises(TypeError, match="transposed_support"):
        sl.sl_matmul(x, *p.operands(), p.bias, transposed_support=hostile)
    with pytest.raises(TypeError, match="transposed_support"):
        sl.sl_matmul_backward(grad_y, x, *p.operands(), transposed_support=hostile)
    for op, args in ((torch.ops.sltrain.sl_matmul, (x, *p.operands(), p.bias, hostile)),
                     (cuda_ops.sl_matmul_backward, (grad_y, x, *p.operands(), [True] * 4, hostile))):
        with pytest.raises(RuntimeError, match="expected at most .* argument"):
            op(*args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,nnz", [(0, 5, 0), (7, 5461, 900), (40, 33, 1320), (3, 4, 0)])
def test_densify_against_float64(cuda_ops, m, n, nnz, dtype):
    p = make_problem(m, n, 3, nnz, dtype, seed=m)
    expected = torch.ops.sltrain.densify(*(t.double() if t.is_floating_point() else t
                                           for t in p.operands()[:5]), p.scale)
    assert_close(cuda_ops.densify(*p.operands()), expected, dtype, "W")


@pytest.mark.parametrize("m,n,nnz,seed", [(1, 1, 1, 0), (37, 53, 500, 3), (200, 7, 1400, 2**63 - 1), (5, 5461, 8000, 11)])
def test_random_support_fill_equals_cpu(cuda_ops, m, n, nnz, seed):
    expected = torch.ops.sltrain.random_support(m, n, nnz, seed)
    row_ptr = torch.full((m + 1,), -1, dtype=torch.int32)
    col_idx = torch.full((nnz,), -1, dtype=torch.int32)
    cuda_ops._random_support_fill(row_ptr, col_idx, n, seed)
    assert torch.equal(row_ptr, expected[0]) and torch.equal(col_idx, expected[1])


def adam_lists(dtypes, sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lists = [[], [], [], []]
    for dtype, size in zip(dtypes, sizes):
        state = torch.float64 if dtype == torch.float64 else torch.float32
        lists[0].append(torch.randn(size, generator=gen).to(dtype))
        lists[1].append(torch.randn(size, generator=gen).to(dtype))
        lists[2].append(torch.randn(size, generator=gen).to(state) * 0.1)
        lists[3].append(torch.rand(size, generator=gen).to(state))
    return lists


def test_fused_adam_groups_of_mixed_dtypes_match_the_cpu(cuda_ops):
    # Every dtype interleaved in one call, every vector tail, a tensor past one chunk.
    sizes = list(range(0, 10)) + [5461, 65536 + 3] + [17] * 40
    dtypes = [DTYPES[i % len(DTYPES)] for i in range(len(sizes))]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=3, decoupled=True)
    cpu, emulated = adam_lists(dtypes, sizes), adam_lists(dtypes, sizes)
    torch.ops.sltrain.fused_adam_(*cpu, **hyper)
    cuda_ops.fused_adam_(*emulated, **hyper)
    for name, a, b in zip(("params", "grads", "exp_avgs", "exp_avg_sqs"), cpu, emulated):
        for i, (expected, actual) in enumerate(zip(a, b)):
            tolerance = {torch.float64: 1e-12, torch.float32: 1e-6}.get(actual.dtype, 1e-2)
            torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance, msg=f"{name}[{i}]")


@pytest.mark.parametrize("bits", [8, 4])
def test_fused_quantised_adam_groups_of_mixed_dtypes_within_one_code_of_the_cpu(cuda_ops, bits):
    block = 256 if bits == 8 else 128
    sizes = [1, block - 1, block, block + 1, 5461, 16 * block + 101]
    dtypes = [torch.float32, torch.bfloat16, torch.float16] * 2
    name = f"fused_adam{bits}bit_"
    code_bytes = [s if bits == 8 else (s + 1) // 2 for s in sizes]
    results = []
    for op in (getattr(torch.ops.sltrain, name), getattr(cuda_ops, name)):
        gen = torch.Generator().manual_seed(1)
        params = [torch.randn(s, generator=gen).to(d) for s, d in zip(sizes, dtypes)]
        m_dtype = torch.int8 if bits == 8 else torch.uint8
        codes = [[torch.zeros(n, dtype=t) for n in code_bytes] for t in (m_dtype, torch.uint8)]
        absmax = [[torch.zeros(-(-s // block)) for s in sizes] for _ in range(2)]
        for step in (1, 2, 3):
            grads = [torch.randn(s, generator=gen).to(d) for s, d in zip(sizes, dtypes)]
            op(params, grads, codes[0], absmax[0], codes[1], absmax[1], 1e-2, 0.9, 0.999, 1e-8, 0.0, step, True)
        results.append((params, codes, absmax))
    (p_cpu, c_cpu, a_cpu), (p_emu, c_emu, a_emu) = results
    for a, b in zip(p_cpu, p_emu):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-3)
    for signed, (cpu_codes, emulated_codes) in zip((True, False), zip(c_cpu, c_emu)):
        for a, b in zip(cpu_codes, emulated_codes):
            a, b = codes_in_order(a, bits, signed), codes_in_order(b, bits, signed)
            assert (a - b).abs().max().item() <= 1
    for a, b in zip(sum(a_cpu, []), sum(a_emu, [])):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=0)


def test_argument_errors_name_the_argument(cuda_ops):
    p = make_problem(8, 6, 2, 10, seed=0)
    with pytest.raises(ValueError, match="x"):
        cuda_ops.sl_matmul(torch.randn(3, 5), *p.operands(), None)
    with pytest.raises(ValueError, match="grad_y"):
        cuda_ops.sl_matmul_backward(torch.randn(3, 7), torch.randn(3, 6), *p.operands(), [True] * 4)


@pytest.mark.parametrize("workspace", [64, 3000, 1 << 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,m,n", [(37, 29, 43), (50, 5461, 12), (50, 12, 5461), (9, 16, 43)])
def test_unaligned_widths_through_staging_tiles(cuda_ops, b, m, n, dtype, workspace):
    # Odd widths make the materialised path stage x, y, g or dx in aligned
    # tiles; tiny workspaces make the tiles a token or two.
    p = make_problem(m, n, 3, min(m * n, 300), dtype, seed=m + n)
    x = torch.randn(b, n, dtype=torch.float64).to(dtype)
    with sl.matmul_config("materialized", workspace_bytes=workspace):
        run_and_check(cuda_ops, p, x, dtype)


@pytest.mark.parametrize("tokens", [1, 16])
def test_factored_path_scales_after_each_product(cuda_ops, tokens):
    # B = 0 as at init: every exact result is small, but scale * (x A^T) or
    # scale * (g B) computed first overflows float32. (The materialised path
    # scales in cuBLAS's epilogue, which ATen's CPU addmm does not mimic.)
    p = make_problem(48, 40, 8, 300)
    scale = 3.4e38
    A, B = torch.randn(8, 40), torch.zeros(48, 8)
    x, grad_y = torch.randn(tokens, 40), torch.randn(tokens, 48)
    with sl.matmul_config("factored"):
        y = cuda_ops.sl_matmul(x, A, B, p.values, p.row_ptr, p.col_idx, scale, None)
        dx, dA, _, _ = cuda_ops.sl_matmul_backward(grad_y, x, A, B, p.values, p.row_ptr, p.col_idx, scale,
                                                   [True, True, False, False])
    S = sl.densify(A, B, p.values, p.row_ptr, p.col_idx, 0.0).double()
    torch.testing.assert_close(y.double(), x.double() @ S.T, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dx.double(), grad_y.double() @ S, rtol=1e-5, atol=1e-4)
    assert torch.equal(dA, torch.zeros_like(dA))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("columns", [torch.int32, torch.uint16])
def test_zero_tokens_cost_nothing_on_either_path(cuda_ops, path, columns):
    # W would be 4 x 2^40 (16 TiB in float32): a call with no token must never
    # build it, nor allocate anything but its (empty or zero) outputs: no
    # int32 copy of 16-bit columns either (32 entries: 128 bytes it would add).
    n = 2**40 if columns == torch.int32 else 2**16
    A, B = torch.empty(0, n), torch.empty(4, 0)
    values, row_ptr = torch.ones(32), torch.tensor([0, 8, 16, 24, 32], dtype=torch.int32)
    col_idx, x = torch.arange(5, 13).repeat(4).to(columns), torch.empty(2, 0, n)
    with sl.matmul_config(path), emulated_cuda.Ledger() as ledger:
        y = cuda_ops.sl_matmul(x, A, B, values, row_ptr, col_idx, 1.0, torch.ones(4))
        dx, dA, dB, dvalues = cuda_ops.sl_matmul_backward(torch.empty(2, 0, 4), x, A, B, values, row_ptr, col_idx,
                                                          1.0, [True] * 4)
    assert y.shape == (2, 0, 4) and dx.shape == (2, 0, n)
    assert dA.shape == (0, n) and dB.shape == (4, 0)
    assert torch.equal(dvalues, torch.zeros(32))
    assert ledger.peak <= 32 * 4 + 64  # dvalues and small change: nothing of size n


# ---- inference: the fused decode kernels (csrc/cuda/decode.cuh) -------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 5, 16, 17])
@pytest.mark.parametrize("n", [37, 64])
@pytest.mark.parametrize("compact", [False, True])
def test_inference_equals_the_float64_forward(cuda_ops, dtype, tokens, n, compact):
    # 1..16 tokens take the fused kernels (5: a padded group of 8; n = 37: the
    # scalar loads of A and x), with int32 or uint16 columns read as stored;
    # 17 takes sl_matmul's factored path, which widens uint16 ones to int32.
    p = make_problem(29, n, 6, 400, dtype, seed=tokens + n, bias=tokens % 2 == 1)
    x = torch.randn(tokens, n, dtype=torch.float64).to(dtype)
    columns = p.col_idx.to(torch.uint16) if compact else p.col_idx
    with sl.matmul_config("factored"):
        y = cuda_ops.sl_matmul_inference(x, p.A, p.B, p.values, p.row_ptr, columns, p.scale, p.bias)
    expected = x.double() @ reference_weight(p).T + (p.bias.double() if p.bias is not None else 0)
    assert y.dtype == dtype
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_of_strided_inputs_and_leading_dimensions(cuda_ops, dtype):
    # x a column slice of a wider tensor (row stride 41, not 16-byte aligned)
    # with two leading dimensions; B a transposed view (made contiguous).
    p = make_problem(23, 40, 5, 200, dtype, seed=3)
    wide = torch.randn(2, 3, 41, dtype=torch.float64).to(dtype)
    x = wide[..., 1:]
    B = p.B.t().contiguous().t()
    with sl.matmul_config("factored"):
        y = cuda_ops.sl_matmul_inference(x, p.A, B, p.values, p.row_ptr, p.col_idx.to(torch.uint16), p.scale,
                                         p.bias)
    expected = x.double() @ reference_weight(p).T + p.bias.double()
    assert y.shape == (2, 3, 23)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("path", PATHS)
def test_16_bit_columns_give_the_int32_results(cuda_ops, path):
    # uint16 col_idx (as SLLinear keeps it): the training bindings widen it to
    # int32 for the call (the factored backward caches its CSC by the uint16
    # tensor), the decode kernels read it as stored. The factored path and the
    # decode kernels give the int32 call's bits; the materialised path takes
    # the widened copy out of its workspace, so its W chunks (and with them
    # the GEMMs' summation blocking) may differ: equal to rounding. Two calls
    # with uint16 columns: the second backward finds the cached CSC.
    p = make_problem(29, 37, 6, 300, seed=5)
    narrow = p.col_idx.to(torch.uint16)
    wide = (p.A, p.B, p.values, p.row_ptr, p.col_idx, p.scale)
    compact = (p.A, p.B, p.values, p.row_ptr, narrow, p.scale)
    x, grad_y = torch.randn(9, 37), torch.randn(9, 29)

    def check(got, want):
        if path == "factored":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    with sl.matmul_config(path, workspace_bytes=4096):
        for _ in range(2):
            check(cuda_ops.sl_matmul(x, *compact, p.bias), cuda_ops.sl_matmul(x, *wide, p.bias))
            for got, want in zip(cuda_ops.sl_matmul_backward(grad_y, x, *compact, [True] * 4),
                                 cuda_ops.sl_matmul_backward(grad_y, x, *wide, [True] * 4)):
                check(got, want)
        for tokens in (1, 16):
            check(cuda_ops.sl_matmul_inference(x[:tokens], *compact, p.bias),
                  cuda_ops.sl_matmul_inference(x[:tokens], *wide, p.bias))


def test_inference_scales_after_the_product(cuda_ops):
    # B = 0 as at init with a scale near float32's largest: the fused kernel
    # multiplies by scale after B's dot product, so nothing overflows.
    p = make_problem(48, 40, 8, 300)
    A, B = torch.randn(8, 40), torch.zeros(48, 8)
    x = torch.randn(4, 40)
    with sl.matmul_config("factored"):
        y = cuda_ops.sl_matmul_inference(x, A, B, p.values, p.row_ptr, p.col_idx.to(torch.uint16), 3.4e38, None)
    S = sl.densify(A, B, p.values, p.row_ptr, p.col_idx, 0.0).double()
    torch.testing.assert_close(y.double(), x.double() @ S.T, rtol=1e-5, atol=1e-4)
