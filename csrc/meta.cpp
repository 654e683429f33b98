// The fake (meta) kernels of the sltrain ops. torch.compile's FakeTensorMode
// runs them on its fake tensors (which report the meta device inside a
// kernel, with symbolic sizes under dynamic shapes), and the dispatcher sends
// them any call with a tensor on `meta`. They run the argument checks of the
// CPU and CUDA kernels (csrc/checks.h), so a trace raises what the real call
// would, and a meta tensor among real ones fails the device check, naming
// the argument, instead of yielding an output of garbage. Then they allocate
// outputs of the right shape; no value is read, so the O(nnz) support checks
// are left to the real kernels.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "checks.h"
#include "common/csc_layout.h"

namespace sltrain {
namespace {

using at::Tensor;

Tensor sl_matmul_meta(const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
                      const Tensor& row_ptr, const Tensor& col_idx, double scale,
                      const std::optional<Tensor>& bias) {
  const SymFactorDims dims = check_sl_matmul(x, A, B, values, row_ptr, col_idx, scale, bias);
  std::vector<c10::SymInt> sizes(x.sym_sizes().begin(), x.sym_sizes().end());
  sizes.back() = dims.m;
  return at::empty_symint(sizes, x.options());
}

Tensor sl_matmul_inference_meta(const Tensor& x, const Tensor& A, const Tensor& B,
                                const Tensor& values, const Tensor& row_ptr, const Tensor& col_idx,
                                double scale, const std::optional<Tensor>& bias) {
  const SymFactorDims dims = check_sl_matmul_inference(x, A, B, values, row_ptr, col_idx, scale, bias);
  std::vector<c10::SymInt> sizes(x.sym_sizes().begin(), x.sym_sizes().end());
  sizes.back() = dims.m;
  return at::empty_symint(sizes, x.options());
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sl_matmul_backward_meta(
    const Tensor& grad_y, const Tensor& x, const Tensor& A, const Tensor& B, const Tensor& values,
    const Tensor& row_ptr, const Tensor& col_idx, double scale, std::array<bool, 4> output_mask) {
  check_sl_matmul_backward(grad_y, x, A, B, values, row_ptr, col_idx, scale);
  const auto like = [](const Tensor& t, bool needed) {
    return needed ? at::empty_symint(t.sym_sizes(), t.options()) : at::empty({0}, t.options());
  };
  return {like(x, output_mask[0]), like(A, output_mask[1]), like(B, output_mask[2]),
          like(values, output_mask[3])};
}

Tensor densify_meta(const Tensor& A, const Tensor& B, const Tensor& values, const Tensor& row_ptr,
                    const Tensor& col_idx, double scale) {
  const SymFactorDims dims = check_factors("densify", A, B, values, row_ptr, col_idx, scale);
  return at::empty_symint({dims.m, dims.n}, A.options());
}

void random_support_fill_meta(const Tensor& row_ptr, const Tensor& col_idx, int64_t n, int64_t) {
  check_random_support_fill(row_ptr, col_idx, n);
}

// A trace (torch.compile's fake tensors: Meta is in the thread's dispatch
// set while the fake mode runs a kernel) gets the layout checks; the real call
// reads the values. A direct call on meta tensors is refused: they hold no
// values, so returning would claim a support valid that was never read.
void validate_support_meta(const Tensor& row_ptr, const Tensor& col_idx, int64_t m, int64_t n) {
  constexpr const char* op = "validate_support";
  check_support(op, row_ptr, col_idx, m, n);
  TORCH_CHECK_VALUE(c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Meta), op,
                    ": `row_ptr` and `col_idx` are on the meta device, which holds no values: "
                    "a support can only be validated where its indices are (copy it to the CPU)");
}

Tensor transpose_support_meta(const Tensor& row_ptr, const Tensor& col_idx, int64_t n) {
  check_transpose_support(row_ptr, col_idx, n);
  return at::empty_symint({packed_csc_layout(c10::SymInt(n), col_idx.sym_size(0)).size},
                          row_ptr.options());
}

// The device every tensor of an Adam call must share: the first param's.
c10::Device device_of(at::TensorList params) {
  return params.empty() ? c10::Device(c10::kMeta) : params[0].device();
}

void fused_adam_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, bool, const std::optional<Tensor>& step_tensor,
                     const std::optional<Tensor>& lr_tensor) {
  check_fused_adam("fused_adam_", params, grads, exp_avgs, exp_avg_sqs, lr, beta1, beta2, eps,
                   weight_decay, step, device_of(params));
  check_adam_device_scalars("fused_adam_", step_tensor, lr_tensor, device_of(params));
}

template <int kBits>
void fused_adam_quantised_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                               at::TensorList exp_avg_absmaxes, at::TensorList sqrt_exp_avg_sqs,
                               at::TensorList sqrt_exp_avg_sq_absmaxes, double lr, double beta1,
                               double beta2, double eps, double weight_decay, int64_t step, bool,
                               const std::optional<Tensor>& step_tensor, const std::optional<Tensor>& lr_tensor) {
  constexpr const char* op = kBits == 4 ? "fused_adam4bit_" : "fused_adam8bit_";
  check_fused_adam8bit(op, params, grads, exp_avgs, exp_avg_absmaxes, sqrt_exp_avg_sqs, sqrt_exp_avg_sq_absmaxes,
                       lr, beta1, beta2, eps, weight_decay, step, device_of(params), kBits);
  check_adam_device_scalars(op, step_tensor, lr_tensor, device_of(params));
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, Meta, m) {
  m.impl("sl_matmul", &sltrain::sl_matmul_meta);
  m.impl("sl_matmul_backward", &sltrain::sl_matmul_backward_meta);
  m.impl("sl_matmul_inference", &sltrain::sl_matmul_inference_meta);
  m.impl("densify", &sltrain::densify_meta);
  m.impl("fused_adam_", &sltrain::fused_adam_meta);
  m.impl("fused_adam8bit_", &sltrain::fused_adam_quantised_meta<8>);
  m.impl("fused_adam4bit_", &sltrain::fused_adam_quantised_meta<4>);
  m.impl("_random_support_fill", &sltrain::random_support_fill_meta);
  m.impl("validate_support", &sltrain::validate_support_meta);
  m.impl("transpose_support", &sltrain::transpose_support_meta);
}
