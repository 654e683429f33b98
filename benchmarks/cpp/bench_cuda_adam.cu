// The Adam kernel family on the GPU, torch-free: fused Adam (float32 and bf16
// params, float32 states) and 8-bit Adam over many tensors of ~52 M elements
// in all, and over a few small ones (launch-bound). Bytes count every element
// read and written once.
//   ./build/bench_cuda_adam
#include <array>
#include <string>
#include <vector>

#include "cuda/adam.cuh"
#include "cuda_bench.cuh"



template <class P>
void bench_adam(const char* name, const std::vector<int64_t>& sizes) {
  std::vector<std::array<void*, 4>> tensors;
  double elements = 0;
  for (int64_t size : sizes) {
    tensors.push_back({bench::device_array<P>(size), bench::device_array<P>(size),
                       bench::device_array<float>(size), bench::device_array<float>(size)});
    elements += double(size);
  }
  const sltrain::AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.0, 1, true};
  const double ms = bench::median_ms([&] {
    SLTRAIN_CHECK_CUDA(sltrain::cuda::adam_step<P, float>(int64_t(sizes.size()), tensors.data(), sizes.data(), hyper, nullptr));
  });
  bench::report("fused_adam", std::string(name) + " " + std::to_string(sizes.size()) + " tensors", ms,
                elements * (3 * sizeof(P) + 4 * sizeof(float)));
  for (auto& t : tensors)
    for (void* p : t) cudaFree(p);
}

template <class P>
void bench_adam8bit(const char* name, const std::vector<int64_t>& sizes) {
  std::vector<std::array<void*, 6>> tensors;
  double elements = 0;
  for (int64_t size : sizes) {
    const int64_t blocks = (size + sltrain::kQuantBlock - 1) / sltrain::kQuantBlock;
    tensors.push_back({bench::device_array<P>(size), bench::device_array<P>(size), bench::device_array<int8_t>(size),
                       bench::device_array<float>(blocks), bench::device_array<uint8_t>(size),
                       bench::device_array<float>(blocks)});
    elements += double(size);
  }
  const sltrain::AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.0, 1, true};
  const double ms = bench::median_ms([&] {
    SLTRAIN_CHECK_CUDA(sltrain::cuda::adam8bit_step<P>(int64_t(sizes.size()), tensors.data(), sizes.data(), hyper, nullptr));
  });
  bench::report("fused_adam8bit", std::string(name) + " " + std::to_string(sizes.size()) + " tensors", ms,
                elements * (3 * sizeof(P) + 4));
  for (auto& t : tensors)
    for (void* p : t) cudaFree(p);
}

int main() {
  const std::vector<int64_t> many(200, 262144 + 17);  // ~52 M elements, odd tails
  const std::vector<int64_t> few = {31000, 2250000, 4096, 5461};
  bench_adam<float>("fp32", many);
  bench_adam<__nv_bfloat16>("bf16", many);
  bench_adam<float>("fp32", few);
  bench_adam8bit<float>("fp32", many);
  bench_adam8bit<__nv_bfloat16>("bf16", many);
  return 0;
}
