// Shared helpers for lckernels' CPU kernels.
#pragma once

#include <torch/extension.h>

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
// that blocks vectorization without -ffast-math).  Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then a
// degree-6 Taylor/Horner polynomial for e^r and 2^n assembled in the exponent bits.  Max relative error ~2e-7 over
// the range we use (x <= 0 in softmax); returns exactly 0 below -87.3 (where expf underflows to denormals).
static inline float fast_expf(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693145751953125f;
  const float kLn2Lo = 1.428606765330187e-06f;
  const bool underflow = x < -87.3f;
  x = x > 88.3f ? 88.3f : x;
  x = x < -87.3f ? -87.3f : x;
  const float n = std::floor(x * kLog2e + 0.5f);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.3888889e-3f;  // 1/720
  p = p * r + 8.3333333e-3f;  // 1/120
  p = p * r + 4.1666667e-2f;  // 1/24
  p = p * r + 1.6666667e-1f;  // 1/6
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.0f : p * scale;
}

}  // namespace lck
