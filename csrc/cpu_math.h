// Shared helpers of the CPU kernels: bf16 <-> fp32 and exp / tanh written as branch-free
// float arithmetic so that GCC vectorises the loops that call them (std::exp would not be).
// Bits move with __builtin_bit_cast: a memcpy through a local blocks vectorisation.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>

// The extension is built for the x86-64 baseline (no -march=native: a build must run on any x86-64 CPU).
// Each function holding a hot loop is compiled three times, for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3)
// and the baseline, and the dynamic loader picks the best one this CPU runs (GCC function multiversioning).
// Helpers such as fast_exp stay plain inline functions: they are inlined into each version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FUSED_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSED_CPU_MULTIVERSION
#endif

namespace fused_cpu {

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {  // bf16 is the high half of an fp32
  return __builtin_bit_cast(float, static_cast<uint32_t>(x.x) << 16);
}

template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline c10::BFloat16 from_float<c10::BFloat16>(float x) {
  // Round to nearest even, as torch does; any NaN becomes the quiet NaN.
  uint32_t bits = __builtin_bit_cast(uint32_t, x);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  c10::BFloat16 out;
  out.x = x != x ? uint16_t{0x7FC0} : static_cast<uint16_t>(bits >> 16);
  return out;
}

// exp(x) for x in [-87.3, 88] (clamped), Cephes' degree-6 polynomial on [-ln2/2, ln2/2]:
// within 2 ulp of std::exp, and vectorisable.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln2) by the 1.5 * 2^23 trick (floorf does not vectorise without -fno-trapping-math).
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln2, ln2 split in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);  // p * 2^n
}

// tanh(z) = 1 - 2 / (exp(2z) + 1); |z| > 9 is +-1 in fp32.
inline float fast_tanh(float z) {
  z = z < -9.0f ? -9.0f : (z > 9.0f ? 9.0f : z);
  return 1.0f - 2.0f / (fast_exp(2.0f * z) + 1.0f);
}

// dx = scale * y * (g - <g, y>) over n entries of a row: the gradient of y = softmax(scale * x).
// static: every kernel file gets its own versions (no clash of multiversioned symbols at link time).
template <typename T>
FUSED_CPU_MULTIVERSION static void softmax_backward_row(const T* g, const T* y, T* dx, int64_t n, float scale) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; ++j) dot += to_float(g[j]) * to_float(y[j]);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dx[j] = from_float<T>(scale * to_float(y[j]) * (to_float(g[j]) - dot));
}

}  // namespace fused_cpu
