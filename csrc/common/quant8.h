// The 8-bit codes of SLAdamW's optimizer states, shared by CPU and CUDA.
//
// A state tensor is cut into blocks of kQuantBlock elements, each with one
// float32 absmax. Within a block a value is stored as a logarithmic code
// relative to the absmax, so small entries keep their relative precision
// (a linear int8 code would round most second moments of a block to zero):
//   exp_avg (signed):       q in [-127, 127], |x| = absmax * 2^((|q| - 127) / 12)
//                           +-2.9 % relative error, 10.5 octaves below absmax
//                           (smaller moments flush to zero: their updates are tiny)
//   sqrt(exp_avg_sq) (unsigned): q in [0, 255], x = absmax * 2^((q - 255) / 16)
//                           +-2.2 % relative error, 15.9 octaves below absmax
// A positive sqrt(v) never encodes to 0: a tiny denominator rounds up, so an
// update can only shrink, never blow up, through quantisation.
//
// Encoding needs no logarithm: the exponent comes from the float's bits and
// the step within the octave from comparing the mantissa with the midpoints
// between steps, which rounds to the nearest code in the log domain.
#pragma once

#include <cstdint>
#include <cstring>

#include "support_hash.h"  // SLTRAIN_HOST_DEVICE

namespace sltrain {

constexpr int64_t kQuantBlock = 256;

namespace quant8_detail {

SLTRAIN_HOST_DEVICE uint32_t bits_of(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

SLTRAIN_HOST_DEVICE float from_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

// 2^(k / Steps) for k in [0, Steps): the mantissas of one octave's codes.
template <int Steps>
struct Octave;

template <>
struct Octave<12> {
  static constexpr float kStep[12] = {1.0000000000f, 1.0594630944f, 1.1224620483f, 1.1892071150f,
                                      1.2599210499f, 1.3348398542f, 1.4142135624f, 1.4983070769f,
                                      1.5874010520f, 1.6817928305f, 1.7817974363f, 1.8877486254f};
  // 2^((k + 0.5) / 12): the midpoints between consecutive steps.
  static constexpr float kMidpoint[12] = {1.0293022366f, 1.0905077327f, 1.1553526969f, 1.2240535433f,
                                          1.2968395547f, 1.3739536475f, 1.4556531828f, 1.5422108254f,
                                          1.6339154532f, 1.7310731220f, 1.8340080864f, 1.9430638823f};
};

template <>
struct Octave<16> {
  static constexpr float kStep[16] = {1.0000000000f, 1.0442737824f, 1.0905077327f, 1.1387886348f,
                                      1.1892071150f, 1.2418578121f, 1.2968395547f, 1.3542555469f,
                                      1.4142135624f, 1.4768261459f, 1.5422108254f, 1.6104903319f,
                                      1.6817928305f, 1.7562521604f, 1.8340080864f, 1.9152065614f};
  // 2^((k + 0.5) / 16).
  static constexpr float kMidpoint[16] = {1.0218971487f, 1.0671404007f, 1.1143867426f, 1.1637248588f,
                                          1.2152473600f, 1.2690509572f, 1.3252366432f, 1.3839098820f,
                                          1.4451808070f, 1.5091644276f, 1.5759808451f, 1.6457554782f,
                                          1.7186192981f, 1.7947090750f, 1.8741676341f, 1.9571441242f};
};

// The 23-bit mantissa field of midpoint j: (midpoint - 1) * 2^23 is exact for floats in [1, 2).
template <int Steps>
SLTRAIN_HOST_DEVICE constexpr uint32_t midpoint_field(int j) {
  return uint32_t((Octave<Steps>::kMidpoint[j] - 1.0f) * 8388608.0f);
}

// One octave's codes as the encoder and decoder read them: the steps, and
// for each of 128 equal bins of the mantissa range [1, 2) one word holding
// how many midpoints lie at or below the bin's start (bits 24-31) and the
// 23-bit mantissa field of the next midpoint (bits 0-23; 2^23, never reached,
// when there is none). Midpoints are over 1/128 apart, so a bin holds at most
// one and one integer comparison finishes the rounding: mantissas of one
// octave compare as their bit fields do.
template <int Steps>
struct Table {
  float step[Steps];
  uint32_t bin[128];
  constexpr Table() : step(), bin() {
    for (int j = 0; j < Steps; ++j) step[j] = Octave<Steps>::kStep[j];
    for (int b = 0; b < 128; ++b) {
      const float start = 1.0f + float(b) / 128.0f;
      uint32_t below = 0;
      for (int j = 0; j < Steps; ++j) below += Octave<Steps>::kMidpoint[j] <= start ? 1 : 0;
      const uint32_t next = below < Steps ? midpoint_field<Steps>(int(below)) : (1u << 23);
      bin[b] = (below << 24) | next;
    }
  }
};

// Host code reads constexpr tables; device code cannot, so it gets copies in
// global memory (read through L1: lanes look up different entries).
template <int Steps>
inline constexpr Table<Steps> kHostTable{};
#if defined(__CUDACC__)
static __device__ const Table<12> kDeviceTable12 = Table<12>();
static __device__ const Table<16> kDeviceTable16 = Table<16>();
#endif

template <int Steps>
SLTRAIN_HOST_DEVICE const Table<Steps>& table() {
#if defined(__CUDA_ARCH__)
  if constexpr (Steps == 12) {
    return kDeviceTable12;
  } else {
    return kDeviceTable16;
  }
#else
  return kHostTable<Steps>;
#endif
}

// round(-Steps * log2(r)) for 2^-126 <= r < 1, by the rule of the midpoints
// above; <= 0 for r >= 1 (including +inf) and > 126 * Steps for subnormal r,
// so callers clamp instead of branching. r must not be negative or NaN.
// Branch-free, one table load: vectorises.
template <int Steps>
SLTRAIN_HOST_DEVICE int steps_below_one(float r) {
  const uint32_t bits = bits_of(r);
  const uint32_t entry = table<Steps>().bin[(bits >> 16) & 0x7fu];
  const int within_octave = int(entry >> 24) + ((bits & 0x7fffffu) >= (entry & 0xffffffu) ? 1 : 0);
  return (127 - int(bits >> 23)) * Steps - within_octave;
}

SLTRAIN_HOST_DEVICE int clamp_steps(int steps, int most) {
  return steps < 0 ? 0 : (steps > most ? most : steps);
}

// 2^(-steps / Steps) for steps >= 0.
template <int Steps>
SLTRAIN_HOST_DEVICE float two_to_minus(int steps) {
  const int octaves = (steps + Steps - 1) / Steps;  // 2^(-steps/Steps) = 2^-octaves * 2^(k/Steps)
  const int k = octaves * Steps - steps;
  return from_bits(bits_of(table<Steps>().step[k]) - (uint32_t(octaves) << 23));
}

}  // namespace quant8_detail

SLTRAIN_HOST_DEVICE float decode_signed8(int8_t q, float absmax) {
  if (q == 0) return 0.0f;
  const float magnitude = absmax * quant8_detail::two_to_minus<12>(127 - (q < 0 ? -q : q));
  return q < 0 ? -magnitude : magnitude;
}

// Encoders take 1 / absmax: one division per block instead of per element.
// Both are branch-free selects (so the CPU kernel's encode loop vectorises).
// A NaN x encodes as the largest magnitude (its block's absmax is NaN then
// too: the NaN is not hidden). x == 0 is tested apart: 0 * inf is NaN.
SLTRAIN_HOST_DEVICE int8_t encode_signed8(float x, float inv_absmax) {
  const float r = (x < 0.0f ? -x : x) * inv_absmax;
  // 127 steps or more below the absmax: flush to zero.
  const int magnitude = 127 - quant8_detail::clamp_steps(quant8_detail::steps_below_one<12>(r), 127);
  const int code = x < 0.0f ? -magnitude : magnitude;
  return int8_t(inv_absmax > 0.0f && x != 0.0f ? code : 0);
}

SLTRAIN_HOST_DEVICE float decode_unsigned8(uint8_t q, float absmax) {
  return q == 0 ? 0.0f : absmax * quant8_detail::two_to_minus<16>(255 - int(q));
}

SLTRAIN_HOST_DEVICE uint8_t encode_unsigned8(float x, float inv_absmax) {
  const float r = x * inv_absmax;
  // Never below code 1: a positive sqrt(v) stays positive.
  const int code = 255 - quant8_detail::clamp_steps(quant8_detail::steps_below_one<16>(r), 254);
  return uint8_t(x > 0.0f && inv_absmax > 0.0f ? code : 0);
}

}  // namespace sltrain
