// The 8-bit codes of SLAdamW's optimizer states, shared by CPU and CUDA.
//
// A state tensor is cut into blocks of kQuantBlock elements, each with one
// float32 absmax. Within a block a value is stored as a logarithmic code
// relative to the absmax, so small entries keep their relative precision
// (a linear int8 code would round most second moments of a block to zero):
//   exp_avg    (signed):   q in [-127, 127], |x| = absmax * 2^((|q| - 127) / 12)
//                          +-2.9 % relative error, 10.5 octaves below absmax
//                          (smaller moments flush to zero: their updates are tiny)
//   exp_avg_sq (stored as sqrt, unsigned): q in [0, 255],
//                          sqrt(v) = absmax * 2^((q - 255) / 16)
//                          +-2.2 % relative error on sqrt(v), 15.9 octaves
// A positive sqrt(v) never encodes to 0: a tiny denominator rounds up, so an
// update can only shrink, never blow up, through quantisation.
#pragma once

#include <cmath>
#include <cstdint>

#include "support_hash.h"  // SLTRAIN_HOST_DEVICE

namespace sltrain {

constexpr int64_t kQuantBlock = 256;
constexpr float kSignedStepsPerOctave = 12.0f;
constexpr float kUnsignedStepsPerOctave = 16.0f;

SLTRAIN_HOST_DEVICE float decode_signed8(int8_t q, float absmax) {
  if (q == 0) return 0.0f;
  const float magnitude = absmax * exp2f(float((q < 0 ? -q : q) - 127) / kSignedStepsPerOctave);
  return q < 0 ? -magnitude : magnitude;
}

SLTRAIN_HOST_DEVICE int8_t encode_signed8(float x, float absmax) {
  if (!(absmax > 0.0f) || x == 0.0f) return 0;
  const float code = rintf(127.0f + kSignedStepsPerOctave * log2f(fabsf(x) / absmax));
  if (code < 1.0f) return 0;  // below the smallest code: flush to zero
  const int8_t magnitude = code > 127.0f ? int8_t(127) : int8_t(code);
  return x < 0.0f ? int8_t(-magnitude) : magnitude;
}

SLTRAIN_HOST_DEVICE float decode_unsigned8(uint8_t q, float absmax) {
  return q == 0 ? 0.0f : absmax * exp2f(float(int(q) - 255) / kUnsignedStepsPerOctave);
}

SLTRAIN_HOST_DEVICE uint8_t encode_unsigned8(float x, float absmax) {
  if (!(x > 0.0f) || !(absmax > 0.0f)) return 0;
  const float code = rintf(255.0f + kUnsignedStepsPerOctave * log2f(x / absmax));
  return code < 1.0f ? uint8_t(1) : (code > 255.0f ? uint8_t(255) : uint8_t(code));
}

}  // namespace sltrain
