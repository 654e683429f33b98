// What the two CUDA binding files (ops.cu, support.cu) share: where they
// register, and the one binding ops.cu calls across them.
#pragma once

#include <ATen/core/Tensor.h>

// The extension registers the bindings for torch's CUDA dispatch key. The
// emulated test build (tests/cuda_emulator/bindings) compiles the same files
// with g++ and registers them for CPU tensors under a library of its own: it
// defines both names on its command line.
#ifndef SLTRAIN_CUDA_LIBRARY
#define SLTRAIN_CUDA_LIBRARY sltrain
#define SLTRAIN_CUDA_DISPATCH_KEY CUDA
#endif

namespace sltrain {

// The packed CSC copy [col_ptr (n + 1) | pad | row_idx (nnz) | pad | entry
// (nnz)] of a support on the device (csrc/common/csc_layout.h; support.cu;
// ops.cu builds and caches it for the factored backward).
at::Tensor transpose_support_cuda(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t n);

}  // namespace sltrain
