// exp_shift_sum: the softmax inner loop (exp of shifted scores and their sum), AVX-512, AVX2 or
// portable (the vector paths give the same bits),
// chosen at run time (used by attention and cross-entropy); and the ops' dispatch switch.
#include "cpu/vecmath.h"

#include <atomic>

#include "common/cpu_features.h"
#include "cpu/dispatch.h"

namespace kgpt {
namespace cpu {
namespace {

#ifdef KGPT_HAVE_EXP8
// Elements [i, n) onto acc, the running 8-lane sum of [0, i) (lane l holding the elements
// = l mod 8, added in order); then the lanes in a fixed tree, then the tail one by one.
KGPT_TARGET_AVX2 float exp_shift_sum_avx2_from(float* s, int64_t n,
                                                                 float shift, int64_t i,
                                                                 __m256 acc) {
  const __m256 sh = _mm256_set1_ps(shift);
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + i), sh));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float tot = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
              ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; i < n; ++i) {
    s[i] = exp_approx(s[i] - shift);
    tot += s[i];
  }
  return tot;
}

KGPT_TARGET_AVX2 float exp_shift_sum_avx2(float* s, int64_t n, float shift) {
  return exp_shift_sum_avx2_from(s, n, shift, 0, _mm256_setzero_ps());
}

// The AVX2 loop on 16 lanes: exp16_avx512 equals exp8_avx2 lane for lane, and each 16-lane
// result is added to the 8-lane sum as its low then its high half, the same additions in the
// same order as the AVX2 loop (bitwise the same sum); the remainder goes through that loop.
KGPT_TARGET_AVX512 float exp_shift_sum_avx512(float* s, int64_t n,
                                                                      float shift) {
  const __m512 sh = _mm512_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + i), sh));
    _mm512_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
    acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  }
  return exp_shift_sum_avx2_from(s, n, shift, i, acc);
}
#endif

float exp_shift_sum_portable(float* s, int64_t n, float shift) {
  float tot = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = exp_approx(s[i] - shift);
    tot += s[i];
  }
  return tot;
}

std::atomic<bool> g_force_portable{false};
std::atomic<bool> g_allow_avx512{true};

}  // namespace

bool ops_use_avx2() { return cpu_has_avx2_fma() && !g_force_portable.load(std::memory_order_relaxed); }
void ops_set_force_portable(bool on) { g_force_portable.store(on); }
bool ops_use_avx512() {
  return ops_use_avx2() && cpu_has_avx512f() && g_allow_avx512.load(std::memory_order_relaxed);
}
void ops_set_allow_avx512(bool on) { g_allow_avx512.store(on); }

float exp_shift_sum(float* s, int64_t n, float shift) {
#ifdef KGPT_HAVE_EXP8
  if (ops_use_avx512()) return exp_shift_sum_avx512(s, n, shift);
  if (ops_use_avx2()) return exp_shift_sum_avx2(s, n, shift);
#endif
  return exp_shift_sum_portable(s, n, shift);
}

}  // namespace cpu
}  // namespace kgpt
