// Where the segments of transpose_support's packed CSC copy lie. One int32
// array holds [col_ptr (n + 1) | pad | row_idx (nnz) | pad | entry (nnz)],
// each segment starting at a multiple of 4 elements: 16 bytes from an
// allocation's (at least 16-byte aligned) start, so the transposed SpMM loads
// row_idx and entry 4 at a time (csr_spmm's vector path) at every n, not only
// where (n + 1) % 4 == 0. The pads hold zeros.
//
// Torch-free and generic in the integer type: the CPU and CUDA kernels use it
// with int64_t, the fake kernel with c10::SymInt (symbolic nnz under
// torch.compile's dynamic shapes). Every user of the layout calls this one
// function.
#pragma once

#include <cstdint>

namespace sltrain {

// Offsets and total length, in int32 elements (col_ptr starts at 0).
template <class Int>
struct PackedCscLayout {
  Int row_idx;
  Int entry;
  Int size;
};

template <class Int>
PackedCscLayout<Int> packed_csc_layout(const Int& n, const Int& nnz) {
  constexpr int64_t kSegmentAlignment = 4;  // int32 elements in 16 bytes
  const auto aligned = [](const Int& length) {
    return (length + (kSegmentAlignment - 1)) / kSegmentAlignment * kSegmentAlignment;
  };
  const Int row_idx = aligned(n + 1);
  const Int entry = row_idx + aligned(nnz);
  return {row_idx, entry, entry + nnz};
}

}  // namespace sltrain
