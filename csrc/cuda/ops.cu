// CUDA registrations of the sltrain ops. The kernels themselves are issue #3;
// until they land, a CUDA tensor gets a NotImplementedError naming the op
// rather than a silent round trip through the CPU.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace sltrain {
namespace {

void not_implemented_on_cuda(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(),
                              " has no CUDA kernel yet; move the tensors to the CPU");
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, CUDA, m) {
  for (const char* name : {"sl_matmul", "sl_matmul_backward", "densify", "fused_adam_", "fused_adam8bit_",
                           "_random_support_fill"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&sltrain::not_implemented_on_cuda>());
  }
}
