// Fused classifier: per block of rows, logits = x_b @ wte.T (GEMM, overwrite), then per row the
// max, exp, sum, loss and in place dlogits = scale * (p - onehot), then dx_b = dlogits @ wte and
// dwte += dlogits.T @ x_b. Row work is spread over threads by rows; the GEMMs thread themselves.
// exp is vecmath.h's exp8_avx2/exp16_avx512 (a Cephes-style polynomial, about 1 ulp) on the
// AVX2/AVX-512 paths, which give the same bits, std::exp otherwise.
#include "common/threads.h"
#include "cpu/classifier.h"

#include "common/isa.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>

#include "cpu/dispatch.h"  // KGPT_INLINE
#include "cpu/aligned_buf.h"
#include "cpu/gemm.h"
#include "cpu/vecmath.h"  // exp8_avx2

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace cpu {
namespace {

#if KGPT_X86

// One row of logits -> loss; with `grad`, the row becomes scale * (softmax - onehot). Three
// passes over the row, which sits in L1/L2 after the first: the max, then exp(x - max) summed
// (and stored when training), then the scaling. One exp per element.
// Summation order, the same on both ISA paths (so they give the same bits): 16 partial sums,
// lane l adding the elements j = l (mod 16) of the first V/16*16 in order, then the 16 lanes in
// order, then the tail elements in order. The vector parts differ by ISA; the rest is shared:

// The row's max from the vector lanes' maxima and the tail [Vv, V).
KGPT_INLINE float row_max(const float* lane, int nlanes, const float* row, int64_t Vv, int64_t V) {
  float mx = -INFINITY;
  for (int l = 0; l < nlanes; ++l) mx = std::max(mx, lane[l]);
  for (int64_t j = Vv; j < V; ++j) mx = std::max(mx, row[j]);
  return mx;
}

// From the 16 lanes' exp sums over [0, Vv): the tail's exps, the loss, and with `grad` the
// scaling into dlogits (xt: the target's logit, read before the row was overwritten).
KGPT_INLINE float row_finish(float* row, int64_t Vv, int64_t V, int32_t t, float xt, float mx,
                             const float* lane, bool grad, float scale) {
  float sum = 0.f;
  for (int l = 0; l < 16; ++l) sum += lane[l];
  for (int64_t j = Vv; j < V; ++j) {
    const float e = std::exp(row[j] - mx);
    if (grad) row[j] = e;
    sum += e;
  }
  if (grad) {
    const float f = scale / sum;
    for (int64_t j = 0; j < V; ++j) row[j] *= f;
    row[t] -= scale;
  }
  return std::log(sum) + mx - xt;
}

KGPT_TARGET_AVX2 float row_avx2(float* row, int64_t V, int32_t t, bool grad, float scale) {
  const int64_t Vv = V / 16 * 16;
  const float xt = row[t];
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  for (int64_t j = 0; j < Vv; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(row + j));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(row + j + 8));
  }
  alignas(32) float lane[16];
  _mm256_store_ps(lane, _mm256_max_ps(m0, m1));
  const float mx = row_max(lane, 8, row, Vv, V);
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (int64_t j = 0; j < Vv; j += 16) {
    const __m256 e0 = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx));
    const __m256 e1 = exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j + 8), vmx));
    if (grad) {
      _mm256_storeu_ps(row + j, e0);
      _mm256_storeu_ps(row + j + 8, e1);
    }
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  _mm256_store_ps(lane, s0);
  _mm256_store_ps(lane + 8, s1);
  return row_finish(row, Vv, V, t, xt, mx, lane, grad, scale);
}

// The same on 16 lanes (exp16_avx512 equals exp8_avx2 lane for lane).
KGPT_TARGET_AVX512 float row_avx512(float* row, int64_t V, int32_t t, bool grad, float scale) {
  const int64_t Vv = V / 16 * 16;
  const float xt = row[t];
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < Vv; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(row + j));
  alignas(64) float lane[16];
  _mm512_store_ps(lane, m);
  const float mx = row_max(lane, 16, row, Vv, V);
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 s = _mm512_setzero_ps();
  for (int64_t j = 0; j < Vv; j += 16) {
    const __m512 e = exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(row + j), vmx));
    if (grad) _mm512_storeu_ps(row + j, e);
    s = _mm512_add_ps(s, e);
  }
  _mm512_store_ps(lane, s);
  return row_finish(row, Vv, V, t, xt, mx, lane, grad, scale);
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

thread_local AlignedFloats tls_logits;

}  // namespace

void classifier_forward_backward(float* losses, float* dx, float* dwte, const float* x, const float* wte,
                        const int32_t* targets, int64_t N, int64_t C, int64_t V, float scale) {
  if (N <= 0) return;
  const bool grad = dx || dwte;
  const bool avx2 = gemm_use_avx2(), avx512 = gemm_use_avx512();
  (void)avx2;
  (void)avx512;
  // Rows per block: as many as fit a budget of kClassifierBufferFloats (fewer passes over dwte),
  // a multiple of 12 (of every micro-kernel's rows: 4, 6), at least 12; then evened out over
  // the blocks that takes (S: 4 x 504 + 32 rows became 5 x 420; a thin last block still paid a
  // whole pass over dwte).
  int64_t R = std::max<int64_t>(12, kClassifierBufferFloats / V / 12 * 12);
  R = std::min(R, std::min(kClassifierMaxRows, N));
  const int64_t nblocks = (N + R - 1) / R;
  R = std::min(R, ((N + nblocks - 1) / nblocks + 11) / 12 * 12);
  // The logits block (R, V): with C = 0, wte holds no floats whatever V says, so its size is
  // checked here (std::bad_alloc, MemoryError in Python, rather than an overflowed size).
  if (V > std::numeric_limits<int64_t>::max() / 4 / R) throw std::bad_alloc();
  float* L = tls_logits.get(static_cast<size_t>(R * V));
#ifdef _OPENMP
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(::kgpt::num_threads(), R * V / 16384)));
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
      if (avx512) {
        losses[r0 + r] = row_avx512(row, V, t, grad, scale);
        continue;
      }
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
