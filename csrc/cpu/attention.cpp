// Causal multi-head attention on the CPU, flash-attention style: the forward walks groups of kR
// query rows over blocks of kBc keys (kR x kJ register tiles) with an online softmax (running max
// and sum, output rescaled as the max grows), so no (T,T) matrix exists; it saves lse (B,NH,T). The backward recomputes P = exp(S-lse)
// block by block: dV += P^T dO, dP = dO V^T, dS = P (dP - D) with D = rowsum(dO * O), dQ += dS K,
// dK += dS^T Q (dK, dV accumulated in place in dqkv, after zeroing). Everything is overwritten (=). Work is split over B x NH, one head per thread at a
// time, each head computed serially: results are bitwise identical for any thread count.
// attention_decode is the KV-cache step: one new query per sequence against the cached keys.
// Grouped-query attention (NKV kv heads, NKV dividing NH): query head h reads kv head h/(NH/NKV)
// in place (no copy per query head); the backward runs a group's query heads in order on one
// thread, adding into the group's dk, dv (work split over B x NKV). NKV = NH is GPT-2's layout
// and computes exactly what it did before.
#include "common/isa.h"
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/parallel_errors.h"
#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kBc = 64;  // keys per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

constexpr int kR = 8;    // query rows per group (register tile height)
constexpr int kJ = 32;   // keys per register tile (two AVX-512 vectors; AVX2 does it in quarters)

// The per-element operation order below is the same on every path (portable, AVX2, AVX-512):
// score and axpy tiles sum over d (or j) in sequence with one multiply-add per step; cols_axpy
// sums its eight rows in order from zero, then adds the sum to Y. The AVX paths fuse each
// multiply-add (bitwise equal to each other); the portable one does not.

// out[i*ldo + jj] = sum_d rows[i*256 + d] * Xt[d*ldt + jj] for i < kR, jj < kJ: the score tile.
void tile_dot_portable(float* out, int64_t ldo, const float* rows, const float* Xt, int64_t ldt,
                       int64_t HS) {
  for (int i = 0; i < kR; ++i) {
    float t[kJ] = {};
    for (int64_t d = 0; d < HS; ++d) {
      const float a = rows[i * 256 + d];
      const float* x = Xt + d * ldt;
      for (int jj = 0; jj < kJ; ++jj) t[jj] += a * x[jj];
    }
    for (int jj = 0; jj < kJ; ++jj) out[i * ldo + jj] = t[jj];
  }
}

// acc[i*256 + d] += sum_{j<n} w[i][j] * X[j*ldx + d] for i < kR, d < HS (P V, dS K).
void rows_axpy_portable(float* acc, const float (*w)[kBc], const float* X, int64_t ldx,
                        int64_t n, int64_t HS) {
  for (int i = 0; i < kR; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float a = w[i][j];
      const float* x = X + j * ldx;
      for (int64_t d = 0; d < HS; ++d) acc[i * 256 + d] += a * x[d];
    }
}

// Y[j*ldy + d] += sum_i w[i][j] * rows[i*256 + d] for j < n (dV += P^T dO, dK += dS^T Q).
// One element of cols_axpy: acc = sum_i w[i][j] * r[i*256 + d] accumulated over i = 0..7 in
// order from zero (then added to y once). col8 fuses each multiply-add like the vector paths
// (used in their tails); col8_plain does not (portable: no FMA emulation).
KGPT_INLINE float col8(const float (*w)[kBc], int64_t j, const float* r, int64_t d) {
  float acc = 0.0f;
  for (int i = 0; i < 8; ++i) acc = std::fma(w[i][j], r[i * 256 + d], acc);
  return acc;
}
KGPT_INLINE float col8_plain(const float (*w)[kBc], int64_t j, const float* r, int64_t d) {
  float acc = 0.0f;
  for (int i = 0; i < 8; ++i) acc += w[i][j] * r[i * 256 + d];
  return acc;
}

void cols_axpy_portable(float* Y, int64_t ldy, const float (*w)[kBc], const float* rows,
                        int64_t n, int64_t HS) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < HS; ++d) Y[j * ldy + d] += col8_plain(w, j, rows, d);
}

#if KGPT_X86

// AVX2: 4 rows x 16 columns at a time (8 accumulators of the 16 registers).
KGPT_TARGET_AVX2 void tile_dot_avx2(float* out, int64_t ldo, const float* rows, const float* Xt,
                                 int64_t ldt, int64_t HS) {
  for (int i0 = 0; i0 < kR; i0 += 4)
    for (int h = 0; h < kJ; h += 16) {
      __m256 t[4][2];
      for (int i = 0; i < 4; ++i) t[i][0] = t[i][1] = _mm256_setzero_ps();
      for (int64_t d = 0; d < HS; ++d) {
        const __m256 x0 = _mm256_loadu_ps(Xt + d * ldt + h), x1 = _mm256_loadu_ps(Xt + d * ldt + h + 8);
        for (int i = 0; i < 4; ++i) {
          const __m256 a = _mm256_broadcast_ss(rows + (i0 + i) * 256 + d);
          t[i][0] = _mm256_fmadd_ps(a, x0, t[i][0]);
          t[i][1] = _mm256_fmadd_ps(a, x1, t[i][1]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(out + (i0 + i) * ldo + h, t[i][0]);
        _mm256_storeu_ps(out + (i0 + i) * ldo + h + 8, t[i][1]);
      }
    }
}

// Columns [d0, HS): 4 rows x 16 columns at a time, then a scalar tail.
KGPT_TARGET_AVX2 void rows_axpy_avx2_from(float* acc, const float (*w)[kBc], const float* X,
                                       int64_t ldx, int64_t n, int64_t HS, int64_t d0) {
  int64_t d = d0;
  for (; d + 16 <= HS; d += 16)
    for (int i0 = 0; i0 < kR; i0 += 4) {
      __m256 t[4][2];
      for (int i = 0; i < 4; ++i) {
        t[i][0] = _mm256_loadu_ps(acc + (i0 + i) * 256 + d);
        t[i][1] = _mm256_loadu_ps(acc + (i0 + i) * 256 + d + 8);
      }
      for (int64_t j = 0; j < n; ++j) {
        const __m256 x0 = _mm256_loadu_ps(X + j * ldx + d), x1 = _mm256_loadu_ps(X + j * ldx + d + 8);
        for (int i = 0; i < 4; ++i) {
          const __m256 a = _mm256_broadcast_ss(&w[i0 + i][j]);
          t[i][0] = _mm256_fmadd_ps(a, x0, t[i][0]);
          t[i][1] = _mm256_fmadd_ps(a, x1, t[i][1]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(acc + (i0 + i) * 256 + d, t[i][0]);
        _mm256_storeu_ps(acc + (i0 + i) * 256 + d + 8, t[i][1]);
      }
    }
  for (int i = 0; i < kR; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = d; e < HS; ++e)
        acc[i * 256 + e] = std::fma(w[i][j], X[j * ldx + e], acc[i * 256 + e]);
}

KGPT_TARGET_AVX2 void rows_axpy_avx2(float* acc, const float (*w)[kBc], const float* X, int64_t ldx,
                                  int64_t n, int64_t HS) {
  rows_axpy_avx2_from(acc, w, X, ldx, n, HS, 0);
}

// A register tile of 4 keys x 16 columns (8 accumulators): per row i, 2 loads of it and 4
// broadcast weights feed 8 FMAs; Y is read and written once per tile.
KGPT_TARGET_AVX2 void cols_axpy_avx2(float* Y, int64_t ldy, const float (*w)[kBc], const float* rows,
                                  int64_t n, int64_t HS) {
  const int64_t H16 = HS & ~int64_t(15);
  int64_t j0 = 0;
  for (; j0 + 4 <= n; j0 += 4) {
    for (int64_t d = 0; d < H16; d += 16) {
      __m256 acc[4][2];
      for (int jj = 0; jj < 4; ++jj) acc[jj][0] = acc[jj][1] = _mm256_setzero_ps();
      for (int i = 0; i < 8; ++i) {
        const __m256 r0 = _mm256_loadu_ps(rows + i * 256 + d), r1 = _mm256_loadu_ps(rows + i * 256 + d + 8);
        for (int jj = 0; jj < 4; ++jj) {
          const __m256 a = _mm256_broadcast_ss(&w[i][j0 + jj]);
          acc[jj][0] = _mm256_fmadd_ps(a, r0, acc[jj][0]);
          acc[jj][1] = _mm256_fmadd_ps(a, r1, acc[jj][1]);
        }
      }
      for (int jj = 0; jj < 4; ++jj) {
        float* y = Y + (j0 + jj) * ldy + d;
        _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), acc[jj][0]));
        _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_loadu_ps(y + 8), acc[jj][1]));
      }
    }
    for (int jj = 0; jj < 4; ++jj)
      for (int64_t d = H16; d < HS; ++d) Y[(j0 + jj) * ldy + d] += col8(w, j0 + jj, rows, d);
  }
  for (; j0 < n; ++j0)
    for (int64_t d = 0; d < HS; ++d) Y[j0 * ldy + d] += col8(w, j0, rows, d);
}

// AVX-512: 8 rows x 32 columns (16 accumulators of the 32 registers).
KGPT_TARGET_AVX512 void tile_dot_avx512(float* out, int64_t ldo, const float* rows, const float* Xt,
                                     int64_t ldt, int64_t HS) {
  __m512 t[kR][2];
  for (int i = 0; i < kR; ++i) t[i][0] = t[i][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < HS; ++d) {
    const __m512 x0 = _mm512_loadu_ps(Xt + d * ldt), x1 = _mm512_loadu_ps(Xt + d * ldt + 16);
    for (int i = 0; i < kR; ++i) {
      const __m512 a = _mm512_set1_ps(rows[i * 256 + d]);
      t[i][0] = _mm512_fmadd_ps(a, x0, t[i][0]);
      t[i][1] = _mm512_fmadd_ps(a, x1, t[i][1]);
    }
  }
  for (int i = 0; i < kR; ++i) {
    _mm512_storeu_ps(out + i * ldo, t[i][0]);
    _mm512_storeu_ps(out + i * ldo + 16, t[i][1]);
  }
}

KGPT_TARGET_AVX512 void rows_axpy_avx512(float* acc, const float (*w)[kBc], const float* X,
                                      int64_t ldx, int64_t n, int64_t HS) {
  int64_t d0 = 0;
  for (; d0 + 32 <= HS; d0 += 32) {
    __m512 t[kR][2];
    for (int i = 0; i < kR; ++i) {
      t[i][0] = _mm512_loadu_ps(acc + i * 256 + d0);
      t[i][1] = _mm512_loadu_ps(acc + i * 256 + d0 + 16);
    }
    for (int64_t j = 0; j < n; ++j) {
      const __m512 x0 = _mm512_loadu_ps(X + j * ldx + d0), x1 = _mm512_loadu_ps(X + j * ldx + d0 + 16);
      for (int i = 0; i < kR; ++i) {
        const __m512 a = _mm512_set1_ps(w[i][j]);
        t[i][0] = _mm512_fmadd_ps(a, x0, t[i][0]);
        t[i][1] = _mm512_fmadd_ps(a, x1, t[i][1]);
      }
    }
    for (int i = 0; i < kR; ++i) {
      _mm512_storeu_ps(acc + i * 256 + d0, t[i][0]);
      _mm512_storeu_ps(acc + i * 256 + d0 + 16, t[i][1]);
    }
  }
  if (d0 < HS) rows_axpy_avx2_from(acc, w, X, ldx, n, HS, d0);
}

// A register tile of 8 keys x 32 columns (16 accumulators): per row i, 2 loads of it and 8
// broadcast weights feed 16 FMAs; Y is read and written once per tile. Lanes do what the AVX2
// tile's do (bitwise the same); leftover keys and columns go through col8.
KGPT_TARGET_AVX512 void cols_axpy_avx512(float* Y, int64_t ldy, const float (*w)[kBc],
                                      const float* rows, int64_t n, int64_t HS) {
  const int64_t H32 = HS & ~int64_t(31);
  int64_t j0 = 0;
  for (; j0 + 8 <= n; j0 += 8) {
    for (int64_t d = 0; d < H32; d += 32) {
      __m512 acc[8][2];
      for (int jj = 0; jj < 8; ++jj) acc[jj][0] = acc[jj][1] = _mm512_setzero_ps();
      for (int i = 0; i < 8; ++i) {
        const __m512 r0 = _mm512_loadu_ps(rows + i * 256 + d), r1 = _mm512_loadu_ps(rows + i * 256 + d + 16);
        for (int jj = 0; jj < 8; ++jj) {
          const __m512 a = _mm512_set1_ps(w[i][j0 + jj]);
          acc[jj][0] = _mm512_fmadd_ps(a, r0, acc[jj][0]);
          acc[jj][1] = _mm512_fmadd_ps(a, r1, acc[jj][1]);
        }
      }
      for (int jj = 0; jj < 8; ++jj) {
        float* y = Y + (j0 + jj) * ldy + d;
        _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), acc[jj][0]));
        _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_loadu_ps(y + 16), acc[jj][1]));
      }
    }
    for (int jj = 0; jj < 8; ++jj)
      for (int64_t d = H32; d < HS; ++d) Y[(j0 + jj) * ldy + d] += col8(w, j0 + jj, rows, d);
  }
  for (; j0 < n; ++j0)
    for (int64_t d = 0; d < HS; ++d) Y[j0 * ldy + d] += col8(w, j0, rows, d);
}
#endif

void tile_dot(float* out, int64_t ldo, const float* rows, const float* Xt, int64_t ldt,
              int64_t HS) {
#if KGPT_X86
  if (ops_use_avx512()) return tile_dot_avx512(out, ldo, rows, Xt, ldt, HS);
  if (ops_use_avx2()) return tile_dot_avx2(out, ldo, rows, Xt, ldt, HS);
#endif
  tile_dot_portable(out, ldo, rows, Xt, ldt, HS);
}

void rows_axpy(float* acc, const float (*w)[kBc], const float* X, int64_t ldx, int64_t n,
               int64_t HS) {
#if KGPT_X86
  if (ops_use_avx512()) return rows_axpy_avx512(acc, w, X, ldx, n, HS);
  if (ops_use_avx2()) return rows_axpy_avx2(acc, w, X, ldx, n, HS);
#endif
  rows_axpy_portable(acc, w, X, ldx, n, HS);
}

void cols_axpy(float* Y, int64_t ldy, const float (*w)[kBc], const float* rows, int64_t n,
               int64_t HS) {
#if KGPT_X86
  if (ops_use_avx512()) return cols_axpy_avx512(Y, ldy, w, rows, n, HS);
  if (ops_use_avx2()) return cols_axpy_avx2(Y, ldy, w, rows, n, HS);
#endif
  cols_axpy_portable(Y, ldy, w, rows, n, HS);
}

// dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols (the K/V transposes), 8x8 blocks in
// AVX2 registers where the CPU has them. A pure copy: every path gives the same result.
void transpose_portable(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                        int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

#if KGPT_X86
KGPT_TARGET_AVX2 void transpose_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols,
                                  float* dst, int64_t ldd) {
  const int64_t R8 = rows & ~int64_t(7), C8 = cols & ~int64_t(7);
  for (int64_t r = 0; r < R8; r += 8)
    for (int64_t c = 0; c < C8; c += 8) {
      __m256 v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r + i) * lds + c);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        v[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        v[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      // v[0..3]: columns c+{0,1,2,3} of rows r..r+3 (low lane) and r+4..r+7 come from v[4..7]
      const int order[4] = {0, 1, 2, 3};
      for (int q = 0; q < 4; ++q) {
        const int i = order[q];
        _mm256_storeu_ps(dst + (c + q) * ldd + r, _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
        _mm256_storeu_ps(dst + (c + q + 4) * ldd + r, _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
      }
    }
  for (int64_t r = 0; r < rows; ++r)  // edges
    for (int64_t c = (r < R8 ? C8 : 0); c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}
#endif

void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
               int64_t ldd) {
#if KGPT_X86
  if (ops_use_avx2()) return transpose_avx2(src, lds, rows, cols, dst, ldd);
#endif
  transpose_portable(src, lds, rows, cols, dst, ldd);
}

// Scores of row group [r0, r0+kR) against keys [j0, j0+n), scaled q already in qs; Xt padded.
KGPT_INLINE void score_block(float (*s)[kBc], const float* qs, const float* Kt, int64_t ldt,
                             int64_t j0, int64_t n, int64_t HS) {
  for (int64_t jb = 0; jb < n; jb += kJ) tile_dot(&s[0][jb], kBc, qs, Kt + j0 + jb, ldt, HS);
}

// One (b, h): q/k/v rows have stride ld = 3C; o rows stride C. Kt scratch (HS, ldt) with
// ldt >= T rounded up to kJ, padding zeroed.
KGPT_MULTIVERSION(void, attn_fwd_head, (float* o, float* lse, const float* q, const float* k,
                  const float* v, float* Kt, int64_t ldt, int64_t T, int64_t HS, int64_t ld,
                  int64_t ldo),
                  (o, lse, q, k, v, Kt, ldt, T, HS, ld, ldo)) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  transpose(k, ld, T, HS, Kt, ldt);
  for (int64_t d = 0; d < HS; ++d)
    for (int64_t t = T; t < ldt; ++t) Kt[d * ldt + t] = 0.0f;
  alignas(64) float s[kR][kBc];
  alignas(64) float qs[kR * 256], acc[kR * 256];
  float m[kR], l[kR];
  for (int64_t r0 = 0; r0 < T; r0 += kR) {
    const int64_t R = std::min<int64_t>(kR, T - r0);
    for (int i = 0; i < kR; ++i) {
      for (int64_t d = 0; d < HS; ++d) {
        qs[i * 256 + d] = i < R ? q[(r0 + i) * ld + d] * scale : 0.0f;
        acc[i * 256 + d] = 0.0f;
      }
      m[i] = kNegInf;
      l[i] = 0.0f;
    }
    const int64_t kend = r0 + R;  // keys [0, kend) are visible to some row of the group
    for (int64_t j0 = 0; j0 < kend; j0 += kBc) {
      const int64_t n = std::min(kBc, kend - j0);
      score_block(s, qs, Kt, ldt, j0, n, HS);
      for (int i = 0; i < kR; ++i) {
        const int64_t lim = i < R ? std::min(n, r0 + i + 1 - j0) : 0;  // causal: j <= r
        for (int64_t j = lim; j < n; ++j) s[i][j] = kNegInf;
        if (lim <= 0) {  // nothing visible in this block for row i
          for (int64_t j = 0; j < n; ++j) s[i][j] = 0.0f;
          continue;
        }
        // Running max in 8 independent lanes (a max is exact, so any grouping gives the same
        // value; one serial chain of compares was the forward's single hottest loop).
        float m8[8];
        for (int u = 0; u < 8; ++u) m8[u] = m[i];
        int64_t j = 0;
        for (; j + 8 <= lim; j += 8)
          for (int u = 0; u < 8; ++u) m8[u] = s[i][j + u] > m8[u] ? s[i][j + u] : m8[u];
        for (; j < lim; ++j) m8[0] = s[i][j] > m8[0] ? s[i][j] : m8[0];
        float mb = m8[0];
        for (int u = 1; u < 8; ++u) mb = m8[u] > mb ? m8[u] : mb;
        const float alpha = exp_approx(m[i] - mb);  // 0 on the first block (m = -inf)
        l[i] = l[i] * alpha + exp_shift_sum(s[i], n, mb);  // masked entries -> exactly 0
        for (int64_t d = 0; d < HS; ++d) acc[i * 256 + d] *= alpha;
        m[i] = mb;
      }
      rows_axpy(acc, s, v + j0 * ld, ld, n, HS);
    }
    for (int64_t i = 0; i < R; ++i) {
      const float inv = 1.0f / l[i];
      for (int64_t d = 0; d < HS; ++d) o[(r0 + i) * ldo + d] = acc[i * 256 + d] * inv;
      lse[r0 + i] = m[i] + std::log(l[i]);
    }
  }
}

// One (b, h) backward. dq/dk/dv rows have stride ld = 3C (parts of dqkv); dO, O stride ldo.
// Scratch: Kt, Vt (HS, ldt) padded. dk, dv are zeroed, then accumulated in place.
KGPT_MULTIVERSION(void, attn_bwd_head, (float* dq, float* dk, float* dv, const float* dO,
                  const float* q, const float* k, const float* v, const float* O, const float* lse,
                  float* Kt, float* Vt, int64_t ldt, int64_t T, int64_t HS,
                  int64_t ld, int64_t ldo, bool first),
                  (dq, dk, dv, dO, q, k, v, O, lse, Kt, Vt, ldt, T, HS, ld, ldo, first)) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  if (first) {  // the first query head of a kv group: K^T, V^T and zeroed dk, dv for all of it
    transpose(k, ld, T, HS, Kt, ldt);
    transpose(v, ld, T, HS, Vt, ldt);
    for (int64_t d = 0; d < HS; ++d)
      for (int64_t t = T; t < ldt; ++t) Kt[d * ldt + t] = Vt[d * ldt + t] = 0.0f;
    for (int64_t t = 0; t < T; ++t)  // dk, dv are accumulated in place (their rows of dqkv)
      for (int64_t d = 0; d < HS; ++d) dk[t * ld + d] = dv[t * ld + d] = 0.0f;
  }
  alignas(64) float p[kR][kBc], dp[kR][kBc];
  alignas(64) float qs[kR * 256], qr[kR * 256], dor[kR * 256], dqa[kR * 256];
  float D[kR], lr[kR];
  for (int64_t r0 = 0; r0 < T; r0 += kR) {
    const int64_t R = std::min<int64_t>(kR, T - r0);
    for (int i = 0; i < kR; ++i) {
      const bool on = i < R;
      for (int64_t d = 0; d < HS; ++d) {
        qr[i * 256 + d] = on ? q[(r0 + i) * ld + d] : 0.0f;
        qs[i * 256 + d] = qr[i * 256 + d] * scale;
        dor[i * 256 + d] = on ? dO[(r0 + i) * ldo + d] : 0.0f;
        dqa[i * 256 + d] = 0.0f;
      }
      // D = rowsum(dO * O) in 8 lanes, combined as a fixed tree (one serial chain of HS adds
      // was a tenth of the backward).
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (on) {
        const float* orow = O + (r0 + i) * ldo;
        int64_t d = 0;
        for (; d + 8 <= HS; d += 8)
          for (int u = 0; u < 8; ++u) part[u] += dor[i * 256 + d + u] * orow[d + u];
        for (; d < HS; ++d) part[0] += dor[i * 256 + d] * orow[d];
      }
      D[i] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      lr[i] = on ? lse[r0 + i] : 0.0f;
    }
    const int64_t kend = r0 + R;
    for (int64_t j0 = 0; j0 < kend; j0 += kBc) {
      const int64_t n = std::min(kBc, kend - j0);
      score_block(p, qs, Kt, ldt, j0, n, HS);
      score_block(dp, dor, Vt, ldt, j0, n, HS);  // dP = dO V^T
      for (int i = 0; i < kR; ++i) {
        const int64_t lim = i < R ? std::max<int64_t>(0, std::min(n, r0 + i + 1 - j0)) : 0;
        if (lim > 0) exp_shift_sum(p[i], lim, lr[i]);
        for (int64_t j = lim; j < n; ++j) p[i][j] = 0.0f;
        for (int64_t j = 0; j < n; ++j) dp[i][j] = p[i][j] * (dp[i][j] - D[i]) * scale;  // dS
      }
      cols_axpy(dv + j0 * ld, ld, p, dor, n, HS);   // dV += P^T dO
      cols_axpy(dk + j0 * ld, ld, dp, qr, n, HS);   // dK += dS^T Q
      rows_axpy(dqa, dp, k + j0 * ld, ld, n, HS);  // dQ += dS K
    }
    for (int64_t i = 0; i < R; ++i)
      for (int64_t d = 0; d < HS; ++d) dq[(r0 + i) * ld + d] = dqa[i * 256 + d];
  }
}

KGPT_MULTIVERSION(void, decode_head, (float* o, const float* q, const float* kc, const float* vc,
                  float* s, int64_t HS, int64_t n_valid),
                  (o, q, kc, vc, s, HS, n_valid)) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t H8 = HS & ~int64_t(7);
  float m = kNegInf;
  for (int64_t t = 0; t < n_valid; ++t) {
    const float* kr = kc + t * HS;
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t d = 0; d < H8; d += 8)
      for (int jj = 0; jj < 8; ++jj) a[jj] += q[d + jj] * kr[d + jj];
    float dot = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (int64_t d = H8; d < HS; ++d) dot += q[d] * kr[d];
    s[t] = dot * scale;
    m = s[t] > m ? s[t] : m;
  }
  const float l = exp_shift_sum(s, n_valid, m);
  for (int64_t d = 0; d < HS; ++d) o[d] = 0.0f;
  for (int64_t t = 0; t < n_valid; ++t) {
    const float p = s[t];
    const float* vr = vc + t * HS;
    for (int64_t d = 0; d < HS; ++d) o[d] += p * vr[d];
  }
  const float inv = 1.0f / l;
  for (int64_t d = 0; d < HS; ++d) o[d] *= inv;
}

#if KGPT_X86
// decode_head's AVX2 clone, faster, same bits (HS a multiple of 8): the scores of eight keys at
// a time (eight independent chains of fused multiply-adds, lane jj of key t summing
// q[d + jj] k[t][d + jj] over d in order, as decode_head's a[jj]), their lane trees
// ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) taken by horizontal adds for the eight keys
// together; the running max per lane (max(s, m) is s > m ? s : m, so NaN scores are skipped as
// in decode_head; only which of +0 and -0 wins a tie may differ, and exp(s - m) is the same for
// both); then o built 64 floats at a time in registers, o[d] = fma(p_t, v[t][d], o[d]) over t in
// order from 0, times 1 / l.
template <int NB>
KGPT_TARGET_AVX2 static inline __attribute__((always_inline)) void decode_pv_block_avx2(
    float* o, const float* p, const float* vc, int64_t HS, int64_t n, float inv) {
  __m256 acc[NB];
  for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    const __m256 pt = _mm256_broadcast_ss(p + t);
    const float* vr = vc + t * HS;
    for (int i = 0; i < NB; ++i) acc[i] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vr + 8 * i), acc[i]);
  }
  const __m256 vi = _mm256_set1_ps(inv);
  for (int i = 0; i < NB; ++i) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(acc[i], vi));
}

KGPT_TARGET_AVX2 static void decode_head_fast_avx2(float* o, const float* q, const float* kc,
                                                    const float* vc, float* s, int64_t HS,
                                                    int64_t n_valid) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t NC = HS / 8;
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 vm = _mm256_set1_ps(kNegInf);
  int64_t t = 0;
  for (; t + 8 <= n_valid; t += 8) {
    const float* k0 = kc + t * HS;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    for (int64_t c = 0; c < NC; ++c) {
      const __m256 qv = _mm256_loadu_ps(q + 8 * c);
      const float* kr = k0 + 8 * c;
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + HS), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 2 * HS), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 3 * HS), a3);
      a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 4 * HS), a4);
      a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 5 * HS), a5);
      a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 6 * HS), a6);
      a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + 7 * HS), a7);
    }
    // hadd(x, y) = (x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7)
    const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    // g0 lane i < 4: key i's (a0 + a1) + (a2 + a3); lane 4 + i: its (a4 + a5) + (a6 + a7)
    const __m256 dot = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                                     _mm256_permute2f128_ps(g0, g1, 0x31));
    const __m256 sc = _mm256_mul_ps(dot, vs);
    _mm256_storeu_ps(s + t, sc);
    vm = _mm256_max_ps(sc, vm);
  }
  alignas(32) float ml[8];
  _mm256_store_ps(ml, vm);
  float m = ml[0];
  for (int u = 1; u < 8; ++u) m = ml[u] > m ? ml[u] : m;
  for (; t < n_valid; ++t) {
    const float* kr = kc + t * HS;
    __m256 a = _mm256_setzero_ps();
    for (int64_t c = 0; c < NC; ++c)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), _mm256_loadu_ps(kr + 8 * c), a);
    alignas(32) float al[8];
    _mm256_store_ps(al, a);
    const float dot = ((al[0] + al[1]) + (al[2] + al[3])) + ((al[4] + al[5]) + (al[6] + al[7]));
    s[t] = dot * scale;
    m = s[t] > m ? s[t] : m;
  }
  const float l = exp_shift_sum(s, n_valid, m);
  const float inv = 1.0f / l;
  int64_t c0 = 0;
  for (; c0 + 8 <= NC; c0 += 8) decode_pv_block_avx2<8>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv);
  switch (NC - c0) {
    case 1: decode_pv_block_avx2<1>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 2: decode_pv_block_avx2<2>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 3: decode_pv_block_avx2<3>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 4: decode_pv_block_avx2<4>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 5: decode_pv_block_avx2<5>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 6: decode_pv_block_avx2<6>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    case 7: decode_pv_block_avx2<7>(o + 8 * c0, s, vc + 8 * c0, HS, n_valid, inv); break;
    default: break;
  }
}
#endif

std::atomic<bool> g_decode_reference{false};  // test hook: decode_head for every head

// One (b, h) of the decoding step: the fast AVX2 kernel where it applies, decode_head elsewhere.
void decode_head_any(float* o, const float* q, const float* kc, const float* vc, float* s,
                     int64_t HS, int64_t n_valid) {
#if KGPT_X86
  if (HS % 8 == 0 && !g_decode_reference.load(std::memory_order_relaxed) && ops_use_avx2())
    return decode_head_fast_avx2(o, q, kc, vc, s, HS, n_valid);
#endif
  decode_head(o, q, kc, vc, s, HS, n_valid);
}

}  // namespace

void attention_decode_set_reference(bool on) { g_decode_reference.store(on); }

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T,
                       int64_t NH, int64_t NKV, int64_t HS) {
  const int64_t C = NH * HS;
  if (B <= 0 || T <= 0 || C <= 0 || NKV <= 0) return;  // nothing to compute (no scratch to size)
  const int64_t G = NH / NKV, ld = (NH + 2 * NKV) * HS, ldt = (T + kBc - 1) / kBc * kBc;
  ErrorCarrier err;  // a failed scratch allocation: carried out of the region, rethrown below
#pragma omp parallel num_threads(::kgpt::num_threads()) \
    if (B * NH > 1 && B * T * C > kParallelMin / 4)
  {
    std::vector<float> buf;
    err.run([&] { buf.resize(static_cast<size_t>(HS * ldt + 16)); });
    float* Kt = buf.empty() ? nullptr : line_aligned(buf.data());
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      if (Kt == nullptr) continue;  // this thread has no scratch: the call fails after the region
      const int64_t b = bh / NH, h = bh % NH, kv = h / G;
      const float* row = qkv + b * T * ld;
      attn_fwd_head(out + b * T * C + h * HS, lse + bh * T, row + h * HS, row + C + kv * HS,
                    row + C + NKV * HS + kv * HS, Kt, ldt, T, HS, ld, C);
    }
  }
  err.rethrow();
}

// Work is split over (b, kv head): the query heads of a group run in order on one thread, each
// adding into the group's dk, dv (so no two threads write the same rows).
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                        int64_t HS) {
  const int64_t C = NH * HS;
  if (B <= 0 || T <= 0 || C <= 0 || NKV <= 0) return;  // dqkv is empty
  const int64_t G = NH / NKV, ld = (NH + 2 * NKV) * HS, ldt = (T + kBc - 1) / kBc * kBc;
  ErrorCarrier err;  // as in attention_forward
#pragma omp parallel num_threads(::kgpt::num_threads()) \
    if (B * NKV > 1 && B * T * C > kParallelMin / 4)
  {
    std::vector<float> scratch;
    err.run([&] { scratch.resize(static_cast<size_t>(2 * HS * ldt + 16)); });
    float* Kt = scratch.empty() ? nullptr : line_aligned(scratch.data());
    float* Vt = Kt == nullptr ? nullptr : Kt + HS * ldt;
#pragma omp for schedule(static)
    for (int64_t bk = 0; bk < B * NKV; ++bk) {
      if (Kt == nullptr) continue;
      const int64_t b = bk / NKV, kv = bk % NKV;
      const float* row = qkv + b * T * ld;
      float* drow = dqkv + b * T * ld;
      for (int64_t gi = 0; gi < G; ++gi) {
        const int64_t h = kv * G + gi;
        attn_bwd_head(drow + h * HS, drow + C + kv * HS, drow + C + NKV * HS + kv * HS,
                      dout + b * T * C + h * HS, row + h * HS, row + C + kv * HS,
                      row + C + NKV * HS + kv * HS, out + b * T * C + h * HS,
                      lse + (b * NH + h) * T, Kt, Vt, ldt, T, HS, ld, C, gi == 0);
      }
    }
  }
  err.rethrow();
}

void attention_decode_head(float* out, const float* q, const float* k_cache, const float* v_cache,
                           int64_t HS, int64_t n_valid, float* scores) {
  decode_head_any(out, q, k_cache, v_cache, scores, HS, n_valid);
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      int64_t B, int64_t NH, int64_t NKV, int64_t maxT, int64_t HS,
                      int64_t n_valid) {
  // Parallel only when there is enough cache to stream (batch-1 decoding of short contexts stays
  // on the calling thread: spawning work would cost more than the step).
  // An empty output (B, NH or HS zero: caches that hold no floats, whatever maxT says) is done.
  if (B <= 0 || NH <= 0 || NKV <= 0 || HS <= 0 || n_valid <= 0) return;
  const int64_t G = NH / NKV;  // query head h reads cache head h / G
  ErrorCarrier err;  // as in attention_forward
#pragma omp parallel num_threads(::kgpt::num_threads()) \
    if (B * NH > 1 && B * NH * n_valid * HS > kParallelMin)
  {
    std::vector<float> s;
    err.run([&] { s.resize(static_cast<size_t>(n_valid)); });
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      if (s.empty()) continue;
      const int64_t b = bh / NH, h = bh % NH;
      decode_head_any(out + b * NH * HS + h * HS, q + b * NH * HS + h * HS,
                  k_cache + (b * NKV + h / G) * maxT * HS, v_cache + (b * NKV + h / G) * maxT * HS,
                  s.data(), HS, n_valid);
    }
  }
  err.rethrow();
}

}  // namespace cpu
}  // namespace kgpt
