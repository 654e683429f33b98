// Microbenchmark of the CPU forward's sparse half, y^T = S x^T (csr_spmm),
// and of the support sampler, without libtorch. Median of many runs.
//   ./build/bench_cpu_forward
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/torch_free_kernels/kernels.h"
#include "cpu/torch_free_kernels/parallel.h"

namespace {

template <class F>
double median_ms(F&& run, int repeats) {
  run();  // warm-up
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
  return times[repeats / 2];
}

}  // namespace

int main() {
  using namespace sltrain::cpu;
  std::printf("threads: %d\n\n", max_threads());
  std::printf("%-30s %10s %12s %12s\n", "csr_spmm (b, n->m, density)", "ms", "GFLOP/s", "GB/s x");
  struct Shape { int64_t b, n, m; double density; };
  for (const Shape s : {Shape{512, 1024, 1024, 0.03}, Shape{2048, 1024, 1024, 0.03},
                        Shape{512, 2048, 5461, 0.03}, Shape{16, 4096, 11008, 0.05}}) {
    const int64_t nnz = int64_t(s.density * double(s.m) * double(s.n) + 0.5);
    std::vector<int32_t> row_ptr(s.m + 1), col_idx(nnz);
    random_support(s.m, s.n, nnz, 1, row_ptr.data(), col_idx.data());
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    std::vector<float> values(nnz), x_t(s.n * s.b), y_t(s.m * s.b);
    for (auto& v : values) v = normal(gen);
    for (auto& v : x_t) v = normal(gen);
    const double ms = median_ms([&] {
      csr_spmm<float>(s.m, s.n, s.b, row_ptr.data(), col_idx.data(), values.data(), x_t.data(), s.b,
                      y_t.data(), s.b);
    }, 21);
    char label[64];
    std::snprintf(label, sizeof label, "(%lld, %lld->%lld, %.2f)", (long long)s.b, (long long)s.n,
                  (long long)s.m, s.density);
    const double flops = 2.0 * double(s.b) * double(nnz);
    const double bytes = 4.0 * double(s.b) * double(s.n + s.m) + 8.0 * double(nnz);
    std::printf("%-30s %10.3f %12.2f %12.2f\n", label, ms, flops / ms / 1e6, bytes / ms / 1e6);
  }

  std::printf("\n%-30s %10s %12s\n", "random_support (m x n, nnz)", "ms", "Mpos/s");
  struct Matrix { int64_t m, n; double density; };
  for (const Matrix s : {Matrix{2048, 2048, 0.03}, Matrix{5461, 2048, 0.03}, Matrix{11008, 4096, 0.05}}) {
    const int64_t m = s.m, n = s.n;
    const double density = s.density;
    const int64_t nnz = int64_t(density * double(m) * double(n) + 0.5);
    std::vector<int32_t> row_ptr(m + 1), col_idx(nnz);
    const double ms = median_ms([&] { random_support(m, n, nnz, 7, row_ptr.data(), col_idx.data()); }, 11);
    char label[64];
    std::snprintf(label, sizeof label, "%lld x %lld, %lld", (long long)m, (long long)n, (long long)nnz);
    std::printf("%-30s %10.3f %12.1f\n", label, ms, double(nnz) / ms / 1e3);
  }
  return 0;
}
