// Adam/AdamW over lists of tensors on the device: fused_adam_ (float32 or
// float64 states), fused_adam8bit_ and fused_adam4bit_ (the block codes of
// common/quant8.h and common/quant4.h). Both apply common/adam_math.h's update, element for
// element the CPU kernels' arithmetic.
//
// Bytes per element of one step (each read or written once):
//   32-bit states, float32 params: param r+w 8, grad 4, moments r+w 16 = 28
//   32-bit states, bf16 params:    4 + 2 + 16 = 22
//   8-bit states, float32 params:  8 + 4 + codes r+w 4 (+ 2 absmaxes per 256) = 16.03
//   8-bit states, bf16 params:     4 + 2 + 4 = 10.03
//   4-bit states, float32 params:  8 + 4 + codes r+w 2 (+ 4 absmaxes per 128) = 14.06
//   4-bit states, bf16 params:     4 + 2 + 2 = 8.06
// PREDICTION, not measured (the GPU issue measures it): both kernels stream
// every byte once in 16-byte (codes: 8-byte) accesses with enough blocks to
// fill every SM, so they should run at 0.8-0.9 of an H100's measured 3.0 TB/s
// copy ceiling (DESIGN.md). LLaMA-1B's 555 SLTrain tensors hold 645.5 M
// elements: float32 params 18.1 GB a step (32-bit states, ~7.1 ms at 0.85)
// or 10.3 GB (8-bit, ~4.1 ms); bf16 params 14.2 GB (~5.6 ms) or 6.5 GB (~2.5 ms).
#pragma once

#include <type_traits>

#include "../common/adam_math.h"
#include "../common/quant4.h"
#include "../common/quant8.h"
#include "multi_tensor.cuh"

namespace sltrain::cuda {

constexpr int kAdamThreads = 512;
constexpr int64_t kAdamChunk = 65536;  // elements per chunk (a block walks several)
// param, grad, exp_avg, exp_avg_sq: 90 tensors a launch fill 3.9 of the 4 KiB.
using AdamChunks = TensorChunks<4, 90>;

// Elements per vector access: 16 bytes of the param type (4 floats, 8 bf16
// or fp16, 2 doubles); the float32 states of bf16 params then move as two
// 16-byte accesses.
template <class P>
constexpr int kAdamVector = int(16 / sizeof(P));

// P: the param and grad type; S: the state type, Acc<P>.
template <class P, class S>
__global__ void __launch_bounds__(kAdamThreads)
    adam_kernel(AdamChunks chunks, AdamScalars<S> host_scalars, const AdamScalars<S>* device_scalars) {
  const AdamScalars<S> scalars = device_scalars != nullptr ? *device_scalars : host_scalars;
  for_each_chunk(chunks, kAdamChunk, [&](const ChunkSlice& slice) {
    P* param = list_pointer<P>(chunks, 0, slice);
    const P* grad = list_pointer<P>(chunks, 1, slice);
    S* exp_avg = list_pointer<S>(chunks, 2, slice);
    S* exp_avg_sq = list_pointer<S>(chunks, 3, slice);
    constexpr int kVec = kAdamVector<P>;
    const bool aligned = is_aligned(param, kVec * sizeof(P)) && is_aligned(grad, kVec * sizeof(P)) &&
                         is_aligned(exp_avg, kVec * sizeof(S)) && is_aligned(exp_avg_sq, kVec * sizeof(S));
    const int64_t vector_end = aligned ? slice.count / kVec * kVec : 0;
    for (int64_t i = int64_t(threadIdx.x) * kVec; i < vector_end; i += int64_t(blockDim.x) * kVec) {
      Vec<P, kVec> p = load_vec<kVec>(param + i);
      const Vec<P, kVec> g = load_vec<kVec>(grad + i);
      Vec<S, kVec> m = load_vec<kVec>(exp_avg + i), v = load_vec<kVec>(exp_avg_sq + i);
      for (int j = 0; j < kVec; ++j) {
        S value = widen(p.v[j]);
        scalars.update(value, widen(g.v[j]), m.v[j], v.v[j]);
        p.v[j] = narrow<P>(value);
      }
      store_vec(param + i, p);
      store_vec(exp_avg + i, m);
      store_vec(exp_avg_sq + i, v);
    }
    for (int64_t i = vector_end + threadIdx.x; i < slice.count; i += blockDim.x) {
      S value = widen(param[i]);
      scalars.update(value, widen(grad[i]), exp_avg[i], exp_avg_sq[i]);
      param[i] = narrow<P>(value);
    }
  });
}

// Capturable steps: the per-step scalars formed on the device, after adding
// 1 to the step count there, for float and double states alike.
struct DeviceAdamScalars {
  AdamScalars<float> single;
  AdamScalars<double> twice;
};

// One thread: *step += 1, then both sets of scalars from it and from *lr
// (float or double per lr_is_double; nullptr: hyper.lr).
__global__ void advance_adam_step_kernel(int64_t* step, const void* lr, bool lr_is_double, AdamHyper hyper,
                                         DeviceAdamScalars* out) {
  hyper.step = *step + 1;
  *step = hyper.step;
  if (lr != nullptr) {
    hyper.lr = lr_is_double ? *static_cast<const double*>(lr) : double(*static_cast<const float*>(lr));
  }
  out->single = AdamScalars<float>(hyper);
  out->twice = AdamScalars<double>(hyper);
}

inline cudaError_t advance_adam_step(int64_t* step, const void* lr, bool lr_is_double, const AdamHyper& hyper,
                                     DeviceAdamScalars* out, cudaStream_t stream) {
  SLTRAIN_LAUNCH(advance_adam_step_kernel, 1, 1, 0, stream)(step, lr, lr_is_double, hyper, out);
  return cudaGetLastError();
}

template <class S>
const AdamScalars<S>* scalars_of(const DeviceAdamScalars* device_scalars) {
  if (device_scalars == nullptr) return nullptr;
  if constexpr (std::is_same_v<S, double>) {
    return &device_scalars->twice;
  } else {
    return &device_scalars->single;
  }
}

// One Adam step over `count` tensors (tensors[i] = {param, grad, exp_avg,
// exp_avg_sq}, all sizes[i] elements, param and grad of type P, states S).
// With device_scalars (filled by advance_adam_step on the same stream) the
// kernels read the step's scalars there instead of hyper's.
template <class P, class S>
cudaError_t adam_step(int64_t count, const std::array<void*, 4>* tensors, const int64_t* sizes,
                      const AdamHyper& hyper, cudaStream_t stream,
                      const DeviceAdamScalars* device_scalars = nullptr) {
  const AdamScalars<S> scalars(hyper);
  const AdamScalars<S>* from_device = scalars_of<S>(device_scalars);
  const auto kernel = adam_kernel<P, S>;
  const int fill = blocks_to_fill_device(kAdamThreads);
  for_each_chunk_batch<AdamChunks>(count, tensors, sizes, kAdamChunk, [&](const AdamChunks& chunks) {
    const int grid = chunks.chunks < fill ? chunks.chunks : fill;
    SLTRAIN_LAUNCH(kernel, grid, kAdamThreads, 0, stream)(chunks, scalars, from_device);
  });
  return cudaGetLastError();
}

// ---- 8- and 4-bit states ------------------------------------------------------------

// A warp per code block (256 elements at 8 bits, 128 at 4), 8 or 4
// consecutive elements per lane: the absmaxes are warp reductions (shuffles,
// no block barrier), and each lane moves its codes as one 8-, 2- or 1-byte
// access and its params as 8- to 32-byte ones. One kernel for both widths;
// a codec says how a lane's elements sit in its code bytes.
constexpr int kAdam8bitThreads = 256;
constexpr int kAdam8bitWarps = kAdam8bitThreads / kWarp;
// param, grad, exp_avg codes, their absmaxes, sqrt(exp_avg_sq) codes, their absmaxes
using Adam8bitChunks = TensorChunks<6, 64>;

// 8-bit codes (common/quant8.h): a code a byte, int8 for exp_avg.
struct Codes8 {
  static constexpr int64_t kBlock = kQuantBlock;
  static constexpr int kCodesPerByte = 1;
  __device__ static float decode_m(const uint8_t* bytes, int j, float absmax) {
    return decode_signed8(int8_t(bytes[j]), absmax);
  }
  __device__ static float decode_sqrt_v(const uint8_t* bytes, int j, float absmax) {
    return decode_unsigned8(bytes[j], absmax);
  }
  template <int kLane>
  __device__ static void encode(const float (&m)[kLane], const float (&sqrt_v)[kLane], float m_scale,
                                float sqrt_v_scale, uint8_t* m_bytes, uint8_t* sqrt_v_bytes) {
    for (int j = 0; j < kLane; ++j) {
      m_bytes[j] = uint8_t(encode_signed8(m[j], m_scale));
      sqrt_v_bytes[j] = encode_unsigned8(sqrt_v[j], sqrt_v_scale);
    }
  }
};

// 4-bit codes (common/quant4.h): two a byte, the even element low.
struct Codes4 {
  static constexpr int64_t kBlock = kQuant4Block;
  static constexpr int kCodesPerByte = 2;
  __device__ static int code(const uint8_t* bytes, int j) {
    return j % 2 == 0 ? low_code(bytes[j / 2]) : high_code(bytes[j / 2]);
  }
  __device__ static float decode_m(const uint8_t* bytes, int j, float absmax) {
    return decode_signed4(code(bytes, j), absmax);
  }
  __device__ static float decode_sqrt_v(const uint8_t* bytes, int j, float absmax) {
    return decode_unsigned4(code(bytes, j), absmax);
  }
  // Elements past the tensor's end hold m = sqrt(v) = 0: the padding nibble
  // of an odd tensor is code 0, as on the CPU.
  template <int kLane>
  __device__ static void encode(const float (&m)[kLane], const float (&sqrt_v)[kLane], float m_scale,
                                float sqrt_v_scale, uint8_t* m_bytes, uint8_t* sqrt_v_bytes) {
    for (int j = 0; j < kLane; j += 2) {
      m_bytes[j / 2] = pack_codes(encode_signed4(m[j], m_scale), encode_signed4(m[j + 1], m_scale));
      sqrt_v_bytes[j / 2] =
          pack_codes(encode_unsigned4(sqrt_v[j], sqrt_v_scale), encode_unsigned4(sqrt_v[j + 1], sqrt_v_scale));
    }
  }
};

template <class Codec>
constexpr int kPerLane = int(Codec::kBlock) / kWarp;
template <class Codec>
constexpr int kBytesPerLane = kPerLane<Codec> / Codec::kCodesPerByte;
template <class Codec>
constexpr int64_t kQuantisedChunk = 4 * kAdam8bitWarps * Codec::kBlock;  // 4 code blocks a warp
constexpr int64_t kAdam8bitChunk = kQuantisedChunk<Codes8>;

// Maxima of non-negative floats compared as their bits (the same order; a
// NaN wins, as in the CPU kernel's integer maxima).
__device__ __forceinline__ float larger_nonnegative(float a, float b) {
  return __float_as_uint(b) > __float_as_uint(a) ? b : a;
}

// The largest of the warp's non-negative floats, in every lane.
__device__ __forceinline__ float warp_max_nonnegative(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x = larger_nonnegative(x, __uint_as_float(__shfl_xor_sync(kFullMask, __float_as_uint(x), offset)));
  }
  return x;
}

// Per code block: decode the moments against the old absmaxes, update as the
// 32-bit kernel does, take the new absmaxes by warp reductions, re-encode.
template <class P, class Codec>
__global__ void __launch_bounds__(kAdam8bitThreads)
    quantised_adam_kernel(Adam8bitChunks chunks, AdamScalars<float> host_scalars,
                          const AdamScalars<float>* device_scalars) {
  const AdamScalars<float> scalars = device_scalars != nullptr ? *device_scalars : host_scalars;
  constexpr int kLane = kPerLane<Codec>, kBytes = kBytesPerLane<Codec>;
  constexpr int64_t kBlock = Codec::kBlock;
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp;
  for_each_chunk(chunks, kQuantisedChunk<Codec>, [&](const ChunkSlice& slice) {
    P* param = list_pointer<P>(chunks, 0, slice);
    const P* grad = list_pointer<P>(chunks, 1, slice);
    // A chunk is whole code blocks: its codes start at a whole byte, its
    // absmaxes at a whole entry.
    const int64_t first_byte = slice.begin / Codec::kCodesPerByte, first_block = slice.begin / kBlock;
    uint8_t* exp_avg = static_cast<uint8_t*>(chunks.pointers[2][slice.tensor]) + first_byte;
    uint8_t* sqrt_exp_avg_sq = static_cast<uint8_t*>(chunks.pointers[4][slice.tensor]) + first_byte;
    float* exp_avg_absmax = static_cast<float*>(chunks.pointers[3][slice.tensor]) + first_block;
    float* sqrt_exp_avg_sq_absmax = static_cast<float*>(chunks.pointers[5][slice.tensor]) + first_block;
    const bool aligned = is_aligned(param, kLane * sizeof(P)) && is_aligned(grad, kLane * sizeof(P)) &&
                         is_aligned(exp_avg, kBytes) && is_aligned(sqrt_exp_avg_sq, kBytes);
    const int64_t blocks = ceil_div(slice.count, kBlock);
    // Every lane of a warp runs the same blocks: the shuffles see all 32.
    for (int64_t block = warp; block < blocks; block += kAdam8bitWarps) {
      const int64_t first = block * kBlock + lane * kLane;
      const int64_t left = slice.count - first;
      const int mine = left <= 0 ? 0 : (left < kLane ? int(left) : kLane);
      const int64_t byte = first / Codec::kCodesPerByte;
      const int my_bytes = (mine + Codec::kCodesPerByte - 1) / Codec::kCodesPerByte;
      Vec<P, kLane> p, g;
      Vec<uint8_t, kBytes> m_code, v_code;
      if (aligned && mine == kLane) {
        p = load_vec<kLane>(param + first);
        g = load_vec<kLane>(grad + first);
        m_code = load_vec<kBytes>(exp_avg + byte);
        v_code = load_vec<kBytes>(sqrt_exp_avg_sq + byte);
      } else {
        // Fixed trip counts (unrolled by nvcc): the lane's arrays stay in registers.
        for (int j = 0; j < kLane; ++j) {
          if (j >= mine) continue;
          p.v[j] = param[first + j];
          g.v[j] = grad[first + j];
        }
        for (int j = 0; j < kBytes; ++j) {
          m_code.v[j] = v_code.v[j] = 0;
          if (j >= my_bytes) continue;
          m_code.v[j] = exp_avg[byte + j];
          v_code.v[j] = sqrt_exp_avg_sq[byte + j];
        }
      }
      // Every lane reads the old absmaxes before the shuffles below, which
      // lane 0's writes follow.
      const float m_absmax_old = exp_avg_absmax[block], sqrt_v_absmax_old = sqrt_exp_avg_sq_absmax[block];
      float m[kLane], sqrt_v[kLane], m_local = 0.0f, sqrt_v_local = 0.0f;
      for (int j = 0; j < kLane; ++j) {
        m[j] = sqrt_v[j] = 0.0f;
        if (j >= mine) continue;
        m[j] = Codec::decode_m(m_code.v, j, m_absmax_old);
        const float old_sqrt_v = Codec::decode_sqrt_v(v_code.v, j, sqrt_v_absmax_old);
        float v = old_sqrt_v * old_sqrt_v;
        float value = widen(p.v[j]);
        scalars.update(value, widen(g.v[j]), m[j], v);
        p.v[j] = narrow<P>(value);
        sqrt_v[j] = sqrtf(v);
        m_local = larger_nonnegative(m_local, fabsf(m[j]));
        sqrt_v_local = larger_nonnegative(sqrt_v_local, sqrt_v[j]);
      }
      const float m_absmax = warp_max_nonnegative(m_local);
      const float sqrt_v_absmax = warp_max_nonnegative(sqrt_v_local);
      const float m_scale = m_absmax > 0.0f ? 1.0f / m_absmax : 0.0f;
      const float sqrt_v_scale = sqrt_v_absmax > 0.0f ? 1.0f / sqrt_v_absmax : 0.0f;
      Codec::encode(m, sqrt_v, m_scale, sqrt_v_scale, m_code.v, v_code.v);
      if (aligned && mine == kLane) {
        store_vec(param + first, p);
        store_vec(exp_avg + byte, m_code);
        store_vec(sqrt_exp_avg_sq + byte, v_code);
      } else {
        for (int j = 0; j < kLane; ++j) {
          if (j >= mine) continue;
          param[first + j] = p.v[j];
        }
        for (int j = 0; j < kBytes; ++j) {
          if (j >= my_bytes) continue;
          exp_avg[byte + j] = m_code.v[j];
          sqrt_exp_avg_sq[byte + j] = v_code.v[j];
        }
      }
      if (lane == 0) {
        exp_avg_absmax[block] = m_absmax;
        sqrt_exp_avg_sq_absmax[block] = sqrt_v_absmax;
      }
    }
  });
}

// tensors[i] = {param, grad, exp_avg, exp_avg_absmax, sqrt_exp_avg_sq,
// sqrt_exp_avg_sq_absmax}; sizes[i] the param's elements.
template <class P, class Codec>
cudaError_t quantised_adam_step(int64_t count, const std::array<void*, 6>* tensors, const int64_t* sizes,
                                const AdamHyper& hyper, cudaStream_t stream,
                                const DeviceAdamScalars* device_scalars) {
  const AdamScalars<float> scalars(hyper);
  const AdamScalars<float>* from_device = scalars_of<float>(device_scalars);
  const auto kernel = quantised_adam_kernel<P, Codec>;
  const int fill = blocks_to_fill_device(kAdam8bitThreads);
  for_each_chunk_batch<Adam8bitChunks>(count, tensors, sizes, kQuantisedChunk<Codec>,
                                       [&](const Adam8bitChunks& chunks) {
    const int grid = chunks.chunks < fill ? chunks.chunks : fill;
    SLTRAIN_LAUNCH(kernel, grid, kAdam8bitThreads, 0, stream)(chunks, scalars, from_device);
  });
  return cudaGetLastError();
}

// 8-bit codes: exp_avg int8 [numel], sqrt_exp_avg_sq uint8 [numel], absmaxes [ceil(numel / 256)].
template <class P>
cudaError_t adam8bit_step(int64_t count, const std::array<void*, 6>* tensors, const int64_t* sizes,
                          const AdamHyper& hyper, cudaStream_t stream,
                          const DeviceAdamScalars* device_scalars = nullptr) {
  return quantised_adam_step<P, Codes8>(count, tensors, sizes, hyper, stream, device_scalars);
}

// 4-bit codes: both uint8 [ceil(numel / 2)], absmaxes [ceil(numel / 128)].
template <class P>
cudaError_t adam4bit_step(int64_t count, const std::array<void*, 6>* tensors, const int64_t* sizes,
                          const AdamHyper& hyper, cudaStream_t stream,
                          const DeviceAdamScalars* device_scalars = nullptr) {
  return quantised_adam_step<P, Codes4>(count, tensors, sizes, hyper, stream, device_scalars);
}

}  // namespace sltrain::cuda
