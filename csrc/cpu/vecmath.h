// Branch-free float exp used inside loops that the compiler vectorises (attention softmax,
// cross-entropy, GELU's portable path). Cephes-style: 2^n * p(r) with r = x - n ln2 split in two
// parts, degree-6 polynomial; about 2 ulp over the clamped range, exp(-inf) -> 0. No library call,
// so AVX2 clones of the calling loops vectorise it.
#pragma once
#include <cstdint>
#include <cstring>

namespace kgpt {
namespace cpu {

static inline __attribute__((always_inline)) float exp_approx(float x) {
  // Clamp: below -87.3 the result underflows to ~0 (we return 0 below -87), above 88.3 overflows.
  const float lo = -87.0f, hi = 88.3f;
  const bool under = x < lo;
  x = x < lo ? lo : (x > hi ? hi : x);
  const float t = x * 1.44269504088896341f + 0.5f;
  float fn = static_cast<float>(static_cast<int32_t>(t));
  fn = fn > t ? fn - 1.0f : fn;  // floor for negative t
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(fn) + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof s);
  const float res = p * s;
  return under ? 0.0f : res;
}

}  // namespace cpu
}  // namespace kgpt
