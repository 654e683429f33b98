// Counter-based pseudo-random permutation of [0, N) shared by the CPU and CUDA
// support samplers. Because position i of the permutation is a pure function of
// (i, N, seed), both devices and any thread count draw the identical support.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SLTRAIN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SLTRAIN_HOST_DEVICE inline
#endif

namespace sltrain {

// MurmurHash3's 64-bit finaliser: full avalanche, a few multiplies.
SLTRAIN_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// A balanced Feistel network over 2*half_bits bits, restricted to [0, domain)
// by cycle walking. Taking the images of 0..nnz-1 gives nnz distinct positions
// that are a pseudo-random uniform subset of [0, domain), in O(nnz) work and
// no O(domain) memory. Luby-Rackoff's bound needs wide halves: six rounds
// suffice from 11 bits a half, narrower halves (tiny matrices) get up to 32.
struct FeistelPermutation {
  static constexpr int kMaxRounds = 32;

  uint64_t domain;
  uint32_t half_bits;
  uint64_t half_mask;
  int rounds;
  uint64_t keys[kMaxRounds];

  // Requires domain >= 1 and domain <= 2^62.
  SLTRAIN_HOST_DEVICE FeistelPermutation(uint64_t domain_, uint64_t seed) : domain(domain_) {
    uint32_t bits = 0;
    while (bits < 64 && (uint64_t{1} << bits) < domain) ++bits;
    half_bits = bits < 2 ? 1u : (bits + 1) / 2;
    half_mask = (uint64_t{1} << half_bits) - 1;
    rounds = int(64 / half_bits);
    rounds = rounds < 6 ? 6 : (rounds > kMaxRounds ? kMaxRounds : rounds);
    uint64_t state = seed;
    for (int r = 0; r < rounds; ++r) {
      state += 0x9e3779b97f4a7c15ULL;  // splitmix64 stream of round keys
      keys[r] = mix64(state);
    }
  }

  // A bijection of [0, 4^half_bits).
  SLTRAIN_HOST_DEVICE uint64_t encrypt(uint64_t x) const {
    uint64_t left = x >> half_bits;
    uint64_t right = x & half_mask;
    for (int r = 0; r < rounds; ++r) {
      const uint64_t next = left ^ (mix64(right ^ keys[r]) & half_mask);
      left = right;
      right = next;
    }
    return (left << half_bits) | right;
  }

  // A bijection of [0, domain): walking the cycle of x until it re-enters the
  // domain takes fewer than four steps on average since 4^half_bits < 4*domain.
  SLTRAIN_HOST_DEVICE uint64_t operator()(uint64_t index) const {
    uint64_t x = encrypt(index);
    while (x >= domain) x = encrypt(x);
    return x;
  }
};

}  // namespace sltrain
