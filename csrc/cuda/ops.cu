// CUDA kernels of sl_matmul, its backward, densify and the Adam ops: argument
// checks shared with the CPU (csrc/checks.h), memory from torch's caching
// allocator, dense products on cuBLAS through ATen, our kernels from the
// torch-free headers beside this file, everything on the current stream and
// without a host synchronisation (so CUDA graphs can capture it).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../common/csc_layout.h"
#include "../config.h"
#include "../no_autocast.h"
#include "adam.cuh"
#include "bindings.h"
#include "csr.cuh"
#include "decode.cuh"

namespace sltrain {
namespace {

using at::Tensor;

// ATen's element types as the kernels spell them.
template <class T> struct Device { using type = T; };
template <> struct Device<at::BFloat16> { using type = __nv_bfloat16; };
template <> struct Device<at::Half> { using type = __half; };

template <class T>
auto* ptr(const Tensor& t) {
  return reinterpret_cast<typename Device<T>::type*>(t.data_ptr<T>());
}

#define SLTRAIN_DISPATCH_FLOATS(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

// ---- the materialised path ----------------------------------------------------

// cuBLAS keeps its fast kernels only when every matrix starts 16-byte aligned
// and every leading dimension is a multiple of 8 elements (16 bytes in bf16):
// LLaMA-1B's 5461 is 5-8x slower otherwise. Nothing here is zero-padded: the
// reduction length stays the true width; only row strides are rounded up.
int64_t padded(int64_t cols) { return (cols + 7) / 8 * 8; }

bool has_aligned_rows(const Tensor& t) {
  return t.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// Bytes the materialised path may hold besides its inputs and outputs, so
// that no call peaks above dense nn.Linear's forward+backward (y, then dx and
// an m x n dW): the configured workspace, and never more than what dense
// holds that this pass does not (`spare` elements: dx and dW for the forward;
// for the backward, dW against our dA, dB and dvalues). At least one chunk of
// 8 rows is always granted, so every shape runs.
class Workspace {
 public:
  Workspace(int64_t spare, int64_t element_size)
      : left_(std::min(matmul_workspace_bytes(), spare * element_size)) {}

  // Takes `bytes` if they fit.
  bool take(int64_t bytes) {
    if (bytes > left_) return false;
    left_ -= bytes;
    return true;
  }

  // Takes `bytes` even if they do not fit (a granted minimum).
  void spend(int64_t bytes) { left_ -= bytes; }

  // Rows (a multiple of 8) of a [rows, width] buffer that fit what is left,
  // divided by `share`.
  int64_t rows(int64_t count, int64_t width, int64_t element_size, int64_t share = 1) const {
    const int64_t fit = std::max<int64_t>(left_, 0) / share / std::max<int64_t>(1, width * element_size) / 8 * 8;
    return std::min(std::max<int64_t>(8, fit), std::max<int64_t>(8, padded(count)));
  }

  // Elements left, at least `minimum`.
  int64_t elements_left(int64_t element_size, int64_t minimum) const {
    return std::max(std::max<int64_t>(left_, 0) / element_size, minimum);
  }

 private:
  int64_t left_;
};

int64_t forward_spare(const FactorDims& d, int64_t batch) { return batch * d.n + d.m * d.n; }
int64_t backward_spare(const FactorDims& d) { return d.m * d.n - d.r * (d.m + d.n) - d.nnz; }

// The int32 copy of 16-bit columns a call makes (int32_columns) comes out of
// its workspace, so the peak stays within the same bound.
int64_t widened_column_bytes(const Tensor& col_idx) {
  return col_idx.scalar_type() == at::kInt ? 0 : col_idx.numel() * int64_t(sizeof(int32_t));
}

// t [rows, cols] (unit column stride) as cuBLAS wants it: t itself when its
// rows are aligned, else a copy with a padded row stride if the workspace
// holds one, else t as it is (slower, but within dense's memory).
Tensor aligned_rows(const Tensor& t, Workspace& workspace) {
  if (has_aligned_rows(t) || t.size(0) <= 1 ||
      !workspace.take(t.size(0) * padded(t.size(1)) * t.element_size()))
    return t;
  return at::empty({t.size(0), padded(t.size(1))}, t.options()).narrow(1, 0, t.size(1)).copy_(t);
}

// A [rows, cols] view of `buffer` with a row stride of padded(cols).
Tensor block_view(const Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * padded(cols)).view({rows, padded(cols)}).narrow(1, 0, cols);
}

// Staging elements per token of gemm_through_staging(lhs [tokens, k], ..., out [tokens, cols]).
int64_t staging_per_token(const Tensor& lhs, const Tensor& out) {
  return (has_aligned_rows(lhs) ? 0 : padded(lhs.size(1))) + (has_aligned_rows(out) ? 0 : padded(out.size(1)));
}

// out = lhs @ rhs (+ bias over rows), rhs aligned. cuBLAS is fast only on
// aligned rows, so an unaligned lhs is copied tile by tile into `staging`, and
// an unaligned out is computed tile by tile there and copied out (adding the
// bias on the way): one extra pass over that operand instead of 5-8x slower
// GEMMs, in at most staging.numel() elements.
void gemm_through_staging(const Tensor& lhs, const Tensor& rhs, Tensor out, const std::optional<Tensor>& bias,
                          const Tensor& staging) {
  const auto gemm = [&](Tensor& target, const Tensor& left, const std::optional<Tensor>& addend) {
    if (addend.has_value())
      at::addmm_out(target, *addend, left, rhs);
    else
      at::mm_out(target, left, rhs);
  };
  const int64_t per_token = staging_per_token(lhs, out);
  if (per_token == 0 || lhs.size(0) <= 1) return gemm(out, lhs, bias);
  const bool stage_lhs = !has_aligned_rows(lhs), stage_out = !has_aligned_rows(out);
  const int64_t tokens = lhs.size(0), tile = std::max<int64_t>(1, staging.numel() / per_token);
  for (int64_t t = 0; t < tokens; t += tile) {
    const int64_t count = std::min(tile, tokens - t);
    Tensor left = lhs.narrow(0, t, count), target = out.narrow(0, t, count);
    if (stage_lhs) left = block_view(staging, count, lhs.size(1)).copy_(left);
    if (!stage_out) {
      gemm(target, left, bias);
      continue;
    }
    const int64_t offset = stage_lhs ? count * padded(lhs.size(1)) : 0;
    Tensor product = block_view(staging.narrow(0, offset, staging.numel() - offset), count, out.size(1));
    gemm(product, left, std::nullopt);
    if (bias.has_value())
      at::add_out(target, product, *bias);
    else
      target.copy_(product);
  }
}

struct Support {
  const Tensor &row_ptr, &col_idx, &values;
  int64_t m, n, nnz;
};

// w = scale * B[rows] @ A[:, cols] + S[rows, cols]: a block of W, whole rows
// (cols = [0, n)) or a window of columns.
void materialize_block(const Tensor& a, const Tensor& B, const Support& s, double scale,
                       int64_t row_begin, int64_t col_begin, Tensor& w) {
  const int64_t rows = w.size(0), cols = w.size(1);
  at::addmm_out(w, w, B.narrow(0, row_begin, rows), a.narrow(1, col_begin, cols), /*beta=*/0,
                /*alpha=*/scale);
  SLTRAIN_DISPATCH_FLOATS(w.scalar_type(), "materialize_block", [&] {
    C10_CUDA_CHECK(cuda::csr_scatter_add_block(
        row_begin, rows, col_begin, col_begin + cols, s.n, s.nnz, s.row_ptr.data_ptr<int32_t>(),
        s.col_idx.data_ptr<int32_t>(), ptr<scalar_t>(s.values), ptr<scalar_t>(w), w.stride(0), stream()));
  });
}

bool use_factored_path(int64_t b, const FactorDims& dims) {
  return resolve_matmul_path(b, dims.m, dims.n, dims.r, dims.nnz, kCudaPathCosts) ==
         MatmulPath::kFactored;
}

// ---- the factored path's sparse kernels ----------------------------------------

// y[t, i] (+)= sum_k values * x[t, index[k]] (+ bias[i]) over a CSR (or, with
// `entry`, the CSC copy of S).
void spmm(const Tensor& ptr_tensor, const Tensor& index, const int32_t* entry, const Tensor& values,
          int64_t rows, int64_t cols, const Tensor& x, Tensor& y, const std::optional<Tensor>& bias,
          bool accumulate) {
  const Tensor bias_contiguous = bias.has_value() ? bias->contiguous() : Tensor();  // read as bias[row]
  SLTRAIN_DISPATCH_FLOATS(y.scalar_type(), "sl_spmm", [&] {
    using T = typename Device<scalar_t>::type;
    cuda::SpmmArgs<T> args{rows, cols, values.size(0), x.size(0),
                           ptr_tensor.data_ptr<int32_t>(), index.data_ptr<int32_t>(), entry,
                           ptr<scalar_t>(values), ptr<scalar_t>(x), x.stride(0), ptr<scalar_t>(y),
                           y.stride(0), bias.has_value() ? ptr<scalar_t>(bias_contiguous) : nullptr,
                           accumulate, false};
    C10_CUDA_CHECK(cuda::csr_spmm(args, stream()));
  });
}

// t [..., features] as a [tokens, features] matrix with unit column stride.
// Its row stride is kept where a view allows it (the kernels and cuBLAS take
// a leading dimension), so an input whose rows are already aligned is never
// copied to a contiguous, unaligned one.
Tensor flatten_tokens(const Tensor& t, int64_t features) {
  const int64_t tokens = c10::multiply_integers(t.sizes().slice(0, t.dim() - 1));
  const Tensor matrix = t.reshape({tokens, features});
  return matrix.stride(1) == 1 ? matrix : matrix.contiguous();
}

Tensor sl_matmul_cuda(const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
                      const Tensor& row_ptr, const Tensor& col_idx, double scale,
                      const std::optional<Tensor>& bias) {
  const NoAutocast no_autocast;
  const FactorDims dims = check_sl_matmul(x, A, B, values, row_ptr, col_idx, scale, bias).concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = dims.m;
  const Tensor x2 = flatten_tokens(x, dims.n);
  const int64_t batch = x2.size(0);
  if (batch == 0 || dims.m == 0) return x.new_empty(out_sizes);  // nothing to compute

  const Tensor a = A.contiguous(), b_factor = B.contiguous(), vals = values.contiguous();
  const Tensor rows = row_ptr.contiguous(), cols = int32_columns(col_idx);
  Tensor y;
  if (use_factored_path(batch, dims)) {
    // Scaled after the product: a scale near the dtype's largest value must not
    // overflow an intermediate whose final product is small (B = 0 at init).
    y = at::mm(at::mm(x2, a.t()), b_factor.t()).mul_(scale);
    spmm(rows, cols, nullptr, vals, dims.m, dims.n, x2, y, bias, /*accumulate=*/true);
  } else {
    // Row chunks of W in one buffer; each chunk's output columns come from one
    // GEMM (through staging tiles where x or y has unaligned rows), the bias
    // its addend.
    const Support support{rows, cols, vals, dims.m, dims.n, dims.nnz};
    const int64_t element = x2.element_size();
    Workspace workspace(forward_spare(dims, batch), element);
    workspace.spend(widened_column_bytes(col_idx));
    const Tensor a_aligned = aligned_rows(a, workspace), x_aligned = aligned_rows(x2, workspace);
    y = at::empty({batch, dims.m}, x2.options());
    const int64_t per_token = staging_per_token(x_aligned, y);
    const int64_t chunk = workspace.rows(dims.m, padded(dims.n), element, per_token ? 2 : 1);
    workspace.spend(chunk * padded(dims.n) * element);
    const int64_t staging = per_token ? workspace.elements_left(element, per_token) : 0;
    const Tensor buffer = at::empty({chunk * padded(dims.n) + staging}, x2.options());
    const Tensor staging_tiles = buffer.narrow(0, chunk * padded(dims.n), staging);
    for (int64_t row = 0; row < dims.m; row += chunk) {
      const int64_t count = std::min(chunk, dims.m - row);
      Tensor w = block_view(buffer, count, dims.n);
      materialize_block(a_aligned, b_factor, support, scale, row, 0, w);
      const auto bias_rows = bias.has_value() ? std::optional<Tensor>(bias->narrow(0, row, count)) : std::nullopt;
      gemm_through_staging(x_aligned, w.t(), y.narrow(1, row, count), bias_rows, staging_tiles);
    }
  }
  return y.view(out_sizes);
}

// ---- the support's CSC copy, built and cached here ----------------------------

// Where a support tensor's elements lie and which write of them it holds: its
// storage (held weakly: the cache keeps no support alive, and no other
// storage can take this one's address while it is held), data pointer, size,
// stride and autograd version counter, which every in-place write through the
// tensor or a view of it bumps.
struct SupportTensorState {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  int64_t numel, stride, version;

  explicit SupportTensorState(const Tensor& t)
      : storage(t.storage().getWeakStorageImpl()), data(t.const_data_ptr()), numel(t.numel()),
        stride(t.stride(0)), version(t._version()) {}

  bool same_tensor(const SupportTensorState& other) const {
    return storage._unsafe_get_target() == other.storage._unsafe_get_target() &&
           data == other.data && numel == other.numel && stride == other.stride;
  }
};

// The factored backward's CSC copies (transpose_support) of the supports it
// has run, one per support and stream, so that it builds each once (also
// under torch.compile, whose backward graphs keep no Python state) and never
// reads one a caller made: a CSC of another support, or with indices out of
// range, would make the transposed SpMM read `values` and write dx out of
// bounds. A copy is rebuilt when row_ptr or col_idx was written in place
// (version bump) or replaced; copies of freed supports are dropped at the
// next lookup. Writes that bypass the version counters (through `.data`, a
// NumPy or DLPack alias) go unseen: the copy then describes the previous
// support of the same m, n and nnz, so gradients are wrong but, that support
// having been valid, every index stays in bounds. Inference tensors have no
// version counter: their copy is built per call. Each copy holds 8 bytes per
// nonzero (and (n + 1) * 4) while its support lives.
class CscCache {
 public:
  Tensor get(const Tensor& row_ptr, const Tensor& col_idx, int64_t n, cudaStream_t stream) {
    if (row_ptr.is_inference() || col_idx.is_inference())
      return transpose_support_cuda(row_ptr, col_idx, n);
    Entry wanted{SupportTensorState(row_ptr), SupportTensorState(col_idx), n, stream, Tensor()};
    const std::lock_guard<std::mutex> lock(mutex_);
    drop([&](const Entry& e) {
      const bool freed = e.row_ptr.storage.expired() || e.col_idx.storage.expired();
      const bool rewritten = wanted.same_support(e) && (e.row_ptr.version != wanted.row_ptr.version ||
                                                        e.col_idx.version != wanted.col_idx.version);
      return freed || rewritten;
    });
    for (const Entry& e : entries_)
      if (wanted.same_support(e)) return e.csc;
    // Built under the lock: concurrent backwards of one new support build it once.
    wanted.csc = transpose_support_cuda(row_ptr, col_idx, n);
    entries_.push_back(wanted);
    return wanted.csc;
  }

 private:
  struct Entry {
    SupportTensorState row_ptr, col_idx;
    int64_t n;
    cudaStream_t stream;  // the copy is ready on this stream only
    Tensor csc;

    bool same_support(const Entry& e) const {
      return row_ptr.same_tensor(e.row_ptr) && col_idx.same_tensor(e.col_idx) && n == e.n &&
             stream == e.stream;
    }
  };

  template <class Predicate>
  void drop(Predicate&& predicate) {
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(), predicate), entries_.end());
  }

  std::mutex mutex_;
  std::vector<Entry> entries_;
};

Tensor cached_transposed_support(const Tensor& row_ptr, const Tensor& col_idx, int64_t n) {
  static CscCache* const cache = new CscCache();  // never destroyed: no CUDA frees at exit
  return cache->get(row_ptr, col_idx, n, stream());
}

// sl_matmul_inference on CUDA: up to cuda::kMaxDecodeTokens tokens on the
// factored path go through the fused decode kernels (decode.cuh: a GEMV, then
// one pass over B and S's entries, reading col_idx as stored: 16- or 32-bit);
// other calls take sl_matmul's own path.
Tensor sl_matmul_inference_cuda(const Tensor& x, const Tensor& A, const Tensor& B,
                                const Tensor& values, const Tensor& row_ptr, const Tensor& col_idx,
                                double scale, const std::optional<Tensor>& bias) {
  const NoAutocast no_autocast;
  const FactorDims dims = check_sl_matmul_inference(x, A, B, values, row_ptr, col_idx, scale, bias).concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  const Tensor x2 = flatten_tokens(x, dims.n);
  const int64_t batch = x2.size(0);
  bool fused = batch > 0 && dims.m > 0 && batch <= cuda::kMaxDecodeTokens && use_factored_path(batch, dims);
  SLTRAIN_DISPATCH_FLOATS(x2.scalar_type(), "sl_decode_supported", [&] {
    fused = fused && cuda::decode_supported<typename Device<scalar_t>::type>(dims.n, dims.r, batch);
  });
  if (!fused) return sl_matmul_cuda(x, A, B, values, row_ptr, col_idx, scale, bias);

  const Tensor a = A.contiguous(), b_factor = B.contiguous(), vals = values.contiguous();
  const Tensor rows = row_ptr.contiguous();
  const Tensor bias_contiguous = bias.has_value() ? bias->contiguous() : Tensor();
  const Tensor columns = col_idx.contiguous();
  const at::ScalarType accumulation = x2.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor t = at::empty({batch, dims.r}, x2.options().dtype(accumulation));
  Tensor y = at::empty({batch, dims.m}, x2.options());
  SLTRAIN_DISPATCH_FLOATS(x2.scalar_type(), "sl_decode", [&] {
    using T = typename Device<scalar_t>::type;
    const auto run = [&](const auto* index) {
      using Index = std::remove_const_t<std::remove_pointer_t<decltype(index)>>;
      const cuda::DecodeArgs<T, Index> args{
          dims.m, dims.n, dims.r, dims.nnz, batch, cuda::Acc<T>(scale), ptr<scalar_t>(a),
          ptr<scalar_t>(b_factor), rows.data_ptr<int32_t>(), index, ptr<scalar_t>(vals), ptr<scalar_t>(x2),
          x2.stride(0), bias.has_value() ? ptr<scalar_t>(bias_contiguous) : nullptr, ptr<scalar_t>(y),
          y.stride(0), reinterpret_cast<cuda::Acc<T>*>(t.data_ptr())};
      C10_CUDA_CHECK(cuda::sl_decode(args, stream()));
    };
    if (columns.scalar_type() == at::kUInt16)
      run(static_cast<const uint16_t*>(columns.const_data_ptr()));
    else
      run(columns.const_data_ptr<int32_t>());
  });
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = dims.m;
  return y.view(out_sizes);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sl_matmul_backward_cuda(
    const Tensor& grad_y, const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
    const Tensor& row_ptr, const Tensor& col_idx, double scale, std::array<bool, 4> output_mask) {
  const NoAutocast no_autocast;
  const FactorDims dims =
      check_sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, scale).concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  const auto [need_dx, need_dA, need_dB, need_dvalues] = output_mask;

  const Tensor g2 = flatten_tokens(grad_y, dims.m);
  const Tensor x2 = flatten_tokens(x, dims.n);
  const Tensor a = A.contiguous(), b_factor = B.contiguous(), vals = values.contiguous();
  const int64_t batch = x2.size(0);
  const bool nothing_to_compute = batch == 0 || dims.m == 0;
  const Tensor rows = row_ptr.contiguous(), cols = nothing_to_compute ? Tensor() : int32_columns(col_idx);
  const auto options = x2.options();
  Tensor dx, dA, dB, dvalues;

  if (nothing_to_compute) {
    // No tokens or no outputs: every gradient is zero (and no kernel runs).
    if (need_dx) dx = at::zeros({batch, dims.n}, options);
    if (need_dA) dA = at::zeros({dims.r, dims.n}, options);
    if (need_dB) dB = at::zeros({dims.m, dims.r}, options);
    if (need_dvalues) dvalues = at::zeros({dims.nnz}, options);
  } else if (use_factored_path(batch, dims)) {
    // Every low-rank product scaled after it is computed (as in the forward).
    const Tensor g_b = (need_dx || need_dA) ? at::mm(g2, b_factor) : Tensor();
    if (need_dx) {
      dx = at::mm(g_b, a).mul_(scale);
      const Tensor csc = cached_transposed_support(row_ptr, col_idx, dims.n);
      const PackedCscLayout<int64_t> layout = packed_csc_layout(dims.n, dims.nnz);
      const Tensor col_ptr = csc.narrow(0, 0, dims.n + 1);
      const Tensor row_idx = csc.narrow(0, layout.row_idx, dims.nnz);
      const int32_t* entry = csc.data_ptr<int32_t>() + layout.entry;
      spmm(col_ptr, row_idx, entry, vals, dims.n, dims.m, g2, dx, std::nullopt, /*accumulate=*/true);
    }
    if (need_dA) dA = at::mm(g_b.t(), x2).mul_(scale);
    if (need_dB) dB = at::mm(g2.t(), at::mm(x2, a.t())).mul_(scale);
    if (need_dvalues) {
      dvalues = at::empty({dims.nnz}, options);
      SLTRAIN_DISPATCH_FLOATS(options.dtype().toScalarType(), "sl_sddmm", [&] {
        C10_CUDA_CHECK(cuda::csr_sddmm(dims.m, dims.n, dims.nnz, batch, rows.data_ptr<int32_t>(),
                                       cols.data_ptr<int32_t>(), ptr<scalar_t>(g2), g2.stride(0),
                                       ptr<scalar_t>(x2), x2.stride(0), ptr<scalar_t>(dvalues), stream()));
      });
    }
  } else {
    // One buffer serves W, then dW = g^T x, in blocks; neither is ever whole.
    // dx takes column windows of W, so each dx column is one GEMM's output
    // (nothing re-rounded). dA and dB come from the dW row chunks or from the
    // factored formulas, whichever is cheaper; a 16-bit dA sums its chunks in
    // float32 (see widen_dA).
    const Support support{rows, cols, vals, dims.m, dims.n, dims.nnz};
    const int64_t element = x2.element_size();
    const bool factors_from_dW = factor_grads_from_dW(batch, dims.m, dims.n);
    if (!factors_from_dW) {
      if (need_dA) dA = at::mm(at::mm(g2, b_factor).t(), x2).mul_(scale);
      if (need_dB) dB = at::mm(g2.t(), at::mm(x2, a.t())).mul_(scale);
    }
    const bool need_dW = need_dvalues || (factors_from_dW && (need_dA || need_dB));
    Workspace workspace(backward_spare(dims), element);
    workspace.spend(widened_column_bytes(col_idx));
    const Tensor g_aligned = aligned_rows(g2, workspace), x_aligned = aligned_rows(x2, workspace);
    const Tensor a_aligned = need_dx ? aligned_rows(a, workspace) : a;
    if (need_dx) dx = at::empty({batch, dims.n}, options);
    // One buffer: W column windows (and staging tiles for an unaligned g or
    // dx) for dx, then dW row chunks.
    const int64_t per_token = need_dx ? staging_per_token(g_aligned, dx) : 0;
    // dW = g[:, rows]^T x reads g's columns: with unaligned rows, each chunk's
    // columns of g are first copied into an aligned [batch, rows] block.
    const bool stage_g_columns = need_dW && !has_aligned_rows(g_aligned) && batch > 1;
    const int64_t dW_width = padded(dims.n) + (stage_g_columns ? batch : 0);
    // A 16-bit dA summed over more than one dW chunk sums in float32 where the
    // workspace holds the r x n sum. Where it does not (the sum is more than
    // the layer saves over dense, as at LLaMA-350M's attention), up to
    // kNarrowSums chunks are summed in 16 bits, keeping the memory bound for a
    // few roundings more; a longer sum is float32 anyway (a granted minimum:
    // precision before the memory bound).
    constexpr int64_t kNarrowSums = 4;
    bool widen_dA = false;
    if (need_dA && factors_from_dW && element < 4) {
      const int64_t rows = workspace.rows(dims.m, dW_width, element), chunks = (dims.m + rows - 1) / rows;
      const int64_t sum_bytes = dims.r * dims.n * int64_t(sizeof(float));
      if (chunks > 1 && workspace.take(sum_bytes)) {
        widen_dA = true;
      } else if (chunks > kNarrowSums) {
        widen_dA = true;
        workspace.spend(sum_bytes);
      }
    }
    const int64_t rows_per_chunk = workspace.rows(dims.m, dW_width, element);
    const int64_t cols_per_chunk = workspace.rows(dims.n, dims.m, element, per_token ? 2 : 1);
    const int64_t window = dims.m * padded(std::min(cols_per_chunk, dims.n));
    const int64_t staging = per_token ? std::max(workspace.elements_left(element, 0) - window, per_token) : 0;
    const Tensor buffer = at::empty(
        {std::max(need_dx ? window + staging : 0, need_dW ? rows_per_chunk * dW_width : 0)}, options);

    if (need_dx) {
      const Tensor staging_tiles = buffer.narrow(0, window, staging);
      for (int64_t col = 0; col < dims.n; col += cols_per_chunk) {
        const int64_t count = std::min(cols_per_chunk, dims.n - col);
        Tensor w = block_view(buffer, dims.m, count);
        materialize_block(a_aligned, b_factor, support, scale, 0, col, w);
        gemm_through_staging(g_aligned, w, dx.narrow(1, col, count), std::nullopt, staging_tiles);
      }
    }
    if (need_dW) {
      if (need_dvalues) dvalues = at::empty({dims.nnz}, options);
      if (need_dB && factors_from_dW) dB = at::empty({dims.m, dims.r}, options);
      Tensor dA_sum;  // dA's running sum
      if (need_dA && factors_from_dW)
        dA_sum = at::empty({dims.r, dims.n}, widen_dA ? options.dtype(at::kFloat) : options);
      for (int64_t row = 0; row < dims.m; row += rows_per_chunk) {
        const int64_t count = std::min(rows_per_chunk, dims.m - row);
        Tensor dW = block_view(buffer, count, dims.n);
        Tensor g_rows = g_aligned.narrow(1, row, count);
        if (stage_g_columns)
          g_rows = block_view(buffer.narrow(0, rows_per_chunk * padded(dims.n), batch * rows_per_chunk), batch, count)
                       .copy_(g_rows);
        at::mm_out(dW, g_rows.t(), x_aligned);
        if (need_dvalues) {
          SLTRAIN_DISPATCH_FLOATS(options.dtype().toScalarType(), "sl_gather", [&] {
            C10_CUDA_CHECK(cuda::csr_gather_rows(row, count, dims.n, dims.nnz, rows.data_ptr<int32_t>(),
                                                 cols.data_ptr<int32_t>(), ptr<scalar_t>(dW), dW.stride(0),
                                                 ptr<scalar_t>(dvalues), stream()));
          });
        }
        if (need_dB && factors_from_dW) {
          Tensor dB_chunk = dB.narrow(0, row, count);
          at::addmm_out(dB_chunk, dB_chunk, dW, a.t(), 0.0, scale);
        }
        if (dA_sum.defined()) {
          const double first = row == 0 ? 0.0 : 1.0;  // the first chunk writes, later ones add
          const Tensor b_rows = b_factor.narrow(0, row, count).t();
          if (widen_dA)
            at::addmm_out(dA_sum, dA_sum, b_rows, dW, at::kFloat, first, scale);
          else
            at::addmm_out(dA_sum, dA_sum, b_rows, dW, first, scale);
        }
      }
      if (dA_sum.defined()) dA = widen_dA ? dA_sum.to(options.dtype()) : dA_sum;
    }
  }

  const auto finish = [&](const Tensor& t, bool needed, const Tensor& like) {
    return needed ? t.view(like.sizes()) : at::empty({0}, like.options());
  };
  return {finish(dx, need_dx, x), finish(dA, need_dA, A), finish(dB, need_dB, B),
          finish(dvalues, need_dvalues, values)};
}

Tensor densify_cuda(const Tensor& A, const Tensor& B, const Tensor& values, const Tensor& row_ptr,
                    const Tensor& col_idx, double scale) {
  const NoAutocast no_autocast;
  const FactorDims dims = check_factors("densify", A, B, values, row_ptr, col_idx, scale).concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  Tensor w = at::zeros({dims.m, dims.n}, A.options());
  if (w.numel() == 0) return w;
  const Tensor vals = values.contiguous(), rows = row_ptr.contiguous(), cols = int32_columns(col_idx);
  materialize_block(A.contiguous(), B.contiguous(), Support{rows, cols, vals, dims.m, dims.n, dims.nnz},
                    scale, 0, 0, w);
  return w;
}

// ---- Adam -------------------------------------------------------------------------

// The device of a call's tensors, taken from params[0]: the shared checks then
// name any tensor on another device (CUDA, or CPU in the emulated build).
c10::Device device_of(at::TensorList params) {
  return params.empty() ? c10::Device(c10::kCUDA) : params[0].device();
}

// The tensors of one param dtype, launched together (the kernels are typed);
// grads made contiguous live here until their launches are queued.
template <int kLists>
struct AdamGroup {
  std::vector<std::array<void*, kLists>> tensors;
  std::vector<int64_t> sizes;
  std::vector<Tensor> keep_alive;

  template <class Step>
  void run(Step step_fn, const AdamHyper& hyper, const cuda::DeviceAdamScalars* device_scalars) const {
    if (tensors.empty()) return;
    C10_CUDA_CHECK(
        step_fn(int64_t(tensors.size()), tensors.data(), sizes.data(), hyper, stream(), device_scalars));
  }
};

// Capturable steps: with step_tensor, one kernel adds 1 to it and forms the
// step's scalars on the device (from lr_tensor if given) in a buffer that the
// Adam kernels read; nullptr otherwise. The buffer lives in `keep_alive`
// until the launches are queued (the caching allocator orders its reuse).
const cuda::DeviceAdamScalars* advance_on_device(const std::optional<Tensor>& step_tensor,
                                                 const std::optional<Tensor>& lr_tensor,
                                                 const AdamHyper& hyper, c10::Device device,
                                                 Tensor& keep_alive) {
  if (!step_tensor) return nullptr;
  keep_alive = at::empty({int64_t(sizeof(cuda::DeviceAdamScalars))},
                         at::TensorOptions().dtype(at::kByte).device(device));
  auto* scalars = reinterpret_cast<cuda::DeviceAdamScalars*>(keep_alive.data_ptr());
  C10_CUDA_CHECK(cuda::advance_adam_step(step_tensor->data_ptr<int64_t>(),
                                         lr_tensor ? lr_tensor->data_ptr() : nullptr,
                                         lr_tensor && lr_tensor->scalar_type() == at::kDouble, hyper,
                                         scalars, stream()));
  return scalars;
}

// params[i], grads[i] and states[s][i] for every i, grouped by param dtype.
template <int kLists>
std::map<at::ScalarType, AdamGroup<kLists>> group_by_dtype(
    at::TensorList params, at::TensorList grads, const std::array<at::TensorList, kLists - 2>& states) {
  std::map<at::ScalarType, AdamGroup<kLists>> groups;
  for (size_t i = 0; i < params.size(); ++i) {
    AdamGroup<kLists>& group = groups[params[i].scalar_type()];
    const Tensor grad = grads[i].contiguous();
    group.keep_alive.push_back(grad);
    std::array<void*, kLists> pointers{params[i].data_ptr(), grad.data_ptr()};
    for (int s = 0; s < kLists - 2; ++s) pointers[s + 2] = states[s][i].data_ptr();
    group.tensors.push_back(pointers);
    group.sizes.push_back(params[i].numel());
  }
  return groups;
}

void fused_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, bool decoupled,
                     const std::optional<Tensor>& step_tensor, const std::optional<Tensor>& lr_tensor) {
  constexpr const char* op = "fused_adam_";
  const c10::Device device = device_of(params);
  check_fused_adam(op, params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps, weight_decay,
                   step, device);
  check_adam_device_scalars(op, step_tensor, lr_tensor, device);
  const c10::cuda::CUDAGuard guard(device);
  const AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, step, decoupled};
  auto groups = group_by_dtype<4>(params, grads, {exp_avgs, exp_avg_sqs});
  Tensor scalars_buffer;
  const auto* device_scalars = advance_on_device(step_tensor, lr_tensor, hyper, device, scalars_buffer);
  groups[at::kFloat].run(cuda::adam_step<float, float>, hyper, device_scalars);
  groups[at::kDouble].run(cuda::adam_step<double, double>, hyper, device_scalars);
  groups[at::kBFloat16].run(cuda::adam_step<__nv_bfloat16, float>, hyper, device_scalars);
  groups[at::kHalf].run(cuda::adam_step<__half, float>, hyper, device_scalars);
}

// fused_adam8bit_ (Codec = cuda::Codes8) and fused_adam4bit_ (cuda::Codes4).
template <class Codec>
void fused_adam_quantised_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                               at::TensorList exp_avg_absmaxes, at::TensorList sqrt_exp_avg_sqs,
                               at::TensorList sqrt_exp_avg_sq_absmaxes, double lr, double beta1,
                               double beta2, double eps, double weight_decay, int64_t step,
                               bool decoupled, const std::optional<Tensor>& step_tensor,
                               const std::optional<Tensor>& lr_tensor) {
  constexpr bool four_bit = std::is_same_v<Codec, cuda::Codes4>;
  constexpr const char* op = four_bit ? "fused_adam4bit_" : "fused_adam8bit_";
  const c10::Device device = device_of(params);
  check_fused_adam8bit(op, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs,
                       sqrt_exp_avg_sq_absmaxes, lr, beta1, beta2, eps, weight_decay, step, device,
                       four_bit ? 4 : 8);
  check_adam_device_scalars(op, step_tensor, lr_tensor, device);
  const c10::cuda::CUDAGuard guard(device);
  const AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, step, decoupled};
  auto groups = group_by_dtype<6>(
      params, grads, {exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs, sqrt_exp_avg_sq_absmaxes});
  Tensor scalars_buffer;
  const auto* device_scalars = advance_on_device(step_tensor, lr_tensor, hyper, device, scalars_buffer);
  groups[at::kFloat].run(cuda::quantised_adam_step<float, Codec>, hyper, device_scalars);
  groups[at::kBFloat16].run(cuda::quantised_adam_step<__nv_bfloat16, Codec>, hyper, device_scalars);
  groups[at::kHalf].run(cuda::quantised_adam_step<__half, Codec>, hyper, device_scalars);
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(SLTRAIN_CUDA_LIBRARY, SLTRAIN_CUDA_DISPATCH_KEY, m) {
  m.impl("sl_matmul", &sltrain::sl_matmul_cuda);
  m.impl("sl_matmul_inference", &sltrain::sl_matmul_inference_cuda);
  m.impl("sl_matmul_backward", &sltrain::sl_matmul_backward_cuda);
  m.impl("densify", &sltrain::densify_cuda);
  m.impl("fused_adam_", &sltrain::fused_adam_cuda);
  m.impl("fused_adam8bit_", &sltrain::fused_adam_quantised_cuda<sltrain::cuda::Codes8>);
  m.impl("fused_adam4bit_", &sltrain::fused_adam_quantised_cuda<sltrain::cuda::Codes4>);
}
