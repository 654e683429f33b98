#include <algorithm>
#include <utility>
#include <vector>

#include "../../common/support_hash.h"
#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {

namespace {

// Sorts keys below 2^bits: an LSD radix sort on 16-bit digits (two passes for
// every LLaMA matrix), O(nnz) time and one buffer of nnz keys.
void radix_sort(std::vector<uint64_t>& keys, int bits) {
  constexpr int kDigitBits = 16;
  if (keys.size() < (size_t{1} << kDigitBits)) {  // the digit counters would cost more than the sort
    std::sort(keys.begin(), keys.end());
    return;
  }
  std::vector<uint64_t> buffer(keys.size());
  std::vector<size_t> offsets(size_t{1} << kDigitBits);
  for (int shift = 0; shift < bits; shift += kDigitBits) {
    const uint64_t mask = (uint64_t{1} << kDigitBits) - 1;
    std::fill(offsets.begin(), offsets.end(), 0);
    for (const uint64_t key : keys) ++offsets[(key >> shift) & mask];
    size_t sum = 0;
    for (size_t& offset : offsets) sum += std::exchange(offset, sum);
    for (const uint64_t key : keys) buffer[offsets[(key >> shift) & mask]++] = key;
    keys.swap(buffer);
  }
}

}  // namespace

void random_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed, int32_t* row_ptr,
                    int32_t* col_idx) {
  std::fill(row_ptr, row_ptr + m + 1, 0);
  if (nnz == 0) return;
  const uint64_t domain = uint64_t(m) * uint64_t(n);
  const FeistelPermutation permutation(domain, seed);
  // The first nnz images of the permutation, sorted: row-major order, as the
  // CUDA sampler sorts them too. Nothing here depends on the thread count.
  std::vector<uint64_t> positions(nnz);
  parallel_for(0, nnz, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) positions[i] = permutation(uint64_t(i));
  });
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) < domain) ++bits;
  radix_sort(positions, bits);
  for (int64_t k = 0; k < nnz; ++k) {
    const uint64_t row = positions[k] / uint64_t(n);
    col_idx[k] = int32_t(positions[k] - row * uint64_t(n));
    ++row_ptr[row + 1];
  }
  for (int64_t row = 0; row < m; ++row) row_ptr[row + 1] += row_ptr[row];
}

void transpose_support(int64_t m, int64_t n, int64_t nnz, const int32_t* row_ptr,
                       const int32_t* col_idx, int32_t* col_ptr, int32_t* row_idx, int32_t* entry) {
  // col_ptr[j + 1] counts column j, its prefix sum is then each column's
  // start, used as a cursor while the rows are walked in order.
  std::fill(col_ptr, col_ptr + n + 1, 0);
  for (int64_t k = 0; k < nnz; ++k) ++col_ptr[col_idx[k] + 1];
  for (int64_t j = 0; j < n; ++j) col_ptr[j + 1] += col_ptr[j];
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t k = row_ptr[row]; k < row_ptr[row + 1]; ++k) {
      const int32_t slot = col_ptr[col_idx[k]]++;
      row_idx[slot] = int32_t(row);
      entry[slot] = int32_t(k);
    }
  }
  // The cursors now hold each column's end: shift them back to the starts.
  for (int64_t j = n; j > 0; --j) col_ptr[j] = col_ptr[j - 1];
  col_ptr[0] = 0;
}

}  // namespace sltrain::cpu
