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

// count > m * n, for non-negative sizes, without overflowing int64.
bool exceeds_product(int64_t count, int64_t m, int64_t n);

// A [r, n], B [m, r], values [nnz], row_ptr int32 [m + 1], col_idx int32 [nnz],
// floating tensors of one supported dtype, all on one device.
FactorDims check_factors(const char* op, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& values, const at::Tensor& row_ptr,
                         const at::Tensor& col_idx, double scale);

// Every argument of sl_matmul: the factors, x [..., n] of their dtype and
// device, bias [m] if given, and the optional CSC copy of the support
// (transpose_support's packed int32 [n + 1 + 2 * nnz]).
FactorDims check_sl_matmul(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                           const at::Tensor& values, const at::Tensor& row_ptr,
                           const at::Tensor& col_idx, double scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& transposed_support);

// Every argument of sl_matmul_backward: sl_matmul's (without bias), and
// grad_y [..., m] with x's leading dimensions.
FactorDims check_sl_matmul_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                    const at::Tensor& A, const at::Tensor& B,
                                    const at::Tensor& values, const at::Tensor& row_ptr,
                                    const at::Tensor& col_idx, double scale,
                                    const std::optional<at::Tensor>& transposed_support);

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

}  // namespace sltrain
