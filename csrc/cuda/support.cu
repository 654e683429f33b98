// CUDA kernels of the support ops (_random_support_fill, transpose_support).
// A translation unit of its own because CUB's radix sort is the slowest thing
// in the build to compile.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../common/csc_layout.h"
#include "bindings.h"
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
  check_random_support_fill(row_ptr, col_idx, n);
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  TemporaryMemory temporary{row_ptr.device(), {}};
  C10_CUDA_CHECK(cuda::random_support(row_ptr.numel() - 1, n, col_idx.numel(), uint64_t(seed),
                                      row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
                                      temporary, at::cuda::getCurrentCUDAStream()));
}

}  // namespace

// No O(nnz) validation here (it would copy the support to the host): a CUDA
// support was validated where it was created or loaded.
Tensor transpose_support_cuda(const Tensor& row_ptr, const Tensor& col_idx, int64_t n) {
  const int64_t m = check_transpose_support(row_ptr, col_idx, n).expect_int();
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  const int64_t nnz = col_idx.size(0);
  const PackedCscLayout<int64_t> layout = packed_csc_layout(n, nnz);
  Tensor packed = at::zeros({layout.size}, row_ptr.options());  // zeros in the pads
  int32_t* col_ptr = packed.data_ptr<int32_t>();
  TemporaryMemory temporary{row_ptr.device(), {}};
  C10_CUDA_CHECK(cuda::transpose_support(m, n, nnz, row_ptr.contiguous().data_ptr<int32_t>(),
                                         int32_columns(col_idx).data_ptr<int32_t>(), col_ptr,
                                         col_ptr + layout.row_idx, col_ptr + layout.entry, temporary,
                                         at::cuda::getCurrentCUDAStream()));
  return packed;
}

}  // namespace sltrain

TORCH_LIBRARY_IMPL(SLTRAIN_CUDA_LIBRARY, SLTRAIN_CUDA_DISPATCH_KEY, m) {
  m.impl("_random_support_fill", &sltrain::random_support_fill_cuda);
  m.impl("transpose_support", &sltrain::transpose_support_cuda);
}
