// Optimizer-side kernels over the flat parameter/gradient buffers: global_norm_sq (float64 sum of
// squares over fixed 64 Ki-element chunks, partials added serially in chunk order, so the result
// is the same for any thread count), scale_ (g *= s), zero_ (a threaded memset) and the fused
// AdamW step (p, m, v updated in place in one pass). All elementwise work is identical for any
// thread count.
#include <cmath>
#include <cstring>
#include "common/isa.h"
#include <vector>

#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kNormChunk = 1 << 16;

KGPT_MULTIVERSION(double, sumsq_chunk, (const float* g, int64_t n), (g, n)) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  const int64_t n4 = n & ~int64_t(3);
  for (int64_t i = 0; i < n4; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += double(g[i + j]) * double(g[i + j]);
  for (int64_t i = n4; i < n; ++i) acc[0] += double(g[i]) * double(g[i]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

KGPT_MULTIVERSION(void, scale_chunk, (float* g, int64_t n, float s), (g, n, s)) {
  for (int64_t i = 0; i < n; ++i) g[i] *= s;
}

// Per element, in this order on every path (the vector ones use the same FMAs lane by lane):
//   m = fma(b1, m, a1 g);  v = fma(b2, v, a2 g^2);  u = (m r1) / (sqrt(v r2) + eps);
//   p = fma(-lr, fma(wd, p, u), p)
// with r1 = 1/c1, r2 = 1/c2 (c = the bias corrections): one division and one square root each.
KGPT_INLINE void adamw_scalar(float* p, const float* g, float* m, float* v, int64_t n, float lr,
                              float b1, float b2, float eps, float wd, float r1, float r2) {
  const float a1 = 1.0f - b1, a2 = 1.0f - b2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(b1, m[i], a1 * gi);
    const float vi = std::fma(b2, v[i], a2 * (gi * gi));
    m[i] = mi;
    v[i] = vi;
    const float u = (mi * r1) / (std::sqrt(vi * r2) + eps);
    p[i] = std::fma(-lr, std::fma(wd, p[i], u), p[i]);
  }
}

#if KGPT_X86
KGPT_TARGET_AVX2 void adamw_avx2(float* p, const float* g, float* m, float* v,
                                                    int64_t n, float lr, float b1, float b2,
                                                    float eps, float wd, float r1, float r2) {
  const __m256 B1 = _mm256_set1_ps(b1), B2 = _mm256_set1_ps(b2), A1 = _mm256_set1_ps(1.0f - b1);
  const __m256 A2 = _mm256_set1_ps(1.0f - b2), R1 = _mm256_set1_ps(r1), R2 = _mm256_set1_ps(r2);
  const __m256 E = _mm256_set1_ps(eps), WD = _mm256_set1_ps(wd), LR = _mm256_set1_ps(lr);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i), pi = _mm256_loadu_ps(p + i);
    const __m256 mi = _mm256_fmadd_ps(B1, _mm256_loadu_ps(m + i), _mm256_mul_ps(A1, gi));
    const __m256 vi = _mm256_fmadd_ps(B2, _mm256_loadu_ps(v + i),
                                      _mm256_mul_ps(A2, _mm256_mul_ps(gi, gi)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 u = _mm256_div_ps(_mm256_mul_ps(mi, R1),
                                   _mm256_add_ps(_mm256_sqrt_ps(_mm256_mul_ps(vi, R2)), E));
    _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(LR, _mm256_fmadd_ps(WD, pi, u), pi));
  }
  adamw_scalar(p + i, g + i, m + i, v + i, n - i, lr, b1, b2, eps, wd, r1, r2);
}

KGPT_TARGET_AVX512 void adamw_avx512(float* p, const float* g, float* m,
                                                              float* v, int64_t n, float lr,
                                                              float b1, float b2, float eps,
                                                              float wd, float r1, float r2) {
  const __m512 B1 = _mm512_set1_ps(b1), B2 = _mm512_set1_ps(b2), A1 = _mm512_set1_ps(1.0f - b1);
  const __m512 A2 = _mm512_set1_ps(1.0f - b2), R1 = _mm512_set1_ps(r1), R2 = _mm512_set1_ps(r2);
  const __m512 E = _mm512_set1_ps(eps), WD = _mm512_set1_ps(wd), LR = _mm512_set1_ps(lr);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 gi = _mm512_loadu_ps(g + i), pi = _mm512_loadu_ps(p + i);
    const __m512 mi = _mm512_fmadd_ps(B1, _mm512_loadu_ps(m + i), _mm512_mul_ps(A1, gi));
    const __m512 vi = _mm512_fmadd_ps(B2, _mm512_loadu_ps(v + i),
                                      _mm512_mul_ps(A2, _mm512_mul_ps(gi, gi)));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
    const __m512 u = _mm512_div_ps(_mm512_mul_ps(mi, R1),
                                   _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, R2)), E));
    _mm512_storeu_ps(p + i, _mm512_fnmadd_ps(LR, _mm512_fmadd_ps(WD, pi, u), pi));
  }
  adamw_avx2(p + i, g + i, m + i, v + i, n - i, lr, b1, b2, eps, wd, r1, r2);
}
#endif

void adamw_chunk(float* p, const float* g, float* m, float* v, int64_t n, float lr, float b1,
                 float b2, float eps, float wd, float r1, float r2) {
#if KGPT_X86
  if (ops_use_avx512()) return adamw_avx512(p, g, m, v, n, lr, b1, b2, eps, wd, r1, r2);
  if (ops_use_avx2()) return adamw_avx2(p, g, m, v, n, lr, b1, b2, eps, wd, r1, r2);
#endif
  adamw_scalar(p, g, m, v, n, lr, b1, b2, eps, wd, r1, r2);
}

}  // namespace

double global_norm_sq(const float* g, int64_t n) {
  const int64_t nchunk = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> part(static_cast<size_t>(nchunk));
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > 4 * kNormChunk)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kNormChunk, len = (n - i0 < kNormChunk) ? n - i0 : kNormChunk;
    part[c] = sumsq_chunk(g + i0, len);
  }
  double total = 0.0;
  for (int64_t c = 0; c < nchunk; ++c) total += part[c];
  return total;
}

void scale_(float* g, float s, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    scale_chunk(g + i0, len, s);
  }
}

void zero_inplace(float* a, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    std::memset(a + i0, 0, sizeof(float) * static_cast<size_t>(len));
  }
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) {
  // Bias corrections in double, then rounded once (as the float32 reference sees them).
  // Their reciprocals, also rounded once: the kernels multiply instead of dividing.
  const float r1 = static_cast<float>(1.0 / (1.0 - std::pow(double(beta1), double(step))));
  const float r2 = static_cast<float>(1.0 / (1.0 - std::pow(double(beta2), double(step))));
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    adamw_chunk(p + i0, g + i0, m + i0, v + i0, len, lr, beta1, beta2, eps, weight_decay, r1, r2);
  }
}

}  // namespace cpu
}  // namespace kgpt
