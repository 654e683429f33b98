// Stand-in for c10's CUDA error check in the emulated build of the CUDA
// bindings: an emulated launcher's error becomes the same c10::Error a real
// one would raise. cudaSuccess and cudaGetErrorString come from the emulator,
// which is included before any use of the macro expands.
#pragma once

#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(expr)                                                               \
  do {                                                                                     \
    const auto sltrain_emulated_error_ = (expr);                                           \
    TORCH_CHECK(sltrain_emulated_error_ == cudaSuccess, "CUDA error (emulated): ",        \
                cudaGetErrorString(sltrain_emulated_error_));                              \
  } while (0)
