// The Adam/AdamW update of one element, shared by the CPU and CUDA kernels so
// both follow torch.optim.AdamW's order of operations exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "support_hash.h"  // SLTRAIN_HOST_DEVICE

namespace sltrain {

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;    // 1 on the first update: the bias corrections use it
  bool decoupled;  // AdamW (decay the parameter) rather than Adam (L2 in the gradient)
};

// Per-step scalars, formed in double on the host as torch.optim does, then
// rounded to the state type S. Passed to CUDA kernels by value.
template <class S>
struct AdamScalars {
  S weight_decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
      decay;
  bool decoupled;

  // Host and device: capturable steps form them on the device from a step
  // count in device memory (::pow and ::sqrt name the double functions of both).
  SLTRAIN_HOST_DEVICE explicit AdamScalars(const AdamHyper& h)
      : weight_decay(S(h.weight_decay)),
        one_minus_beta1(S(1.0 - h.beta1)),
        beta2(S(h.beta2)),
        one_minus_beta2(S(1.0 - h.beta2)),
        eps(S(h.eps)),
        step_size(S(h.lr / (1.0 - ::pow(h.beta1, double(h.step))))),
        bias_correction2_sqrt(S(::sqrt(1.0 - ::pow(h.beta2, double(h.step))))),
        decay(S(1) - S(h.lr) * S(h.weight_decay)),
        decoupled(h.decoupled) {}

  // One element, in torch.optim.AdamW's order of operations.
  SLTRAIN_HOST_DEVICE void update(S& p, S g, S& m, S& v) const {
    if (decoupled) {
      update_as<true>(p, g, m, v);
    } else {
      update_as<false>(p, g, m, v);
    }
  }

  // The same with the kind of decay fixed at compile time: loops that decide
  // it once, outside, have no branch left inside and vectorise.
  template <bool kDecoupled>
  SLTRAIN_HOST_DEVICE void update_as(S& p, S g, S& m, S& v) const {
    using std::sqrt;
    if constexpr (kDecoupled) {
      p *= decay;
    } else {
      g += weight_decay * p;
    }
    m += one_minus_beta1 * (g - m);
    v = v * beta2 + one_minus_beta2 * g * g;
    p -= step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps));
  }
};

}  // namespace sltrain
