// Torch-free CPU kernels of sltrain: raw pointers and sizes in, no ATen types.
// The ATen binding (csrc/cpu/ops.cpp), the C++ microbenchmarks and the ctest
// all call exactly these functions.
//
// Sparse matrices are CSR with int32 indices: row_ptr[m + 1], col_idx[nnz].
// Dense operands of the sparse kernels are "feature-major": the token batch is
// the fast axis, so every sparse entry touches a contiguous run of b numbers
// and the inner loops vectorise. Scalar type T is float or double; callers
// convert half types to float first so every sum accumulates in float32.
#pragma once

#include <cstdint>

#include "../../common/adam_math.h"
#include "../../common/half.h"

namespace sltrain::cpu {

// ---- support ----------------------------------------------------------------

// Fills row_ptr[m + 1] and col_idx[nnz] with nnz distinct positions of an
// m x n matrix, a pseudo-random uniform subset that depends only on
// (m, n, nnz, seed), as sorted CSR. O(nnz + m) time and memory: 8 bytes per
// nonzero and 4 per row of scratch besides the outputs.
// Requires 0 <= nnz <= m * n and nnz < 2^31.
void random_support(int64_t m, int64_t n, int64_t nnz, uint64_t seed, int32_t* row_ptr,
                    int32_t* col_idx);

// The CSC copy of a valid m x n support: col_ptr[n + 1], row_idx[nnz] (rows
// increasing within each column) and entry[nnz], the CSR position of each CSC
// entry. A counting sort: O(nnz + n) time, no memory beyond the outputs.
void transpose_support(int64_t m, int64_t n, int64_t nnz, const int32_t* row_ptr,
                       const int32_t* col_idx, int32_t* col_ptr, int32_t* row_idx, int32_t* entry);

// What is wrong with row_ptr[m + 1], if anything. O(m): the sparse kernels
// below rely on a valid row_ptr and check column bounds themselves.
struct RowPtrCheck {
  enum Kind { kValid, kNonzeroStart, kDecreasing, kWrongEnd } kind;
  int64_t row;  // with kDecreasing: row_ptr[row + 1] < row_ptr[row]
};
RowPtrCheck check_row_ptr(int64_t m, int64_t nnz, const int32_t* row_ptr);

// For validate_support: -1 if every row's columns lie in [0, n) and strictly
// increase, else the position in col_idx of the first that does not.
// Requires a valid row_ptr.
int64_t first_bad_col_idx(int64_t m, int64_t n, const int32_t* row_ptr, const int32_t* col_idx);

// ---- sparse products ----------------------------------------------------------
// Each returns false, having written only in-bounds memory, if a column index
// it reads lies outside [0, n) (with b == 0 the batch kernels read none).

// y_t[i, :b] = sum_k values[k] * x_t[col_idx[k], :b]   (y = x @ S^T)
template <class T>
bool csr_spmm(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr, const int32_t* col_idx,
              const T* values, const T* x_t, int64_t ld_x, T* y_t, int64_t ld_y);

// dx_t[j, :b] = sum_{(i, j) in S} values[k] * g_t[i, :b]   (dx = g @ S)
template <class T>
bool csr_spmm_transposed(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr,
                         const int32_t* col_idx, const T* values, const T* g_t, int64_t ld_g,
                         T* dx_t, int64_t ld_x);

// dvalues[k] = dot(g_t[i, :b], x_t[col_idx[k], :b])   (dvalues = (g^T x)[S])
template <class T>
bool csr_sddmm(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr, const int32_t* col_idx,
               const T* g_t, int64_t ld_g, const T* x_t, int64_t ld_x, T* dvalues);

// w[i - row_begin, col_idx[k]] += values[k] for rows [row_begin, row_end).
template <class T>
bool csr_scatter_add_rows(int64_t row_begin, int64_t row_end, int64_t n, const int32_t* row_ptr,
                          const int32_t* col_idx, const T* values, T* w, int64_t ld_w);

// out[k] = w[i - row_begin, col_idx[k]] for the entries k of rows [row_begin, row_end).
template <class T>
bool csr_gather_rows(int64_t row_begin, int64_t row_end, int64_t n, const int32_t* row_ptr,
                     const int32_t* col_idx, const T* w, int64_t ld_w, T* out);

// ---- inference ----------------------------------------------------------------

// The most tokens sl_decode_rows takes: each row keeps one accumulator per
// token on the stack. Larger batches are GEMM work, left to the GEMM path.
constexpr int64_t kMaxDecodeTokens = 32;

// The accumulation type of sl_decode_rows: float for float, bf16 and fp16;
// double for double.
template <class T> struct DecodeAccOf { using type = float; };
template <> struct DecodeAccOf<double> { using type = double; };
template <class T> using DecodeAcc = typename DecodeAccOf<T>::type;

// The whole factored forward of b <= kMaxDecodeTokens tokens in one pass over
// the output rows, each reading its row of B and its CSR entries once:
//   y[j, i] = scale * dot(B[i, :r], t[j, :r]) + sum_k values[k] * x_t[col_idx[k], j] + bias[i]
// with t = x @ A^T token-major [b, r] (in the accumulation type), x_t
// feature-major [n, b], y token-major [b, m] and bias nullable. T is float,
// double, bf16 or fp16: 16-bit operands are read as stored (2 bytes each) and
// summed in float, y rounded once. Index is uint16_t (SLLinear's columns,
// n <= 65536) or int32_t, read as stored. Returns false,
// having written only in-bounds memory, if a column lies outside [0, n).
template <class T, class Index>
bool sl_decode_rows(int64_t m, int64_t n, int64_t r, int64_t b, DecodeAcc<T> scale, const T* B,
                    const DecodeAcc<T>* t, const int32_t* row_ptr, const Index* col_idx, const T* values,
                    const T* x_t, const T* bias, T* y);

// ---- optimizer ----------------------------------------------------------------

// One in-place Adam/AdamW update of numel elements, the same arithmetic as
// torch.optim.AdamW's single-tensor path. Param P is float, double, bf16 or
// fp16 and grad has P's type; states S are float (double for double params).
template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper);

// The same update with 8-bit block-quantised states (common/quant8.h): codes
// exp_avg [numel] and sqrt_exp_avg_sq [numel], one float32 absmax per block of
// kQuantBlock in exp_avg_absmax and sqrt_exp_avg_sq_absmax. The parameter is
// updated from the exact new moments, which are then requantised. P is float,
// bf16 or fp16.
template <class P>
void adam8bit_step(int64_t numel, P* param, const P* grad, int8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper);

// The same update with 4-bit block-quantised states (common/quant4.h): two
// codes a byte, exp_avg and sqrt_exp_avg_sq [ceil(numel / 2)] bytes each, one
// float32 absmax per block of kQuant4Block in exp_avg_absmax and
// sqrt_exp_avg_sq_absmax. P is float, bf16 or fp16.
template <class P>
void adam4bit_step(int64_t numel, P* param, const P* grad, uint8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper);

}  // namespace sltrain::cpu
