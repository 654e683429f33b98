// The 4-bit codes of SLAdamW's optimizer states (state_bits=4), shared by CPU and CUDA.
//
// A state tensor is cut into blocks of kQuant4Block = 128 elements, each with
// one float32 absmax, and two codes share a byte (element 2i in the low
// nibble of byte i, 2i + 1 in the high one). 128 rather than the 8-bit codes'
// 256: with 16 codes a block's range is what the codes must span, and the
// 4-bit optimizer study (Li et al. 2023) found the first moment needs small
// blocks; 128 costs 0.25 bits of absmax per element and moment.
//
// Both maps are logarithmic, so every code has about the same relative
// precision:
//   exp_avg (signed): bit 3 the sign, bits 0-2 a magnitude k in [0, 7];
//       |x| = absmax * 2^(k - 7) for k >= 1, 0 for k = 0: one octave a code,
//       6 octaves below absmax. Rounds to the nearest value (thresholds at
//       the arithmetic midpoints, 3 * 2^(k - 9), exact in float; below
//       absmax * 2^-7 to zero). Not to the nearest in log2: the geometric
//       midpoint lies below the arithmetic one, so log rounding inflates
//       |m| on average, and a momentum that decays by beta1 = 0.9 a step
//       (-0.15 octave) would keep its code for longer. On a simulated
//       gradient stream (per-element scales, 100 steps, blocks of 128) the
//       parameters' relative L2 distance from 32-bit Adam's fell from 0.97
//       to 0.49 with linear rounding (the 4-bit study's dynamic-exponent
//       map: 0.46; 8-bit codes: 0.07). Zero is exact, so a parameter whose
//       gradient is zero (an unused embedding row) gets no update.
//   sqrt(exp_avg_sq) (unsigned): q in [0, 15], x = absmax * 2^((q - 15) / 2):
//       half an octave a code, 7.5 octaves below absmax (15 of exp_avg_sq),
//       rounded in log2 (thresholds the geometric means of neighbours:
//       relative error within 2^(+-1/4); rounding linearly measured no
//       better here, and the torchao/4-bit study's linear map of v itself
//       worse: 0.43 against 0.37 with a steady gradient). There is no zero code: a small
//       sqrt(v) rounds up to absmax * 2^-7.5, never to zero, so quantisation
//       can only shrink an update (the 4-bit study's "zero-point problem":
//       a second moment rounded to zero turns m / sqrt(v) into m / eps).
//       sqrt(v) rather than v halves the octaves the codes must span, so
//       each code can be finer.
// The all-zero initial state decodes to zeros whatever the codes: its
// absmaxes are zero.
//
// Encoding counts the thresholds a value reaches: branch-free, no logarithm,
// 7 or 15 comparisons that vectorise on the CPU and are uniform across a warp.
#pragma once

#include <cstdint>

#include "support_hash.h"  // SLTRAIN_HOST_DEVICE

// The encoders' threshold loops fully unrolled, so that the CPU kernel's loop
// over elements around them vectorises (GCC does not vectorise a loop with a
// loop inside) and nvcc keeps the lane's codes in registers.
#if defined(__CUDACC__)
#define SLTRAIN_QUANT4_UNROLL _Pragma("unroll")
#else
#define SLTRAIN_QUANT4_UNROLL _Pragma("GCC unroll 16")
#endif

namespace sltrain {

constexpr int64_t kQuant4Block = 128;

namespace quant4_detail {

constexpr int kSignBit = 8;
constexpr int kMagnitudes = 8;  // of the signed code, 0 included
constexpr int kCodes = 16;

// 2^(half_octaves / 2), rounded once to float (a power of two times sqrt(2) is exact in double).
constexpr float half_power_of_two(int half_octaves) {
  double x = half_octaves % 2 == 0 ? 1.0 : (half_octaves > 0 ? 1.4142135623730951 : 0.7071067811865476);
  for (int i = 0; i < (half_octaves < 0 ? -half_octaves : half_octaves) / 2; ++i) {
    x = half_octaves > 0 ? x * 2.0 : x * 0.5;
  }
  return float(x);
}

// value[code] at absmax 1; a value reaches code k >= 1 when it is at least threshold[k].
struct Codebook {
  float value[kCodes];
  float threshold[kCodes];  // [0] unused
};

// The signed map: magnitude k is 2^(k - 7) = 2^((2k - 14) / 2); threshold
// the midpoint of magnitudes k - 1 and k: 2^-7 for k = 1 (0 and 2^-6), else 0.75 * 2^(k - 7).
constexpr Codebook signed_codebook() {
  Codebook book{};
  for (int code = 0; code < kCodes; ++code) {
    const int magnitude = code % kSignBit;
    const float value = magnitude == 0 ? 0.0f : half_power_of_two(2 * magnitude - 14);
    book.value[code] = code >= kSignBit ? -value : value;
  }
  for (int k = 1; k < kMagnitudes; ++k) {
    book.threshold[k] = k == 1 ? half_power_of_two(-14) : 0.75f * half_power_of_two(2 * k - 14);
  }
  return book;
}

// The unsigned map: code q is 2^((q - 15) / 2); threshold 2^((q - 15.5) / 2) = 2^((2q - 31) / 4),
// which is no half power of two: formed from its neighbours' geometric mean in double.
constexpr double fourth_root_of_two = 1.189207115002721;
constexpr Codebook unsigned_codebook() {
  Codebook book{};
  for (int q = 0; q < kCodes; ++q) book.value[q] = half_power_of_two(q - 15);
  for (int q = 1; q < kCodes; ++q) book.threshold[q] = float(double(half_power_of_two(q - 16)) * fourth_root_of_two);
  return book;
}

// Host code reads the constexpr tables; device code gets copies in global
// memory (as quant8.h does), read through L1.
inline constexpr Codebook kHostSigned = signed_codebook();
inline constexpr Codebook kHostUnsigned = unsigned_codebook();
#if defined(__CUDACC__)
static __device__ const Codebook kDeviceSigned = signed_codebook();
static __device__ const Codebook kDeviceUnsigned = unsigned_codebook();
#endif

SLTRAIN_HOST_DEVICE const Codebook& signed_book() {
#if defined(__CUDA_ARCH__)
  return kDeviceSigned;
#else
  return kHostSigned;
#endif
}

SLTRAIN_HOST_DEVICE const Codebook& unsigned_book() {
#if defined(__CUDA_ARCH__)
  return kDeviceUnsigned;
#else
  return kHostUnsigned;
#endif
}

}  // namespace quant4_detail

// Decoders take the code (0-15) and the block's absmax; a NaN absmax decodes
// every code to NaN (0 * NaN), so a NaN moment is never hidden.
SLTRAIN_HOST_DEVICE float decode_signed4(int code, float absmax) {
  return absmax * quant4_detail::signed_book().value[code];
}

SLTRAIN_HOST_DEVICE float decode_unsigned4(int code, float absmax) {
  return absmax * quant4_detail::unsigned_book().value[code];
}

// Encoders take 1 / absmax (0 for an all-zero block): codes depend on the
// float r = |x| * (1 / absmax), compared with the thresholds. A NaN x encodes as 0
// (its block's absmax is NaN then, and the decoders above keep it NaN).
SLTRAIN_HOST_DEVICE int encode_signed4(float x, float inv_absmax) {
  const float r = (x < 0.0f ? -x : x) * inv_absmax;
  const quant4_detail::Codebook& book = quant4_detail::signed_book();
  int magnitude = 0;
  SLTRAIN_QUANT4_UNROLL
  for (int k = 1; k < quant4_detail::kMagnitudes; ++k) magnitude += r >= book.threshold[k] ? 1 : 0;
  // A flushed negative moment is +0, so that equal moments have equal codes.
  return magnitude | (int((x < 0.0f) & (magnitude > 0)) * quant4_detail::kSignBit);
}

SLTRAIN_HOST_DEVICE int encode_unsigned4(float x, float inv_absmax) {
  const float r = x * inv_absmax;
  const quant4_detail::Codebook& book = quant4_detail::unsigned_book();
  int code = 0;
  SLTRAIN_QUANT4_UNROLL
  for (int q = 1; q < quant4_detail::kCodes; ++q) code += r >= book.threshold[q] ? 1 : 0;
  return code;
}

// Two codes a byte: element 2i low, 2i + 1 high.
SLTRAIN_HOST_DEVICE uint8_t pack_codes(int low, int high) { return uint8_t(low | (high << 4)); }
SLTRAIN_HOST_DEVICE int low_code(uint8_t byte) { return byte & 0xf; }
SLTRAIN_HOST_DEVICE int high_code(uint8_t byte) { return byte >> 4; }

}  // namespace sltrain
