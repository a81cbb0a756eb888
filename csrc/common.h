// Shared helpers for lckernels' CPU kernels.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LCK_AVX2 1
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#define LCK_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor")
#define LCK_CHECK_CONTIG(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define LCK_CHECK_DTYPE(x, dt) TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype " #dt ", got ", (x).scalar_type())
#define LCK_CHECK_INPUT(x, dt) \
  LCK_CHECK_CPU(x);            \
  LCK_CHECK_CONTIG(x);         \
  LCK_CHECK_DTYPE(x, dt)

namespace lck {

// Threads of every OpenMP region in csrc: torch's intra-op budget (torch.set_num_threads, which the trainer sets
// from the cores actually available), not the OpenMP default (OMP_NUM_THREADS or every CPU).  at::get_num_threads()
// also applies that budget to a thread that has not run a torch op yet (omp_set_num_threads is per thread), and it
// stays right if the extension and torch ever load two different OpenMP runtimes.  Use as
// `#pragma omp parallel for num_threads(lck::num_threads())`.
inline int num_threads() { return std::max(1, at::get_num_threads()); }

// exp(x) for float, written so that GCC/Clang vectorize it inside `#pragma omp simd` loops (libm's expf is a call
// that blocks vectorization without -ffast-math).  Range reduction x = n*ln2 + r, |r| <= ln2/2 (n rounded with the
// 1.5*2^23 magic-number trick, which needs no floor/convert), a degree-6 Horner polynomial for e^r, and 2^n assembled
// in the exponent bits.  Max relative error ~2e-7 on the range softmax uses (x <= 0); exactly 0 below -87.3.
static inline __attribute__((always_inline)) float fast_expf(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693145751953125f;
  const float kLn2Lo = 1.428606765330187e-06f;
  const float kShift = 12582912.0f;  // 1.5 * 2^23
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > 88.3f ? 88.3f : xc;
  const float shifted = xc * kLog2e + kShift;
  const float n = shifted - kShift;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.3888889e-3f;    // 1/720
  p = p * r + 8.3333333e-3f;  // 1/120
  p = p * r + 4.1666667e-2f;  // 1/24
  p = p * r + 1.6666667e-1f;  // 1/6
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t ni = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kShift);
  const float scale = std::bit_cast<float>((ni + 127) << 23);
  const float res = p * scale;
  return x < -87.3f ? 0.0f : res;
}

#ifdef LCK_AVX2
// 8-wide AVX2 version of fast_expf (same reduction and polynomial, so scalar tails agree to the last bit).
static inline __m256 fast_exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  const __m256 shift = _mm256_set1_ps(12582912.0f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 shifted = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), shift);
  const __m256 n = _mm256_sub_ps(shifted, shift);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.3888889e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3333333e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1666667e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666667e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(shift));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
  return _mm256_and_ps(_mm256_mul_ps(p, scale), keep);
}

static inline float vec_hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

static inline float vec_hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}
#endif

}  // namespace lck
