// The fused decode forward of sl_matmul_inference on CUDA: y = scale * (x A^T)
// B^T + x S^T + bias for b <= kMaxDecodeTokens tokens in two launches, where
// the unfused factored path takes four (GEMV, scale, GEMV, SpMV) and reads x
// at S's scattered columns from global memory once per token.
//
//   1. decode_low_rank_kernel: t = x A^T ([b, r], in the accumulation type),
//      one warp per row of A, all tokens at once: one pass over A.
//   2. decode_rows_kernel: every block first copies t and x into shared
//      memory, x feature-major ([n][tokens]) so that one sparse entry's column
//      is one contiguous read of all its tokens; then each warp takes
//      kDecodeRowsPerWarp output rows at a time and reads their slices of B,
//      their CSR values and column indices once (one pass over B, values and
//      columns), adding the bias. Columns are read as stored: uint16 (SLLinear's,
//      n <= 65536: a quarter fewer bytes) or int32.
//
// Bytes per call (b tokens, 16-bit T, 16-bit columns): 2 (r n + m r + nnz) +
// 2 nnz + O(b (n + m + r)), against dense's 2 m n. Shared memory holds
// tokens_per_pass (r + ceil) floats of t and n tokens_per_pass elements of x;
// where b tokens do not fit, the launcher runs passes of fewer tokens (each
// pass reads B and S again: float32 at b = 16 and n = 4096 takes two).
//
// Like csr.cuh's kernels: row_ptr entries are clamped to [0, nnz], columns
// outside [0, n) are skipped, every sum runs in a fixed order (no atomics).
#pragma once

#include <algorithm>

#include "csr.cuh"

namespace sltrain::cuda {

constexpr int kMaxDecodeTokens = 16;
constexpr int kDecodeWarpsPerBlock = 16;  // 512 threads: one block per SM already keeps 16 warps streaming
constexpr int kDecodeRowsPerWarp = 2;     // each shared read of t feeds two rows' multiply-adds
constexpr int kLowRankWarpsPerBlock = 8;

// N consecutive elements at p, N a power of two, in aligned loads of at most
// 16 bytes (p aligned to min(16, N * sizeof(T)) bytes).
template <int N, class T>
__device__ __forceinline__ void load_span(const T* p, T (&out)[N]) {
  constexpr int kPiece = int(N * sizeof(T) < 16 ? N * sizeof(T) : 16) / int(sizeof(T));
  static_assert(kPiece >= 1 && N % kPiece == 0, "load_span: N must be a power of two");
  for (int i = 0; i < N; i += kPiece) {
    const Vec<T, kPiece> piece = load_vec<kPiece>(p + i);
    for (int u = 0; u < kPiece; ++u) out[i + u] = piece.v[u];
  }
}

template <class T, class Index>
struct DecodeArgs {
  int64_t m, n, r, nnz, tokens;
  Acc<T> scale;
  const T* A;             // [r, n] row-major
  const T* B;             // [m, r] row-major
  const int32_t* row_ptr; // [m + 1]
  const Index* col_idx;   // [nnz]: int32_t or uint16_t
  const T* values;        // [nnz]
  const T* x;             // [tokens, ld_x]
  int64_t ld_x;
  const T* bias;          // null or [m]
  T* y;                   // [tokens, ld_y]
  int64_t ld_y;
  Acc<T>* t;              // [tokens, r] workspace: x A^T
};

// Whether rows of A and x (kVecA) or of B (kVecB) start 16-byte aligned, so
// the kernels read them 16 bytes at a time; the scalar variants read any layout.
template <class T>
constexpr int kVecElements = int(16 / sizeof(T));

template <class T, class Index>
bool decode_a_and_x_aligned(const DecodeArgs<T, Index>& a) {
  const int64_t v = kVecElements<T>;
  return is_aligned(a.A, 16) && is_aligned(a.x, 16) && a.n % v == 0 && a.ld_x % v == 0;
}

template <class T, class Index>
bool decode_b_aligned(const DecodeArgs<T, Index>& a) {
  return is_aligned(a.B, 16) && a.r % kVecElements<T> == 0;
}

// t[j, q] = sum_c A[q, c] x[j, c]: one warp per row q of A (read once, V
// elements a load), every token's dot product from the same loads of A.
template <class T, int kTokens, int V>
__global__ void __launch_bounds__(kLowRankWarpsPerBlock * kWarp)
    decode_low_rank_kernel(int64_t r, int64_t n, int64_t tokens, const T* __restrict__ A,
                           const T* __restrict__ x, int64_t ld_x, Acc<T>* __restrict__ t) {
  const int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (q >= r) return;
  const int lane = threadIdx.x % kWarp;
  Acc<T> sums[kTokens];
  for (int j = 0; j < kTokens; ++j) sums[j] = 0;
  const T* a_row = A + q * n;
SLTRAIN_UNROLL(2)
  for (int64_t c = int64_t(lane) * V; c < n; c += kWarp * V) {
    T a[V];
    load_span<V>(a_row + c, a);
    for (int j = 0; j < kTokens; ++j) {
      if (j >= tokens) break;
      T xs[V];
      load_span<V>(x + j * ld_x + c, xs);
      for (int u = 0; u < V; ++u) sums[j] += widen(a[u]) * widen(xs[u]);
    }
  }
  for (int j = 0; j < kTokens; ++j) {
    const Acc<T> total = warp_sum(sums[j]);
    if (lane == j && j < tokens) t[j * r + q] = total;
  }
}

// Shared memory of decode_rows_kernel for `tokens` tokens a pass: t as
// [tokens][r_pad] accumulators (r_pad = r rounded up to a 16-byte multiple of
// elements), then x as [n][tokens] elements.
struct DecodeSharedLayout {
  int64_t r_pad, x_offset, bytes;
};

template <class T>
DecodeSharedLayout decode_shared_layout(int64_t n, int64_t r, int64_t tokens) {
  const int64_t v = kVecElements<T>;
  const int64_t r_pad = (r + v - 1) / v * v;
  const int64_t x_offset = (tokens * r_pad * int64_t(sizeof(Acc<T>)) + 15) / 16 * 16;
  return {r_pad, x_offset, x_offset + n * tokens * int64_t(sizeof(T))};
}

// y[t0 + j, i] = scale * dot(B[i], t[t0 + j]) + sum_k values[k] x[t0 + j, col[k]] + bias[i]
// for j < count <= kTokens; tokens count..kTokens-1 of the shared copies are zeros.
template <class T, class Index, int kTokens, int V>
__global__ void __launch_bounds__(kDecodeWarpsPerBlock * kWarp)
    decode_rows_kernel(DecodeArgs<T, Index> a, int64_t t0, int count, DecodeSharedLayout layout) {
  static_assert(kDecodeRowsPerWarp * kTokens <= kWarp, "one lane writes each (row, token) output");
  SLTRAIN_DYNAMIC_SHARED(unsigned char, shared);
  Acc<T>* t_s = reinterpret_cast<Acc<T>*>(shared);
  T* x_s = reinterpret_cast<T*>(shared + layout.x_offset);
  const int n = int(a.n), r = int(a.r), r_pad = int(layout.r_pad);  // n, r < 2^31: they fit shared memory
  for (int j = 0; j < kTokens; ++j) {
    // Tokens past `count` are zeros: the loops below run all kTokens unrolled.
    if (j < count) {
      const Acc<T>* t_row = a.t + (t0 + j) * a.r;
      const T* x_row = a.x + (t0 + j) * a.ld_x;
      for (int q = threadIdx.x; q < r_pad; q += blockDim.x) t_s[j * r_pad + q] = q < r ? t_row[q] : Acc<T>(0);
      for (int c = threadIdx.x; c < n; c += blockDim.x) x_s[c * kTokens + j] = x_row[c];
    } else {
      for (int q = threadIdx.x; q < r_pad; q += blockDim.x) t_s[j * r_pad + q] = Acc<T>(0);
      for (int c = threadIdx.x; c < n; c += blockDim.x) x_s[c * kTokens + j] = narrow<T>(Acc<T>(0));
    }
  }
  __syncthreads();

  const int lane = threadIdx.x % kWarp;
  const int64_t rows_per_sweep = int64_t(gridDim.x) * kDecodeWarpsPerBlock * kDecodeRowsPerWarp;
  for (int64_t first = (int64_t(blockIdx.x) * kDecodeWarpsPerBlock + threadIdx.x / kWarp) * kDecodeRowsPerWarp;
       first < a.m; first += rows_per_sweep) {
    Acc<T> sums[kDecodeRowsPerWarp][kTokens];
    for (int w = 0; w < kDecodeRowsPerWarp; ++w)
      for (int j = 0; j < kTokens; ++j) sums[w][j] = 0;

    // Low rank: V elements of each row of B a load, dotted with every token's t.
SLTRAIN_UNROLL(2)
    for (int q = lane * V; q < r; q += kWarp * V) {
      Acc<T> b[kDecodeRowsPerWarp][V];
      for (int w = 0; w < kDecodeRowsPerWarp; ++w) {
        T chunk[V];
        if (first + w < a.m) {
          load_span<V>(a.B + (first + w) * a.r + q, chunk);
        } else {
          for (int u = 0; u < V; ++u) chunk[u] = narrow<T>(Acc<T>(0));
        }
        for (int u = 0; u < V; ++u) b[w][u] = widen(chunk[u]);
      }
      for (int j = 0; j < kTokens; ++j) {
        Acc<T> tv[V];
        load_span<V>(t_s + j * r_pad + q, tv);
        for (int w = 0; w < kDecodeRowsPerWarp; ++w)
          for (int u = 0; u < V; ++u) sums[w][j] += b[w][u] * tv[u];
      }
    }
    // Scaled per lane, before any sparse term joins: scale * 0 stays 0 for
    // B = 0 (as at init) even where scale * t alone would overflow.
    for (int w = 0; w < kDecodeRowsPerWarp; ++w)
      for (int j = 0; j < kTokens; ++j) sums[w][j] *= a.scale;

    // Sparse: the lanes split each row's entries; one entry's column holds
    // every token side by side in shared memory.
    for (int w = 0; w < kDecodeRowsPerWarp; ++w) {
      if (first + w >= a.m) break;
      int64_t begin, end;
      row_range(a.row_ptr, first + w, a.nnz, begin, end);
SLTRAIN_UNROLL(4)
      for (int64_t k = begin + lane; k < end; k += kWarp) {
        const int64_t column = a.col_idx[k];
        if (column < 0 || column >= a.n) continue;
        const Acc<T> value = widen(a.values[k]);
        T xs[kTokens];
        load_span<kTokens>(x_s + column * kTokens, xs);
        for (int j = 0; j < kTokens; ++j) sums[w][j] += value * widen(xs[j]);
      }
    }

    for (int w = 0; w < kDecodeRowsPerWarp; ++w) {
      const int64_t row = first + w;
      const Acc<T> bias = a.bias && row < a.m ? widen(a.bias[row]) : Acc<T>(0);
      for (int j = 0; j < kTokens; ++j) {
        const Acc<T> total = warp_sum(sums[w][j]) + bias;
        if (lane == w * kTokens + j && row < a.m && j < count) a.y[(t0 + j) * a.ld_y + row] = narrow<T>(total);
      }
    }
  }
}

// ---- launcher -------------------------------------------------------------------

// The token-group size of decode_rows_kernel: the smallest of 1, 2, 4, 8, 16
// that holds `tokens`, halved until its shared memory fits `shared_limit`
// bytes; 0 if one token does not fit (n or r too large: take the unfused path).
template <class T>
int decode_tokens_per_pass(int64_t n, int64_t r, int64_t tokens, int64_t shared_limit) {
  int group = 1;
  while (group < tokens && group < kMaxDecodeTokens) group *= 2;
  while (group >= 1 && decode_shared_layout<T>(n, r, group).bytes > shared_limit) group /= 2;
  return group;
}

inline int64_t decode_shared_limit() {
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 48 * 1024;
  return limit;
}

inline int decode_sm_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  return std::max(count, 1);
}

// Whether sl_decode takes a call of this shape (else the caller takes the
// unfused factored path).
template <class T>
bool decode_supported(int64_t n, int64_t r, int64_t tokens) {
  return tokens >= 1 && tokens <= kMaxDecodeTokens && n < (int64_t(1) << 31) && r < (int64_t(1) << 31) &&
         decode_tokens_per_pass<T>(n, r, tokens, decode_shared_limit()) > 0;
}

namespace detail {

template <class T, class Index, int kTokens, int V>
cudaError_t launch_low_rank_kernel(const DecodeArgs<T, Index>& a, cudaStream_t stream) {
  const auto kernel = decode_low_rank_kernel<T, kTokens, V>;
  SLTRAIN_LAUNCH(kernel, dim3(unsigned(ceil_div(a.r, kLowRankWarpsPerBlock))), kLowRankWarpsPerBlock * kWarp, 0,
                 stream)(a.r, a.n, a.tokens, a.A, a.x, a.ld_x, a.t);
  return cudaGetLastError();
}

template <class T, class Index, int kTokens>
cudaError_t launch_low_rank(const DecodeArgs<T, Index>& a, cudaStream_t stream) {
  return decode_a_and_x_aligned(a) ? launch_low_rank_kernel<T, Index, kTokens, kVecElements<T>>(a, stream)
                                   : launch_low_rank_kernel<T, Index, kTokens, 1>(a, stream);
}

template <class T, class Index, int kTokens, int V>
cudaError_t launch_rows_kernel(const DecodeArgs<T, Index>& a, int64_t t0, int count, cudaStream_t stream) {
  const auto kernel = decode_rows_kernel<T, Index, kTokens, V>;
  const DecodeSharedLayout layout = decode_shared_layout<T>(a.n, a.r, kTokens);
  if (const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(layout.bytes));
      e != cudaSuccess)
    return e;
  // Enough blocks to fill every SM (as many as its shared memory holds, up to
  // four of 512 threads), each sweeping many rows: every block copies t and
  // x into shared memory once, not once per 32 rows.
  const int64_t per_sm = std::clamp<int64_t>(decode_shared_limit() / std::max<int64_t>(layout.bytes, 1), 1, 4);
  const int64_t rows_per_block = kDecodeWarpsPerBlock * kDecodeRowsPerWarp;
  const dim3 grid(unsigned(std::min<int64_t>(ceil_div(a.m, rows_per_block), decode_sm_count() * per_sm)));
  SLTRAIN_LAUNCH(kernel, grid, kDecodeWarpsPerBlock * kWarp, size_t(layout.bytes), stream)(a, t0, count, layout);
  return cudaGetLastError();
}

template <class T, class Index, int kTokens>
cudaError_t launch_rows(const DecodeArgs<T, Index>& a, int64_t t0, int count, cudaStream_t stream) {
  return decode_b_aligned(a) ? launch_rows_kernel<T, Index, kTokens, kVecElements<T>>(a, t0, count, stream)
                             : launch_rows_kernel<T, Index, kTokens, 1>(a, t0, count, stream);
}

}  // namespace detail

// The fused forward of a.tokens <= kMaxDecodeTokens tokens into a.y, using
// a.t as workspace. The caller checks decode_supported first.
template <class T, class Index>
cudaError_t sl_decode(const DecodeArgs<T, Index>& a, cudaStream_t stream) {
  if (a.m <= 0 || a.tokens <= 0) return cudaSuccess;
  if (a.r > 0) {
    cudaError_t e;
    if (a.tokens == 1) e = detail::launch_low_rank<T, Index, 1>(a, stream);
    else if (a.tokens <= 4) e = detail::launch_low_rank<T, Index, 4>(a, stream);
    else e = detail::launch_low_rank<T, Index, kMaxDecodeTokens>(a, stream);
    if (e != cudaSuccess) return e;
  }
  const int group = decode_tokens_per_pass<T>(a.n, a.r, a.tokens, decode_shared_limit());
  if (group == 0) return cudaErrorInvalidValue;
  for (int64_t t0 = 0; t0 < a.tokens; t0 += group) {
    const int count = int(std::min<int64_t>(group, a.tokens - t0));
    cudaError_t e;
    switch (group) {
      case 1: e = detail::launch_rows<T, Index, 1>(a, t0, count, stream); break;
      case 2: e = detail::launch_rows<T, Index, 2>(a, t0, count, stream); break;
      case 4: e = detail::launch_rows<T, Index, 4>(a, t0, count, stream); break;
      case 8: e = detail::launch_rows<T, Index, 8>(a, t0, count, stream); break;
      default: e = detail::launch_rows<T, Index, 16>(a, t0, count, stream); break;
    }
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace sltrain::cuda
