// tanh-GELU: out = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi); backward dx = dout *
// gelu'(x) (overwrite). Uses 0.5 (1 + tanh(u)) = sigmoid(2u) and 1 - tanh(u)^2 = 4 s (1 - s), so
// only one exp per element is needed; the exp is our accurate polynomial (precise math: llm.c saw
// GELU break under fast-math), in AVX2 intrinsics when the CPU has them, scalar otherwise. Elementwise: thread-count independent.
#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr float kK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kA = 0.044715f;

KGPT_INLINE void gelu_fwd_scalar(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float u = kK * xi * (1.0f + kA * xi * xi);
    const float s = 1.0f / (1.0f + exp_approx(-2.0f * u));
    out[i] = xi * s;
  }
}

KGPT_INLINE void gelu_bwd_scalar(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float u = kK * xi * (1.0f + kA * xi * xi);
    const float s = 1.0f / (1.0f + exp_approx(-2.0f * u));
    const float dudx = kK * (1.0f + 3.0f * kA * xi * xi);
    dx[i] = dout[i] * (s + 2.0f * xi * s * (1.0f - s) * dudx);
  }
}

#ifdef KGPT_HAVE_EXP8
// s = sigmoid(2u) = 1 / (1 + exp(-2u)) for 8 lanes.
KGPT_TARGET_AVX2 static inline __m256 sig2u(__m256 x, __m256 x2) {
  const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(kK), x),
                                 _mm256_fmadd_ps(_mm256_set1_ps(kA), x2, _mm256_set1_ps(1.0f)));
  const __m256 e = exp8_avx2(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

KGPT_TARGET_AVX2 void gelu_fwd_avx2(float* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(xv, sig2u(xv, _mm256_mul_ps(xv, xv))));
  }
  gelu_fwd_scalar(out + i, x + i, n - i);
}

KGPT_TARGET_AVX2 void gelu_bwd_avx2(float* dx, const float* dout,
                                                       const float* x, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i), x2 = _mm256_mul_ps(xv, xv);
    const __m256 s = sig2u(xv, x2);
    const __m256 dudx = _mm256_mul_ps(_mm256_set1_ps(kK),
                                      _mm256_fmadd_ps(_mm256_set1_ps(3.0f * kA), x2, one));
    // s + 2 x s (1 - s) dudx
    const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(xv, xv), s),
                                   _mm256_mul_ps(_mm256_sub_ps(one, s), dudx));
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dout + i), _mm256_add_ps(s, t)));
  }
  gelu_bwd_scalar(dx + i, dout + i, x + i, n - i);
}

// AVX-512: the AVX2 code on 16 lanes (same operations per lane: bitwise the same results),
// the remainder through the AVX2 code.
KGPT_TARGET_AVX512 static inline __m512 sig2u16(__m512 x, __m512 x2) {
  const __m512 u = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(kK), x),
                                 _mm512_fmadd_ps(_mm512_set1_ps(kA), x2, _mm512_set1_ps(1.0f)));
  const __m512 e = exp16_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

KGPT_TARGET_AVX512 void gelu_fwd_avx512(float* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    _mm512_storeu_ps(out + i, _mm512_mul_ps(xv, sig2u16(xv, _mm512_mul_ps(xv, xv))));
  }
  gelu_fwd_avx2(out + i, x + i, n - i);
}

KGPT_TARGET_AVX512 void gelu_bwd_avx512(float* dx, const float* dout, const float* x, int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i), x2 = _mm512_mul_ps(xv, xv);
    const __m512 s = sig2u16(xv, x2);
    const __m512 dudx = _mm512_mul_ps(_mm512_set1_ps(kK),
                                      _mm512_fmadd_ps(_mm512_set1_ps(3.0f * kA), x2, one));
    const __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(xv, xv), s),
                                   _mm512_mul_ps(_mm512_sub_ps(one, s), dudx));
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(dout + i), _mm512_add_ps(s, t)));
  }
  gelu_bwd_avx2(dx + i, dout + i, x + i, n - i);
}
#endif

void gelu_fwd_chunk(float* out, const float* x, int64_t n) {
#ifdef KGPT_HAVE_EXP8
  if (ops_use_avx512()) return gelu_fwd_avx512(out, x, n);
  if (ops_use_avx2()) return gelu_fwd_avx2(out, x, n);
#endif
  gelu_fwd_scalar(out, x, n);
}

void gelu_bwd_chunk(float* dx, const float* dout, const float* x, int64_t n) {
#ifdef KGPT_HAVE_EXP8
  if (ops_use_avx512()) return gelu_bwd_avx512(dx, dout, x, n);
  if (ops_use_avx2()) return gelu_bwd_avx2(dx, dout, x, n);
#endif
  gelu_bwd_scalar(dx, dout, x, n);
}

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (n > kParallelMin / 4)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    gelu_fwd_chunk(out + i0, x + i0, len);
  }
}

void gelu_forward_serial(float* out, const float* x, int64_t n) { gelu_fwd_chunk(out, x, n); }

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (n > kParallelMin / 4)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    gelu_bwd_chunk(dx + i0, dout + i0, x + i0, len);
  }
}

}  // namespace cpu
}  // namespace kgpt
