// Bit-exact float <-> bfloat16 / float16 conversion (round to nearest even),
// so the torch-free kernels need no c10 types.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace sltrain {

struct bf16 { uint16_t bits; };
struct fp16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(bf16 h) { return bits_to_float(uint32_t{h.bits} << 16); }

inline bf16 to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t((u + rounding) >> 16)};
}

inline float to_float(fp16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // Subnormal half: renormalise into a normal float.
  int shift = 0;
  while ((mantissa & 0x400u) == 0) { mantissa <<= 1; ++shift; }
  return bits_to_float(sign | uint32_t(113 - shift) << 23 | ((mantissa & 0x3ffu) << 13));
}

inline fp16 to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return fp16{uint16_t(sign | 0x7e00u)};  // NaN
  if (magnitude >= 0x477ff000u) return fp16{uint16_t(sign | 0x7c00u)};  // rounds to inf
  if (magnitude < 0x38800000u) {
    // Result is subnormal (or zero): add a magic number so the FPU rounds for us.
    const float rounded = bits_to_float(magnitude) + 0.5f;
    return fp16{uint16_t(sign | uint16_t(float_to_bits(rounded) - float_to_bits(0.5f)))};
  }
  const uint32_t odd = (magnitude >> 13) & 1u;
  const uint32_t biased = magnitude - (112u << 23) + 0xfffu + odd;
  return fp16{uint16_t(sign | uint16_t(biased >> 13))};
}

inline float to_float(float f) { return f; }
inline double to_float(double d) { return d; }

// A float or double to a param type P (float, double, bf16 or fp16),
// rounding to nearest even.
template <class P, class S>
P from_float(S x) {
  if constexpr (std::is_same_v<P, bf16>) {
    return to_bf16(float(x));
  } else if constexpr (std::is_same_v<P, fp16>) {
    return to_fp16(float(x));
  } else {
    return P(x);
  }
}

}  // namespace sltrain
