#include <cmath>

#include "kernels.h"
#include "parallel.h"

namespace sltrain::cpu {
namespace {

template <class S>
S load(float x) { return S(x); }
template <class S>
S load(double x) { return S(x); }
template <class S>
S load(bf16 x) { return S(to_float(x)); }
template <class S>
S load(fp16 x) { return S(to_float(x)); }

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

}  // namespace

template <class P, class S>
void adam_step(int64_t numel, P* param, const P* grad, S* exp_avg, S* exp_avg_sq,
               const AdamHyper& hyper) {
  // Scalars are formed in double as torch.optim does, then rounded to S once.
  const S lr = S(hyper.lr);
  const S weight_decay = S(hyper.weight_decay);
  const S one_minus_beta1 = S(1.0 - hyper.beta1);
  const S beta2 = S(hyper.beta2);
  const S one_minus_beta2 = S(1.0 - hyper.beta2);
  const S eps = S(hyper.eps);
  const double bias_correction1 = 1.0 - std::pow(hyper.beta1, double(hyper.step));
  const double bias_correction2 = 1.0 - std::pow(hyper.beta2, double(hyper.step));
  const S step_size = S(hyper.lr / bias_correction1);
  const S bias_correction2_sqrt = S(std::sqrt(bias_correction2));
  const S decay = S(1) - lr * weight_decay;
  parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      S p = load<S>(param[i]);
      S g = load<S>(grad[i]);
      if (hyper.decoupled) {
        p *= decay;
      } else {
        g += weight_decay * p;
      }
      const S m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
      const S v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      p -= step_size * (m / (std::sqrt(v) / bias_correction2_sqrt + eps));
      param[i] = store<P>(p);
    }
  });
}

template void adam_step<float, float>(int64_t, float*, const float*, float*, float*,
                                      const AdamHyper&);
template void adam_step<double, double>(int64_t, double*, const double*, double*, double*,
                                        const AdamHyper&);
template void adam_step<bf16, float>(int64_t, bf16*, const bf16*, float*, float*, const AdamHyper&);
template void adam_step<fp16, float>(int64_t, fp16*, const fp16*, float*, float*, const AdamHyper&);

}  // namespace sltrain::cpu
