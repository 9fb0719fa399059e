// GEMM kernels: the register-tile micro-kernels over packed panels and the matrix-vector kernels.
// The vector ones carry function-level target attributes (the build adds no -march flags) and are
// called only when the CPU has the features (gemm.cpp checks). Precise math: no -ffast-math.
#include "cpu/gemm_kernels.h"

#include <cstring>

#include "common/isa.h"

namespace kgpt {
namespace cpu {
namespace gemm_detail {

// ---------------------------------------------------------------- portable micro-kernel
// 4x8 tile in GCC/Clang generic vectors (SSE2 on any x86-64, NEON on ARM, scalar elsewhere):
// 8 four-wide accumulators fit the 16 registers of baseline x86-64 without spilling.
typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

void ukr_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                  float beta, const float* bias) {
  v4f c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
  for (int64_t k = 0; k < kc; ++k) {
    const v4f b0 = load4(b), b1 = load4(b + 4);
    v4f av;
#define KGPT_ROW(i)              \
  av = v4f{} + a[i];             \
  c##i##0 += av * b0;            \
  c##i##1 += av * b1;
    KGPT_ROW(0) KGPT_ROW(1) KGPT_ROW(2) KGPT_ROW(3)
#undef KGPT_ROW
    a += kPMR;
    b += kPNR;
  }
  alignas(16) float acc[kPMR][kPNR];
  std::memcpy(&acc[0][0], &c00, 16); std::memcpy(&acc[0][4], &c01, 16);
  std::memcpy(&acc[1][0], &c10, 16); std::memcpy(&acc[1][4], &c11, 16);
  std::memcpy(&acc[2][0], &c20, 16); std::memcpy(&acc[2][4], &c21, 16);
  std::memcpy(&acc[3][0], &c30, 16); std::memcpy(&acc[3][4], &c31, 16);
  for (int i = 0; i < kPMR; ++i)
    for (int j = 0; j < kPNR; ++j) c[i * ldc + j] = epi(acc[i][j], alpha, beta, c + i * ldc + j, bias, j);
}

#if KGPT_X86
// ---------------------------------------------------------------- AVX2/FMA 6x16 micro-kernel

static KGPT_TARGET_AVX2 inline void store8(float* c, __m256 acc, __m256 va, float beta, const float* bias) {
  __m256 v = _mm256_mul_ps(acc, va);
  if (beta != 0.f) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c)));
  if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
  _mm256_storeu_ps(c, v);
}

// DIRECT: A is read in place, element (i, k) at a[i*lda + k] (row-major op(A), no packing);
// otherwise from the packed sliver, a[k*6 + i]. The same FMAs in the same k order either way.
template <bool DIRECT>
static KGPT_TARGET_AVX2 inline void ukr_avx2_6x16_impl(int64_t kc, const float* a, int64_t lda,
                                                const float* b, float* c, int64_t ldc,
                                                float alpha, float beta, const float* bias) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int i = 0; i < 6; ++i) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 av;
#define KGPT_ROW(i)                          \
  av = _mm256_broadcast_ss(DIRECT ? a + i * lda + k : a + i); \
  c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0); \
  c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);
    KGPT_ROW(0) KGPT_ROW(1) KGPT_ROW(2) KGPT_ROW(3) KGPT_ROW(4) KGPT_ROW(5)
#undef KGPT_ROW
    if (!DIRECT) a += 6;
    b += 16;
  }
  const __m256 va = _mm256_set1_ps(alpha);
  const float* bias1 = bias ? bias + 8 : nullptr;
#define KGPT_STORE(i)                                  \
  store8(c + i * ldc, c##i##0, va, beta, bias);        \
  store8(c + i * ldc + 8, c##i##1, va, beta, bias1);
  KGPT_STORE(0) KGPT_STORE(1) KGPT_STORE(2) KGPT_STORE(3) KGPT_STORE(4) KGPT_STORE(5)
#undef KGPT_STORE
}

KGPT_TARGET_AVX2 void ukr_avx2_6x16(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha, float beta, const float* bias) {
  ukr_avx2_6x16_impl<false>(kc, a, 0, b, c, ldc, alpha, beta, bias);
}

KGPT_TARGET_AVX2 void ukrd_avx2_6x16(int64_t kc, const float* a, int64_t lda, const float* b, float* c,
                              int64_t ldc, float alpha, float beta, const float* bias) {
  ukr_avx2_6x16_impl<true>(kc, a, lda, b, c, ldc, alpha, beta, bias);
}

// ---------------------------------------------------------------- AVX-512 helpers

static KGPT_TARGET_AVX512 inline void store16(float* c, __m512 acc, __m512 va, float beta, const float* bias) {
  __m512 v = _mm512_mul_ps(acc, va);
  if (beta != 0.f) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(c)));
  if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
  _mm512_storeu_ps(c, v);
}

// ---------------------------------------------------------------- AVX-512 6x64 micro-kernel
// Six rows by four vectors: 24 accumulators, 4 loads of B and 6 broadcasts of A per 24 FMAs.
// (A 12x32 tile, 14 loads per 24 FMAs, measured 5-9% slower on the model's shapes, in a training
// step too.) DIRECT: A read in place, element (i, k) at a[i*lda + k]; else the packed sliver.
template <int MODE>
static KGPT_TARGET_AVX512 inline void ukr_avx512_6x64_impl(int64_t kc, const float* a, int64_t lda,
                                                    const float* b, float* c, int64_t ldc,
                                                    float alpha, float beta, const float* bias) {
  __m512 acc[6][4];
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int i = 0; i < 6; ++i)  // the C tile's lines, requested now for the stores at the end
    for (int v = 0; v < 4; ++v) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * v), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    const __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
    for (int i = 0; i < 6; ++i) {
      const __m512 av = _mm512_set1_ps(MODE == 1 ? a[i * lda + k] : MODE == 2 ? a[k * lda + i] : a[i]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(av, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(av, b3, acc[i][3]);
    }
    if (MODE == 0) a += 6;
    b += 64;
  }
  const __m512 va = _mm512_set1_ps(alpha);
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < 4; ++v)
      store16(c + i * ldc + 16 * v, acc[i][v], va, beta, bias ? bias + 16 * v : nullptr);
}

KGPT_TARGET_AVX512 void ukr_avx512_6x64(int64_t kc, const float* a, const float* b, float* c,
                                 int64_t ldc, float alpha, float beta, const float* bias) {
  ukr_avx512_6x64_impl<0>(kc, a, 0, b, c, ldc, alpha, beta, bias);
}

KGPT_TARGET_AVX512 void ukrd_avx512_6x64(int64_t kc, const float* a, int64_t lda, const float* b,
                                  float* c, int64_t ldc, float alpha, float beta,
                                  const float* bias) {
  ukr_avx512_6x64_impl<1>(kc, a, lda, b, c, ldc, alpha, beta, bias);
}

KGPT_TARGET_AVX512 void ukrt_avx512_6x64(int64_t kc, const float* a, int64_t lda, const float* b,
                                  float* c, int64_t ldc, float alpha, float beta,
                                  const float* bias) {
  ukr_avx512_6x64_impl<2>(kc, a, lda, b, c, ldc, alpha, beta, bias);
}

#endif  // KGPT_X86

// ---------------------------------------------------------------- matrix-vector (M <= 4, NT)
// C[m, n] = alpha * dot(A[m, :], B[n, :]) + beta*C + bias: streams each row of B once for all m.
#if KGPT_X86
// Rows of M <= 2 keep 4 independent 8-lane sums (k in steps of 32), of M 3-4 keep 2 (steps of
// 16), to hide the FMA latency. Both ISAs add the same products into the same lanes in the same
// order, so their results are bitwise equal.
template <int M>
constexpr int kGemvU = M <= 2 ? 4 : 2;

// The part after the wide loop: the 8-wide tail into acc[m][0], the lane sums, the epilogue.
template <int M>
KGPT_TARGET_AVX2 inline void gemv_finish(const Problem& p, int64_t n, int64_t k,
                                  __m256 (&acc)[M][kGemvU<M>]) {
  constexpr int U = kGemvU<M>;
  const int64_t K = p.K;
  const float* w = p.B + n * p.ldb;
  for (; k + 8 <= K; k += 8) {
    const __m256 wv = _mm256_loadu_ps(w + k);
    for (int m = 0; m < M; ++m)
      acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(p.A + m * p.lda + k), wv, acc[m][0]);
  }
  for (int m = 0; m < M; ++m) {
    __m256 s = acc[m][0];
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[m][u]);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float dot = _mm_cvtss_f32(h);
    const float* x = p.A + m * p.lda;
    for (int64_t kk = k; kk < K; ++kk) dot += x[kk] * w[kk];
    float* c = p.C + m * p.ldc + n;
    *c = epi(dot, p.alpha, p.beta, c, p.bias ? p.bias + n : nullptr, 0);
  }
}

template <int M>
KGPT_TARGET_AVX2 void gemv_rows_avx2(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int U = kGemvU<M>;
  const int64_t K = p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = p.B + n * p.ldb;
    __m256 acc[M][U];
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * U <= K; k += 8 * U) {
      for (int u = 0; u < U; ++u) {
        const __m256 wv = _mm256_loadu_ps(w + k + 8 * u);
        for (int m = 0; m < M; ++m)
          acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(p.A + m * p.lda + k + 8 * u), wv, acc[m][u]);
      }
    }
    gemv_finish<M>(p, n, k, acc);
  }
}

// The same sums with half the instructions: zmm v of a row holds the AVX2 sums 2v and 2v+1.
template <int M>
KGPT_TARGET_AVX512 void gemv_rows_avx512(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int U = kGemvU<M>, Z = U / 2;
  const int64_t K = p.K;
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = p.B + n * p.ldb;
    __m512 z[M][Z];
    for (int m = 0; m < M; ++m)
      for (int v = 0; v < Z; ++v) z[m][v] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * U <= K; k += 8 * U) {
      for (int v = 0; v < Z; ++v) {
        const __m512 wv = _mm512_loadu_ps(w + k + 16 * v);
        for (int m = 0; m < M; ++m)
          z[m][v] = _mm512_fmadd_ps(_mm512_loadu_ps(p.A + m * p.lda + k + 16 * v), wv, z[m][v]);
      }
    }
    __m256 acc[M][U];
    for (int m = 0; m < M; ++m)
      for (int v = 0; v < Z; ++v) {
        acc[m][2 * v] = _mm512_castps512_ps256(z[m][v]);
        acc[m][2 * v + 1] =
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z[m][v]), 1));
      }
    gemv_finish<M>(p, n, k, acc);
  }
}

void gemv_nt_avx512(const Problem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return gemv_rows_avx512<1>(p, n0, n1);
    case 2: return gemv_rows_avx512<2>(p, n0, n1);
    case 3: return gemv_rows_avx512<3>(p, n0, n1);
    default: return gemv_rows_avx512<4>(p, n0, n1);
  }
}

void gemv_nt_avx2(const Problem& p, int64_t n0, int64_t n1) {
  switch (p.M) {
    case 1: return gemv_rows_avx2<1>(p, n0, n1);
    case 2: return gemv_rows_avx2<2>(p, n0, n1);
    case 3: return gemv_rows_avx2<3>(p, n0, n1);
    default: return gemv_rows_avx2<4>(p, n0, n1);
  }
}
#endif  // KGPT_X86

void gemv_nt_portable(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int L = 8;  // independent partial sums the compiler can keep in SIMD lanes
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = p.B + n * p.ldb;
    for (int64_t m = 0; m < p.M; ++m) {
      const float* x = p.A + m * p.lda;
      float part[L] = {};
      int64_t k = 0;
      for (; k + L <= p.K; k += L)
        for (int l = 0; l < L; ++l) part[l] += x[k + l] * w[k + l];
      float dot = 0.f;
      for (int l = 0; l < L; ++l) dot += part[l];
      for (; k < p.K; ++k) dot += x[k] * w[k];
      float* c = p.C + m * p.ldc + n;
      *c = epi(dot, p.alpha, p.beta, c, p.bias ? p.bias + n : nullptr, 0);
    }
  }
}

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace kgpt
