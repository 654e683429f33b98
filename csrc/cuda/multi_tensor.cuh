// Multi-tensor launches, shared by every optimizer kernel: the pointers and
// sizes of up to kMaxTensors tensors (of kDepth parallel lists: param, grad,
// states...) and where each tensor's chunks end travel in the kernel's
// parameter block, so a step over thousands of tensors is a handful of
// launches with no host-to-device copy and no synchronisation (and can be
// captured in a CUDA graph). A launch takes whole tensors; its grid is sized
// to the machine (every SM full), not to the work, and each block walks the
// launch's chunks with a grid stride.
#pragma once

#include <array>
#include <climits>

#include "numeric.cuh"

namespace sltrain::cuda {

// The classic limit of a kernel's parameter block (newer toolkits allow
// 32 KiB on sm_70+; 4 KiB works everywhere).
constexpr size_t kParameterBytes = 4096;
// Resident threads per SM on sm_80 and sm_90: the grid fills each SM to this
// when registers allow (the optimizer kernels use few).
constexpr int kResidentThreadsPerSM = 2048;

template <int kDepth, int kMaxTensors>
struct TensorChunks {
  static constexpr int kLists = kDepth;
  static constexpr int kTensors = kMaxTensors;
  void* pointers[kDepth][kMaxTensors];
  int64_t sizes[kMaxTensors];  // elements of each tensor
  // Chunks of tensors 0..t together: the launch's chunk c is tensor t's
  // chunk c - chunk_end[t - 1] for the first t with c < chunk_end[t].
  int32_t chunk_end[kMaxTensors];
  int32_t chunks;  // of the whole launch
};

// Blocks of `threads` that keep every SM of the current device full.
inline int blocks_to_fill_device(int threads) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 1;
  }
  return sms * (kResidentThreadsPerSM / threads > 0 ? kResidentThreadsPerSM / threads : 1);
}

// Calls launch(chunks) for batches of up to Chunks::kTensors whole tensors
// covering every element of every tensor: tensors[i] holds tensor i's
// pointer in each list and sizes[i] its element count.
template <class Chunks, class Launch>
void for_each_chunk_batch(int64_t count, const std::array<void*, Chunks::kLists>* tensors,
                          const int64_t* sizes, int64_t chunk_size, Launch&& launch) {
  static_assert(sizeof(Chunks) <= kParameterBytes, "the table must fit a kernel's parameter block");
  Chunks chunks;
  int slots = 0;
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (sizes[i] == 0) continue;
    const int64_t tensor_chunks = ceil_div(sizes[i], chunk_size);
    // A launch counts its chunks in int32 (2^31 chunks of >= 4096 elements: beyond any tensor).
    if (slots > 0 && (slots == Chunks::kTensors || total + tensor_chunks > INT32_MAX)) {
      chunks.chunks = int32_t(total);
      launch(chunks);
      slots = 0;
      total = 0;
    }
    for (int list = 0; list < Chunks::kLists; ++list) chunks.pointers[list][slots] = tensors[i][list];
    chunks.sizes[slots] = sizes[i];
    total += tensor_chunks;
    chunks.chunk_end[slots] = int32_t(total);
    ++slots;
  }
  if (slots > 0) {
    chunks.chunks = int32_t(total);
    launch(chunks);
  }
}

// The elements of one chunk: which tensor, which elements.
struct ChunkSlice {
  int tensor;
  int64_t begin, count;
};

// Calls body(slice) for this block's chunks of the launch: blockIdx.x,
// blockIdx.x + gridDim.x, ... (the same sequence for every thread of the block).
template <class Chunks, class Body>
__device__ __forceinline__ void for_each_chunk(const Chunks& chunks, int64_t chunk_size, Body&& body) {
  int tensor = 0;
  for (int32_t chunk = blockIdx.x; chunk < chunks.chunks; chunk += gridDim.x) {
    while (chunks.chunk_end[tensor] <= chunk) ++tensor;  // chunks only grow: the scan resumes
    const int32_t first = tensor == 0 ? 0 : chunks.chunk_end[tensor - 1];
    const int64_t begin = int64_t(chunk - first) * chunk_size;
    const int64_t rest = chunks.sizes[tensor] - begin;
    body(ChunkSlice{tensor, begin, rest < chunk_size ? rest : chunk_size});
  }
}

template <class T, class Chunks>
__device__ __forceinline__ T* list_pointer(const Chunks& chunks, int list, const ChunkSlice& slice) {
  return static_cast<T*>(chunks.pointers[list][slice.tensor]) + slice.begin;
}

}  // namespace sltrain::cuda
