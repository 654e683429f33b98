// CUDA kernels of sl_matmul, its backward, densify and the Adam ops: argument
// checks shared with the CPU (csrc/checks.h), memory from torch's caching
// allocator, dense products on cuBLAS through ATen, our kernels from the
// torch-free headers beside this file, everything on the current stream and
// without a host synchronisation (so CUDA graphs can capture it).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <vector>

#include "../checks.h"
#include "../config.h"
#include "../no_autocast.h"
#include "adam.cuh"
#include "csr.cuh"

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

// cuBLAS takes its fast kernels only when leading dimensions are multiples of
// 8 elements (16 bytes in bf16): LLaMA-1B's 5461 is 5-8x slower unpadded.
// Operands whose row length is not such a multiple get a zero-padded copy;
// the zero columns add nothing to any product.
int64_t padded(int64_t cols) { return (cols + 7) / 8 * 8; }

Tensor pad_columns(const Tensor& t) {
  if (t.size(1) % 8 == 0) return t;
  Tensor out = at::zeros({t.size(0), padded(t.size(1))}, t.options());
  out.narrow(1, 0, t.size(1)).copy_(t);
  return out;
}

Tensor unpad_columns(const Tensor& t, int64_t cols) {
  return t.size(1) == cols ? t : t.narrow(1, 0, cols).contiguous();
}

// Rows of W per chunk so that `copies` padded row chunks fit the workspace;
// a multiple of 8 so that every chunk of a padded output stays aligned.
int64_t rows_per_chunk(int64_t m, int64_t padded_n, int64_t copies, const Tensor& like) {
  const int64_t row_bytes = std::max<int64_t>(1, padded_n * like.element_size() * copies);
  const int64_t rows = std::max<int64_t>(8, matmul_workspace_bytes() / row_bytes / 8 * 8);
  return std::min(rows, std::max<int64_t>(m, 1));
}

struct Support {
  const Tensor &row_ptr, &col_idx, &values;
  int64_t m, n, nnz;
};

// w [rows, padded n] = scale * B[row_begin:row_begin + rows] @ a_padded + S[rows].
void materialize_rows(const Tensor& a_padded, const Tensor& B, const Support& s, double scale,
                      int64_t row_begin, Tensor& w) {
  const int64_t rows = w.size(0);
  at::addmm_out(w, w, B.narrow(0, row_begin, rows), a_padded, /*beta=*/0, /*alpha=*/scale);
  SLTRAIN_DISPATCH_FLOATS(w.scalar_type(), "materialize_rows", [&] {
    C10_CUDA_CHECK(cuda::csr_scatter_add_rows(row_begin, rows, s.n, s.nnz, s.row_ptr.data_ptr<int32_t>(),
                                              s.col_idx.data_ptr<int32_t>(), ptr<scalar_t>(s.values),
                                              ptr<scalar_t>(w), w.stride(0), stream()));
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

// t [..., features] as a contiguous [tokens, features] matrix.
Tensor flatten_tokens(const Tensor& t, int64_t features) {
  const int64_t tokens = c10::multiply_integers(t.sizes().slice(0, t.dim() - 1));
  return t.reshape({tokens, features}).contiguous();
}

Tensor sl_matmul_cuda(const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
                      const Tensor& row_ptr, const Tensor& col_idx, double scale,
                      const std::optional<Tensor>& bias,
                      const std::optional<Tensor>& transposed_support) {
  const NoAutocast no_autocast;
  const FactorDims dims =
      check_sl_matmul(x, A, B, values, row_ptr, col_idx, scale, bias, transposed_support).concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = dims.m;
  const Tensor x2 = flatten_tokens(x, dims.n);
  const int64_t batch = x2.size(0);
  if (batch == 0 || dims.m == 0) return x.new_empty(out_sizes);  // nothing to compute

  const Tensor a = A.contiguous(), b_factor = B.contiguous(), vals = values.contiguous();
  const Tensor rows = row_ptr.contiguous(), cols = col_idx.contiguous();
  Tensor y;
  if (use_factored_path(batch, dims)) {
    y = at::mm(at::mm(x2, a.t()).mul_(scale), b_factor.t());
    spmm(rows, cols, nullptr, vals, dims.m, dims.n, x2, y, bias, /*accumulate=*/true);
  } else {
    const Support support{rows, cols, vals, dims.m, dims.n, dims.nnz};
    const Tensor x_padded = pad_columns(x2), a_padded = pad_columns(a);
    Tensor y_padded = at::empty({batch, padded(dims.m)}, x2.options());
    const int64_t chunk = rows_per_chunk(dims.m, a_padded.size(1), 1, x2);
    Tensor workspace = at::empty({chunk, a_padded.size(1)}, x2.options());
    for (int64_t row = 0; row < dims.m; row += chunk) {
      const int64_t count = std::min(chunk, dims.m - row);
      Tensor w = workspace.narrow(0, 0, count);
      materialize_rows(a_padded, b_factor, support, scale, row, w);
      Tensor y_chunk = y_padded.narrow(1, row, count);
      at::mm_out(y_chunk, x_padded, w.t());
    }
    y = unpad_columns(y_padded, dims.m);
    if (bias.has_value()) y.add_(*bias);
  }
  return y.view(out_sizes);
}

Tensor transposed_or_build(const std::optional<Tensor>& transposed_support, const Tensor& row_ptr,
                           const Tensor& col_idx, int64_t n) {
  if (transposed_support.has_value()) return transposed_support->contiguous();
  static const auto transpose = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("sltrain::transpose_support", "")
                                    .typed<Tensor(const Tensor&, const Tensor&, int64_t)>();
  return transpose.call(row_ptr, col_idx, n);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sl_matmul_backward_cuda(
    const Tensor& grad_y, const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
    const Tensor& row_ptr, const Tensor& col_idx, double scale, std::array<bool, 4> output_mask,
    const std::optional<Tensor>& transposed_support) {
  const NoAutocast no_autocast;
  const FactorDims dims = check_sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx,
                                                   scale, transposed_support)
                              .concrete();
  const c10::cuda::CUDAGuard guard(A.device());
  const auto [need_dx, need_dA, need_dB, need_dvalues] = output_mask;

  const Tensor g2 = flatten_tokens(grad_y, dims.m);
  const Tensor x2 = flatten_tokens(x, dims.n);
  const Tensor a = A.contiguous(), b_factor = B.contiguous(), vals = values.contiguous();
  const Tensor rows = row_ptr.contiguous(), cols = col_idx.contiguous();
  const int64_t batch = x2.size(0);
  const auto options = x2.options();
  Tensor dx, dA, dB, dvalues;

  if (batch == 0 || dims.m == 0) {
    // No tokens or no outputs: every gradient is zero (and no kernel runs).
    if (need_dx) dx = at::zeros({batch, dims.n}, options);
    if (need_dA) dA = at::zeros({dims.r, dims.n}, options);
    if (need_dB) dB = at::zeros({dims.m, dims.r}, options);
    if (need_dvalues) dvalues = at::zeros({dims.nnz}, options);
  } else if (use_factored_path(batch, dims)) {
    const Tensor g_b = (need_dx || need_dA) ? at::mm(g2, b_factor).mul_(scale) : Tensor();
    if (need_dx) {
      dx = at::mm(g_b, a);
      const Tensor csc = transposed_or_build(transposed_support, rows, cols, dims.n);
      const Tensor col_ptr = csc.narrow(0, 0, dims.n + 1);
      const Tensor row_idx = csc.narrow(0, dims.n + 1, dims.nnz);
      const int32_t* entry = csc.data_ptr<int32_t>() + dims.n + 1 + dims.nnz;
      spmm(col_ptr, row_idx, entry, vals, dims.n, dims.m, g2, dx, std::nullopt, /*accumulate=*/true);
    }
    if (need_dA) dA = at::mm(g_b.t(), x2);
    if (need_dB) dB = at::mm(g2.t(), at::mm(x2, a.t()).mul_(scale));
    if (need_dvalues) {
      dvalues = at::empty({dims.nnz}, options);
      SLTRAIN_DISPATCH_FLOATS(options.dtype().toScalarType(), "sl_sddmm", [&] {
        C10_CUDA_CHECK(cuda::csr_sddmm(dims.m, dims.n, dims.nnz, batch, rows.data_ptr<int32_t>(),
                                       cols.data_ptr<int32_t>(), ptr<scalar_t>(g2), g2.stride(0),
                                       ptr<scalar_t>(x2), x2.stride(0), ptr<scalar_t>(dvalues), stream()));
      });
    }
  } else {
    // Row chunks of W and dW = g^T x, never either whole. dA and dB come from
    // the dW chunks or from the factored formulas, whichever is cheaper.
    const Support support{rows, cols, vals, dims.m, dims.n, dims.nnz};
    const bool factors_from_dW = factor_grads_from_dW(batch, dims.m, dims.n);
    if (!factors_from_dW) {
      if (need_dA) dA = at::mm(at::mm(g2, b_factor).t(), x2).mul_(scale);
      if (need_dB) dB = at::mm(g2.t(), at::mm(x2, a.t()).mul_(scale));
    }
    const bool need_dW = need_dvalues || (factors_from_dW && (need_dA || need_dB));
    const Tensor g_padded = pad_columns(g2), x_padded = pad_columns(x2), a_padded = pad_columns(a);
    const int64_t padded_n = a_padded.size(1);
    Tensor dx_padded = need_dx ? at::empty({batch, padded_n}, options) : Tensor();
    Tensor dA_padded = need_dA && factors_from_dW ? at::empty({dims.r, padded_n}, options) : Tensor();
    if (need_dB && factors_from_dW) dB = at::empty({dims.m, dims.r}, options);
    if (need_dvalues) dvalues = at::empty({dims.nnz}, options);
    const int64_t chunk = rows_per_chunk(dims.m, padded_n, 2, x2);
    Tensor w_workspace = need_dx ? at::empty({chunk, padded_n}, options) : Tensor();
    Tensor dW_workspace = need_dW ? at::empty({chunk, padded_n}, options) : Tensor();
    for (int64_t row = 0; row < dims.m && (need_dx || need_dW); row += chunk) {
      const int64_t count = std::min(chunk, dims.m - row);
      const double first = row == 0 ? 0.0 : 1.0;  // the first chunk writes, later ones add
      const Tensor g_chunk = g_padded.narrow(1, row, count);
      if (need_dx) {
        Tensor w = w_workspace.narrow(0, 0, count);
        materialize_rows(a_padded, b_factor, support, scale, row, w);
        at::addmm_out(dx_padded, dx_padded, g_chunk, w, first, 1.0);
      }
      if (!need_dW) continue;
      Tensor dW = dW_workspace.narrow(0, 0, count);
      at::mm_out(dW, g_chunk.t(), x_padded);
      if (need_dvalues) {
        SLTRAIN_DISPATCH_FLOATS(options.dtype().toScalarType(), "sl_gather", [&] {
          C10_CUDA_CHECK(cuda::csr_gather_rows(row, count, dims.n, dims.nnz, rows.data_ptr<int32_t>(),
                                               cols.data_ptr<int32_t>(), ptr<scalar_t>(dW), dW.stride(0),
                                               ptr<scalar_t>(dvalues), stream()));
        });
      }
      if (need_dB && factors_from_dW) {
        Tensor dB_chunk = dB.narrow(0, row, count);
        at::addmm_out(dB_chunk, dB_chunk, dW, a_padded.t(), 0.0, scale);
      }
      if (need_dA && factors_from_dW)
        at::addmm_out(dA_padded, dA_padded, b_factor.narrow(0, row, count).t(), dW, first, scale);
    }
    if (need_dx) dx = unpad_columns(dx_padded, dims.n);
    if (need_dA && factors_from_dW) dA = unpad_columns(dA_padded, dims.n);
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
  const Tensor vals = values.contiguous(), rows = row_ptr.contiguous(), cols = col_idx.contiguous();
  materialize_rows(A.contiguous(), B.contiguous(), Support{rows, cols, vals, dims.m, dims.n, dims.nnz},
                   scale, 0, w);
  return w;
}

// ---- Adam -------------------------------------------------------------------------

c10::Device cuda_device_of(const char* op, at::TensorList params) {
  TORCH_CHECK_VALUE(params.empty() || params[0].is_cuda(), op, ": `params`[0] is on ",
                    params[0].device(), " but another tensor of the call is on a CUDA device");
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
  const c10::Device device = cuda_device_of(op, params);
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

void fused_adam8bit_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_absmaxes, at::TensorList sqrt_exp_avg_sqs,
                         at::TensorList sqrt_exp_avg_sq_absmaxes, double lr, double beta1,
                         double beta2, double eps, double weight_decay, int64_t step,
                         bool decoupled, const std::optional<Tensor>& step_tensor,
                         const std::optional<Tensor>& lr_tensor) {
  constexpr const char* op = "fused_adam8bit_";
  const c10::Device device = cuda_device_of(op, params);
  check_fused_adam8bit(op, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs,
                       sqrt_exp_avg_sq_absmaxes, lr, beta1, beta2, eps, weight_decay, step, device);
  check_adam_device_scalars(op, step_tensor, lr_tensor, device);
  const c10::cuda::CUDAGuard guard(device);
  const AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, step, decoupled};
  auto groups = group_by_dtype<6>(
      params, grads, {exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs, sqrt_exp_avg_sq_absmaxes});
  Tensor scalars_buffer;
  const auto* device_scalars = advance_on_device(step_tensor, lr_tensor, hyper, device, scalars_buffer);
  groups[at::kFloat].run(cuda::adam8bit_step<float>, hyper, device_scalars);
  groups[at::kBFloat16].run(cuda::adam8bit_step<__nv_bfloat16>, hyper, device_scalars);
  groups[at::kHalf].run(cuda::adam8bit_step<__half>, hyper, device_scalars);
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, CUDA, m) {
  m.impl("sl_matmul", &sltrain::sl_matmul_cuda);
  m.impl("sl_matmul_backward", &sltrain::sl_matmul_backward_cuda);
  m.impl("densify", &sltrain::densify_cuda);
  m.impl("fused_adam_", &sltrain::fused_adam_cuda);
  m.impl("fused_adam8bit_", &sltrain::fused_adam8bit_cuda);
}
