// Argument checks shared by every backend of every op: the cheap, always-on
// half of the validation DESIGN.md asks for. Each failure names the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace sltrain {

// Sizes of W = scale * B @ A + S with S in CSR form.
struct FactorDims {
  int64_t m, n, r, nnz;
};

// A [r, n], B [m, r], values [nnz], row_ptr int32 [m + 1], col_idx int32 [nnz],
// floating tensors of one supported dtype, all on one device.
FactorDims check_factors(const char* op, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& values, const at::Tensor& row_ptr,
                         const at::Tensor& col_idx, double scale);

// x [..., n] of the factors' dtype and device; bias [m] if given.
void check_input(const char* op, const char* name, const at::Tensor& x, int64_t features,
                 const at::Tensor& like, const char* features_name);
void check_bias(const char* op, const std::optional<at::Tensor>& bias, const FactorDims& dims,
                const at::Tensor& like);

// grad_y [..., m] with x's leading dimensions, like's dtype and device.
void check_grad_output(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                       const FactorDims& dims, const at::Tensor& like);

// The optional CSC copy of the support (transpose_support's packed int32
// [n + 1 + 2 * nnz]) on like's device.
void check_transposed_support(const char* op, const std::optional<at::Tensor>& transposed,
                              const FactorDims& dims, const at::Tensor& like);

// Every list and hyper-parameter of fused_adam_ / fused_adam8bit_: equal list
// lengths, params contiguous on `device` with grads of their dtype and shape,
// states of the right dtype and size (float32, float64 for float64 params;
// 8-bit: int8 / uint8 codes and float32 absmaxes per kQuantBlock).
void check_fused_adam(const char* op, at::TensorList params, at::TensorList grads,
                      at::TensorList exp_avgs, at::TensorList exp_avg_sqs, double lr, double beta1,
                      double beta2, double eps, double weight_decay, int64_t step,
                      c10::Device device);
void check_fused_adam8bit(const char* op, at::TensorList params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_absmaxes,
                          at::TensorList sqrt_exp_avg_sqs, at::TensorList sqrt_exp_avg_sq_absmaxes,
                          double lr, double beta1, double beta2, double eps, double weight_decay,
                          int64_t step, c10::Device device);

// Adam hyper-parameters: lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0, step >= 1.
void check_adam_hyper(const char* op, double lr, double beta1, double beta2, double eps,
                      double weight_decay, int64_t step);

// params[i] contiguous, of a supported dtype and on `device`; grads[i] its dtype, shape, device.
void check_adam_param(const char* op, size_t i, const at::Tensor& param, const at::Tensor& grad,
                      c10::Device device);

// A contiguous state tensor `name`[i] of `dtype` with `numel` entries on param's device.
void check_adam_state(const char* op, const char* name, size_t i, const at::Tensor& state,
                      at::ScalarType dtype, int64_t numel, const at::Tensor& param);

}  // namespace sltrain
