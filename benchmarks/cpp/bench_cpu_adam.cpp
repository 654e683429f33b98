// Microbenchmark of one SLAdamW step on the CPU without libtorch: the 32-bit
// kernel and the 8-bit kernel over the same float32 parameters, timed round
// robin (one of each per round) so that load on the machine hits both alike.
//   OMP_NUM_THREADS=1 ./build/bench_cpu_adam [elements] [rounds]
// Buffers are 64-byte aligned, as torch's CPU allocator gives tensors: with
// std::vector's 16-byte alignment every 64-byte vector access straddles two
// cache lines, which costs the AVX-512 loops up to 2x and would misreport them.
// Besides wall time, the process's CPU time per step: on a machine shared
// with other work it leaves out the time the step waited for a core (with
// OpenMP threads it includes their spinning, so read it at one thread).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <vector>

#include "common/quant8.h"
#include "cpu/torch_free_kernels/kernels.h"
#include "cpu/torch_free_kernels/parallel.h"

namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <class T>
std::unique_ptr<T[], FreeDeleter> aligned_buffer(int64_t n, T fill) {
  const size_t bytes = (size_t(n) * sizeof(T) + 63) / 64 * 64;
  T* data = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (data == nullptr) {
    std::fprintf(stderr, "bench_cpu_adam: cannot allocate %zu bytes\n", bytes);
    std::exit(1);
  }
  std::fill(data, data + n, fill);
  return std::unique_ptr<T[], FreeDeleter>(data);
}

struct Clocks {
  std::chrono::steady_clock::time_point wall;
  std::clock_t cpu;
  static Clocks now() { return {std::chrono::steady_clock::now(), std::clock()}; }
  double wall_ms_since(const Clocks& start) const {
    return std::chrono::duration<double, std::milli>(wall - start.wall).count();
  }
  double cpu_ms_since(const Clocks& start) const { return 1e3 * double(cpu - start.cpu) / CLOCKS_PER_SEC; }
};

// The median and the quartiles of a sample.
struct Spread {
  double median, low, high;
  explicit Spread(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    median = x[x.size() / 2], low = x[x.size() / 4], high = x[(3 * x.size()) / 4];
  }
};

std::vector<double> ratios(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] / b[i];
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sltrain;
  using namespace sltrain::cpu;
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : int64_t(8) << 20;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 21;
  if (n < 1 || rounds < 1) {
    std::fprintf(stderr, "usage: bench_cpu_adam [elements >= 1] [rounds >= 1]\n");
    return 2;
  }
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  auto param32 = aligned_buffer<float>(n, 0.0f), param8 = aligned_buffer<float>(n, 0.0f);
  auto grad = aligned_buffer<float>(n, 0.0f), exp_avg = aligned_buffer<float>(n, 0.0f);
  auto exp_avg_sq = aligned_buffer<float>(n, 0.0f);
  for (int64_t i = 0; i < n; ++i) param32[i] = param8[i] = normal(gen), grad[i] = 1e-3f * normal(gen);
  const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
  auto exp_avg_codes = aligned_buffer<int8_t>(n, 0);
  auto sqrt_exp_avg_sq_codes = aligned_buffer<uint8_t>(n, 0);
  auto exp_avg_absmax = aligned_buffer<float>(blocks, 0.0f), sqrt_exp_avg_sq_absmax = aligned_buffer<float>(blocks, 0.0f);
  std::vector<double> wall32, wall8, cpu32, cpu8;
  for (int round = 0; round <= rounds; ++round) {  // round 0 warms up (and fills the moments)
    const AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.1, round + 1, true};
    const Clocks start32 = Clocks::now();
    adam_step<float, float>(n, param32.get(), grad.get(), exp_avg.get(), exp_avg_sq.get(), hyper);
    const Clocks start8 = Clocks::now();
    adam8bit_step<float>(n, param8.get(), grad.get(), exp_avg_codes.get(), exp_avg_absmax.get(),
                         sqrt_exp_avg_sq_codes.get(), sqrt_exp_avg_sq_absmax.get(), hyper);
    const Clocks end = Clocks::now();
    if (round > 0) {
      wall32.push_back(start8.wall_ms_since(start32)), cpu32.push_back(start8.cpu_ms_since(start32));
      wall8.push_back(end.wall_ms_since(start8)), cpu8.push_back(end.cpu_ms_since(start8));
    }
  }
  const Spread t32(wall32), t8(wall8), c32(cpu32), c8(cpu8);
  const Spread wall_ratio(ratios(wall8, wall32)), cpu_ratio(ratios(cpu8, cpu32));
  std::printf("threads %d, %lld elements, %d rounds: median [quartiles]\n", max_threads(), (long long)n, rounds);
  std::printf("32-bit step  wall %8.3f ms [%.3f, %.3f]  cpu %8.3f ms  %6.1f GB/s (28 B/element)\n", t32.median,
              t32.low, t32.high, c32.median, 28.0 * n / t32.median / 1e6);
  std::printf(" 8-bit step  wall %8.3f ms [%.3f, %.3f]  cpu %8.3f ms  %6.1f GB/s (16 B/element)\n", t8.median,
              t8.low, t8.high, c8.median, 16.0 * n / t8.median / 1e6);
  std::printf("8-bit / 32-bit, per round: wall %.3f [%.3f, %.3f]  cpu %.3f [%.3f, %.3f]\n", wall_ratio.median,
              wall_ratio.low, wall_ratio.high, cpu_ratio.median, cpu_ratio.low, cpu_ratio.high);
}
