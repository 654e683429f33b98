// ctest for the 4-bit state codes (common/quant4.h) and the CPU kernel that
// uses them, without libtorch: every code, every float32 in the codes' range
// against a float64 definition, and the kernel's codes against the header's.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/quant4.h"
#include "cpu/torch_free_kernels/kernels.h"
#include "expect.h"

using namespace sltrain;

namespace {

float float_of(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

// The definitions in float64: the signed magnitude whose value is nearest r
// (ties up), the unsigned code nearest r in log2.
int reference_signed_magnitude(double r) {
  int best = 0;
  for (int k = 1; k <= 7; ++k) {
    if (std::fabs(r - std::exp2(k - 7)) <= std::fabs(r - (best == 0 ? 0.0 : std::exp2(best - 7)))) best = k;
  }
  return r == r ? best : 0;  // NaN: 0
}

int reference_unsigned(double r) {
  if (!(r > 0.0)) return 0;
  const double nearest = std::floor(2.0 * std::log2(r) + 0.5);  // half octaves
  return int(std::fmin(std::fmax(nearest + 15.0, 0.0), 15.0));
}

// Whether r lies within float rounding of an unsigned threshold (half-odd
// quarter octaves, irrational): values there may fall either side.
bool near_an_unsigned_threshold(double r) {
  const double position = 2.0 * std::log2(r) - 0.5;
  return std::fabs(position - std::round(position)) < 1e-6;
}

void test_every_code() {
  int wrong = 0;
  for (int code = 0; code < 16; ++code) {
    const int magnitude = code & 7;
    const double want = magnitude == 0 ? 0.0 : (code >= 8 ? -1.0 : 1.0) * std::exp2(magnitude - 7);
    wrong += double(decode_signed4(code, 1.0f)) != want;
    // Every code but -0 (never written) encodes back to itself.
    if (code != 8) wrong += encode_signed4(decode_signed4(code, 2.5f), 1.0f / 2.5f) != code;
    wrong += std::fabs(double(decode_unsigned4(code, 1.0f)) - std::exp2((code - 15) / 2.0)) > 1e-7 * std::exp2((code - 15) / 2.0);
    wrong += encode_unsigned4(decode_unsigned4(code, 0.75f), 1.0f / 0.75f) != code;
  }
  expect(wrong == 0, "every 4-bit code decodes to its value and encodes back to itself");
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  expect(std::isnan(decode_signed4(0, nan)) && std::isnan(decode_unsigned4(3, nan)),
         "a NaN absmax decodes to NaN, also the zero code");
  expect(decode_signed4(5, 0.0f) == 0.0f && decode_unsigned4(0, 0.0f) == 0.0f,
         "the all-zero initial state decodes to zeros");
  expect(encode_signed4(-1e-30f, 1.0f) == 0 && encode_signed4(0.0f, inf) == 0 && encode_signed4(nan, 1.0f) == 0,
         "flushed, zero and NaN first moments have code 0");
  expect(encode_unsigned4(0.0f, 1.0f) == 0 && encode_unsigned4(1e-30f, 1.0f) == 0 &&
             encode_unsigned4(inf, 1.0f) == 15 && encode_unsigned4(3.0f, 0.0f) == 0,
         "sqrt(v) codes: zero and tiny values take the smallest code, never a zero one");
}

// Every float32 r in [2^-12, 4) (and its negative for the signed code): 14
// octaves, 117 M values, covering every threshold and both clamps.
void test_every_float_in_range() {
  int64_t wrong = 0;
  for (uint32_t bits = 115u << 23; bits < 129u << 23; ++bits) {
    const float r = float_of(bits);
    const int magnitude = encode_signed4(r, 1.0f);
    const int negative = encode_signed4(-r, 1.0f);
    const bool signs_agree = negative == (magnitude == 0 ? 0 : (magnitude | 8));
    const int want_magnitude = reference_signed_magnitude(r), want_unsigned = reference_unsigned(r);
    const int unsigned_code = encode_unsigned4(r, 1.0f);
    if (!signs_agree || magnitude != want_magnitude ||
        (unsigned_code != want_unsigned && !near_an_unsigned_threshold(r))) {
      if (wrong < 5) std::printf("  r = %.9g: signed %d %d (want %d), unsigned %d (want %d)\n", r, magnitude,
                                 negative, want_magnitude, unsigned_code, want_unsigned);
      ++wrong;
    }
  }
  expect(wrong == 0, "4-bit encoders round every float32 to the nearest code (sqrt(v): in log2)");
}

// The kernel's codes against quant4.h's encoders for moments that are exact:
// from zero states with beta1 = beta2 = 0 the new moments are g and |g|.
// Odd sizes leave a padding nibble, which must be the zero code.
void test_kernel_codes(int64_t n) {
  const AdamHyper hyper{1e-3, 0.0, 0.0, 1e-8, 0.0, 1, true};
  std::vector<float> param(n, 1.0f), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    // Mantissas and exponents all over: 24 octaves around 1, both signs.
    grad[i] = float((i % 3 == 0 ? -1.0 : 1.0) * std::exp2(double(i % 97) / 4.0 - 12.0) * (1.0 + double(i % 13) / 17.0));
  }
  if (n > 5) grad[5] = 0.0f;
  const int64_t blocks = (n + kQuant4Block - 1) / kQuant4Block, bytes = (n + 1) / 2;
  std::vector<float> m_absmax(blocks, 0.0f), sqrt_v_absmax(blocks, 0.0f);
  std::vector<uint8_t> m_codes(bytes, 0xff), sqrt_v_codes(bytes, 0xff);
  cpu::adam4bit_step<float>(n, param.data(), grad.data(), m_codes.data(), m_absmax.data(), sqrt_v_codes.data(),
                            sqrt_v_absmax.data(), hyper);
  int64_t wrong = 0;
  for (int64_t block = 0; block < blocks; ++block) {
    float absmax = 0.0f;
    for (int64_t i = block * kQuant4Block; i < std::min(n, (block + 1) * kQuant4Block); ++i) {
      absmax = std::fmax(absmax, std::fabs(grad[i]));
    }
    wrong += m_absmax[block] != absmax || sqrt_v_absmax[block] != absmax;
    for (int64_t i = block * kQuant4Block; i < std::min(n, (block + 1) * kQuant4Block); ++i) {
      const uint8_t m_byte = m_codes[i / 2], v_byte = sqrt_v_codes[i / 2];
      const int m_code = i % 2 == 0 ? low_code(m_byte) : high_code(m_byte);
      const int v_code = i % 2 == 0 ? low_code(v_byte) : high_code(v_byte);
      wrong += m_code != encode_signed4(grad[i], 1.0f / absmax);
      wrong += v_code != encode_unsigned4(std::fabs(grad[i]), 1.0f / absmax);
    }
  }
  if (n % 2 != 0) wrong += high_code(m_codes[bytes - 1]) != 0 || high_code(sqrt_v_codes[bytes - 1]) != 0;
  expect(wrong == 0, "the 4-bit kernel encodes exact moments as quant4.h does, padding nibbles 0");
}

// A NaN gradient makes its block's absmaxes NaN (so every later update of the
// block is NaN, visible), and leaves the other blocks alone.
void test_kernel_nan_stays_visible() {
  const int64_t n = 2 * kQuant4Block;
  const AdamHyper hyper{1e-3, 0.9, 0.999, 1e-8, 0.0, 1, true};
  std::vector<float> param(n, 1.0f), grad(n, 0.5f), m_absmax(2, 0.0f), sqrt_v_absmax(2, 0.0f);
  std::vector<uint8_t> m_codes(n / 2, 0), sqrt_v_codes(n / 2, 0);
  grad[3] = std::numeric_limits<float>::quiet_NaN();
  cpu::adam4bit_step<float>(n, param.data(), grad.data(), m_codes.data(), m_absmax.data(), sqrt_v_codes.data(),
                            sqrt_v_absmax.data(), hyper);
  expect(std::isnan(m_absmax[0]) && std::isnan(sqrt_v_absmax[0]) && std::isfinite(m_absmax[1]) &&
             std::isfinite(param[n - 1]),
         "a NaN gradient poisons its own block's absmaxes only");
}

}  // namespace

int main() {
  test_every_code();
  test_every_float_in_range();
  for (int64_t n : {1, 7, 128, 129, 1000, 4097}) test_kernel_codes(n);
  test_kernel_nan_stays_visible();
  return test_summary();
}
