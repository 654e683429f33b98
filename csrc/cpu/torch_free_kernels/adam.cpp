#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "../../common/quant8.h"
#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {
namespace {

template <class S, class P>
S load(P x) {
  if constexpr (std::is_same_v<P, bf16> || std::is_same_v<P, fp16>) {
    return S(to_float(x));
  } else {
    return S(x);
  }
}

template <class P, class S>
P store(S x) {
  if constexpr (std::is_same_v<P, bf16>) {
    return to_bf16(float(x));
  } else if constexpr (std::is_same_v<P, fp16>) {
    return to_fp16(float(x));
  } else {
    return P(x);
  }
}

// The decay kind is a template argument: with no branch left in the loop it vectorises.
template <bool kDecoupled, class P, class S>
SLTRAIN_SIMD_CLONES void adam_range(int64_t begin, int64_t end, P* __restrict param,
                                    const P* __restrict grad, S* __restrict exp_avg,
                                    S* __restrict exp_avg_sq, const AdamScalars<S>& scalars) {
  for (int64_t i = begin; i < end; ++i) {
    S p = load<S>(param[i]);
    scalars.template update_as<kDecoupled>(p, load<S>(grad[i]), exp_avg[i], exp_avg_sq[i]);
    param[i] = store<P>(p);
  }
}

// decode_signed8 / decode_unsigned8 of every code at absmax 1, so that
// decoding is one load and one multiply.
struct DecodeTables {
  float signed_code[256];  // indexed by the code's bits as uint8
  float unsigned_code[256];
  DecodeTables() {
    for (int q = 0; q < 256; ++q) {
      signed_code[q] = q == 128 ? 0.0f : decode_signed8(int8_t(uint8_t(q)), 1.0f);
      unsigned_code[q] = decode_unsigned8(uint8_t(q), 1.0f);
    }
  }
};

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// The decoded moments of a block at absmax 1: table loads, kept out of the
// vector loops (vectorised, each load becomes an extract and an insert).
__attribute__((noinline, optimize("no-tree-vectorize"))) void decode_block(
    int64_t count, const int8_t* __restrict exp_avg, const uint8_t* __restrict sqrt_exp_avg_sq,
    const DecodeTables& tables, float* __restrict m, float* __restrict sqrt_v) {
  for (int64_t j = 0; j < count; ++j) {
    m[j] = tables.signed_code[uint8_t(exp_avg[j])];
    sqrt_v[j] = tables.unsigned_code[sqrt_exp_avg_sq[j]];
  }
}

// One code block of count <= kQuantBlock elements: decode against the old
// absmaxes, the 32-bit update, the new absmaxes, re-encode. The loops over
// floats see only 32-bit types, so they vectorise 8 wide without spilling;
// the absmaxes are integer maxima of the float bits (the same order for
// non-negative floats; a NaN moment wins and makes its block's absmax NaN
// instead of vanishing from it).
template <bool kDecoupled, class P>
SLTRAIN_SIMD_CLONES_WITH_AVX512 void adam8bit_block(int64_t count, P* __restrict param, const P* __restrict grad,
                                        int8_t* __restrict exp_avg, float* exp_avg_absmax,
                                        uint8_t* __restrict sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax,
                                        const AdamScalars<float>& scalars, const DecodeTables& tables) {
  float m[kQuantBlock], sqrt_v[kQuantBlock];
  int32_t m_code[kQuantBlock], sqrt_v_code[kQuantBlock];
  decode_block(count, exp_avg, sqrt_exp_avg_sq, tables, m, sqrt_v);
  const float m_absmax_old = *exp_avg_absmax, sqrt_v_absmax_old = *sqrt_exp_avg_sq_absmax;
  uint32_t m_absmax_bits = 0, sqrt_v_absmax_bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    float m_j = m_absmax_old * m[j];
    const float old_sqrt_v = sqrt_v_absmax_old * sqrt_v[j];
    float v_j = old_sqrt_v * old_sqrt_v;
    float p = load<float>(param[j]);
    scalars.template update_as<kDecoupled>(p, load<float>(grad[j]), m_j, v_j);
    param[j] = store<P>(p);
    m[j] = m_j;
    sqrt_v[j] = std::sqrt(v_j);
    m_absmax_bits = std::max(m_absmax_bits, bits_of(std::fabs(m_j)));
    sqrt_v_absmax_bits = std::max(sqrt_v_absmax_bits, bits_of(sqrt_v[j]));
  }
  const float m_absmax = from_bits(m_absmax_bits), sqrt_v_absmax = from_bits(sqrt_v_absmax_bits);
  const float m_scale = m_absmax > 0.0f ? 1.0f / m_absmax : 0.0f;
  const float sqrt_v_scale = sqrt_v_absmax > 0.0f ? 1.0f / sqrt_v_absmax : 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    m_code[j] = encode_signed8(m[j], m_scale);
    sqrt_v_code[j] = encode_unsigned8(sqrt_v[j], sqrt_v_scale);
  }
  for (int64_t j = 0; j < count; ++j) {
    exp_avg[j] = int8_t(m_code[j]);
    sqrt_exp_avg_sq[j] = uint8_t(sqrt_v_code[j]);
  }
  *exp_avg_absmax = m_absmax;
  *sqrt_exp_avg_sq_absmax = sqrt_v_absmax;
}

}  // namespace

template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper) {
  const AdamScalars<S> scalars(hyper);
  parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    const auto run = scalars.decoupled ? adam_range<true, P, S> : adam_range<false, P, S>;
    run(begin, end, param, grad, exp_avg, exp_avg_sq, scalars);
  });
}

template <class P>
void adam8bit_step(int64_t numel, P* param, const P* grad, int8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper) {
  const AdamScalars<float> scalars(hyper);
  const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
  static const DecodeTables tables;
  parallel_for(0, blocks, 64, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kQuantBlock;
      const auto run = scalars.decoupled ? adam8bit_block<true, P> : adam8bit_block<false, P>;
      run(std::min(kQuantBlock, numel - first), param + first, grad + first, exp_avg + first,
          exp_avg_absmax + block, sqrt_exp_avg_sq + first, sqrt_exp_avg_sq_absmax + block, scalars, tables);
    }
  });
}

template void adam_step<float, float>(int64_t, float*, const float*, float*, float*,
                                      const AdamHyper&);
template void adam_step<double, double>(int64_t, double*, const double*, double*, double*,
                                        const AdamHyper&);
template void adam_step<bf16, float>(int64_t, bf16*, const bf16*, float*, float*, const AdamHyper&);
template void adam_step<fp16, float>(int64_t, fp16*, const fp16*, float*, float*, const AdamHyper&);

#define SLTRAIN_INSTANTIATE_ADAM8BIT(P)                                                   \
  template void adam8bit_step<P>(int64_t, P*, const P*, int8_t*, float*, uint8_t*, float*, \
                                 const AdamHyper&);
SLTRAIN_INSTANTIATE_ADAM8BIT(float)
SLTRAIN_INSTANTIATE_ADAM8BIT(bf16)
SLTRAIN_INSTANTIATE_ADAM8BIT(fp16)

}  // namespace sltrain::cpu
