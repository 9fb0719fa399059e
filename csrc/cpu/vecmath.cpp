// exp_shift_sum: the softmax inner loop (exp of shifted scores and their sum), AVX2 or portable,
// chosen at run time (used by attention and cross-entropy); and the ops' dispatch switch.
#include "cpu/vecmath.h"

#include <atomic>

#include "common/cpu_features.h"
#include "cpu/dispatch.h"

namespace kgpt {
namespace cpu {
namespace {

#ifdef KGPT_HAVE_EXP8
__attribute__((target("avx2,fma"))) float exp_shift_sum_avx2(float* s, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
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
  if (ops_use_avx2()) return exp_shift_sum_avx2(s, n, shift);
#endif
  return exp_shift_sum_portable(s, n, shift);
}

}  // namespace cpu
}  // namespace kgpt
