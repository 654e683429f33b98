// Adam/AdamW over lists of tensors on the device: fused_adam_ (float32 or
// float64 states) and fused_adam8bit_ (the 8-bit block codes of
// common/quant8.h). Both apply common/adam_math.h's update, element for
// element the CPU kernels' arithmetic.
#pragma once

#include "../common/adam_math.h"
#include "../common/quant8.h"
#include "multi_tensor.cuh"

namespace sltrain::cuda {

constexpr int kAdamThreads = 512;
constexpr int64_t kAdamChunk = 65536;  // elements per block
using AdamChunks = TensorChunks<4, 36, 320>;  // param, grad, exp_avg, exp_avg_sq

// P: the param and grad type; S: the state type, Acc<P>.
template <class P, class S>
__global__ void __launch_bounds__(kAdamThreads)
    adam_kernel(AdamChunks chunks, AdamScalars<S> scalars) {
  const auto slice = block_slice(chunks, kAdamChunk);
  P* param = list_pointer<P>(chunks, 0, slice);
  const P* grad = list_pointer<P>(chunks, 1, slice);
  S* exp_avg = list_pointer<S>(chunks, 2, slice);
  S* exp_avg_sq = list_pointer<S>(chunks, 3, slice);
  constexpr int kVec = 4;
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
}

// One Adam step over `count` tensors (tensors[i] = {param, grad, exp_avg,
// exp_avg_sq}, all sizes[i] elements, param and grad of type P, states S).
template <class P, class S>
cudaError_t adam_step(int64_t count, const std::array<void*, 4>* tensors, const int64_t* sizes,
                      const AdamHyper& hyper, cudaStream_t stream) {
  const AdamScalars<S> scalars(hyper);
  const auto kernel = adam_kernel<P, S>;
  for_each_chunk_batch<AdamChunks>(count, tensors, sizes, kAdamChunk, [&](const AdamChunks& chunks, int blocks) {
    SLTRAIN_LAUNCH(kernel, blocks, kAdamThreads, 0, stream)(chunks, scalars);
  });
  return cudaGetLastError();
}

// ---- 8-bit states -----------------------------------------------------------------

constexpr int kAdam8bitThreads = int(kQuantBlock);  // one thread per element of a code block
constexpr int64_t kAdam8bitChunk = 16 * kQuantBlock;
// param, grad, exp_avg codes, their absmaxes, sqrt(exp_avg_sq) codes, their absmaxes
using Adam8bitChunks = TensorChunks<6, 24, 320>;

// The largest value of `x` over the block (all threads receive it). Uses
// `shared` [kWarps] and leaves it free for reuse.
__device__ __forceinline__ float block_max(float x, float* shared) {
  constexpr int kWarps = kAdam8bitThreads / kWarp;
  x = warp_max(x);
  if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = x;
  __syncthreads();
  float total = shared[0];
  for (int w = 1; w < kWarps; ++w) total = fmaxf(total, shared[w]);
  __syncthreads();
  return total;
}

// Per code block: decode the moments against the old absmaxes, update as the
// 32-bit kernel does, take the new absmaxes by a block reduction, re-encode.
template <class P>
__global__ void __launch_bounds__(kAdam8bitThreads)
    adam8bit_kernel(Adam8bitChunks chunks, AdamScalars<float> scalars) {
  __shared__ float shared[kAdam8bitThreads / kWarp];
  const auto slice = block_slice(chunks, kAdam8bitChunk);
  P* param = list_pointer<P>(chunks, 0, slice);
  const P* grad = list_pointer<P>(chunks, 1, slice);
  int8_t* exp_avg = list_pointer<int8_t>(chunks, 2, slice);
  uint8_t* sqrt_exp_avg_sq = list_pointer<uint8_t>(chunks, 4, slice);
  // The absmax lists have one entry per code block: a chunk is whole blocks.
  const int64_t first_block = slice.begin / kQuantBlock;
  float* exp_avg_absmax = static_cast<float*>(chunks.pointers[3][slice.tensor]) + first_block;
  float* sqrt_exp_avg_sq_absmax = static_cast<float*>(chunks.pointers[5][slice.tensor]) + first_block;
  const int64_t blocks = ceil_div(slice.count, kQuantBlock);
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t i = block * kQuantBlock + threadIdx.x;
    const bool valid = i < slice.count;
    float m = 0.0f, sqrt_v = 0.0f;
    if (valid) {
      m = decode_signed8(exp_avg[i], exp_avg_absmax[block]);
      const float old_sqrt_v = decode_unsigned8(sqrt_exp_avg_sq[i], sqrt_exp_avg_sq_absmax[block]);
      float v = old_sqrt_v * old_sqrt_v;
      float value = widen(param[i]);
      scalars.update(value, widen(grad[i]), m, v);
      param[i] = narrow<P>(value);
      sqrt_v = sqrtf(v);
    }
    // Every thread has read the old absmaxes before the first barrier here.
    const float m_absmax = block_max(fabsf(m), shared);
    const float sqrt_v_absmax = block_max(sqrt_v, shared);
    if (valid) {
      exp_avg[i] = encode_signed8(m, m_absmax > 0.0f ? 1.0f / m_absmax : 0.0f);
      sqrt_exp_avg_sq[i] = encode_unsigned8(sqrt_v, sqrt_v_absmax > 0.0f ? 1.0f / sqrt_v_absmax : 0.0f);
    }
    if (threadIdx.x == 0) {
      exp_avg_absmax[block] = m_absmax;
      sqrt_exp_avg_sq_absmax[block] = sqrt_v_absmax;
    }
  }
}

// tensors[i] = {param, grad, exp_avg, exp_avg_absmax, sqrt_exp_avg_sq,
// sqrt_exp_avg_sq_absmax}; sizes[i] the param's elements.
template <class P>
cudaError_t adam8bit_step(int64_t count, const std::array<void*, 6>* tensors, const int64_t* sizes,
                          const AdamHyper& hyper, cudaStream_t stream) {
  const AdamScalars<float> scalars(hyper);
  for_each_chunk_batch<Adam8bitChunks>(count, tensors, sizes, kAdam8bitChunk,
                                       [&](const Adam8bitChunks& chunks, int blocks) {
    SLTRAIN_LAUNCH(adam8bit_kernel<P>, blocks, kAdam8bitThreads, 0, stream)(chunks, scalars);
  });
  return cudaGetLastError();
}

}  // namespace sltrain::cuda
