#include <algorithm>
#include <vector>

#include "../../common/support_hash.h"
#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {

void random_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed, int32_t* row_ptr,
                    int32_t* col_idx) {
  std::fill(row_ptr, row_ptr + m + 1, 0);
  if (nnz == 0) return;
  const FeistelPermutation permutation(uint64_t(m) * uint64_t(n), seed);
  std::vector<int64_t> positions(nnz);
  parallel_for(0, nnz, 65536, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) positions[i] = int64_t(permutation(uint64_t(i)));
  });
  // A counting sort by row whose cursors are one int per row (O(m), like
  // row_ptr itself), then each row sorted on its own: O(nnz + m) time and
  // memory, and nothing depends on the thread count.
  for (const int64_t position : positions) ++row_ptr[position / n + 1];
  for (int64_t row = 0; row < m; ++row) row_ptr[row + 1] += row_ptr[row];
  std::vector<int32_t> cursor(row_ptr, row_ptr + m);
  for (const int64_t position : positions) {
    const int64_t row = position / n;
    col_idx[cursor[row]++] = int32_t(position - row * n);
  }
  parallel_for(0, m, std::max<int64_t>(1, 65536 * m / nnz), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      std::sort(col_idx + row_ptr[row], col_idx + row_ptr[row + 1]);
  });
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
