// CPU kernels of the sltrain ops: ATen glue around csrc/cpu/torch_free_kernels.
// Dense sub-products go to at::mm (oneDNN/MKL); the sparse parts, the support
// sampler and Adam are our own loops. Half-precision inputs are computed in
// float32 and rounded once at the end, so every reduction accumulates in fp32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../checks.h"
#include "../common/csc_layout.h"
#include "../config.h"
#include "../no_autocast.h"
#include "torch_free_kernels/kernels.h"

namespace sltrain {
namespace {

using at::Tensor;

at::ScalarType compute_dtype(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Tensor to_compute(const Tensor& t) { return t.to(compute_dtype(t)).contiguous(); }

// t [..., features] as a [tokens, features] matrix in the compute dtype.
Tensor flatten_tokens(const Tensor& t, int64_t features) {
  const int64_t tokens = c10::multiply_integers(t.sizes().slice(0, t.dim() - 1));
  return to_compute(t.reshape({tokens, features}));
}

// The CSR operands of one call, checked and ready for the kernels.
struct Csr {
  Tensor row_ptr, col_idx, values;  // values in the compute dtype
  int64_t m, n, nnz;

  const int32_t* rows() const { return row_ptr.data_ptr<int32_t>(); }
  const int32_t* cols() const { return col_idx.data_ptr<int32_t>(); }
};

// row_ptr, contiguous, after an O(m) check that it starts at 0, never
// decreases and ends at nnz; column bounds are checked by the kernels.
Tensor checked_row_ptr(const char* op, const Tensor& row_ptr, int64_t m, int64_t nnz) {
  Tensor rows = row_ptr.contiguous();
  const int32_t* rp = rows.data_ptr<int32_t>();
  const auto check = cpu::check_row_ptr(m, nnz, rp);
  switch (check.kind) {
    case cpu::RowPtrCheck::kNonzeroStart:
      TORCH_CHECK_VALUE(false, op, ": `row_ptr` must start at 0, got ", rp[0]);
    case cpu::RowPtrCheck::kDecreasing:
      TORCH_CHECK_VALUE(false, op, ": `row_ptr` must be non-decreasing, but row_ptr[", check.row + 1,
                        "] = ", rp[check.row + 1], " < row_ptr[", check.row, "] = ", rp[check.row]);
    case cpu::RowPtrCheck::kWrongEnd:
      TORCH_CHECK_VALUE(false, op, ": `row_ptr` must end at nnz = ", nnz, ", got ", rp[m]);
    case cpu::RowPtrCheck::kValid:
      break;
  }
  return rows;
}

Csr make_csr(const char* op, const Tensor& row_ptr, const Tensor& col_idx, const Tensor& values,
             const FactorDims& dims) {
  return Csr{checked_row_ptr(op, row_ptr, dims.m, dims.nnz), int32_columns(col_idx),
             to_compute(values), dims.m, dims.n, dims.nnz};
}

void check_columns(const char* op, bool in_range, const Csr& csr) {
  TORCH_CHECK_VALUE(in_range, op, ": `col_idx` has entries outside [0, n) with n = ", csr.n);
}

bool use_factored_path(int64_t b, const FactorDims& dims) {
  return resolve_matmul_path(b, dims.m, dims.n, dims.r, dims.nnz, kCpuPathCosts) ==
         MatmulPath::kFactored;
}

// scale * (left @ right) + sparse_part, scaled after the product: addmm with
// alpha = scale scales an operand first, which overflows for a scale near the
// dtype's maximum (and gives inf * 0 = NaN for B = 0, as at init) where the
// exact result is finite.
Tensor scaled_low_rank_plus(const Tensor& left, const Tensor& right, double scale,
                            const Tensor& sparse_part) {
  return at::mm(left, right).mul_(scale).add_(sparse_part);
}

// Rows of W per chunk of the materialised path, so that `copies` m x n-row
// buffers of the compute dtype fit the workspace.
int64_t rows_per_chunk(const FactorDims& dims, int64_t copies, const Tensor& like) {
  const int64_t row_bytes = std::max<int64_t>(1, dims.n * like.element_size() * copies);
  return std::clamp<int64_t>(matmul_workspace_bytes() / row_bytes, 1, std::max<int64_t>(dims.m, 1));
}

// Rows [row_begin, row_end) of W = scale * B @ A + S.
Tensor materialize_rows(const char* op, const Tensor& A, const Tensor& B, const Csr& csr,
                        double scale, int64_t row_begin, int64_t row_end) {
  Tensor w = at::mm(B.narrow(0, row_begin, row_end - row_begin), A).mul_(scale);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "materialize_rows", [&] {
    check_columns(op,
                  cpu::csr_scatter_add_rows(row_begin, row_end, csr.n, csr.rows(), csr.cols(),
                                            csr.values.data_ptr<scalar_t>(),
                                            w.data_ptr<scalar_t>(), w.stride(0)),
                  csr);
  });
  return w;
}

Tensor sl_matmul_cpu(const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
                     const Tensor& row_ptr, const Tensor& col_idx, double scale,
                     const std::optional<Tensor>& bias) {
  const NoAutocast no_autocast;
  constexpr const char* op = "sl_matmul";
  const FactorDims dims = check_sl_matmul(x, A, B, values, row_ptr, col_idx, scale, bias).concrete();
  const Csr csr = make_csr(op, row_ptr, col_idx, values, dims);

  const Tensor x2 = flatten_tokens(x, dims.n);
  const Tensor a = to_compute(A), b_factor = to_compute(B);
  const int64_t batch = x2.size(0);
  Tensor y;
  if (batch == 0) {
    // Zero tokens: nothing to compute and no index to read, on either path.
    y = at::empty({0, dims.m}, x2.options());
  } else if (use_factored_path(batch, dims)) {
    const Tensor x_t = x2.t().contiguous();
    Tensor y_t = at::empty({dims.m, batch}, x2.options());
    AT_DISPATCH_FLOATING_TYPES(x2.scalar_type(), "sl_matmul_cpu", [&] {
      check_columns(op,
                    cpu::csr_spmm(dims.m, dims.n, batch, csr.rows(), csr.cols(),
                                  csr.values.data_ptr<scalar_t>(), x_t.data_ptr<scalar_t>(),
                                  x_t.stride(0), y_t.data_ptr<scalar_t>(), y_t.stride(0)),
                    csr);
    });
    y = scaled_low_rank_plus(at::mm(x2, a.t()), b_factor.t(), scale, y_t.t());
  } else {
    y = at::empty({batch, dims.m}, x2.options());
    const int64_t chunk = rows_per_chunk(dims, 1, x2);
    for (int64_t row = 0; row < dims.m; row += chunk) {
      const int64_t row_end = std::min(dims.m, row + chunk);
      const Tensor w = materialize_rows(op, a, b_factor, csr, scale, row, row_end);
      Tensor y_chunk = y.narrow(1, row, row_end - row);
      at::mm_out(y_chunk, x2, w.t());
    }
  }
  if (bias.has_value()) y.add_(*bias);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = dims.m;
  return y.to(x.scalar_type()).view(out_sizes);
}

// The torch-free kernels' spelling of an ATen element type.
template <class T> struct Storage { using type = T; };
template <> struct Storage<at::BFloat16> { using type = bf16; };
template <> struct Storage<at::Half> { using type = fp16; };

// sl_matmul's forward for inference: the same result (to rounding), one op
// call. Up to kMaxDecodeTokens tokens on the factored path go through one pass
// over B and S's entries (sl_decode_rows) instead of GEMV, scale, GEMV and
// SpMV, reading col_idx as stored (16- or 32-bit) and 16-bit operands as
// stored (never widened copies of A, B, values or columns per call); other
// calls take sl_matmul's own path.
Tensor sl_matmul_inference_cpu(const Tensor& x, const Tensor& A, const Tensor& B,
                               const Tensor& values, const Tensor& row_ptr, const Tensor& col_idx,
                               double scale, const std::optional<Tensor>& bias) {
  const NoAutocast no_autocast;
  constexpr const char* op = "sl_matmul_inference";
  const FactorDims dims =
      check_sl_matmul_inference(x, A, B, values, row_ptr, col_idx, scale, bias).concrete();
  const int64_t batch = x.numel() / std::max<int64_t>(dims.n, 1);
  if (batch == 0 || dims.n == 0 || batch > cpu::kMaxDecodeTokens || !use_factored_path(batch, dims)) {
    return sl_matmul_cpu(x, A, B, values, row_ptr, col_idx, scale, bias);
  }
  const Csr csr{checked_row_ptr(op, row_ptr, dims.m, dims.nnz), col_idx.contiguous(), values.contiguous(),
                dims.m, dims.n, dims.nnz};
  const Tensor x2 = x.reshape({batch, dims.n});
  // x A^T read in the storage dtype (b x r, then widened: a few KiB).
  const Tensor t = at::mm(x2, A.t()).to(compute_dtype(x2)).contiguous();
  const Tensor b_factor = B.contiguous();
  const Tensor x_t = x2.t().contiguous();
  const Tensor bias_c = bias.has_value() ? bias->contiguous() : Tensor();
  Tensor y = at::empty({batch, dims.m}, x2.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2.scalar_type(), "sl_matmul_inference_cpu", [&] {
    using T = typename Storage<scalar_t>::type;
    using Acc = cpu::DecodeAcc<T>;
    const auto data = [](const Tensor& tensor) { return reinterpret_cast<const T*>(tensor.const_data_ptr()); };
    const auto run = [&](const auto* columns) {
      return cpu::sl_decode_rows<T>(dims.m, dims.n, dims.r, batch, Acc(scale), data(b_factor),
                                    t.const_data_ptr<Acc>(), csr.rows(), columns, data(csr.values), data(x_t),
                                    bias_c.defined() ? data(bias_c) : nullptr,
                                    reinterpret_cast<T*>(y.data_ptr()));
    };
    check_columns(op,
                  csr.col_idx.scalar_type() == at::kUInt16
                      ? run(static_cast<const uint16_t*>(csr.col_idx.const_data_ptr()))
                      : run(csr.cols()),
                  csr);
  });
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = dims.m;
  return y.view(out_sizes);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sl_matmul_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
    const Tensor& row_ptr, const Tensor& col_idx, double scale, std::array<bool, 4> output_mask) {
  const NoAutocast no_autocast;
  constexpr const char* op = "sl_matmul_backward";
  const FactorDims dims =
      check_sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, scale).concrete();
  const Csr csr = make_csr(op, row_ptr, col_idx, values, dims);
  const auto [need_dx, need_dA, need_dB, need_dvalues] = output_mask;

  const Tensor g2 = flatten_tokens(grad_y, dims.m);
  const Tensor x2 = flatten_tokens(x, dims.n);
  const Tensor a = to_compute(A), b_factor = to_compute(B);
  const int64_t batch = x2.size(0);
  const auto options = x2.options();
  Tensor dx, dA, dB, dvalues;

  if (batch == 0) {
    // Zero tokens: every gradient is zero (dx has no rows), and no index is read.
    if (need_dx) dx = at::empty({0, dims.n}, options);
    if (need_dA) dA = at::zeros({dims.r, dims.n}, options);
    if (need_dB) dB = at::zeros({dims.m, dims.r}, options);
    if (need_dvalues) dvalues = at::zeros({dims.nnz}, options);
  } else if (use_factored_path(batch, dims)) {
    const Tensor gB = (need_dx || need_dA) ? at::mm(g2, b_factor) : Tensor();
    const Tensor g_t = (need_dx || need_dvalues) ? g2.t().contiguous() : Tensor();
    if (need_dx) {
      Tensor dx_t = at::empty({dims.n, batch}, options);
      AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "sl_matmul_backward_dx", [&] {
        check_columns(op,
                      cpu::csr_spmm_transposed(dims.m, dims.n, batch, csr.rows(), csr.cols(),
                                               csr.values.data_ptr<scalar_t>(),
                                               g_t.data_ptr<scalar_t>(), g_t.stride(0),
                                               dx_t.data_ptr<scalar_t>(), dx_t.stride(0)),
                      csr);
      });
      dx = scaled_low_rank_plus(gB, a, scale, dx_t.t());
    }
    if (need_dA) dA = at::mm(gB.t(), x2).mul_(scale);
    if (need_dB) dB = at::mm(g2.t(), at::mm(x2, a.t())).mul_(scale);
    if (need_dvalues) {
      const Tensor x_t = x2.t().contiguous();
      dvalues = at::empty({dims.nnz}, options);
      AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "sl_matmul_backward_dvalues", [&] {
        check_columns(op,
                      cpu::csr_sddmm(dims.m, dims.n, batch, csr.rows(), csr.cols(),
                                     g_t.data_ptr<scalar_t>(), g_t.stride(0),
                                     x_t.data_ptr<scalar_t>(), x_t.stride(0),
                                     dvalues.data_ptr<scalar_t>()),
                      csr);
      });
    }
  } else {
    // Row chunks of W and dW = g^T x: neither is ever held whole.
    if (need_dB) dB = at::empty({dims.m, dims.r}, options);
    if (need_dvalues) dvalues = at::empty({dims.nnz}, options);
    const bool need_dW = need_dA || need_dB || need_dvalues;
    const int64_t chunk = rows_per_chunk(dims, 2, x2);
    for (int64_t row = 0; row < dims.m && (need_dx || need_dW); row += chunk) {
      const int64_t row_end = std::min(dims.m, row + chunk);
      const int64_t rows = row_end - row;
      const Tensor g_chunk = g2.narrow(1, row, rows);
      // The first chunk writes dx and dA, later ones accumulate: no zero fill.
      const auto accumulate = [&](Tensor& sum, const Tensor& left, const Tensor& right) {
        sum = sum.defined() ? sum.addmm_(left, right) : at::mm(left, right);
      };
      if (need_dx) accumulate(dx, g_chunk, materialize_rows(op, a, b_factor, csr, scale, row, row_end));
      if (!need_dW) continue;
      const Tensor dW = at::mm(g_chunk.t(), x2);
      if (need_dB) {
        Tensor dB_chunk = dB.narrow(0, row, rows);
        at::mm_out(dB_chunk, dW, a.t());
      }
      if (need_dA) accumulate(dA, b_factor.narrow(0, row, rows).t(), dW);
      if (need_dvalues) {
        AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "sl_matmul_backward_gather", [&] {
          check_columns(op,
                        cpu::csr_gather_rows(row, row_end, dims.n, csr.rows(), csr.cols(),
                                             dW.data_ptr<scalar_t>(), dW.stride(0),
                                             dvalues.data_ptr<scalar_t>()),
                        csr);
        });
      }
    }
    if (need_dx && !dx.defined()) dx = at::zeros({batch, dims.n}, options);  // m == 0
    if (need_dA && !dA.defined()) dA = at::zeros({dims.r, dims.n}, options);
    if (need_dA) dA.mul_(scale);
    if (need_dB) dB.mul_(scale);
  }

  const auto finish = [&](const Tensor& t, bool needed, const Tensor& like) {
    return needed ? t.to(like.scalar_type()).view(like.sizes()) : at::empty({0}, like.options());
  };
  return {finish(dx, need_dx, x), finish(dA, need_dA, A), finish(dB, need_dB, B),
          finish(dvalues, need_dvalues, values)};
}

Tensor densify_cpu(const Tensor& A, const Tensor& B, const Tensor& values, const Tensor& row_ptr,
                   const Tensor& col_idx, double scale) {
  const NoAutocast no_autocast;
  constexpr const char* op = "densify";
  const FactorDims dims = check_factors(op, A, B, values, row_ptr, col_idx, scale).concrete();
  const Csr csr = make_csr(op, row_ptr, col_idx, values, dims);
  return materialize_rows(op, to_compute(A), to_compute(B), csr, scale, 0, dims.m)
      .to(A.scalar_type());
}

void random_support_fill_cpu(const Tensor& row_ptr, const Tensor& col_idx, int64_t n,
                             int64_t seed) {
  check_random_support_fill(row_ptr, col_idx, n);
  cpu::random_support(row_ptr.numel() - 1, n, col_idx.numel(), uint64_t(seed),
                      row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>());
}

// The O(nnz) checks of a support whose layout check_support has passed.
void check_support_values(const char* op, const Tensor& row_ptr, const Tensor& col_idx, int64_t m,
                          int64_t n) {
  const int64_t nnz = col_idx.size(0);
  const Tensor rows_tensor = checked_row_ptr(op, row_ptr, m, nnz);
  const Tensor cols_tensor = int32_columns(col_idx);
  const int32_t* rows = rows_tensor.data_ptr<int32_t>();
  const int32_t* cols = cols_tensor.data_ptr<int32_t>();
  const int64_t bad = cpu::first_bad_col_idx(m, n, rows, cols);
  if (bad < 0) return;
  const int64_t row = std::upper_bound(rows, rows + m + 1, int32_t(bad)) - rows - 1;
  TORCH_CHECK_VALUE(cols[bad] >= 0 && cols[bad] < n, op, ": `col_idx`[", bad, "] = ", cols[bad],
                    " (row ", row, ") is outside [0, n) with n = ", n);
  TORCH_CHECK_VALUE(false, op, ": `col_idx` must strictly increase within each row, but col_idx[",
                    bad, "] = ", cols[bad], " follows ", cols[bad - 1], " in row ", row);
}

void validate_support_cpu(const Tensor& row_ptr, const Tensor& col_idx, int64_t m, int64_t n) {
  constexpr const char* op = "validate_support";
  check_support(op, row_ptr, col_idx, m, n);
  check_support_values(op, row_ptr, col_idx, m, n);
}

Tensor transpose_support_cpu(const Tensor& row_ptr, const Tensor& col_idx, int64_t n) {
  const int64_t m = check_transpose_support(row_ptr, col_idx, n).expect_int();
  check_support_values("transpose_support", row_ptr, col_idx, m, n);
  const int64_t nnz = col_idx.size(0);
  const PackedCscLayout<int64_t> layout = packed_csc_layout(n, nnz);
  Tensor packed = at::zeros({layout.size}, row_ptr.options());  // zeros in the pads
  int32_t* col_ptr = packed.data_ptr<int32_t>();
  cpu::transpose_support(m, n, nnz, row_ptr.contiguous().data_ptr<int32_t>(),
                         int32_columns(col_idx).data_ptr<int32_t>(), col_ptr, col_ptr + layout.row_idx,
                         col_ptr + layout.entry);
  return packed;
}

template <class P, class S>
void adam_step_tensor(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                      const Tensor& exp_avg_sq, const AdamHyper& hyper) {
  cpu::adam_step<P, S>(param.numel(), reinterpret_cast<P*>(param.data_ptr()),
                       reinterpret_cast<const P*>(grad.data_ptr()), exp_avg.data_ptr<S>(),
                       exp_avg_sq.data_ptr<S>(), hyper);
}

// The step and learning rate of a call: read from step_tensor (plus the 1 the
// call adds) and lr_tensor where given, else the arguments.
std::pair<int64_t, double> adam_step_and_lr(const char* op, const std::optional<Tensor>& step_tensor,
                                            const std::optional<Tensor>& lr_tensor, int64_t step, double lr) {
  check_adam_device_scalars(op, step_tensor, lr_tensor, c10::Device(c10::kCPU));
  return {step_tensor ? step_tensor->item<int64_t>() + 1 : step, lr_tensor ? lr_tensor->item<double>() : lr};
}

void fused_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, double lr_arg, double beta1, double beta2, double eps,
                    double weight_decay, int64_t step_arg, bool decoupled,
                    const std::optional<Tensor>& step_tensor, const std::optional<Tensor>& lr_tensor) {
  const auto [step, lr] = adam_step_and_lr("fused_adam_", step_tensor, lr_tensor, step_arg, lr_arg);
  check_fused_adam("fused_adam_", params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps,
                   weight_decay, step, c10::Device(c10::kCPU));
  if (step_tensor) step_tensor->fill_(step);  // only once every argument is valid
  const AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, step, decoupled};
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor &param = params[i], &m = exp_avgs[i], &v = exp_avg_sqs[i];
    const Tensor g = grads[i].contiguous();
    switch (param.scalar_type()) {
      case at::kFloat: adam_step_tensor<float, float>(param, g, m, v, hyper); break;
      case at::kDouble: adam_step_tensor<double, double>(param, g, m, v, hyper); break;
      case at::kBFloat16: adam_step_tensor<bf16, float>(param, g, m, v, hyper); break;
      default: adam_step_tensor<fp16, float>(param, g, m, v, hyper); break;
    }
  }
}

// Every absmax of an 8-bit state must be finite and >= 0: a NaN or negative
// one (a damaged or hand-edited state_dict) would decode to non-finite or
// sign-flipped moments and corrupt the parameters without a word. One pass
// over numel / 256 floats per state, before anything is written, so a refused
// call changes nothing. (The CUDA binding does not copy them to the host on
// every step; SLAdamW.load_state_dict checks states that come from outside.)
void check_absmaxes(const char* op, const char* name, at::TensorList absmaxes) {
  for (size_t i = 0; i < absmaxes.size(); ++i) {
    const float* data = absmaxes[i].data_ptr<float>();
    const int64_t blocks = absmaxes[i].numel();
    const float* bad =
        std::find_if(data, data + blocks, [](float a) { return !(a >= 0.0f && std::isfinite(a)); });
    TORCH_CHECK_VALUE(bad == data + blocks, op, ": `", name, "`[", i, "][", bad - data,
                      "] = ", *bad, "; every absmax of a quantised state must be finite and >= 0 "
                      "(a damaged optimizer state?)");
  }
}

// fused_adam8bit_ (kBits = 8) and fused_adam4bit_ (kBits = 4): the same
// arguments, checks and dispatch; only the codes' layout and kernel differ.
template <int kBits>
void fused_adam_quantised_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                              at::TensorList exp_avg_absmaxes, at::TensorList sqrt_exp_avg_sqs,
                              at::TensorList sqrt_exp_avg_sq_absmaxes, double lr_arg, double beta1,
                              double beta2, double eps, double weight_decay, int64_t step_arg,
                              bool decoupled, const std::optional<Tensor>& step_tensor,
                              const std::optional<Tensor>& lr_tensor) {
  constexpr const char* op = kBits == 4 ? "fused_adam4bit_" : "fused_adam8bit_";
  const auto [step, lr] = adam_step_and_lr(op, step_tensor, lr_tensor, step_arg, lr_arg);
  check_fused_adam8bit(op, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs,
                       sqrt_exp_avg_sq_absmaxes, lr, beta1, beta2, eps, weight_decay, step,
                       c10::Device(c10::kCPU), kBits);
  check_absmaxes(op, "exp_avg_absmaxes", exp_avg_absmaxes);
  check_absmaxes(op, "sqrt_exp_avg_sq_absmaxes", sqrt_exp_avg_sq_absmaxes);
  if (step_tensor) step_tensor->fill_(step);  // only once every argument is valid
  const AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, step, decoupled};
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& param = params[i];
    const Tensor g = grads[i].contiguous();
    const auto step_as = [&](auto* param_type) {
      using P = std::remove_pointer_t<decltype(param_type)>;
      P* param_data = reinterpret_cast<P*>(param.data_ptr());
      const P* grad_data = reinterpret_cast<const P*>(g.data_ptr());
      float* m_absmax = exp_avg_absmaxes[i].data_ptr<float>();
      float* sqrt_v_absmax = sqrt_exp_avg_sq_absmaxes[i].data_ptr<float>();
      uint8_t* sqrt_v_codes = sqrt_exp_avg_sqs[i].data_ptr<uint8_t>();
      if constexpr (kBits == 4) {
        cpu::adam4bit_step<P>(param.numel(), param_data, grad_data, exp_avgs[i].data_ptr<uint8_t>(), m_absmax,
                              sqrt_v_codes, sqrt_v_absmax, hyper);
      } else {
        cpu::adam8bit_step<P>(param.numel(), param_data, grad_data, exp_avgs[i].data_ptr<int8_t>(), m_absmax,
                              sqrt_v_codes, sqrt_v_absmax, hyper);
      }
    };
    switch (param.scalar_type()) {
      case at::kFloat: step_as(static_cast<float*>(nullptr)); break;
      case at::kBFloat16: step_as(static_cast<bf16*>(nullptr)); break;
      default: step_as(static_cast<fp16*>(nullptr)); break;
    }
  }
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, CPU, m) {
  m.impl("sl_matmul", &sltrain::sl_matmul_cpu);
  m.impl("sl_matmul_backward", &sltrain::sl_matmul_backward_cpu);
  m.impl("sl_matmul_inference", &sltrain::sl_matmul_inference_cpu);
  m.impl("densify", &sltrain::densify_cpu);
  m.impl("fused_adam_", &sltrain::fused_adam_cpu);
  m.impl("fused_adam8bit_", &sltrain::fused_adam_quantised_cpu<8>);
  m.impl("fused_adam4bit_", &sltrain::fused_adam_quantised_cpu<4>);
  m.impl("_random_support_fill", &sltrain::random_support_fill_cpu);
  m.impl("validate_support", &sltrain::validate_support_cpu);
  m.impl("transpose_support", &sltrain::transpose_support_cpu);
}
