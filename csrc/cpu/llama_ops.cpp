// The llama-style ops: RMSNorm, rotary position embedding (RoPE, rotate-half convention) and
// SwiGLU. Same numerics as the NumPy reference (backends/numpy_backend.py), which is the spec.
// RMSNorm: rstd (N,) = 1/sqrt(mean_C(x^2) + eps), out = x * rstd * w; the row sum of squares is
// taken in 8 float lanes combined in double (as layernorm). Its backward's dw is summed per fixed
// chunk of rows, then the chunks in chunk order: identical for any thread count.
// RoPE: angles (pos0 + t) * theta^(-2i/HS) in double, cos/sin rounded to float once per call;
// rows (b, t) are independent (identical for any thread count); out may alias x.
// SwiGLU: x (N, 2H) = gate a | up b; out (N, H) = a * sigmoid(a) * b with the accurate exp
// polynomial of vecmath.h (AVX-512 and AVX2 paths give the same bits, as GELU's).
#include "common/isa.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kRowsPerChunk = 32;

#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));
KGPT_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
KGPT_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
KGPT_INLINE double lanes_sum8(v8f a) {
  float l[8];
  std::memcpy(l, &a, sizeof(l));
  double s = 0.0;
  for (int j = 0; j < 8; ++j) s += l[j];
  return s;
}

// ------------------------------------------------------------------------------------ RMSNorm
KGPT_MULTIVERSION(void, rms_rows, (float* out, float* rstd, const float* x, const float* w,
                  int64_t r0, int64_t r1, int64_t C, float eps),
                  (out, rstd, x, w, r0, r1, C, eps)) {
  const int64_t C8 = C & ~int64_t(7);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    v8f acc = {};
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f v = load8(xr + c);
      acc += v * v;
    }
    double s = lanes_sum8(acc);
    for (int64_t c = C8; c < C; ++c) s += double(xr[c]) * double(xr[c]);
    const float rs = static_cast<float>(1.0 / std::sqrt(s / double(C) + double(eps)));
    float* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * rs * w[c];
    rstd[r] = rs;
  }
}

// dx for rows [r0, r1) and this chunk's dw partial sums (overwritten into pdw).
KGPT_MULTIVERSION(void, rms_back_rows, (float* __restrict dx, float* __restrict pdw,
                  const float* __restrict dout, const float* __restrict x,
                  const float* __restrict w, const float* rstd, int64_t r0, int64_t r1,
                  int64_t C),
                  (dx, pdw, dout, x, w, rstd, r0, r1, C)) {
  const int64_t C8 = C & ~int64_t(7);
  for (int64_t c = 0; c < C; ++c) pdw[c] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* dr = dout + r * C;
    const float rs = rstd[r];
    v8f agx = {};
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f xh = load8(xr + c) * rs;
      agx += load8(dr + c) * load8(w + c) * xh;
    }
    double sgx = lanes_sum8(agx);
    for (int64_t c = C8; c < C; ++c) sgx += double(dr[c] * w[c]) * double(xr[c] * rs);
    const float mgx = static_cast<float>(sgx / double(C));
    float* dxr = dx + r * C;
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f d = load8(dr + c);
      const v8f xh = load8(xr + c) * rs;
      store8(dxr + c, rs * (d * load8(w + c) - xh * mgx));
      store8(pdw + c, load8(pdw + c) + d * xh);
    }
    for (int64_t c = C8; c < C; ++c) {
      const float xh = xr[c] * rs;
      dxr[c] = rs * (dr[c] * w[c] - xh * mgx);
      pdw[c] += dr[c] * xh;
    }
  }
}

// ------------------------------------------------------------------------------------ RoPE
// Rows [bt0, bt1) of (B*T, D): the first NR heads of each row rotated, the rest copied.
KGPT_MULTIVERSION(void, rope_rows, (float* out, const float* x, const float* cs, const float* sn,
                  int64_t bt0, int64_t bt1, int64_t T, int64_t NR, int64_t HS, int64_t D,
                  float sign),
                  (out, x, cs, sn, bt0, bt1, T, NR, HS, D, sign)) {
  const int64_t d2 = HS / 2, nrot = NR * HS;
  for (int64_t bt = bt0; bt < bt1; ++bt) {
    const int64_t t = bt % T;
    const float* c = cs + t * d2;
    const float* s = sn + t * d2;
    const float* xr = x + bt * D;
    float* orow = out + bt * D;
    for (int64_t h = 0; h < NR; ++h) {
      const float* p = xr + h * HS;
      float* o = orow + h * HS;
      for (int64_t i = 0; i < d2; ++i) {  // both reads before both writes: out may alias x
        const float x1 = p[i], x2 = p[i + d2], si = sign * s[i];
        o[i] = x1 * c[i] - x2 * si;
        o[i + d2] = x2 * c[i] + x1 * si;
      }
    }
    if (orow != xr) std::memmove(orow + nrot, xr + nrot, sizeof(float) * (D - nrot));
  }
}

// The inverse frequency of pair i and the table entries of position p: the one definition
// (rope_apply and the fused decoder's rope_table_serial give the same bits).
KGPT_INLINE double rope_inv(int64_t i, int64_t HS, double theta) {
  return std::pow(theta, -(double(i) * 2.0) / double(HS));
}
KGPT_INLINE void rope_entry(float* c, float* s, double p, double inv) {
  const double ang = p * inv;
  *c = static_cast<float>(std::cos(ang));
  *s = static_cast<float>(std::sin(ang));
}

void rope_apply(float* out, const float* x, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                int64_t HS, double theta, int64_t pos0, float sign) {
  if (B <= 0 || T <= 0 || HS <= 0) return;
  const int64_t d2 = HS / 2, D = (NH + 2 * NKV) * HS;
  std::vector<float> tab(static_cast<size_t>(2 * T * d2 + 1));  // bad_alloc: on this thread
  float* cs = tab.data();
  float* sn = cs + T * d2;
  std::vector<double> inv(static_cast<size_t>(d2 + 1));
  for (int64_t i = 0; i < d2; ++i) inv[i] = rope_inv(i, HS, theta);
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (T * d2 > kParallelMin / 8)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d2; ++i)
      rope_entry(cs + t * d2 + i, sn + t * d2 + i, double(pos0 + t), inv[i]);
  const int64_t N = B * T;
  const int64_t rows = std::max<int64_t>(1, kChunk / std::max<int64_t>(D, 1));
  const int64_t nchunk = (N + rows - 1) / rows;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * D > kParallelMin)
  for (int64_t k = 0; k < nchunk; ++k)
    rope_rows(out, x, cs, sn, k * rows, std::min(N, (k + 1) * rows), T, NH + NKV, HS, D, sign);
}

// ------------------------------------------------------------------------------------ SwiGLU
KGPT_INLINE void swiglu_fwd_scalar(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float ai = a[i];
    const float sg = 1.0f / (1.0f + exp_approx(-ai));
    out[i] = ai * sg * b[i];
  }
}

// da = dout * b * sg * (1 + a (1 - sg)), db = dout * a * sg.
KGPT_INLINE void swiglu_bwd_scalar(float* da, float* db, const float* dout, const float* a,
                                   const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float ai = a[i];
    const float sg = 1.0f / (1.0f + exp_approx(-ai));
    const float g = dout[i] * sg;
    da[i] = g * b[i] * (1.0f + ai * (1.0f - sg));
    db[i] = g * ai;
  }
}

#ifdef KGPT_HAVE_EXP8
KGPT_TARGET_AVX2 void swiglu_fwd_avx2(float* out, const float* a,
                                                         const float* b, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 av = _mm256_loadu_ps(a + i);
    const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp8_avx2(_mm256_sub_ps(zero, av))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(av, sg), _mm256_loadu_ps(b + i)));
  }
  swiglu_fwd_scalar(out + i, a + i, b + i, n - i);
}

KGPT_TARGET_AVX2 void swiglu_bwd_avx2(float* da, float* db,
                                                         const float* dout, const float* a,
                                                         const float* b, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 av = _mm256_loadu_ps(a + i);
    const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp8_avx2(_mm256_sub_ps(zero, av))));
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dout + i), sg);
    const __m256 f = _mm256_add_ps(one, _mm256_mul_ps(av, _mm256_sub_ps(one, sg)));
    _mm256_storeu_ps(da + i, _mm256_mul_ps(_mm256_mul_ps(g, _mm256_loadu_ps(b + i)), f));
    _mm256_storeu_ps(db + i, _mm256_mul_ps(g, av));
  }
  swiglu_bwd_scalar(da + i, db + i, dout + i, a + i, b + i, n - i);
}

// AVX-512: the AVX2 code on 16 lanes (the same operations per lane: the same bits); the
// remainder through the AVX2 code.
KGPT_TARGET_AVX512 void swiglu_fwd_avx512(float* out, const float* a, const float* b,
                                          int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 av = _mm512_loadu_ps(a + i);
    const __m512 sg =
        _mm512_div_ps(one, _mm512_add_ps(one, exp16_avx512(_mm512_sub_ps(zero, av))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(av, sg), _mm512_loadu_ps(b + i)));
  }
  swiglu_fwd_avx2(out + i, a + i, b + i, n - i);
}

KGPT_TARGET_AVX512 void swiglu_bwd_avx512(float* da, float* db, const float* dout,
                                          const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 av = _mm512_loadu_ps(a + i);
    const __m512 sg =
        _mm512_div_ps(one, _mm512_add_ps(one, exp16_avx512(_mm512_sub_ps(zero, av))));
    const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(dout + i), sg);
    const __m512 f = _mm512_add_ps(one, _mm512_mul_ps(av, _mm512_sub_ps(one, sg)));
    _mm512_storeu_ps(da + i, _mm512_mul_ps(_mm512_mul_ps(g, _mm512_loadu_ps(b + i)), f));
    _mm512_storeu_ps(db + i, _mm512_mul_ps(g, av));
  }
  swiglu_bwd_avx2(da + i, db + i, dout + i, a + i, b + i, n - i);
}
#endif

void swiglu_fwd_row(float* out, const float* a, const float* b, int64_t n) {
#ifdef KGPT_HAVE_EXP8
  if (ops_use_avx512()) return swiglu_fwd_avx512(out, a, b, n);
  if (ops_use_avx2()) return swiglu_fwd_avx2(out, a, b, n);
#endif
  swiglu_fwd_scalar(out, a, b, n);
}

void swiglu_bwd_row(float* da, float* db, const float* dout, const float* a, const float* b,
                    int64_t n) {
#ifdef KGPT_HAVE_EXP8
  if (ops_use_avx512()) return swiglu_bwd_avx512(da, db, dout, a, b, n);
  if (ops_use_avx2()) return swiglu_bwd_avx2(da, db, dout, a, b, n);
#endif
  swiglu_bwd_scalar(da, db, dout, a, b, n);
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                     int64_t C, float eps) {
  const int64_t nchunk = (N + kRowsPerChunk - 1) / kRowsPerChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * C > kParallelMin)
  for (int64_t k = 0; k < nchunk; ++k) {
    const int64_t r0 = k * kRowsPerChunk, r1 = std::min(N, r0 + kRowsPerChunk);
    rms_rows(out, rstd, x, w, r0, r1, C, eps);
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C) {
  if (N <= 0 || C <= 0) return;
  const int64_t nchunk = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> part(static_cast<size_t>(nchunk * C + 16));  // bad_alloc: this thread
  float* pp = line_aligned(part.data());
  const bool par = N * C > kParallelMin;
#pragma omp parallel num_threads(::kgpt::num_threads()) if (par)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nchunk; ++k) {
      const int64_t r0 = k * kRowsPerChunk, r1 = std::min(N, r0 + kRowsPerChunk);
      rms_back_rows(dx, pp + k * C, dout, x, w, rstd, r0, r1, C);
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      float sw = 0.0f;
      for (int64_t k = 0; k < nchunk; ++k) sw += pp[k * C + c];
      dw[c] += sw;
    }
  }
}

void rope_forward(float* out, const float* x, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                  int64_t HS, double theta, int64_t pos0) {
  rope_apply(out, x, B, T, NH, NKV, HS, theta, pos0, 1.0f);
}

void rope_backward(float* dx, const float* dout, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                   int64_t HS, double theta, int64_t pos0) {
  rope_apply(dx, dout, B, T, NH, NKV, HS, theta, pos0, -1.0f);
}

void rope_table_serial(float* cs, float* sn, int64_t pos, int64_t HS, double theta) {
  for (int64_t i = 0; i < HS / 2; ++i) rope_entry(cs + i, sn + i, double(pos), rope_inv(i, HS, theta));
}

void rope_heads_serial(float* p, const float* cs, const float* sn, int64_t nheads, int64_t HS) {
  if (nheads > 0) rope_rows(p, p, cs, sn, 0, 1, 1, nheads, HS, nheads * HS, 1.0f);
}

void swiglu_forward_serial(float* out, const float* a, const float* b, int64_t n) {
  swiglu_fwd_row(out, a, b, n);
}

void swiglu_forward(float* out, const float* x, int64_t N, int64_t H) {
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * H > kParallelMin / 4)
  for (int64_t r = 0; r < N; ++r) swiglu_fwd_row(out + r * H, x + r * 2 * H, x + r * 2 * H + H, H);
}

void swiglu_backward(float* dx, const float* dout, const float* x, int64_t N, int64_t H) {
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * H > kParallelMin / 4)
  for (int64_t r = 0; r < N; ++r)
    swiglu_bwd_row(dx + r * 2 * H, dx + r * 2 * H + H, dout + r * H, x + r * 2 * H,
                   x + r * 2 * H + H, H);
}

}  // namespace cpu
}  // namespace kgpt
