#include "checks.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace sltrain {
namespace {

bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ",
                   t.scalar_type(), " but `", like_name, "` has ", like.scalar_type(),
                   "; the floating inputs of one call must share one dtype");
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": `", name, "` is on ", t.device(), " but `",
                    like_name, "` is on ", like.device());
}

void check_index(const char* op, const char* name, const at::Tensor& t, int64_t expected_numel,
                 const char* expected_what, const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, op, ": `", name, "` must be int32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == expected_numel, op, ": `", name,
                    "` must be 1-D with ", expected_what, " = ", expected_numel,
                    " entries, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": `", name, "` is on ", t.device(),
                    " but `values` is on ", like.device());
}

}  // namespace

FactorDims check_factors(const char* op, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& values, const at::Tensor& row_ptr,
                         const at::Tensor& col_idx, double scale) {
  TORCH_CHECK_TYPE(is_supported_float(A.scalar_type()), op,
                   ": `A` must be float32, float64, bfloat16 or float16, got ", A.scalar_type());
  TORCH_CHECK_VALUE(A.dim() == 2, op, ": `A` must be 2-D [r, n], got shape ", A.sizes());
  TORCH_CHECK_VALUE(B.dim() == 2 && B.size(1) == A.size(0), op,
                    ": `B` must be 2-D [m, r] with r = A.size(0) = ", A.size(0),
                    ", got shape ", B.sizes());
  TORCH_CHECK_VALUE(values.dim() == 1, op, ": `values` must be 1-D [nnz], got shape ",
                    values.sizes());
  check_same(op, "B", B, "A", A);
  check_same(op, "values", values, "A", A);
  const FactorDims dims{B.size(0), A.size(1), A.size(0), values.size(0)};
  check_index(op, "row_ptr", row_ptr, dims.m + 1, "m + 1", values);
  check_index(op, "col_idx", col_idx, dims.nnz, "nnz = values.numel()", values);
  TORCH_CHECK_VALUE(dims.nnz <= dims.m * dims.n, op, ": `values` has ", dims.nnz,
                    " entries, more than the m * n = ", dims.m * dims.n, " of W");
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": `scale` must be finite, got ", scale);
  return dims;
}

void check_input(const char* op, const char* name, const at::Tensor& x, int64_t features,
                 const at::Tensor& like, const char* features_name) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == features, op, ": `", name,
                    "` must have shape [..., ", features_name, "] with ", features_name, " = ",
                    features, ", got shape ", x.sizes());
  check_same(op, name, x, "A", like);
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, const FactorDims& dims,
                const at::Tensor& like) {
  if (!bias.has_value()) return;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == dims.m, op,
                    ": `bias` must be 1-D [m] with m = ", dims.m, ", got shape ", bias->sizes());
  check_same(op, "bias", *bias, "A", like);
}

void check_grad_output(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                       const FactorDims& dims, const at::Tensor& like) {
  check_input(op, "grad_y", grad_y, dims.m, like, "m");
  TORCH_CHECK_VALUE(grad_y.dim() == x.dim() && grad_y.sizes().slice(0, x.dim() - 1) ==
                                                   x.sizes().slice(0, x.dim() - 1),
                    op, ": `grad_y` must have `x`'s leading dimensions, got ", grad_y.sizes(),
                    " for x of shape ", x.sizes());
}

}  // namespace sltrain
