// Microbenchmark of one SLAdamW step on the CPU without libtorch: the 32-bit
// kernel and the 8-bit kernel over the same float32 parameters, timed round
// robin (one of each per round) so that load on the machine hits both alike.
//   OMP_NUM_THREADS=1 ./build/bench_cpu_adam [elements]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/quant8.h"
#include "cpu/torch_free_kernels/kernels.h"
#include "cpu/torch_free_kernels/parallel.h"

namespace {

double elapsed_ms(const std::chrono::steady_clock::time_point& start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> times) {
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sltrain;
  using namespace sltrain::cpu;
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : int64_t(8) << 20;
  const int rounds = 21;
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> param32(n), param8(n), grad(n), exp_avg(n, 0.0f), exp_avg_sq(n, 0.0f);
  for (int64_t i = 0; i < n; ++i) param32[i] = param8[i] = normal(gen), grad[i] = 1e-3f * normal(gen);
  const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  std::vector<int8_t> exp_avg_codes(n, 0);
  std::vector<uint8_t> sqrt_exp_avg_sq_codes(n, 0);
  std::vector<float> exp_avg_absmax(blocks, 0.0f), sqrt_exp_avg_sq_absmax(blocks, 0.0f);
  std::vector<double> ms32, ms8;
  for (int round = 0; round <= rounds; ++round) {  // round 0 warms up (and fills the moments)
    const AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.1, round + 1, true};
    auto start = std::chrono::steady_clock::now();
    adam_step<float, float>(n, param32.data(), grad.data(), exp_avg.data(), exp_avg_sq.data(), hyper);
    if (round > 0) ms32.push_back(elapsed_ms(start));
    start = std::chrono::steady_clock::now();
    adam8bit_step<float>(n, param8.data(), grad.data(), exp_avg_codes.data(), exp_avg_absmax.data(),
                         sqrt_exp_avg_sq_codes.data(), sqrt_exp_avg_sq_absmax.data(), hyper);
    if (round > 0) ms8.push_back(elapsed_ms(start));
  }
  const double t32 = median(ms32), t8 = median(ms8);
  std::printf("threads %d, %lld elements, median of %d rounds\n", max_threads(), (long long)n, rounds);
  std::printf("32-bit step  %8.3f ms  %6.2f ns/element  %6.1f GB/s (28 B/element)\n", t32, t32 * 1e6 / n,
              28.0 * n / t32 / 1e6);
  std::printf(" 8-bit step  %8.3f ms  %6.2f ns/element  %6.1f GB/s (14 B/element + absmaxes)\n", t8,
              t8 * 1e6 / n, 14.0 * n / t8 / 1e6);
  std::printf("8-bit / 32-bit: %.2fx\n", t8 / t32);
}
