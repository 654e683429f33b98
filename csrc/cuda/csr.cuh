// CUDA kernels over the CSR support of S (int32 row_ptr [rows + 1], col_idx
// [nnz]) and their raw-pointer launchers. Dense operands are row-major and
// token-major, as ATen holds them, so no kernel needs a transposed copy.
//
// Every kernel clamps row_ptr entries to [0, nnz] and skips columns outside
// [0, cols): a corrupt support can never make one touch memory it does not
// own. Supports are validated in O(nnz) when they are created or loaded,
// never per call (that would need a device-to-host copy).
//
// All results are deterministic: no float atomics, every sum in a fixed order.
#pragma once

#include <algorithm>

#include "numeric.cuh"

namespace sltrain::cuda {

constexpr int kCsrWarpsPerBlock = 8;  // one warp per row, 256 threads a block

__device__ __forceinline__ void row_range(const int32_t* row_ptr, int64_t row, int64_t nnz,
                                          int64_t& begin, int64_t& end) {
  begin = row_ptr[row];
  end = row_ptr[row + 1];
  begin = begin < 0 ? 0 : (begin > nnz ? nnz : begin);
  end = end < begin ? begin : (end > nnz ? nnz : end);
}

__device__ __forceinline__ int64_t warp_row() {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}

// ---- materialised W: scatter the values in, gather dvalues out ---------------

// w[r, c - col_begin] += values[k] for the entries (row_begin + r, c) of S
// with r < rows and col_begin <= c < col_end: a block of W that is whole rows
// (the forward's and dW's row chunks) or a window of columns of them (the
// backward's column chunks, whose dx slices never overlap). The launcher keeps
// the window inside [0, cols), so out-of-range columns are skipped here too.
template <class T>
__global__ void __launch_bounds__(kCsrWarpsPerBlock * kWarp)
    csr_scatter_add_block_kernel(int64_t row_begin, int64_t rows, int64_t col_begin, int64_t col_end,
                                 int64_t nnz, const int32_t* __restrict__ row_ptr,
                                 const int32_t* __restrict__ col_idx, const T* __restrict__ values,
                                 T* __restrict__ w, int64_t ld_w) {
  const int64_t r = warp_row();
  if (r >= rows) return;
  int64_t begin, end;
  row_range(row_ptr, row_begin + r, nnz, begin, end);
  T* w_row = w + r * ld_w - col_begin;
  // Columns of one row are distinct, so the lanes never write the same element.
  for (int64_t k = begin + threadIdx.x % kWarp; k < end; k += kWarp) {
    const int32_t column = col_idx[k];
    if (column >= col_begin && column < col_end)
      w_row[column] = narrow<T>(widen(w_row[column]) + widen(values[k]));
  }
}

// out[k] = w[r, col_idx[k]] for the entries of rows row_begin + r, r < rows
// (0 for an entry whose column is out of range).
template <class T>
__global__ void __launch_bounds__(kCsrWarpsPerBlock * kWarp)
    csr_gather_rows_kernel(int64_t row_begin, int64_t rows, int64_t cols, int64_t nnz,
                           const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ col_idx,
                           const T* __restrict__ w, int64_t ld_w, T* __restrict__ out) {
  const int64_t r = warp_row();
  if (r >= rows) return;
  int64_t begin, end;
  row_range(row_ptr, row_begin + r, nnz, begin, end);
  const T* w_row = w + r * ld_w;
  for (int64_t k = begin + threadIdx.x % kWarp; k < end; k += kWarp) {
    const int32_t column = col_idx[k];
    out[k] = column >= 0 && column < cols ? w_row[column] : narrow<T>(Acc<T>(0));
  }
}

// ---- factored path: SpMM and SDDMM -------------------------------------------

template <class T>
struct SpmmArgs {
  int64_t rows, cols, nnz, tokens;
  const int32_t* ptr;    // [rows + 1]
  const int32_t* index;  // [nnz] column of each entry
  const int32_t* entry;  // null, or [nnz]: which `values` element entry k uses (CSC of S)
  const T* values;
  const T* x;        // [tokens, ld_x], row-major: gathered at the columns
  int64_t ld_x;
  T* y;              // [tokens, ld_y]: y[t, row] (+)= sum_k values * x[t, index[k]] (+ bias[row])
  int64_t ld_y;
  const T* bias;     // null or [rows]
  bool accumulate;   // add to y instead of overwriting it
  bool vector_loads; // index and values 16-byte aligned, so 4 entries load at once
};

// One warp per row and kTokens tokens at a time: the lanes split the row's
// entries (4 at a time with vector loads), each lane keeps kTokens partial
// sums in registers, and a butterfly reduces them. kTokens = 1 is the
// decode-time SpMV. With `entry`, the same kernel runs S^T from its CSC copy.
// The second launch bound (4 blocks of 256 threads per SM) caps ptxas at 64
// registers, so 32 warps per SM keep this latency-bound gather's loads in
// flight; 32-bit entry counters keep it there without spilling (nvcc 13.0,
// sm_90: 52-60 registers, no spills).
template <class T, int kTokens>
__global__ void __launch_bounds__(kCsrWarpsPerBlock * kWarp, 4) csr_spmm_kernel(SpmmArgs<T> a) {
  const int64_t row = warp_row();
  if (row >= a.rows) return;
  const int lane = threadIdx.x % kWarp;
  int64_t begin64, end64;
  row_range(a.ptr, row, a.nnz, begin64, end64);
  // Entry positions are below 2^31 (int32 indices), so unsigned 32-bit loop
  // counters cannot wrap (k < end + 128): they keep the kernel at 64
  // registers without spills.
  const uint32_t begin = uint32_t(begin64), end = uint32_t(end64);
  for (int64_t t0 = int64_t(blockIdx.y) * kTokens; t0 < a.tokens; t0 += int64_t(gridDim.y) * kTokens) {
    const int64_t count = a.tokens - t0 < kTokens ? a.tokens - t0 : kTokens;
    const T* x = a.x + t0 * a.ld_x;
    Acc<T> sum[kTokens];
    for (int t = 0; t < kTokens; ++t) sum[t] = 0;
    const auto visit = [&](int32_t column, Acc<T> value) {
      if (column < 0 || column >= a.cols) return;
      for (int t = 0; t < kTokens; ++t)
        if (t < count) sum[t] += value * widen(x[t * a.ld_x + column]);
    };
    const auto value_of = [&](uint32_t k) { return widen(a.values[a.entry ? a.entry[k] : k]); };
    uint32_t scalar_from = begin;
    if (a.vector_loads) {
      // Entries [head, body_end) go four at a time from 16-byte-aligned
      // addresses; the unaligned head and the tail go one at a time below.
      const uint32_t head = (begin + 3) / 4 * 4 < end ? (begin + 3) / 4 * 4 : end;
      const uint32_t body_end = head + (end - head) / 4 * 4;
      for (uint32_t k = begin + lane; k < head; k += kWarp) visit(a.index[k], value_of(k));
      for (uint32_t k = head + 4 * lane; k < body_end; k += 4 * kWarp) {
        const Vec<int32_t, 4> columns = load_vec<4>(a.index + k);
        if (a.entry) {
          const Vec<int32_t, 4> entries = load_vec<4>(a.entry + k);
          for (int j = 0; j < 4; ++j) visit(columns.v[j], widen(a.values[entries.v[j]]));
        } else {
          const Vec<T, 4> values = load_vec<4>(a.values + k);
          for (int j = 0; j < 4; ++j) visit(columns.v[j], widen(values.v[j]));
        }
      }
      scalar_from = body_end;
    }
    for (uint32_t k = scalar_from + lane; k < end; k += kWarp) visit(a.index[k], value_of(k));
    const Acc<T> bias = a.bias ? widen(a.bias[row]) : Acc<T>(0);
    for (int t = 0; t < kTokens; ++t) {
      const Acc<T> total = warp_sum(sum[t]) + bias;
      if (lane == t && t < count) {
        T* out = a.y + (t0 + t) * a.ld_y + row;
        *out = narrow<T>(a.accumulate ? widen(*out) + total : total);
      }
    }
  }
}

// dvalues[k] = sum_t g[t, i] * x[t, col_idx[k]] for the entries k of row i:
// one warp per row, one lane per entry, a sequential sum over the tokens.
template <class T>
__global__ void __launch_bounds__(kCsrWarpsPerBlock * kWarp)
    csr_sddmm_kernel(int64_t rows, int64_t cols, int64_t nnz, int64_t tokens,
                     const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ col_idx,
                     const T* __restrict__ g, int64_t ld_g, const T* __restrict__ x, int64_t ld_x,
                     T* __restrict__ dvalues) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  int64_t begin, end;
  row_range(row_ptr, row, nnz, begin, end);
  for (int64_t k = begin + threadIdx.x % kWarp; k < end; k += kWarp) {
    const int32_t column = col_idx[k];
    Acc<T> sum = 0;
    if (column >= 0 && column < cols)
      for (int64_t t = 0; t < tokens; ++t) sum += widen(g[t * ld_g + row]) * widen(x[t * ld_x + column]);
    dvalues[k] = narrow<T>(sum);
  }
}

// ---- launchers ------------------------------------------------------------------

inline dim3 row_warps_grid(int64_t rows) {
  return dim3(unsigned(ceil_div(rows, kCsrWarpsPerBlock)));
}

// Rows [row_begin, row_begin + rows) and columns [col_begin, col_end) of S
// added into w [rows, col_end - col_begin] (leading dimension ld_w).
template <class T>
cudaError_t csr_scatter_add_block(int64_t row_begin, int64_t rows, int64_t col_begin, int64_t col_end,
                                  int64_t cols, int64_t nnz, const int32_t* row_ptr, const int32_t* col_idx,
                                  const T* values, T* w, int64_t ld_w, cudaStream_t stream) {
  col_begin = std::max<int64_t>(col_begin, 0);
  col_end = std::min(col_end, cols);
  if (rows <= 0 || col_end <= col_begin) return cudaSuccess;
  SLTRAIN_LAUNCH(csr_scatter_add_block_kernel<T>, row_warps_grid(rows), kCsrWarpsPerBlock * kWarp, 0,
                 stream)(row_begin, rows, col_begin, col_end, nnz, row_ptr, col_idx, values, w, ld_w);
  return cudaGetLastError();
}

template <class T>
cudaError_t csr_gather_rows(int64_t row_begin, int64_t rows, int64_t cols, int64_t nnz,
                            const int32_t* row_ptr, const int32_t* col_idx, const T* w, int64_t ld_w,
                            T* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  SLTRAIN_LAUNCH(csr_gather_rows_kernel<T>, row_warps_grid(rows), kCsrWarpsPerBlock * kWarp, 0,
                 stream)(row_begin, rows, cols, nnz, row_ptr, col_idx, w, ld_w, out);
  return cudaGetLastError();
}

// Whether csr_spmm takes its vector path (4 entries a load): `index` and
// `entry` (with a CSC) or `values` (without) 16-byte aligned.
template <class T>
bool spmm_vector_loads(const SpmmArgs<T>& a) {
  return is_aligned(a.index, 16) &&
         (a.entry ? is_aligned(a.entry, 16) : is_aligned(a.values, 4 * sizeof(T)));
}

// Tokens per warp pass: one for a single token (SpMV), else as many as keep
// the partial sums in registers.
template <class T>
cudaError_t csr_spmm(SpmmArgs<T> a, cudaStream_t stream) {
  if (a.rows <= 0 || a.tokens <= 0) return cudaSuccess;
  a.vector_loads = spmm_vector_loads(a);
  const auto launch = [&](auto kernel, int64_t tokens_per_pass) {
    const dim3 grid(unsigned(ceil_div(a.rows, kCsrWarpsPerBlock)),
                    unsigned(std::min<int64_t>(ceil_div(a.tokens, tokens_per_pass), 65535)));
    SLTRAIN_LAUNCH(kernel, grid, kCsrWarpsPerBlock * kWarp, 0, stream)(a);
  };
  if (a.tokens == 1) {
    launch(csr_spmm_kernel<T, 1>, 1);
  } else if (a.tokens <= 4) {
    launch(csr_spmm_kernel<T, 4>, 4);
  } else {
    launch(csr_spmm_kernel<T, 8>, 8);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t csr_sddmm(int64_t rows, int64_t cols, int64_t nnz, int64_t tokens,
                      const int32_t* row_ptr, const int32_t* col_idx, const T* g, int64_t ld_g,
                      const T* x, int64_t ld_x, T* dvalues, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  SLTRAIN_LAUNCH(csr_sddmm_kernel<T>, row_warps_grid(rows), kCsrWarpsPerBlock * kWarp, 0,
                 stream)(rows, cols, nnz, tokens, row_ptr, col_idx, g, ld_g, x, ld_x, dvalues);
  return cudaGetLastError();
}

}  // namespace sltrain::cuda
