// The extension's CUDA support bindings, compiled unchanged by g++ against
// the emulator (see runtime.cpp).
#include "cuda/support.cu"
