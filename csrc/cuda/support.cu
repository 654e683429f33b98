// CUDA kernels of the support ops (_random_support_fill, transpose_support).
// A translation unit of its own because CUB's radix sort is the slowest thing
// in the build to compile.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "support.cuh"

namespace sltrain {
namespace {

using at::Tensor;

// Temporary device memory from torch's caching allocator. The blocks go back
// to the allocator when this object dies, and stream ordering makes that safe
// while the kernels queued on the current stream still use them.
struct TemporaryMemory {
  c10::Device device;
  std::vector<Tensor> blocks;
  void* operator()(size_t bytes) {
    blocks.push_back(at::empty({int64_t(std::max<size_t>(bytes, 1))},
                               at::TensorOptions(at::kByte).device(device)));
    return blocks.back().data_ptr();
  }
};

void random_support_fill_cuda(const Tensor& row_ptr, const Tensor& col_idx, int64_t n, int64_t seed) {
  TORCH_CHECK(row_ptr.is_contiguous() && col_idx.is_contiguous() &&
                  row_ptr.scalar_type() == at::kInt && col_idx.scalar_type() == at::kInt &&
                  row_ptr.device() == col_idx.device(),
              "_random_support_fill: expects contiguous int32 row_ptr and col_idx on one device");
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  TemporaryMemory temporary{row_ptr.device(), {}};
  C10_CUDA_CHECK(cuda::random_support(row_ptr.numel() - 1, n, col_idx.numel(), uint64_t(seed),
                                      row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
                                      temporary, at::cuda::getCurrentCUDAStream()));
}

// No O(nnz) validation here (it would copy the support to the host): a CUDA
// support was validated where it was created or loaded.
Tensor transpose_support_cuda(const Tensor& row_ptr, const Tensor& col_idx, int64_t n) {
  constexpr const char* op = "transpose_support";
  for (const auto& [name, t] : {std::pair{"row_ptr", &row_ptr}, {"col_idx", &col_idx}}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, op, ": `", name, "` must be int32, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1, op, ": `", name, "` must be 1-D, got shape ", t->sizes());
  }
  TORCH_CHECK_VALUE(row_ptr.size(0) >= 1, op, ": `row_ptr` must have m + 1 >= 1 entries");
  TORCH_CHECK_VALUE(col_idx.device() == row_ptr.device(), op, ": `col_idx` is on ", col_idx.device(),
                    " but `row_ptr` is on ", row_ptr.device());
  TORCH_CHECK_VALUE(n >= 0 && n <= std::numeric_limits<int32_t>::max(), op,
                    ": `n` must be in [0, 2^31 - 1], got ", n);
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  const int64_t m = row_ptr.size(0) - 1, nnz = col_idx.size(0);
  Tensor packed = at::empty({n + 1 + 2 * nnz}, row_ptr.options());
  int32_t* col_ptr = packed.data_ptr<int32_t>();
  TemporaryMemory temporary{row_ptr.device(), {}};
  C10_CUDA_CHECK(cuda::transpose_support(m, n, nnz, row_ptr.contiguous().data_ptr<int32_t>(),
                                         col_idx.contiguous().data_ptr<int32_t>(), col_ptr,
                                         col_ptr + n + 1, col_ptr + n + 1 + nnz, temporary,
                                         at::cuda::getCurrentCUDAStream()));
  return packed;
}

}  // namespace
}  // namespace sltrain

TORCH_LIBRARY_IMPL(sltrain, CUDA, m) {
  m.impl("_random_support_fill", &sltrain::random_support_fill_cuda);
  m.impl("transpose_support", &sltrain::transpose_support_cuda);
}
