#include <algorithm>
#include <cmath>
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

template <class P, class S>
SLTRAIN_SIMD_CLONES void adam_range(int64_t begin, int64_t end, P* __restrict param,
                                    const P* __restrict grad, S* __restrict exp_avg,
                                    S* __restrict exp_avg_sq, const AdamScalars<S>& scalars) {
  for (int64_t i = begin; i < end; ++i) {
    S p = load<S>(param[i]);
    scalars.update(p, load<S>(grad[i]), exp_avg[i], exp_avg_sq[i]);
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

}  // namespace

template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper) {
  const AdamScalars<S> scalars(hyper);
  parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    adam_range(begin, end, param, grad, exp_avg, exp_avg_sq, scalars);
  });
}

template <class P>
void adam8bit_step(int64_t numel, P* param, const P* grad, int8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper) {
  const AdamScalars<float> scalars(hyper);
  const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
  static const DecodeTables tables;
  // Per block: decode, the same vectorised update as the 32-bit path on the
  // decoded moments, then requantise against the new absmaxes.
  parallel_for(0, blocks, 64, [&](int64_t block_begin, int64_t block_end) {
    float m[kQuantBlock], v[kQuantBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kQuantBlock;
      const int64_t count = std::min(kQuantBlock, numel - first);
      const float m_absmax_old = exp_avg_absmax[block];
      const float sqrt_v_absmax_old = sqrt_exp_avg_sq_absmax[block];
      for (int64_t j = 0; j < count; ++j) {
        m[j] = m_absmax_old * tables.signed_code[uint8_t(exp_avg[first + j])];
        const float sqrt_v = sqrt_v_absmax_old * tables.unsigned_code[sqrt_exp_avg_sq[first + j]];
        v[j] = sqrt_v * sqrt_v;
      }
      adam_range(0, count, param + first, grad + first, m, v, scalars);
      float m_absmax = 0.0f, sqrt_v_absmax = 0.0f;
      for (int64_t j = 0; j < count; ++j) {
        v[j] = std::sqrt(v[j]);
        m_absmax = std::max(m_absmax, std::fabs(m[j]));
        sqrt_v_absmax = std::max(sqrt_v_absmax, v[j]);
      }
      const float m_scale = m_absmax > 0.0f ? 1.0f / m_absmax : 0.0f;
      const float sqrt_v_scale = sqrt_v_absmax > 0.0f ? 1.0f / sqrt_v_absmax : 0.0f;
      for (int64_t j = 0; j < count; ++j) {
        exp_avg[first + j] = encode_signed8(m[j], m_scale);
        sqrt_exp_avg_sq[first + j] = encode_unsigned8(v[j], sqrt_v_scale);
      }
      exp_avg_absmax[block] = m_absmax;
      sqrt_exp_avg_sq_absmax[block] = sqrt_v_absmax;
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
