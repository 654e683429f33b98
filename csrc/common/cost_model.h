// Which algorithm sl_matmul uses for one call. Torch-free so the C++
// microbenchmarks can print what the extension would choose.
#pragma once

#include <cstdint>

namespace sltrain {

enum class MatmulPath : int {
  kAuto = 0,          // decided by choose_matmul_path
  kFactored = 1,      // (x @ A^T) @ B^T * s + x @ S^T: no m x n matrix at all
  kMaterialized = 2,  // W = s * B @ A + S built in row chunks, then dense GEMMs
};

// What a device's sparse kernels and data movement cost, in dense GEMM flops.
struct PathCosts {
  double sparse;  // one sparse multiply-add
  double copy;    // one element of token-major data re-laid out for the sparse kernels
};

// Forward + backward cost of each path in GEMM-flop units. The factored path
// does 2br(3m + 4n) dense flops, three sparse passes (SpMM, transposed SpMM,
// SDDMM) and re-lays out about 6b(m + n) elements for them; the materialised
// one builds W twice, runs three b x m x n GEMMs and two m x n x r ones.
inline MatmulPath choose_matmul_path(int64_t b, int64_t m, int64_t n, int64_t r, int64_t nnz,
                                     const PathCosts& costs) {
  const double bd = double(b), md = double(m), nd = double(n), rd = double(r);
  const double factored = 2 * bd * rd * (3 * md + 4 * nd) + 3 * 2 * costs.sparse * bd * double(nnz) +
                          6 * costs.copy * bd * (md + nd);
  const double materialized = 8 * md * nd * rd + 6 * bd * md * nd;
  return factored <= materialized ? MatmulPath::kFactored : MatmulPath::kMaterialized;
}

// Our vectorised CSR loops and ATen's transposes against oneDNN's float32
// GEMM. Checked with `benchmarks/bench_layer.py --preset paths --sweep-paths`
// on a 2-core AMD EPYC (AVX2): the model picks the faster path at every shape
// of that preset, which includes LLaMA-9M's small matrices.
constexpr PathCosts kCpuPathCosts{4.0, 80.0};

// INITIAL VALUES, not yet measured (issue #11 measures the crossover on an
// H100): a random 2-byte gather per sparse multiply-add against bf16 tensor
// cores at about 700 TFLOP/s, and no re-layout (the CUDA kernels read
// token-major operands directly).
constexpr PathCosts kCudaPathCosts{300.0, 0.0};

// The materialised backward can take dA and dB from each dW row chunk (4mnr
// flops) or from the factored formulas dA = s (gB)^T x, dB = s g^T (x A^T)
// (4br(m + n) flops); true when the chunks are the cheaper source.
inline bool factor_grads_from_dW(int64_t b, int64_t m, int64_t n) {
  return double(b) * double(m + n) >= double(m) * double(n);
}

}  // namespace sltrain
