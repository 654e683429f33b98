// The support family on the GPU, torch-free: random_support for every
// attention and MLP matrix of LLaMA-7B at density .05 (issue target: < 1 s in
// all), and transpose_support of the largest one.
//   ./build/bench_cuda_support
#include <string>

#include "common/csc_layout.h"
#include "cuda/support.cuh"
#include "cuda_bench.cuh"



int main() {
  struct Matrix { int64_t m, n, count; };
  const Matrix matrices[] = {{4096, 4096, 4 * 32}, {11008, 4096, 2 * 32}, {4096, 11008, 32}};
  double total_ms = 0, total_nnz = 0;
  for (const Matrix& matrix : matrices) {
    const int64_t nnz = int64_t(0.05 * double(matrix.m) * double(matrix.n));
    int32_t* row_ptr = bench::device_array<int32_t>(matrix.m + 1);
    int32_t* col_idx = bench::device_array<int32_t>(nnz);
    double ms = 0;
    {
      bench::Scratch scratch;
      ms = bench::median_ms([&] {
        SLTRAIN_CHECK_CUDA(sltrain::cuda::random_support(matrix.m, matrix.n, nnz, 7, row_ptr, col_idx, scratch, nullptr));
      }, 10);
    }
    bench::report("random_support", std::to_string(matrix.m) + "x" + std::to_string(matrix.n), ms,
                  double(nnz) * 4 + double(matrix.m + 1) * 4);
    total_ms += ms * double(matrix.count);
    total_nnz += double(nnz) * double(matrix.count);
    const sltrain::PackedCscLayout<int64_t> layout = sltrain::packed_csc_layout<int64_t>(matrix.n, nnz);
    int32_t* packed = bench::device_array<int32_t>(layout.size);
    {
      bench::Scratch scratch;
      const double t_ms = bench::median_ms([&] {
        SLTRAIN_CHECK_CUDA(sltrain::cuda::transpose_support(matrix.m, matrix.n, nnz, row_ptr, col_idx, packed,
                                                   packed + layout.row_idx, packed + layout.entry, scratch,
                                                   nullptr));
      }, 10);
      bench::report("transpose_support", std::to_string(matrix.m) + "x" + std::to_string(matrix.n), t_ms,
                    double(nnz) * 12 + double(matrix.n + matrix.m + 2) * 4);
    }
    cudaFree(row_ptr);
    cudaFree(col_idx);
    cudaFree(packed);
  }
  bench::report("random_support", "all of LLaMA-7B (224 matrices)", total_ms, total_nnz * 4);
  return 0;
}
