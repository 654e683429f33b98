// Element access shared by the CUDA kernels: the accumulation type of each
// storage type (float for float, bf16 and fp16; double for double), loads
// that widen to it, stores that round from it, and aligned vector loads.
#pragma once

#include "portability.cuh"

namespace sltrain::cuda {

template <class T>
struct AccOf { using type = float; };
template <>
struct AccOf<double> { using type = double; };
template <class T>
using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T narrow(Acc<T> x);
template <>
__device__ __forceinline__ float narrow<float>(float x) { return x; }
template <>
__device__ __forceinline__ double narrow<double>(double x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half_rn(x); }

// N consecutive elements moved as one aligned access (16 bytes for 4 floats
// or 8 halves): callers check the alignment of the base pointer once.
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, class T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& value) {
  *reinterpret_cast<Vec<T, N>*>(p) = value;
}

template <class T>
__host__ __device__ __forceinline__ bool is_aligned(const T* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) == 0;
}

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

template <class T>
__device__ __forceinline__ T warp_sum(T x) {
  // A butterfly: every lane ends with the same sum, in a fixed order.
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

template <class T>
__device__ __forceinline__ T warp_max(T x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace sltrain::cuda
