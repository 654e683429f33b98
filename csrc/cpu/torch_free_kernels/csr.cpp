#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <strings.h>
#include <type_traits>

#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {
namespace {

// Columns of the batch processed together: 256 floats of y stay in L1 while
// the rows of x they gather from stay in L2.
constexpr int64_t kBatchBlock = 256;
// Multiply-adds worth giving a thread of their own.
constexpr int64_t kWorkGrain = int64_t{1} << 15;
// The same for sl_decode_rows, whose multiply-adds each stream a weight from
// memory, so a chunk's worth is what waking a pooled thread costs. OpenMP's
// threads spin for a while after a parallel region by default, and waking
// one costs about a microsecond: 2^15 multiply-adds (128 KB of fp32
// weights) pay for it (LLaMA-60M generation at batch 1 went from 1.35x to
// 1.44x dense's speed: benchmarks/bench_generate.py). Under
// OMP_WAIT_POLICY=PASSIVE they sleep, and waking one costs tens of µs: a
// chunk must buy about a megabyte of weights, or a small layer runs slower
// on two threads than on one (512 x 512, r 128, b 1: 26 µs on two, 18 on
// one).
int64_t decode_work_grain() {
  static const int64_t grain = [] {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const bool threads_sleep = policy != nullptr && strcasecmp(policy, "passive") == 0;
    return threads_sleep ? int64_t{1} << 18 : int64_t{1} << 15;
  }();
  return grain;
}

template <class T>
SLTRAIN_SIMD_CLONES void axpy(int64_t count, T alpha, const T* __restrict x, T* __restrict y) {
  for (int64_t j = 0; j < count; ++j) y[j] += alpha * x[j];
}

// Sixteen independent partial sums in a fixed order: vectorisable without
// -ffast-math, and the result does not depend on the thread count.
template <class T>
SLTRAIN_SIMD_CLONES T dot(int64_t count, const T* __restrict x, const T* __restrict y) {
  constexpr int kLanes = 16;
  T lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += x[j + l] * y[j + l];
  T total = 0;
  for (; j < count; ++j) total += x[j] * y[j];
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

inline bool column_in_range(int32_t column, int64_t n) {
  return column >= 0 && column < n;
}

// Calls visit(k, column) for each entry k of row i whose column lies in
// [0, n); clears `ok` for any other.
template <class Visit>
inline void visit_row(int64_t i, int64_t n, const int32_t* row_ptr, const int32_t* col_idx,
                      std::atomic<bool>& ok, const Visit& visit) {
  for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; ++k) {
    const int32_t column = col_idx[k];
    if (column_in_range(column, n)) {
      visit(k, column);
    } else {
      ok.store(false, std::memory_order_relaxed);
    }
  }
}

// Rows per chunk so that each chunk does about kWorkGrain multiply-adds.
inline int64_t row_grain(int64_t m, int64_t nnz, int64_t b) {
  const int64_t work = std::max<int64_t>(1, nnz) * std::max<int64_t>(1, b);
  return std::max<int64_t>(1, kWorkGrain * std::max<int64_t>(1, m) / work);
}

}  // namespace

RowPtrCheck check_row_ptr(int64_t m, int64_t nnz, const int32_t* row_ptr) {
  if (row_ptr[0] != 0) return {RowPtrCheck::kNonzeroStart, 0};
  for (int64_t i = 0; i < m; ++i)
    if (row_ptr[i + 1] < row_ptr[i]) return {RowPtrCheck::kDecreasing, i};
  if (row_ptr[m] != nnz) return {RowPtrCheck::kWrongEnd, m};
  return {RowPtrCheck::kValid, m};
}

int64_t first_bad_col_idx(int64_t m, int64_t n, const int32_t* row_ptr, const int32_t* col_idx) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; ++k) {
      if (!column_in_range(col_idx[k], n)) return k;
      if (k > row_ptr[i] && col_idx[k] <= col_idx[k - 1]) return k;
    }
  }
  return -1;
}

template <class T>
bool csr_spmm(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr, const int32_t* col_idx,
              const T* values, const T* x_t, int64_t ld_x, T* y_t, int64_t ld_y) {
  std::atomic<bool> ok{true};
  parallel_for(0, m, row_grain(m, row_ptr[m], b), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t j0 = 0; j0 < b; j0 += kBatchBlock) {
      const int64_t width = std::min(kBatchBlock, b - j0);
      for (int64_t i = row_begin; i < row_end; ++i) {
        T* y = y_t + i * ld_y + j0;
        std::fill(y, y + width, T(0));
        visit_row(i, n, row_ptr, col_idx, ok, [&](int64_t k, int32_t column) {
          axpy(width, values[k], x_t + column * ld_x + j0, y);
        });
      }
    }
  });
  return ok.load();
}

template <class T>
bool csr_spmm_transposed(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr,
                         const int32_t* col_idx, const T* values, const T* g_t, int64_t ld_g,
                         T* dx_t, int64_t ld_x) {
  // Entries of one column of S are scattered over rows, so threads split the
  // batch instead: each owns a slab of columns of dx_t and never races.
  const int64_t threads = max_threads();
  const int64_t width = std::clamp<int64_t>((b + threads - 1) / std::max<int64_t>(threads, 1), 16,
                                            kBatchBlock);
  const int64_t blocks = (b + width - 1) / width;
  std::atomic<bool> ok{true};
  parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t j0 = block * width;
      const int64_t w = std::min(width, b - j0);
      for (int64_t j = 0; j < n; ++j) std::fill(dx_t + j * ld_x + j0, dx_t + j * ld_x + j0 + w, T(0));
      for (int64_t i = 0; i < m; ++i) {
        const T* g = g_t + i * ld_g + j0;
        visit_row(i, n, row_ptr, col_idx, ok, [&](int64_t k, int32_t column) {
          axpy(w, values[k], g, dx_t + column * ld_x + j0);
        });
      }
    }
  });
  return ok.load();
}

template <class T>
bool csr_sddmm(int64_t m, int64_t n, int64_t b, const int32_t* row_ptr, const int32_t* col_idx,
               const T* g_t, int64_t ld_g, const T* x_t, int64_t ld_x, T* dvalues) {
  std::atomic<bool> ok{true};
  parallel_for(0, m, row_grain(m, row_ptr[m], b), [&](int64_t row_begin, int64_t row_end) {
    std::fill(dvalues + row_ptr[row_begin], dvalues + row_ptr[row_end], T(0));
    for (int64_t j0 = 0; j0 < b; j0 += kBatchBlock) {
      const int64_t width = std::min(kBatchBlock, b - j0);
      for (int64_t i = row_begin; i < row_end; ++i) {
        const T* g = g_t + i * ld_g + j0;
        visit_row(i, n, row_ptr, col_idx, ok, [&](int64_t k, int32_t column) {
          dvalues[k] += dot(width, g, x_t + column * ld_x + j0);
        });
      }
    }
  });
  return ok.load();
}

namespace {

// Calls visit(r, k, column) for every entry k of rows [row_begin, row_end) of
// S whose column is in range, with r counted from row_begin; false if any is not.
template <class Visit>
bool for_each_entry_in_rows(int64_t row_begin, int64_t row_end, int64_t n, const int32_t* row_ptr,
                            const int32_t* col_idx, const Visit& visit) {
  std::atomic<bool> ok{true};
  const int64_t rows = row_end - row_begin;
  parallel_for(0, rows, row_grain(rows, row_ptr[row_end] - row_ptr[row_begin], 1),
               [&](int64_t begin, int64_t end) {
                 for (int64_t r = begin; r < end; ++r) {
                   visit_row(row_begin + r, n, row_ptr, col_idx, ok,
                             [&](int64_t k, int32_t column) { visit(r, k, column); });
                 }
               });
  return ok.load();
}

}  // namespace

template <class T>
bool csr_scatter_add_rows(int64_t row_begin, int64_t row_end, int64_t n, const int32_t* row_ptr,
                          const int32_t* col_idx, const T* values, T* w, int64_t ld_w) {
  return for_each_entry_in_rows(row_begin, row_end, n, row_ptr, col_idx,
                                [&](int64_t r, int64_t k, int32_t column) { w[r * ld_w + column] += values[k]; });
}

template <class T>
bool csr_gather_rows(int64_t row_begin, int64_t row_end, int64_t n, const int32_t* row_ptr,
                     const int32_t* col_idx, const T* w, int64_t ld_w, T* out) {
  return for_each_entry_in_rows(row_begin, row_end, n, row_ptr, col_idx,
                                [&](int64_t r, int64_t k, int32_t column) { out[k] = w[r * ld_w + column]; });
}

namespace {

// dot(count, x, y) with x read as stored (16-bit elements widened on the fly)
// and summed in y's type, in the same fixed order as dot.
template <class Acc, class X>
Acc widened_dot(int64_t count, const X* __restrict x, const Acc* __restrict y) {
  if constexpr (std::is_same_v<X, Acc>) {
    return dot(count, x, y);
  } else {
    constexpr int kLanes = 16;
    Acc lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= count; j += kLanes)
      for (int l = 0; l < kLanes; ++l) lanes[l] += to_float(x[j + l]) * y[j + l];
    Acc total = 0;
    for (; j < count; ++j) total += to_float(x[j]) * y[j];
    for (int l = 0; l < kLanes; ++l) total += lanes[l];
    return total;
  }
}

// An accumulated value rounded once to the storage type.
template <class T>
T narrow_to(DecodeAcc<T> value) {
  if constexpr (std::is_same_v<T, bf16>) return to_bf16(value);
  else if constexpr (std::is_same_v<T, fp16>) return to_fp16(value);
  else return value;
}

// Rows [row_begin, row_end) of sl_decode_rows. kTokens > 0 fixes b at compile
// time, so the per-token loops unroll (at b = 1 a runtime-length loop around
// each sparse entry's single multiply-add costs more than the add itself);
// kTokens == 0 reads b at run time.
template <int kTokens, class T, class Index>
bool decode_row_range(int64_t row_begin, int64_t row_end, int64_t m, int64_t n, int64_t r,
                      int64_t runtime_b, DecodeAcc<T> scale, const T* B, const DecodeAcc<T>* t,
                      const int32_t* row_ptr, const Index* col_idx, const T* values, const T* x_t,
                      const T* bias, T* y) {
  using Acc = DecodeAcc<T>;
  const int64_t b = kTokens > 0 ? kTokens : runtime_b;
  bool ok = true;
  Acc sums[kMaxDecodeTokens];
  for (int64_t i = row_begin; i < row_end; ++i) {
    // B's row stays in L1 across the tokens' dot products; each entry's
    // column of x_t holds all b tokens side by side.
    for (int64_t j = 0; j < b; ++j) sums[j] = scale * widened_dot(r, B + i * r, t + j * r);
    // Entry k's column of x_t, or nullptr (and ok cleared) if out of range.
    const auto x_column = [&](int64_t k) -> const T* {
      const int64_t column = col_idx[k];
      if (column >= 0 && column < n) return x_t + column * b;
      ok = false;
      return nullptr;
    };
    int64_t k = row_ptr[i];
    const int64_t row_end_entry = row_ptr[i + 1];
    if constexpr (kTokens == 1) {
      // One token: a single running sum would chain every entry's
      // multiply-add on the previous one (4 cycles each); four overlap.
      Acc partial[4] = {};
      for (; k + 4 <= row_end_entry; k += 4) {
        for (int l = 0; l < 4; ++l) {
          if (const T* x = x_column(k + l)) partial[l] += to_float(values[k + l]) * to_float(*x);
        }
      }
      sums[0] += (partial[0] + partial[1]) + (partial[2] + partial[3]);
    }
    for (; k < row_end_entry; ++k) {
      const T* x = x_column(k);
      if (!x) continue;
      const Acc value = to_float(values[k]);
      for (int64_t j = 0; j < b; ++j) sums[j] += value * to_float(x[j]);
    }
    const Acc row_bias = bias ? to_float(bias[i]) : Acc(0);
    for (int64_t j = 0; j < b; ++j) y[j * m + i] = narrow_to<T>(sums[j] + row_bias);
  }
  return ok;
}

}  // namespace

template <class T, class Index>
bool sl_decode_rows(int64_t m, int64_t n, int64_t r, int64_t b, DecodeAcc<T> scale, const T* B,
                    const DecodeAcc<T>* t, const int32_t* row_ptr, const Index* col_idx, const T* values,
                    const T* x_t, const T* bias, T* y) {
  std::atomic<bool> ok{true};
  const int64_t work_per_row = std::max<int64_t>(1, (r + row_ptr[m] / std::max<int64_t>(m, 1)) * b);
  parallel_for(0, m, std::max<int64_t>(1, decode_work_grain() / work_per_row), [&](int64_t begin, int64_t end) {
    const auto rows = [&](auto tokens) {
      return decode_row_range<decltype(tokens)::value>(begin, end, m, n, r, b, scale, B, t, row_ptr,
                                                       col_idx, values, x_t, bias, y);
    };
    bool in_range;
    switch (b) {
      case 1: in_range = rows(std::integral_constant<int, 1>{}); break;
      case 2: in_range = rows(std::integral_constant<int, 2>{}); break;
      case 4: in_range = rows(std::integral_constant<int, 4>{}); break;
      case 8: in_range = rows(std::integral_constant<int, 8>{}); break;
      case 16: in_range = rows(std::integral_constant<int, 16>{}); break;
      default: in_range = rows(std::integral_constant<int, 0>{}); break;
    }
    if (!in_range) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

#define SLTRAIN_INSTANTIATE_DECODE(T, Index)                                                        \
  template bool sl_decode_rows<T, Index>(int64_t, int64_t, int64_t, int64_t, DecodeAcc<T>, const T*, \
                                         const DecodeAcc<T>*, const int32_t*, const Index*, const T*,  \
                                         const T*, const T*, T*);

SLTRAIN_INSTANTIATE_DECODE(float, int32_t)
SLTRAIN_INSTANTIATE_DECODE(float, uint16_t)
SLTRAIN_INSTANTIATE_DECODE(double, int32_t)
SLTRAIN_INSTANTIATE_DECODE(double, uint16_t)
SLTRAIN_INSTANTIATE_DECODE(bf16, int32_t)
SLTRAIN_INSTANTIATE_DECODE(bf16, uint16_t)
SLTRAIN_INSTANTIATE_DECODE(fp16, int32_t)
SLTRAIN_INSTANTIATE_DECODE(fp16, uint16_t)

#define SLTRAIN_INSTANTIATE_CSR(T)                                                                \
  template bool csr_spmm<T>(int64_t, int64_t, int64_t, const int32_t*, const int32_t*, const T*, \
                            const T*, int64_t, T*, int64_t);                                      \
  template bool csr_spmm_transposed<T>(int64_t, int64_t, int64_t, const int32_t*, const int32_t*, \
                                       const T*, const T*, int64_t, T*, int64_t);                 \
  template bool csr_sddmm<T>(int64_t, int64_t, int64_t, const int32_t*, const int32_t*, const T*, \
                             int64_t, const T*, int64_t, T*);                                     \
  template bool csr_scatter_add_rows<T>(int64_t, int64_t, int64_t, const int32_t*,                \
                                        const int32_t*, const T*, T*, int64_t);                   \
  template bool csr_gather_rows<T>(int64_t, int64_t, int64_t, const int32_t*, const int32_t*,     \
                                   const T*, int64_t, T*);

SLTRAIN_INSTANTIATE_CSR(float)
SLTRAIN_INSTANTIATE_CSR(double)

}  // namespace sltrain::cpu
