// Fused classifier: per block of rows, logits = x_b @ wte.T (GEMM, overwrite), then per row the
// max, exp, sum, loss and in place dlogits = scale * (p - onehot), then dx_b = dlogits @ wte and
// dwte += dlogits.T @ x_b. Row work is spread over threads by rows; the GEMMs thread themselves.
// exp is vecmath.h's exp8_avx2 (a Cephes-style polynomial, about 1 ulp) on the AVX2 path,
// std::exp otherwise.
#include "cpu/classifier.h"

#if defined(__x86_64__) || defined(__i386__)
#define KGPT_X86 1
#include <immintrin.h>
#else
#define KGPT_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "cpu/gemm.h"
#include "cpu/vecmath.h"  // exp8_avx2

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace cpu {
namespace {

#if KGPT_X86
#define KGPT_AVX2 __attribute__((target("avx2,fma")))

// One row of logits -> loss; with `grad`, the row becomes scale * (softmax - onehot).
// Pass 1 reads the row once keeping a running max and rescaled sum per lane (online softmax,
// rescaled once per 32 elements); pass 2 (training only) recomputes exp and writes dlogits.
// Two passes instead of three matter because a block of logits does not fit in L2.
KGPT_AVX2 float row_avx2(float* row, int64_t V, int32_t t, bool grad, float scale) {
  const int64_t Vv = V / 32 * 32;
  __m256 vm = _mm256_set1_ps(-INFINITY), vs = _mm256_setzero_ps();
  for (int64_t j = 0; j < Vv; j += 32) {
    const __m256 x0 = _mm256_loadu_ps(row + j), x1 = _mm256_loadu_ps(row + j + 8);
    const __m256 x2 = _mm256_loadu_ps(row + j + 16), x3 = _mm256_loadu_ps(row + j + 24);
    const __m256 mn = _mm256_max_ps(vm, _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3)));
    vs = _mm256_mul_ps(vs, exp8_avx2(_mm256_sub_ps(vm, mn)));
    vs = _mm256_add_ps(vs, _mm256_add_ps(_mm256_add_ps(exp8_avx2(_mm256_sub_ps(x0, mn)), exp8_avx2(_mm256_sub_ps(x1, mn))),
                                         _mm256_add_ps(exp8_avx2(_mm256_sub_ps(x2, mn)), exp8_avx2(_mm256_sub_ps(x3, mn)))));
    vm = mn;
  }
  alignas(32) float lm[8], ls[8];
  _mm256_store_ps(lm, vm);
  _mm256_store_ps(ls, vs);
  float mx = -INFINITY;
  for (int l = 0; l < 8; ++l) mx = std::max(mx, lm[l]);
  for (int64_t j = Vv; j < V; ++j) mx = std::max(mx, row[j]);
  float sum = 0.f;
  for (int l = 0; l < 8; ++l)
    if (ls[l] > 0.f) sum += ls[l] * std::exp(lm[l] - mx);
  for (int64_t j = Vv; j < V; ++j) sum += std::exp(row[j] - mx);
  const float loss = std::log(sum) + mx - row[t];
  if (grad) {
    const float f = scale / sum;
    const __m256 vf = _mm256_set1_ps(f), vmx = _mm256_set1_ps(mx);
    int64_t j = 0;
    for (; j + 8 <= V; j += 8)
      _mm256_storeu_ps(row + j, _mm256_mul_ps(exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx)), vf));
    for (; j < V; ++j) row[j] = std::exp(row[j] - mx) * f;
    row[t] -= scale;
  }
  return loss;
}

#endif  // KGPT_X86

float row_portable(float* row, int64_t V, int32_t t, bool grad, float scale) {
  float mx = row[0];
  for (int64_t j = 1; j < V; ++j) mx = std::max(mx, row[j]);
  const float lt = row[t];
  float sum = 0.f;
  for (int64_t j = 0; j < V; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  const float loss = std::log(sum) + mx - lt;
  if (grad) {
    const float f = scale / sum;
    for (int64_t j = 0; j < V; ++j) row[j] *= f;
    row[t] -= scale;
  }
  return loss;
}

struct RowBuf {
  float* p = nullptr;
  size_t n = 0;
  ~RowBuf() { std::free(p); }
  float* get(size_t need) {
    if (need > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, ((need * 4 + 63) / 64) * 64));
      if (!p) throw std::bad_alloc();
      n = need;
    }
    return p;
  }
};
thread_local RowBuf tls_logits;

}  // namespace

void classifier_forward(float* losses, float* dx, float* dwte, const float* x, const float* wte,
                        const int32_t* targets, int64_t N, int64_t C, int64_t V, float scale) {
  if (N <= 0) return;
  const bool grad = dx || dwte;
  const bool avx2 = gemm_use_avx2();
  (void)avx2;
  // Rows per block: as many as fit a budget of kClassifierBufferFloats (fewer passes over dwte),
  // a multiple of 12 (of every micro-kernel's rows: 4, 6), at least 12.
  int64_t R = std::max<int64_t>(12, kClassifierBufferFloats / V / 12 * 12);
  R = std::min(R, std::min(kClassifierMaxRows, N));
  float* L = tls_logits.get(static_cast<size_t>(R * V));
#ifdef _OPENMP
  const int nt = std::max(1, std::min<int>(omp_get_max_threads(), static_cast<int>(R * V / 16384)));
#else
  const int nt = 1;
#endif
  (void)nt;
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rb = std::min(R, N - r0);
    const float* xb = x + r0 * C;
    sgemm(false, true, rb, V, C, 1.f, xb, C, wte, C, 0.f, L, V, nullptr);  // (rb, V)
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rb; ++r) {
      float* row = L + r * V;
      const int32_t t = targets[r0 + r];
#if KGPT_X86
      if (avx2) {
        losses[r0 + r] = row_avx2(row, V, t, grad, scale);
        continue;
      }
#endif
      losses[r0 + r] = row_portable(row, V, t, grad, scale);
    }
    const GemmArgs gdx{false, false, rb, C, V, 1.f, L, V, wte, C, 0.f, dx + r0 * C, C, nullptr};
    const GemmArgs gdw{true, false, V, C, rb, 1.f, L, V, xb, C, 1.f, dwte, C, nullptr};
    if (dx && dwte) {
      sgemm_pair(gdx, gdw);  // side by side on halves of the team
    } else if (dx) {
      sgemm(gdx);
    } else if (dwte) {
      sgemm(gdw);
    }
  }
}

}  // namespace cpu
}  // namespace kgpt
