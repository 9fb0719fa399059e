// Certified lm_head filter for sampling (see lm_filter.h for the bound).
#include "common/threads.h"
#include "cpu/lm_filter.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/dispatch.h"

#include "common/isa.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace cpu {
namespace {

// float32 unit roundoff, doubled so the bound holds in any rounding mode, not only to nearest
constexpr double kU = 0x1p-23;
// Underflow's absolute error per operation: below the smallest normal float32, so it also covers
// a process running with flush-to-zero or denormals-are-zero (set by any library built with
// -ffast-math), where a subnormal result or operand becomes 0.
constexpr double kEta = 0x1p-126;

double gamma_n(int64_t C) {
  const double n = static_cast<double>(C + 16);
  return n * kU / (1.0 - n * kU);
}

// Upper bounds of ||v|| from a float sum of squares s of C terms accumulated in 16 lanes: each
// square and each addition rounds at most C + 16 times along any path (relative error below
// gamma_n), a square that underflows loses at most eta, and the double square root adds 2^-52.
double norm_up(double s, int64_t C) {
  const double g = gamma_n(C);
  return std::sqrt((s + static_cast<double>(C) * kEta) / (1.0 - g)) * (1.0 + 0x1p-50);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// Row j of the table: its bfloat16 rounding (to nearest even) into o, and float sums of the
// squares of w and of d = w - w' (exact in float). Returns false when an entry or its rounding
// is not finite. Plain 16-lane loops, so each clone vectorises.
KGPT_MULTIVERSION(bool, convert_row, (const float* w, uint16_t* o, int64_t C, double* ww,
                                      double* dd),
                  (w, o, C, ww, dd)) {
  float sw[16] = {}, sd[16] = {};
  uint32_t bad = 0;
  auto one = [&](int64_t i, int l) {
    uint32_t b;
    std::memcpy(&b, w + i, sizeof(b));
    const uint32_t h = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    o[i] = static_cast<uint16_t>(h);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u) |
           static_cast<uint32_t>((h & 0x7f80u) == 0x7f80u);
    const uint32_t hb = h << 16;
    float wr;
    std::memcpy(&wr, &hb, sizeof(wr));
    const float d = w[i] - wr;
    sw[l] += w[i] * w[i];
    sd[l] += d * d;
  };
  int64_t k = 0;
  for (; k + 16 <= C; k += 16)
    for (int l = 0; l < 16; ++l) one(k + l, l);
  for (; k < C; ++k) one(k, 0);
  double a = 0.0, c = 0.0;
  for (int l = 0; l < 16; ++l) {
    a += sw[l];
    c += sd[l];
  }
  *ww = a * (1.0 + 0x1p-48);  // the 16 double additions
  *dd = c * (1.0 + 0x1p-48);
  return bad == 0;
}

#if KGPT_X86
// bfloat16 -> float: the 16 bits become the float's high half.
KGPT_TARGET_AVX512 inline __m512 widen16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

KGPT_TARGET_AVX2 inline __m256 widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

KGPT_TARGET_AVX512 void approx_avx512(float* out, const float* x,
                                                               const uint16_t* w, int64_t B,
                                                               int64_t V, int64_t C, int64_t n0,
                                                               int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint16_t* wr = w + j * C;
    for (int64_t b = 0; b < B; ++b) {
      const float* xr = x + b * C;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int64_t k = 0;
      for (; k + 32 <= C; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + k), widen16(wr + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + k + 16), widen16(wr + k + 16), a1);
      }
      for (; k + 16 <= C; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xr + k), widen16(wr + k), a0);
      float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
      for (; k < C; ++k) s += xr[k] * bf16_to_float(wr[k]);
      out[b * V + j] = s;
    }
  }
}

KGPT_TARGET_AVX2 void approx_avx2(float* out, const float* x,
                                                     const uint16_t* w, int64_t B, int64_t V,
                                                     int64_t C, int64_t n0, int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint16_t* wr = w + j * C;
    for (int64_t b = 0; b < B; ++b) {
      const float* xr = x + b * C;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 16 <= C; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), widen8(wr + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 8), widen8(wr + k + 8), a1);
      }
      for (; k + 8 <= C; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), widen8(wr + k), a0);
      const __m256 s8 = _mm256_add_ps(a0, a1);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      float s = _mm_cvtss_f32(h);
      for (; k < C; ++k) s += xr[k] * bf16_to_float(wr[k]);
      out[b * V + j] = s;
    }
  }
}
#endif

void approx_portable(float* out, const float* x, const uint16_t* w, int64_t B, int64_t V,
                     int64_t C, int64_t n0, int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint16_t* wr = w + j * C;
    for (int64_t b = 0; b < B; ++b) {
      const float* xr = x + b * C;
      float part[8] = {};
      int64_t k = 0;
      for (; k + 8 <= C; k += 8)
        for (int l = 0; l < 8; ++l) part[l] += xr[k + l] * bf16_to_float(wr[k + l]);
      float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      for (; k < C; ++k) s += xr[k] * bf16_to_float(wr[k]);
      out[b * V + j] = s;
    }
  }
}

}  // namespace

void lm_filter_build(LmFilter& f, const float* wte, int64_t V, int64_t C) {
  f.V = V;
  f.C = C;
  if (static_cast<int64_t>(f.w16.size()) < V * C) f.w16.resize(static_cast<size_t>(V * C));
  const double g = gamma_n(C);
  double rmax = 0.0, wmax = 0.0;
  int ok = 1;
  uint16_t* o = f.w16.data();
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) reduction(max : rmax, wmax) reduction(min : ok) \
    if (V * C >= kParallelMin)
  for (int64_t j = 0; j < V; ++j) {
    double ww, dd;
    if (!convert_row(wte + j * C, o + j * C, C, &ww, &dd)) ok = 0;
    const double W = norm_up(ww, C), D = norm_up(dd, C);
    rmax = std::max(rmax, (g * (2.0 * W + D) + D) * (1.0 + 0x1p-40));
    wmax = std::max(wmax, W);
  }
  f.rmax = rmax;
  f.wmax = wmax;
  f.ok = ok != 0 && std::isfinite(rmax) && std::isfinite(wmax);
}

void lm_filter_logits(float* approx, const float* x, const LmFilter& f, int64_t B, int64_t n0,
                      int64_t n1) {
  if (n1 <= n0) return;
#if KGPT_X86
  if (ops_use_avx512()) return approx_avx512(approx, x, f.w16.data(), B, f.V, f.C, n0, n1);
  if (ops_use_avx2()) return approx_avx2(approx, x, f.w16.data(), B, f.V, f.C, n0, n1);
#endif
  approx_portable(approx, x, f.w16.data(), B, f.V, f.C, n0, n1);
}

double lm_filter_bound(const LmFilter& f, const float* x) {
  double s = 0.0;
  for (int64_t k = 0; k < f.C; ++k) s += static_cast<double>(x[k]) * x[k];  // exact products
  if (!f.ok || !std::isfinite(s)) return -1.0;
  const double xn = std::sqrt(s * (1.0 + static_cast<double>(f.C + 8) * 0x1p-52)) * (1.0 + 0x1p-50);
  // |f_j| and |a_j| are at most (1 + gamma) ||x|| ||w_j|| (+ underflow): keep far from FLT_MAX.
  if (!(xn * f.wmax < 1e37)) return -1.0;
  return (xn * f.rmax + 2.0 * static_cast<double>(f.C + 16) * kEta * (1.0 + xn)) *
         (1.0 + 0x1p-40);
}

}  // namespace cpu
}  // namespace kgpt
