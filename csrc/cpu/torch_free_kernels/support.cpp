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

  // A counting sort by row. The chunking is fixed by nnz alone, and each row
  // is sorted at the end, so the result does not depend on the thread count.
  const int64_t chunks = std::clamp<int64_t>(nnz / 65536, 1, 64);
  const int64_t chunk_size = (nnz + chunks - 1) / chunks;
  std::vector<int64_t> positions(nnz);
  std::vector<int32_t> cursor(chunks * m, 0);  // per chunk and row: count, then write offset
  parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      int32_t* counts = cursor.data() + chunk * m;
      const int64_t end = std::min(nnz, (chunk + 1) * chunk_size);
      for (int64_t i = chunk * chunk_size; i < end; ++i) {
        const int64_t position = int64_t(permutation(uint64_t(i)));
        positions[i] = position;
        ++counts[position / n];
      }
    }
  });
  for (int64_t row = 0; row < m; ++row) {
    int32_t offset = row_ptr[row];
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int32_t count = cursor[chunk * m + row];
      cursor[chunk * m + row] = offset;
      offset += count;
    }
    row_ptr[row + 1] = offset;
  }
  parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      int32_t* offsets = cursor.data() + chunk * m;
      const int64_t end = std::min(nnz, (chunk + 1) * chunk_size);
      for (int64_t i = chunk * chunk_size; i < end; ++i) {
        const int64_t row = positions[i] / n;
        col_idx[offsets[row]++] = int32_t(positions[i] - row * n);
      }
    }
  });
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
