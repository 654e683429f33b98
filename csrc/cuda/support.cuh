// The support on the device: random_support (the Feistel permutation of
// common/support_hash.h per index, a CUB radix sort, CSR by binary search) and
// transpose_support (the CSC copy of a support that the deterministic
// transposed SpMM reads). Both are bit-identical to their CPU counterparts and
// use O(nnz) memory.
//
// Launchers take an `allocate(bytes) -> void*` callable for temporary device
// memory that the caller owns and frees after the stream has used it (torch's
// caching allocator in the extension, cudaMalloc in the tests).
#pragma once

#include "../common/support_hash.h"
#include "numeric.cuh"

namespace sltrain::cuda {

constexpr int kSupportThreads = 256;

inline dim3 threads_grid(int64_t count) { return dim3(unsigned(ceil_div(count, kSupportThreads))); }

// Bits needed for keys below `limit` (so the radix sort skips the rest).
inline int key_bits(uint64_t limit) {
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) < limit) ++bits;
  return bits;
}

__global__ void __launch_bounds__(kSupportThreads)
    feistel_positions_kernel(FeistelPermutation permutation, int64_t count, uint64_t* positions) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) positions[i] = permutation(uint64_t(i));
}

// offsets[i] = first index k with keys[k] >= i * stride, for i in [0, count]:
// row_ptr from sorted positions, col_ptr from sorted columns.
template <class Key>
__global__ void __launch_bounds__(kSupportThreads)
    lower_bounds_kernel(const Key* __restrict__ keys, int64_t nnz, int64_t count, uint64_t stride,
                        int32_t* __restrict__ offsets) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i > count) return;
  const uint64_t target = uint64_t(i) * stride;
  int64_t low = 0, high = nnz;
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    if (uint64_t(keys[mid]) < target) low = mid + 1; else high = mid;
  }
  offsets[i] = int32_t(low);
}

__global__ void __launch_bounds__(kSupportThreads)
    columns_of_positions_kernel(const uint64_t* __restrict__ positions, int64_t nnz, uint64_t n,
                                int32_t* __restrict__ col_idx) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < nnz) col_idx[k] = int32_t(positions[k] % n);
}

// Fills row_ptr [m + 1] and col_idx [nnz] exactly as cpu::random_support does.
// Requires 0 <= nnz <= m * n, nnz < 2^31, m, n < 2^31.
template <class Allocate>
cudaError_t random_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed, int32_t* row_ptr,
                           int32_t* col_idx, Allocate&& allocate, cudaStream_t stream) {
  if (nnz == 0) return cudaMemsetAsync(row_ptr, 0, sizeof(int32_t) * (m + 1), stream);
  const uint64_t domain = uint64_t(m) * uint64_t(n);
  auto* unsorted = static_cast<uint64_t*>(allocate(sizeof(uint64_t) * nnz));
  auto* sorted = static_cast<uint64_t*>(allocate(sizeof(uint64_t) * nnz));
  SLTRAIN_LAUNCH(feistel_positions_kernel, threads_grid(nnz), kSupportThreads, 0, stream)(
      FeistelPermutation(domain, seed), nnz, unsorted);
  size_t temp_bytes = 0;
  cudaError_t status = cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, unsorted, sorted, nnz, 0,
                                                      key_bits(domain), stream);
  if (status != cudaSuccess) return status;
  status = cub::DeviceRadixSort::SortKeys(allocate(temp_bytes), temp_bytes, unsorted, sorted, nnz, 0,
                                          key_bits(domain), stream);
  if (status != cudaSuccess) return status;
  SLTRAIN_LAUNCH(lower_bounds_kernel<uint64_t>, threads_grid(m + 1), kSupportThreads, 0, stream)(
      sorted, nnz, m, uint64_t(n), row_ptr);
  SLTRAIN_LAUNCH(columns_of_positions_kernel, threads_grid(nnz), kSupportThreads, 0, stream)(
      sorted, nnz, uint64_t(n), col_idx);
  return cudaGetLastError();
}

// rows[k] = the row of CSR entry k; entries[k] = k. One warp per row.
__global__ void __launch_bounds__(kSupportThreads)
    expand_rows_kernel(int64_t m, int64_t nnz, const int32_t* __restrict__ row_ptr,
                       int32_t* __restrict__ rows, int32_t* __restrict__ entries) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= m) return;
  int64_t begin = row_ptr[row], end = row_ptr[row + 1];
  begin = begin < 0 ? 0 : (begin > nnz ? nnz : begin);
  end = end < begin ? begin : (end > nnz ? nnz : end);
  for (int64_t k = begin + threadIdx.x % kWarp; k < end; k += kWarp) {
    rows[k] = int32_t(row);
    entries[k] = int32_t(k);
  }
}

__global__ void __launch_bounds__(kSupportThreads)
    gather_rows_of_entries_kernel(int64_t nnz, const int32_t* __restrict__ rows,
                                  const int32_t* __restrict__ entries, int32_t* __restrict__ row_idx) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < nnz) row_idx[k] = rows[entries[k]];
}

// The CSC copy of an m x n support, as cpu::transpose_support: col_ptr [n + 1],
// row_idx [nnz] (rows increasing within each column) and entry [nnz] (the CSR
// position of each CSC entry). A stable sort of the entries by column keeps
// CSR order, i.e. increasing rows, within a column. Requires a valid support.
template <class Allocate>
cudaError_t transpose_support(int64_t m, int64_t n, int64_t nnz, const int32_t* row_ptr,
                              const int32_t* col_idx, int32_t* col_ptr, int32_t* row_idx,
                              int32_t* entry, Allocate&& allocate, cudaStream_t stream) {
  if (nnz == 0) return cudaMemsetAsync(col_ptr, 0, sizeof(int32_t) * (n + 1), stream);
  auto* rows = static_cast<int32_t*>(allocate(sizeof(int32_t) * nnz));
  auto* entries = static_cast<int32_t*>(allocate(sizeof(int32_t) * nnz));
  auto* sorted_columns = static_cast<uint32_t*>(allocate(sizeof(uint32_t) * nnz));
  SLTRAIN_LAUNCH(expand_rows_kernel, dim3(unsigned(ceil_div(m * kWarp, kSupportThreads))),
                 kSupportThreads, 0, stream)(m, nnz, row_ptr, rows, entries);
  const auto* columns = reinterpret_cast<const uint32_t*>(col_idx);
  size_t temp_bytes = 0;
  cudaError_t status = cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, columns, sorted_columns,
                                                       entries, entry, nnz, 0, key_bits(n), stream);
  if (status != cudaSuccess) return status;
  status = cub::DeviceRadixSort::SortPairs(allocate(temp_bytes), temp_bytes, columns, sorted_columns,
                                           entries, entry, nnz, 0, key_bits(n), stream);
  if (status != cudaSuccess) return status;
  SLTRAIN_LAUNCH(lower_bounds_kernel<uint32_t>, threads_grid(n + 1), kSupportThreads, 0, stream)(
      sorted_columns, nnz, n, uint64_t{1}, col_ptr);
  SLTRAIN_LAUNCH(gather_rows_of_entries_kernel, threads_grid(nnz), kSupportThreads, 0, stream)(
      nnz, rows, entry, row_idx);
  return cudaGetLastError();
}

}  // namespace sltrain::cuda
