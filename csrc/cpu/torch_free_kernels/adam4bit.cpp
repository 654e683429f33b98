// SLAdamW's step with 4-bit block-quantised states (common/quant4.h) on the CPU.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../../common/quant4.h"
#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {
namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// Work per element (float32 params): loads p, g (8 B) and a byte of codes for
// both moments, stores p (4 B) and a byte of codes, plus 8 B of absmaxes per
// 128 elements: 13.1 B against the 32-bit step's 28 and the 8-bit step's 16.
// One code block of count <= kQuant4Block elements: decode against the old
// absmaxes, the 32-bit update, the new absmaxes, re-encode. Each pass is its
// own loop over 32-bit lanes, so all but the decode (table lookups) vectorise;
// the encoders count thresholds, 7 and 15 compares, no gather.
template <bool kDecoupled, class P>
SLTRAIN_SIMD_CLONES_WITH_AVX512 void adam4bit_block(int64_t count, P* __restrict param, const P* __restrict grad,
                                                    uint8_t* __restrict exp_avg, float* exp_avg_absmax,
                                                    uint8_t* __restrict sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax,
                                                    const AdamScalars<float>& scalars) {
  const quant4_detail::Codebook& signed_book = quant4_detail::kHostSigned;
  const quant4_detail::Codebook& unsigned_book = quant4_detail::kHostUnsigned;
  // Even sizes: a block's odd last element shares its byte with a padding code.
  float m[kQuant4Block], sqrt_v[kQuant4Block];
  const int64_t bytes = (count + 1) / 2;
  const float m_absmax_old = *exp_avg_absmax, sqrt_v_absmax_old = *sqrt_exp_avg_sq_absmax;
  for (int64_t i = 0; i < bytes; ++i) {
    m[2 * i] = m_absmax_old * signed_book.value[low_code(exp_avg[i])];
    m[2 * i + 1] = m_absmax_old * signed_book.value[high_code(exp_avg[i])];
    sqrt_v[2 * i] = sqrt_v_absmax_old * unsigned_book.value[low_code(sqrt_exp_avg_sq[i])];
    sqrt_v[2 * i + 1] = sqrt_v_absmax_old * unsigned_book.value[high_code(sqrt_exp_avg_sq[i])];
  }
  // Integer maxima of the float bits: the order of non-negative floats, and
  // a NaN moment wins, making its block's absmax NaN instead of vanishing.
  uint32_t m_absmax_bits = 0, sqrt_v_absmax_bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    float v_j = sqrt_v[j] * sqrt_v[j];
    float p = to_float(param[j]);
    scalars.template update_as<kDecoupled>(p, to_float(grad[j]), m[j], v_j);
    param[j] = from_float<P>(p);
    sqrt_v[j] = std::sqrt(v_j);
    m_absmax_bits = std::max(m_absmax_bits, bits_of(std::fabs(m[j])));
    sqrt_v_absmax_bits = std::max(sqrt_v_absmax_bits, bits_of(sqrt_v[j]));
  }
  if (count % 2 != 0) m[count] = sqrt_v[count] = 0.0f;  // the padding code: both moments 0
  float m_absmax, sqrt_v_absmax;
  std::memcpy(&m_absmax, &m_absmax_bits, 4);
  std::memcpy(&sqrt_v_absmax, &sqrt_v_absmax_bits, 4);
  const float m_scale = m_absmax > 0.0f ? 1.0f / m_absmax : 0.0f;
  const float sqrt_v_scale = sqrt_v_absmax > 0.0f ? 1.0f / sqrt_v_absmax : 0.0f;
  int32_t m_code[kQuant4Block], sqrt_v_code[kQuant4Block];
  for (int64_t j = 0; j < 2 * bytes; ++j) {
    m_code[j] = encode_signed4(m[j], m_scale);
    sqrt_v_code[j] = encode_unsigned4(sqrt_v[j], sqrt_v_scale);
  }
  for (int64_t i = 0; i < bytes; ++i) {
    exp_avg[i] = pack_codes(m_code[2 * i], m_code[2 * i + 1]);
    sqrt_exp_avg_sq[i] = pack_codes(sqrt_v_code[2 * i], sqrt_v_code[2 * i + 1]);
  }
  *exp_avg_absmax = m_absmax;
  *sqrt_exp_avg_sq_absmax = sqrt_v_absmax;
}

}  // namespace

template <class P>
void adam4bit_step(int64_t numel, P* param, const P* grad, uint8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper) {
  const AdamScalars<float> scalars(hyper);
  const int64_t blocks = (numel + kQuant4Block - 1) / kQuant4Block;
  const auto run = scalars.decoupled ? adam4bit_block<true, P> : adam4bit_block<false, P>;
  parallel_for(0, blocks, 128, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kQuant4Block;
      run(std::min(kQuant4Block, numel - first), param + first, grad + first, exp_avg + first / 2,
          exp_avg_absmax + block, sqrt_exp_avg_sq + first / 2, sqrt_exp_avg_sq_absmax + block, scalars);
    }
  });
}

#define SLTRAIN_INSTANTIATE_ADAM4BIT(P)                                                    \
  template void adam4bit_step<P>(int64_t, P*, const P*, uint8_t*, float*, uint8_t*, float*, \
                                 const AdamHyper&);
SLTRAIN_INSTANTIATE_ADAM4BIT(float)
SLTRAIN_INSTANTIATE_ADAM4BIT(bf16)
SLTRAIN_INSTANTIATE_ADAM4BIT(fp16)
#undef SLTRAIN_INSTANTIATE_ADAM4BIT

}  // namespace sltrain::cpu
