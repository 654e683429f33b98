// Argument checks shared by every backend of every op: the cheap, always-on
// half of the validation DESIGN.md asks for. Each failure names the argument.
#pragma once

#include <ATen/core/Tensor.h>

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

}  // namespace sltrain
