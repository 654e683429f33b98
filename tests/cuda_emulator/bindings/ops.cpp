// The extension's CUDA bindings, compiled unchanged by g++ against the
// emulator (see runtime.cpp).
#include "cuda/ops.cu"
