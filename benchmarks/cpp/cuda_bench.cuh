// What the bench_cuda_* microbenchmarks share: device buffers, CUDA-event
// timing (median of many runs after a warm-up), and one output line per
// measurement, also appended as a JSON line to $SLTRAIN_BENCH_JSON if set.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define SLTRAIN_CHECK_CUDA(...)                                                            \
  do {                                                                                     \
    const cudaError_t status_ = (__VA_ARGS__);                                                  \
    if (status_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(status_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace bench {

template <class T>
T* device_array(size_t count, unsigned char fill = 0) {
  void* p = nullptr;
  SLTRAIN_CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  SLTRAIN_CHECK_CUDA(cudaMemset(p, fill, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <class T>
T* device_copy(const std::vector<T>& host) {
  T* p = device_array<T>(host.size());
  SLTRAIN_CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// Keeps what the launchers allocate until the benchmark ends.
struct Scratch {
  std::vector<void*> blocks;
  void* operator()(size_t bytes) {
    blocks.push_back(device_array<unsigned char>(bytes));
    return blocks.back();
  }
  ~Scratch() {
    for (void* p : blocks) cudaFree(p);
  }
};

// Median milliseconds of `run` (which launches on stream 0) over `repeats`.
template <class Run>
double median_ms(Run&& run, int repeats = 50) {
  cudaEvent_t start, stop;
  SLTRAIN_CHECK_CUDA(cudaEventCreate(&start));
  SLTRAIN_CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) run();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    SLTRAIN_CHECK_CUDA(cudaEventRecord(start));
    run();
    SLTRAIN_CHECK_CUDA(cudaEventRecord(stop));
    SLTRAIN_CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    SLTRAIN_CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  SLTRAIN_CHECK_CUDA(cudaGetLastError());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
  return times[repeats / 2];
}

// Prints "kernel  case  ms  GB/s" and appends a JSON line.
inline void report(const std::string& kernel, const std::string& what, double ms, double bytes) {
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-22s %-44s %10.4f ms %9.1f GB/s\n", kernel.c_str(), what.c_str(), ms, gbps);
  if (const char* path = std::getenv("SLTRAIN_BENCH_JSON")) {
    if (FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "{\"kernel\": \"%s\", \"case\": \"%s\", \"ms\": %.6f, \"bytes\": %.0f, \"GBps\": %.2f}\n",
                   kernel.c_str(), what.c_str(), ms, bytes, gbps);
      std::fclose(f);
    }
  }
}

}  // namespace bench
