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

// Per-step scalars, formed in double as torch.optim does, then rounded to S.
template <class S>
struct AdamScalars {
  S weight_decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
      decay;
  bool decoupled;

  explicit AdamScalars(const AdamHyper& h)
      : weight_decay(S(h.weight_decay)),
        one_minus_beta1(S(1.0 - h.beta1)),
        beta2(S(h.beta2)),
        one_minus_beta2(S(1.0 - h.beta2)),
        eps(S(h.eps)),
        step_size(S(h.lr / (1.0 - std::pow(h.beta1, double(h.step))))),
        bias_correction2_sqrt(S(std::sqrt(1.0 - std::pow(h.beta2, double(h.step))))),
        decay(S(1) - S(h.lr) * S(h.weight_decay)),
        decoupled(h.decoupled) {}

  // One element, in torch.optim.AdamW's order of operations.
  void update(S& p, S g, S& m, S& v) const {
    if (decoupled) {
      p *= decay;
    } else {
      g += weight_decay * p;
    }
    m += one_minus_beta1 * (g - m);
    v = v * beta2 + one_minus_beta2 * g * g;
    p -= step_size * (m / (std::sqrt(v) / bias_correction2_sqrt + eps));
  }
};

}  // namespace

template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper) {
  const AdamScalars<S> scalars(hyper);
  parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      S p = load<S>(param[i]);
      scalars.update(p, load<S>(grad[i]), exp_avg[i], exp_avg_sq[i]);
      param[i] = store<P>(p);
    }
  });
}

template <class P>
void adam8bit_step(int64_t numel, P* param, const P* grad, int8_t* exp_avg, float* exp_avg_absmax,
                   uint8_t* sqrt_exp_avg_sq, float* sqrt_exp_avg_sq_absmax, const AdamHyper& hyper) {
  const AdamScalars<float> scalars(hyper);
  const int64_t blocks = (numel + kQuantBlock - 1) / kQuantBlock;
  parallel_for(0, blocks, 64, [&](int64_t block_begin, int64_t block_end) {
    float m[kQuantBlock], v[kQuantBlock];
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kQuantBlock;
      const int64_t count = std::min(kQuantBlock, numel - first);
      float m_absmax = 0.0f, sqrt_v_absmax = 0.0f;
      for (int64_t j = 0; j < count; ++j) {
        const int64_t i = first + j;
        m[j] = decode_signed8(exp_avg[i], exp_avg_absmax[block]);
        const float sqrt_v = decode_unsigned8(sqrt_exp_avg_sq[i], sqrt_exp_avg_sq_absmax[block]);
        v[j] = sqrt_v * sqrt_v;
        float p = load<float>(param[i]);
        scalars.update(p, load<float>(grad[i]), m[j], v[j]);
        param[i] = store<P>(p);
        m_absmax = std::max(m_absmax, std::fabs(m[j]));
        sqrt_v_absmax = std::max(sqrt_v_absmax, std::sqrt(v[j]));
      }
      for (int64_t j = 0; j < count; ++j) {
        exp_avg[first + j] = encode_signed8(m[j], m_absmax);
        sqrt_exp_avg_sq[first + j] = encode_unsigned8(std::sqrt(v[j]), sqrt_v_absmax);
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
