// CUDA registrations of the sltrain ops. The kernels themselves are issue #3;
// until they land, a CUDA call gets the same argument checks as on the CPU
// (so mixed devices or bad shapes are still named) and then a
// NotImplementedError naming the op, never a silent round trip via the CPU.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../checks.h"

namespace sltrain {
namespace {

[[noreturn]] void no_cuda_kernel(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "sltrain::", op,
                              " has no CUDA kernel yet; move the tensors to the CPU");
}

at::Tensor sl_matmul_cuda(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                          const at::Tensor& values, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, double scale,
                          const std::optional<at::Tensor>& bias) {
  const FactorDims dims = check_factors("sl_matmul", A, B, values, row_ptr, col_idx, scale);
  check_input("sl_matmul", "x", x, dims.n, A, "n");
  check_bias("sl_matmul", bias, dims, A);
  no_cuda_kernel("sl_matmul");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sl_matmul_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale,
    std::array<bool, 4>) {
  const FactorDims dims = check_factors("sl_matmul_backward", A, B, values, row_ptr, col_idx, scale);
  check_input("sl_matmul_backward", "x", x, dims.n, A, "n");
  check_grad_output("sl_matmul_backward", grad_y, x, dims, A);
  no_cuda_kernel("sl_matmul_backward");
}

at::Tensor densify_cuda(const at::Tensor& A, const at::Tensor& B, const at::Tensor& values,
                        const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale) {
  check_factors("densify", A, B, values, row_ptr, col_idx, scale);
  no_cuda_kernel("densify");
}

void boxed_no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack*) {
  no_cuda_kernel(op.schema().name().c_str() + sizeof("sltrain::") - 1);
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, CUDA, m) {
  m.impl("sl_matmul", &sltrain::sl_matmul_cuda);
  m.impl("sl_matmul_backward", &sltrain::sl_matmul_backward_cuda);
  m.impl("densify", &sltrain::densify_cuda);
  for (const char* name : {"fused_adam_", "fused_adam8bit_", "_random_support_fill"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&sltrain::boxed_no_cuda_kernel>());
  }
}
