// The CSR kernel family on the GPU, torch-free: the factored path's SpMM
// (decode forward, 4096 -> 11008 at density .05, the DESIGN.md shape) and
// SDDMM, and the materialised path's scatter into / gather from a W chunk
// (LLaMA-1B's 5461-wide MLP); the fused decode forward of sl_matmul_inference
// (decode.cuh: GEMV and row kernel, r = n / 4 as the paper's 1B and 7B, int32
// and uint16 columns). bf16. Bytes count each index, value, weight and
// gathered element once: the byte floor of the kernel.
//   ./build/bench_cuda_csr
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/torch_free_kernels/kernels.h"
#include "cuda/csr.cuh"
#include "cuda/decode.cuh"
#include "cuda_bench.cuh"


using T = __nv_bfloat16;

int main() {
  struct Shape { const char* name; int64_t m, n; double density; };
  for (const Shape& s : {Shape{"7B-up 4096->11008", 11008, 4096, 0.05}, Shape{"1B-up 2048->5461", 5461, 2048, 0.03}}) {
    const int64_t nnz = int64_t(s.density * double(s.m) * double(s.n));
    std::vector<int32_t> row_ptr(s.m + 1), col_idx(nnz);
    sltrain::cpu::random_support(s.m, s.n, nnz, 1, row_ptr.data(), col_idx.data());
    int32_t* d_row_ptr = bench::device_copy(row_ptr);
    int32_t* d_col_idx = bench::device_copy(col_idx);
    uint16_t* d_compact = bench::device_copy(std::vector<uint16_t>(col_idx.begin(), col_idx.end()));
    T* values = bench::device_array<T>(nnz);
    const double sparse_bytes = double(nnz) * (sizeof(int32_t) + sizeof(T)) + double(s.m + 1) * 4;
    for (int64_t tokens : {1, 16, 128}) {
      T* x = bench::device_array<T>(tokens * s.n);
      T* y = bench::device_array<T>(tokens * s.m);
      T* dvalues = bench::device_array<T>(nnz);
      sltrain::cuda::SpmmArgs<T> args{s.m, s.n, nnz, tokens, d_row_ptr, d_col_idx, nullptr, values, x, s.n, y, s.m,
                             nullptr, true, false};
      const std::string what = std::string(s.name) + " b=" + std::to_string(tokens);
      bench::report("csr_spmm", what,
                    bench::median_ms([&] { SLTRAIN_CHECK_CUDA(sltrain::cuda::csr_spmm(args, nullptr)); }),
                    sparse_bytes + double(tokens) * double(s.m + s.n) * sizeof(T));
      bench::report("csr_sddmm", what, bench::median_ms([&] {
                      SLTRAIN_CHECK_CUDA(sltrain::cuda::csr_sddmm(s.m, s.n, nnz, tokens, d_row_ptr, d_col_idx, y, s.m, x,
                                                         s.n, dvalues, nullptr));
                    }),
                    sparse_bytes + double(tokens) * double(s.m + s.n) * sizeof(T));
      if (tokens <= sltrain::cuda::kMaxDecodeTokens) {
        const int64_t r = s.n / 4;
        T* A = bench::device_array<T>(r * s.n);
        T* B = bench::device_array<T>(s.m * r);
        float* t = bench::device_array<float>(tokens * r);
        // A, B, row_ptr, x and y; each index width adds the entries' values and columns.
        const double fixed_bytes = double(r) * double(s.m + s.n) * sizeof(T) + double(s.m + 1) * 4 +
                                   double(tokens) * double(s.m + s.n) * sizeof(T);
        const auto decode = [&](const auto* columns, double column_bytes, const char* label) {
          using Index = std::remove_const_t<std::remove_pointer_t<decltype(columns)>>;
          const sltrain::cuda::DecodeArgs<T, Index> decode_args{
              s.m, s.n, r, nnz, tokens, 1.0f, A, B, d_row_ptr, columns, values, x, s.n, nullptr, y, s.m, t};
          bench::report("sl_decode", what + " r=" + std::to_string(r) + " " + label,
                        bench::median_ms([&] { SLTRAIN_CHECK_CUDA(sltrain::cuda::sl_decode(decode_args, nullptr)); }),
                        fixed_bytes + double(nnz) * (sizeof(T) + column_bytes));
        };
        decode(static_cast<const int32_t*>(d_col_idx), sizeof(int32_t), "int32");
        decode(static_cast<const uint16_t*>(d_compact), sizeof(uint16_t), "uint16");
        cudaFree(A);
        cudaFree(B);
        cudaFree(t);
      }
      cudaFree(x);
      cudaFree(y);
      cudaFree(dvalues);
    }
    // A 64 MiB W chunk: scatter the values in, gather dvalues out.
    const int64_t ld = (s.n + 7) / 8 * 8;
    const int64_t rows = std::min<int64_t>(s.m, (int64_t(64) << 20) / (ld * int64_t(sizeof(T))));
    T* w = bench::device_array<T>(rows * ld);
    T* out = bench::device_array<T>(nnz);
    const double chunk_bytes = double(row_ptr[rows]) * (sizeof(int32_t) + 3 * sizeof(T));
    const std::string what = std::string(s.name) + " rows=" + std::to_string(rows);
    bench::report("csr_scatter_add_block", what, bench::median_ms([&] {
                    SLTRAIN_CHECK_CUDA(sltrain::cuda::csr_scatter_add_block(0, rows, 0, s.n, s.n, nnz, d_row_ptr,
                                                                            d_col_idx, values, w, ld, nullptr));
                  }),
                  chunk_bytes);
    bench::report("csr_gather_rows", what, bench::median_ms([&] {
                    SLTRAIN_CHECK_CUDA(sltrain::cuda::csr_gather_rows(0, rows, s.n, nnz, d_row_ptr, d_col_idx, w, ld, out,
                                                             nullptr));
                  }),
                  chunk_bytes);
    cudaFree(w);
    cudaFree(out);
    cudaFree(d_row_ptr);
    cudaFree(d_col_idx);
    cudaFree(d_compact);
    cudaFree(values);
  }
  return 0;
}
