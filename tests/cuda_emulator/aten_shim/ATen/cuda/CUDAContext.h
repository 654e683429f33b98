// Stand-in for ATen's CUDA context in the emulated build of the CUDA bindings
// (tests/cuda_emulator/bindings): csrc/cuda/*.cu run there on CPU tensors and
// launch through the emulator, whose launches are synchronous, so one null
// stream is every stream. The emulator itself is included later, by the
// kernels' headers, after every torch header (its CUDA keyword macros must not
// reach torch's or the standard library's headers).
#pragma once

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda
