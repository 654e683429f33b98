// The Adam kernel family on the GPU, torch-free: fused Adam (float32 and bf16
// params, float32 states) and 8- and 4-bit Adam over many tensors of ~52 M elements
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

// 8-bit (Codec cuda::Codes8) or 4-bit (cuda::Codes4) states.
template <class P, class Codec>
void bench_quantised_adam(const char* name, const std::vector<int64_t>& sizes) {
  std::vector<std::array<void*, 6>> tensors;
  double elements = 0;
  for (int64_t size : sizes) {
    const int64_t blocks = (size + Codec::kBlock - 1) / Codec::kBlock;
    const int64_t code_bytes = (size + Codec::kCodesPerByte - 1) / Codec::kCodesPerByte;
    tensors.push_back({bench::device_array<P>(size), bench::device_array<P>(size),
                       bench::device_array<uint8_t>(code_bytes), bench::device_array<float>(blocks),
                       bench::device_array<uint8_t>(code_bytes), bench::device_array<float>(blocks)});
    elements += double(size);
  }
  const sltrain::AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.0, 1, true};
  const double ms = bench::median_ms([&] {
    SLTRAIN_CHECK_CUDA((sltrain::cuda::quantised_adam_step<P, Codec>(int64_t(sizes.size()), tensors.data(),
                                                                     sizes.data(), hyper, nullptr, nullptr)));
  });
  const bool four_bit = Codec::kCodesPerByte == 2;
  bench::report(four_bit ? "fused_adam4bit" : "fused_adam8bit",
                std::string(name) + " " + std::to_string(sizes.size()) + " tensors", ms,
                elements * (3 * sizeof(P) + (four_bit ? 2 : 4)));
  for (auto& t : tensors)
    for (void* p : t) cudaFree(p);
}

int main() {
  const std::vector<int64_t> many(200, 262144 + 17);  // ~52 M elements, odd tails
  const std::vector<int64_t> few = {31000, 2250000, 4096, 5461};
  bench_adam<float>("fp32", many);
  bench_adam<__nv_bfloat16>("bf16", many);
  bench_adam<float>("fp32", few);
  bench_quantised_adam<float, sltrain::cuda::Codes8>("fp32", many);
  bench_quantised_adam<__nv_bfloat16, sltrain::cuda::Codes8>("bf16", many);
  bench_quantised_adam<float, sltrain::cuda::Codes4>("fp32", many);
  bench_quantised_adam<__nv_bfloat16, sltrain::cuda::Codes4>("bf16", many);
  return 0;
}
