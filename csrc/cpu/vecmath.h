// Branch-free float exp used inside loops that the compiler vectorises (attention softmax,
// cross-entropy, GELU). Cephes-style: 2^n * p(r) with r = x - n ln2 split in two parts, degree-6
// polynomial; about 2 ulp over the clamped range, exp(x < -87) -> 0 (so exp(-inf) = 0). No library
// call. GCC does not vectorise it under -ftrapping-math (the clamps stay branches), so hot loops
// call exp_shift_sum / the AVX2 intrinsics below instead.
#pragma once
#include <cstdint>
#include <cstring>

namespace kgpt {
namespace cpu {

static inline __attribute__((always_inline)) float exp_approx(float x) {
  const float lo = -87.0f, hi = 88.3f;
  const float under = x < lo ? 0.0f : 1.0f;  // results below e^-87 flush to 0
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float t = x * 1.44269504088896341f;
  const float fn = __builtin_floorf(t + 0.5f);  // round to nearest: |r| <= ln2/2
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // fn lies in [-125, 127] for every clamped x; a NaN x (p is NaN then) gets fn 0 here, since
  // converting NaN to an integer, or shifting the negative result, is undefined behaviour.
  const int32_t e = ((fn >= -126.0f && fn <= 127.0f ? static_cast<int32_t>(fn) : 0) + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof s);
  return p * s * under;
}

}  // namespace cpu
}  // namespace kgpt

namespace kgpt {
namespace cpu {
// s[i] = exp(s[i] - shift) for i < n, returns the float sum of the results (AVX2 path: 8 lanes,
// then the lanes in a fixed order; portable path: serial). Deterministic on a given machine.
float exp_shift_sum(float* s, int64_t n, float shift);
}  // namespace cpu
}  // namespace kgpt

#include "common/isa.h"
#if KGPT_X86
namespace kgpt {
namespace cpu {
// Eight lanes of exp_approx, same constants and rounding (fused multiply-adds where it pays).
KGPT_TARGET_AVX2 static inline __m256 exp8_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.3f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);  // 0 below -87 (and for NaN)
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 fn = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

// Sixteen lanes of exp8_avx2: the same operations lane by lane (bitwise the same results).
KGPT_TARGET_AVX512 static inline __m512 exp16_avx512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f), hi = _mm512_set1_ps(88.3f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);  // 0 below -87 (and for NaN)
  x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  const __m512 fn = _mm512_roundscale_ps(
      _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(fn), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}
}  // namespace cpu
}  // namespace kgpt
#define KGPT_HAVE_EXP8 1
#endif
