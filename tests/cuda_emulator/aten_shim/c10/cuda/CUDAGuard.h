// Stand-in for c10's device guard in the emulated build of the CUDA bindings:
// the emulator has one device, so there is nothing to switch.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
