// Shared helpers for lckernels' CPU kernels.
#pragma once

#include <torch/extension.h>

#include <bit>
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

}  // namespace lck
