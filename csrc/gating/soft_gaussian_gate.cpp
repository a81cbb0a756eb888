// MASPO's mass-adaptive soft Gaussian gate, elementwise (see lckernels/ops/gating/reference.py for the formula).
#include "common.h"

#include <algorithm>

namespace lck {

torch::Tensor soft_gaussian_gate(torch::Tensor ratio, torch::Tensor old_logprobs, torch::Tensor advantages,
                                 double sigma_base, double alpha, double beta_pos, double beta_neg, double sigma_high,
                                 double a_low, double a_high) {
  LCK_CHECK_INPUT(ratio, torch::kFloat32);
  LCK_CHECK_INPUT(old_logprobs, torch::kFloat32);
  LCK_CHECK_INPUT(advantages, torch::kFloat32);
  TORCH_CHECK(ratio.numel() == old_logprobs.numel() && ratio.numel() == advantages.numel(),
              "ratio, old_logprobs and advantages must have the same number of elements");
  auto out = torch::empty_like(ratio);
  const float* R = ratio.data_ptr<float>();
  const float* L = old_logprobs.data_ptr<float>();
  const float* A = advantages.data_ptr<float>();
  float* W = out.data_ptr<float>();
  const int64_t n = ratio.numel();
  const float sb = sigma_base, al = alpha, bp = beta_pos, bn = beta_neg, sh = sigma_high, lo = a_low, hi = a_high;
#pragma omp parallel for simd schedule(static) num_threads(lck::num_threads())
  for (int64_t i = 0; i < n; ++i) {
    const float r = R[i], a = A[i];
    // p_old^alpha = exp(alpha * log p_old); sigma_mass = clamp(sigma_base / p_old^alpha, sigma_base, sigma_high)
    const float mass = std::clamp(sb * std::exp(-al * L[i]), sb, sh);
    const float s_pos = mass * std::clamp(1.0f + bp * a, lo, hi);
    const float s_neg = mass * std::clamp(1.0f / (1.0f - bn * std::min(a, 0.0f)), lo, hi);
    const bool pos = (a > 0.0f) && (r > 1.0f);
    const bool neg = (a < 0.0f) && (r < 1.0f);
    const float s = pos ? s_pos : s_neg;
    const float d = r - 1.0f;
    W[i] = (pos || neg) ? std::exp(-d * d / (2.0f * s * s)) : 1.0f;
  }
  return out;
}

}  // namespace lck
