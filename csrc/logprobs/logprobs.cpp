// CPU kernels for fused_logprobs: the elementwise work on one vocabulary chunk of logits.
//
// The Python driver (lckernels/ops/logprobs/cpu.py) streams over vocabulary chunks [c0, c0 + C): it computes the raw
// chunk of logits with one GEMM (MKL/oneDNN through ATen) and calls these kernels, which make one or two passes over
// the chunk per row, fused, with OpenMP across rows.  Peak extra memory is O(N * C), never O(N * V).
//
// Forward state per row (fp32), kept relative to the running max m so that nothing cancels:
//   s = sum_j exp(z_j - m),   t = sum_j exp(z_j - m) * (z_j - m),   zy = z_target
// giving lse = m + log s, logprob = zy - lse, entropy = log s - t / s.
#include "common.h"

#include <algorithm>
#include <vector>

namespace lck {

void logprobs_fwd_chunk(torch::Tensor logits, torch::Tensor targets, int64_t chunk_start, double inv_temperature,
                        torch::Tensor m, torch::Tensor s, torch::Tensor t, torch::Tensor zy) {
  LCK_CHECK_INPUT(logits, torch::kFloat32);
  LCK_CHECK_INPUT(targets, torch::kInt64);
  LCK_CHECK_INPUT(m, torch::kFloat32);
  LCK_CHECK_INPUT(s, torch::kFloat32);
  LCK_CHECK_INPUT(t, torch::kFloat32);
  LCK_CHECK_INPUT(zy, torch::kFloat32);
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [N, C], got ", logits.sizes());
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(targets.numel() == N && m.numel() == N && s.numel() == N && t.numel() == N && zy.numel() == N,
              "targets/m/s/t/zy must have N = ", N, " elements");
  float* Z = logits.data_ptr<float>();
  const int64_t* Y = targets.data_ptr<int64_t>();
  float* M = m.data_ptr<float>();
  float* S = s.data_ptr<float>();
  float* T = t.data_ptr<float>();
  float* ZY = zy.data_ptr<float>();
  const float scale = static_cast<float>(inv_temperature);

#pragma omp parallel for schedule(static) num_threads(lck::num_threads())
  for (int64_t i = 0; i < N; ++i) {
    float* z = Z + i * C;
    float mc = -std::numeric_limits<float>::infinity();
    float sc = 0.f, tc = 0.f;
    int64_t j = 0;
#ifdef LCK_AVX2
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (; j + 8 <= C; j += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(z + j), vscale);
      _mm256_storeu_ps(z + j, v);
      vmax = _mm256_max_ps(vmax, v);
    }
    mc = vec_hmax8(vmax);
#endif
    for (; j < C; ++j) {
      z[j] *= scale;
      mc = std::max(mc, z[j]);
    }
    j = 0;
#ifdef LCK_AVX2
    const __m256 vmc = _mm256_set1_ps(mc);
    __m256 vs = _mm256_setzero_ps(), vt = _mm256_setzero_ps();
    for (; j + 8 <= C; j += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(z + j), vmc);
      const __m256 e = fast_exp8(d);
      vs = _mm256_add_ps(vs, e);
      vt = _mm256_fmadd_ps(e, d, vt);
    }
    sc = vec_hsum8(vs);
    tc = vec_hsum8(vt);
#endif
    for (; j < C; ++j) {
      const float d = z[j] - mc;
      const float e = fast_expf(d);
      sc += e;
      tc += e * d;
    }
    const int64_t y = Y[i] - chunk_start;
    if (y >= 0 && y < C) ZY[i] = z[y];
    // merge (m, s, t) with (mc, sc, tc)
    const float mo = M[i];
    if (S[i] == 0.f) {
      M[i] = mc;
      S[i] = sc;
      T[i] = tc;
    } else {
      const float mn = std::max(mo, mc);
      const float ao = std::exp(mo - mn), ac = std::exp(mc - mn);
      T[i] = ao * (T[i] + (mo - mn) * S[i]) + ac * (tc + (mc - mn) * sc);
      S[i] = ao * S[i] + ac * sc;
      M[i] = mn;
    }
  }
}

// In place: logits (raw, [N, C]) become d loss / d raw logits for the chunk:
//   p = exp(z - lse), z = raw * inv_temperature,
//   dz = g * (1[j == y] - p) - ge * p * (z - lse + H),   d raw = dz * inv_temperature.
// Rows whose target equals ignore_index get zeros.  grad_entropy may be an empty tensor (no entropy gradient).
void logprobs_bwd_chunk(torch::Tensor logits, torch::Tensor targets, int64_t chunk_start, double inv_temperature,
                        torch::Tensor lse, torch::Tensor entropy, torch::Tensor grad_logprobs,
                        torch::Tensor grad_entropy, int64_t ignore_index) {
  LCK_CHECK_INPUT(logits, torch::kFloat32);
  LCK_CHECK_INPUT(targets, torch::kInt64);
  LCK_CHECK_INPUT(lse, torch::kFloat32);
  LCK_CHECK_INPUT(entropy, torch::kFloat32);
  LCK_CHECK_INPUT(grad_logprobs, torch::kFloat32);
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [N, C], got ", logits.sizes());
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(targets.numel() == N && lse.numel() == N && entropy.numel() == N && grad_logprobs.numel() == N,
              "targets/lse/entropy/grad_logprobs must have N = ", N, " elements");
  const bool has_ge = grad_entropy.numel() > 0;
  if (has_ge) {
    LCK_CHECK_INPUT(grad_entropy, torch::kFloat32);
    TORCH_CHECK(grad_entropy.numel() == N, "grad_entropy must have N = ", N, " elements");
  }
  float* Z = logits.data_ptr<float>();
  const int64_t* Y = targets.data_ptr<int64_t>();
  const float* L = lse.data_ptr<float>();
  const float* H = entropy.data_ptr<float>();
  const float* G = grad_logprobs.data_ptr<float>();
  const float* GE = has_ge ? grad_entropy.data_ptr<float>() : nullptr;
  const float scale = static_cast<float>(inv_temperature);

#pragma omp parallel for schedule(static) num_threads(lck::num_threads())
  for (int64_t i = 0; i < N; ++i) {
    float* z = Z + i * C;
    if (Y[i] == ignore_index) {
      std::fill(z, z + C, 0.f);
      continue;
    }
    const float g = G[i] * scale;
    const float ge = has_ge ? GE[i] * scale : 0.f;
    const float l = L[i];
    const float h = H[i];
    int64_t j = 0;
#ifdef LCK_AVX2
    const __m256 vscale = _mm256_set1_ps(scale), vl = _mm256_set1_ps(l), vh = _mm256_set1_ps(h);
    const __m256 vg = _mm256_set1_ps(g), vge = _mm256_set1_ps(ge), vneg = _mm256_set1_ps(-0.0f);
    for (; j + 8 <= C; j += 8) {
      const __m256 logp = _mm256_fmsub_ps(_mm256_loadu_ps(z + j), vscale, vl);
      const __m256 p = fast_exp8(logp);
      const __m256 coef = _mm256_fmadd_ps(vge, _mm256_add_ps(logp, vh), vg);
      _mm256_storeu_ps(z + j, _mm256_xor_ps(_mm256_mul_ps(p, coef), vneg));
    }
#endif
    for (; j < C; ++j) {
      const float logp = z[j] * scale - l;
      const float p = fast_expf(logp);
      z[j] = -p * (g + ge * (logp + h));
    }
    const int64_t y = Y[i] - chunk_start;
    if (y >= 0 && y < C) z[y] += g;
  }
}

}  // namespace lck
