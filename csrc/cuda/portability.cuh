// The one header every torch-free CUDA kernel file includes first. Under nvcc
// it is the CUDA runtime, the half types and CUB; under the project's
// CUDA-on-CPU emulator (tests/cuda_emulator, a test tool compiled with g++,
// never linked into the extension) it is that emulator, which provides the
// same names. Kernels therefore never spell `<<<...>>>` or `extern __shared__`
// themselves: they use the two macros below, which both sides define.
//
//   SLTRAIN_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...);
//   SLTRAIN_DYNAMIC_SHARED(T, name);   // T* name = the block's dynamic shared memory
#pragma once

#if defined(SLTRAIN_CUDA_EMULATOR)

#include <cuda_emulator.h>

#elif defined(__CUDACC__)

#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define SLTRAIN_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>
#define SLTRAIN_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char name##_shared_bytes_[]; \
  T* name = reinterpret_cast<T*>(name##_shared_bytes_)

#else
#error "csrc/cuda/*.cuh needs nvcc, or g++ with SLTRAIN_CUDA_EMULATOR (tests/cuda_emulator)"
#endif

#include <cstdint>

// `#pragma unroll N` for nvcc (loops of constant trip count unroll fully
// without it); nothing for g++, which does not know the pragma.
#if defined(__CUDACC__)
#define SLTRAIN_PRAGMA_(text) _Pragma(#text)
#define SLTRAIN_UNROLL(n) SLTRAIN_PRAGMA_(unroll n)
#else
#define SLTRAIN_UNROLL(n)
#endif
