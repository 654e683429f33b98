// The one place the torch-free CPU kernels get their threads from: ATen's
// thread pool inside the extension (so they honour torch.set_num_threads),
// OpenMP in the standalone CMake build, or a plain loop; and their SIMD clones.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(SLTRAIN_ATEN_PARALLEL)
#include <ATen/Parallel.h>
#elif defined(_OPENMP)
#include <omp.h>
#endif

// Hot loops are compiled twice, for the x86-64 baseline and for AVX2+FMA, and
// picked at load time: one portable binary, full-width SIMD.
// (Not under ThreadSanitizer: it instruments the clones' ifunc resolvers,
// which run before it is initialised.)
// Compute-bound loops (8-bit Adam's decode and encode) add an AVX-512 clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define SLTRAIN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define SLTRAIN_SIMD_CLONES_WITH_AVX512 \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SLTRAIN_SIMD_CLONES
#define SLTRAIN_SIMD_CLONES_WITH_AVX512
#endif

namespace sltrain::cpu {

inline int max_threads() {
#if defined(SLTRAIN_ATEN_PARALLEL)
  return at::get_num_threads();
#elif defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Calls body(chunk_begin, chunk_end) over disjoint chunks covering [begin, end),
// none smaller than grain unless the range is.
template <class Body>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Body& body) {
  if (end <= begin) return;
#if defined(SLTRAIN_ATEN_PARALLEL)
  at::parallel_for(begin, end, grain, body);
#elif defined(_OPENMP)
  const int64_t range = end - begin;
  const int64_t most_chunks = std::max<int64_t>(1, range / std::max<int64_t>(grain, 1));
  const int threads = int(std::min<int64_t>(omp_get_max_threads(), most_chunks));
  if (threads <= 1) {
    body(begin, end);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t chunk = (range + omp_get_num_threads() - 1) / omp_get_num_threads();
    const int64_t chunk_begin = begin + omp_get_thread_num() * chunk;
    const int64_t chunk_end = std::min(end, chunk_begin + chunk);
    if (chunk_begin < chunk_end) body(chunk_begin, chunk_end);
  }
#else
  (void)grain;
  body(begin, end);
#endif
}

}  // namespace sltrain::cpu
