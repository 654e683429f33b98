"""random_support: exact count, sorted CSR, determinism and uniformity."""

import math
from collections import Counter

import pytest
import torch

import sltrain_ext as sl
from helpers import flat_support, split_packed_csc


def chi_square(counts: torch.Tensor, expected: float) -> float:
    return (((counts.double() - expected) ** 2) / expected).sum().item()


def assert_chi_square_plausible(statistic: float, dof: int) -> None:
    # The statistic has mean dof and sd sqrt(2 dof); 6 sd makes a false alarm
    # astronomically unlikely while any real bias in the sampler shows up.
    assert abs(statistic - dof) < 6 * math.sqrt(2 * dof), (statistic, dof)


@pytest.mark.parametrize("m,n,nnz", [(1, 1, 1), (1, 9, 4), (9, 1, 4), (37, 53, 100), (64, 64, 4096),
                                     (300, 5461, 49_149), (7, 3, 0)])
def test_csr_properties(m, n, nnz):
    row_ptr, col_idx = sl.random_support(m, n, nnz, seed=11)
    assert row_ptr.dtype == col_idx.dtype == torch.int32
    assert row_ptr.shape == (m + 1,) and col_idx.shape == (nnz,)
    sl.validate_support(row_ptr, col_idx, m, n)  # sorted, in range, ends at nnz
    assert flat_support(row_ptr, col_idx, n).unique().numel() == nnz


def test_deterministic_and_seed_dependent():
    first = sl.random_support(120, 77, 900, seed=5)
    again = sl.random_support(120, 77, 900, seed=5)
    other = sl.random_support(120, 77, 900, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_independent_of_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sl.random_support(2048, 700, 200_000, seed=9)
        torch.set_num_threads(2)
        two = sl.random_support(2048, 700, 200_000, seed=9)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_row_and_column_counts_are_uniform():
    m, n, nnz = 500, 400, 6000
    row_ptr, col_idx = sl.random_support(m, n, nnz, seed=1)
    # Sampling without replacement: hypergeometric counts, whose variance is
    # smaller than the multinomial's by the finite-population factor.
    shrink = 1 - nnz / (m * n)
    assert_chi_square_plausible(chi_square(row_ptr.diff(), nnz / m) / shrink, m - 1)
    assert_chi_square_plausible(chi_square(torch.bincount(col_idx, minlength=n), nnz / n) / shrink, n - 1)


def test_every_subset_equally_likely():
    # 2 of the 6 positions of a 2 x 3 matrix: 15 subsets, each 1/15 over seeds.
    draws = 3000
    subsets = Counter()
    for seed in range(draws):
        row_ptr, col_idx = sl.random_support(2, 3, 2, seed)
        subsets[tuple(flat_support(row_ptr, col_idx, 3).tolist())] += 1
    assert len(subsets) == 15
    assert_chi_square_plausible(chi_square(torch.tensor(list(subsets.values())), draws / 15), 14)


def test_positions_uniform_over_the_matrix():
    # Buckets of the flat index catch a sampler that favours low positions.
    m, n, nnz = 1000, 999, 50_000
    flat = flat_support(*sl.random_support(m, n, nnz, seed=3), n)
    buckets = torch.bincount(flat * 100 // (m * n), minlength=100)
    assert_chi_square_plausible(chi_square(buckets, nnz / 100) / (1 - nnz / (m * n)), 99)


@pytest.mark.parametrize(
    "m,n,nnz,name",
    [(-1, 4, 1, "`m`"), (4, -2, 1, "`n`"), (3, 3, 10, "`nnz`"), (3, 3, -1, "`nnz`"),
     (2**31, 1, 1, "`m`"), (2**20, 2**20, 2**31, "`nnz`")],
)
def test_bad_arguments(m, n, nnz, name):
    with pytest.raises(ValueError, match=name):
        sl.random_support(m, n, nnz, seed=0)


@pytest.mark.parametrize(
    "m,row_ptr,col_idx,message",
    [
        (2, [0, 2, 2], [0, 1, 2], "`row_ptr` must end at nnz"),
        (2, [1, 2, 3], [0, 1, 2], "`row_ptr` must start at 0"),
        (3, [0, 3, 2, 3], [0, 1, 2], "`row_ptr` must be non-decreasing"),
        (2, [0, 2, 3], [0, 4, 1], r"`col_idx`\[1\] = 4 \(row 0\) is outside"),
        (2, [0, 2, 3], [0, 1, -1], r"`col_idx`\[2\] = -1 \(row 1\)"),
        (2, [0, 2, 3], [1, 1, 1], "strictly increase"),
        (2, [0, 2, 3], [2, 1, 1], "strictly increase"),
        (3, [0, 2, 3], [0, 1, 2], r"`row_ptr` must have m \+ 1"),
    ],
)
def test_validate_support_names_the_problem(m, row_ptr, col_idx, message):
    with pytest.raises(ValueError, match=message):
        sl.validate_support(torch.tensor(row_ptr, dtype=torch.int32), torch.tensor(col_idx, dtype=torch.int32), m, 4)


def test_validate_support_rejects_int64():
    with pytest.raises(TypeError, match="`row_ptr` must be int32"):
        sl.validate_support(torch.tensor([0, 1]), torch.tensor([0], dtype=torch.int32), 1, 2)


@pytest.mark.parametrize("m,n,nnz", [(0, 3, 0), (1, 1, 1), (9, 1, 4), (37, 53, 100), (64, 64, 4096), (5, 5461, 700)])
def test_transpose_support_is_the_csc(m, n, nnz):
    row_ptr, col_idx = sl.random_support(m, n, nnz, 3)
    packed = sl.transpose_support(row_ptr, col_idx, n)
    assert packed.dtype == torch.int32
    col_ptr, row_idx, entry, pads = split_packed_csc(packed, n, nnz)
    assert not pads.any()
    rows = torch.repeat_interleave(torch.arange(m), row_ptr.diff().long())
    # Entries sorted by (column, row), each pointing back at its CSR position.
    order = sorted(range(nnz), key=lambda k: (int(col_idx[k]), int(rows[k])))
    assert entry.tolist() == order
    assert row_idx.tolist() == rows[order].tolist()
    assert col_ptr.tolist() == [0] + torch.bincount(col_idx.long(), minlength=n).cumsum(0).tolist()


def test_transpose_support_validates_on_the_cpu():
    row_ptr = torch.tensor([0, 2, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"`col_idx`\[1\] = 9 \(row 0\) is outside"):
        sl.transpose_support(row_ptr, torch.tensor([0, 9, 1], dtype=torch.int32), 4)


def test_memory_is_linear_in_nnz_and_m():
    """A tall matrix once needed a 64 x m cursor table (4.6 GB here); now the
    sampler's peak is its outputs plus 16 bytes per nonzero."""
    import subprocess
    import sys

    script = (
        "import resource, sltrain_ext as sl\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "row_ptr, col_idx = sl.random_support(2**24, 3, 4 * 10**6, 1)\n"
        "sl.validate_support(row_ptr, col_idx, 2**24, 3)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Outputs 80 MB, scratch 64 MB: well under 400 MB of growth.
    assert int(done.stdout.strip()) < 400
