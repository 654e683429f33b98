// Multi-tensor launches, shared by every optimizer kernel: the pointers and
// sizes of up to kMaxTensors tensors (of kDepth parallel lists: param, grad,
// states...) and a (tensor, chunk) pair per CUDA block travel in the kernel's
// parameter block, so a step over thousands of tensors is a handful of
// launches with no host-to-device copy and no synchronisation.
#pragma once

#include <array>

#include "numeric.cuh"

namespace sltrain::cuda {

template <int kDepth, int kMaxTensors, int kMaxBlocks>
struct TensorChunks {
  static constexpr int kLists = kDepth;
  static constexpr int kTensors = kMaxTensors;
  static constexpr int kBlocks = kMaxBlocks;
  void* pointers[kDepth][kMaxTensors];
  int64_t sizes[kMaxTensors];  // elements of each tensor
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

// Calls launch(chunks, blocks) for batches of (tensor, chunk) pairs covering
// every element of every tensor: tensors[i] holds tensor i's pointer in each
// list and sizes[i] its element count. A tensor split across two batches
// appears in both with its own pointers.
template <class Chunks, class Launch>
void for_each_chunk_batch(int64_t count, const std::array<void*, Chunks::kLists>* tensors,
                          const int64_t* sizes, int64_t chunk_size, Launch&& launch) {
  static_assert(Chunks::kTensors <= 256, "block_tensor is a uint8_t");
  Chunks chunks;
  int slots = 0, blocks = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (sizes[i] == 0) continue;
    for (int list = 0; list < Chunks::kLists; ++list) chunks.pointers[list][slots] = tensors[i][list];
    chunks.sizes[slots] = sizes[i];
    ++slots;
    const int64_t tensor_chunks = ceil_div(sizes[i], chunk_size);
    for (int64_t chunk = 0; chunk < tensor_chunks; ++chunk) {
      chunks.block_tensor[blocks] = uint8_t(slots - 1);
      chunks.block_chunk[blocks] = int32_t(chunk);
      ++blocks;
      const bool tensor_done = chunk == tensor_chunks - 1;
      if (blocks < Chunks::kBlocks && !(slots == Chunks::kTensors && tensor_done)) continue;
      launch(chunks, blocks);
      blocks = 0;
      if (tensor_done) {
        slots = 0;
      } else {  // the rest of this tensor starts the next batch, in slot 0
        for (int list = 0; list < Chunks::kLists; ++list) chunks.pointers[list][0] = tensors[i][list];
        chunks.sizes[0] = sizes[i];
        slots = 1;
      }
    }
  }
  if (blocks > 0) launch(chunks, blocks);
}

// The slice of one block: which tensor, which elements.
template <class Chunks>
struct BlockSlice {
  int tensor;
  int64_t begin, count;
};

template <class Chunks>
__device__ __forceinline__ BlockSlice<Chunks> block_slice(const Chunks& chunks, int64_t chunk_size) {
  const int tensor = chunks.block_tensor[blockIdx.x];
  const int64_t begin = int64_t(chunks.block_chunk[blockIdx.x]) * chunk_size;
  const int64_t rest = chunks.sizes[tensor] - begin;
  return {tensor, begin, rest < chunk_size ? rest : chunk_size};
}

template <class T, class Chunks>
__device__ __forceinline__ T* list_pointer(const Chunks& chunks, int list, const BlockSlice<Chunks>& slice) {
  return static_cast<T*>(chunks.pointers[list][slice.tensor]) + slice.begin;
}

}  // namespace sltrain::cuda
