// Matrix-vector products over int8 (Q8_0) and bfloat16 weights (see quant.h for the formats and
// the summation order every path follows).
#include "cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/cpu_features.h"
#include "common/isa.h"
#include "common/threads.h"
#include "cpu/aligned_buf.h"
#include "cpu/dispatch.h"
#include "cpu/quant_amx.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if KGPT_X86
#define KGPT_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma")))
#endif

namespace kgpt {
namespace cpu {
namespace {

bool cpu_has_vnni() {
#if KGPT_X86
  static const bool ok = cpu_has_avx512f() && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

enum class Path { vnni, avx512, avx2, portable };

thread_local AlignedFloats tls_rows;  // the kernels' aligned copies of their input rows

Path q8_choice() {
  if (ops_use_avx512() && cpu_has_vnni()) return Path::vnni;
  if (ops_use_avx2()) return Path::avx2;
  return Path::portable;
}

Path bf16_choice() {
  if (ops_use_avx512()) return Path::avx512;
  if (ops_use_avx2()) return Path::avx2;
  return Path::portable;
}

inline float bf16f(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// The fixed lane tree of quant.h over 16 lanes (lanes l and l + 8, then l + 4, l + 2, l + 1).
inline float reduce16(const float* a) {
  float t8[8], t4[4], t2[2];
  for (int i = 0; i < 8; ++i) t8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) t4[i] = t8[i] + t8[i + 4];
  for (int i = 0; i < 2; ++i) t2[i] = t4[i] + t4[i + 2];
  return t2[0] + t2[1];
}

// ------------------------------------------------------------------------------- portable
void q8_cols_portable(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq,
                      const float* wd, const float* bias, int64_t n0, int64_t n1) {
  const int64_t K = a.K, nb = K / kQ8Block;
  for (int64_t j = n0; j < n1; ++j) {
    const int8_t* wr = wq + j * K;
    const float* dr = wd + j * nb;
    for (int64_t b = 0; b < a.B; ++b) {
      const int8_t* xr = a.q.data() + b * K;
      const float* dx = a.d.data() + b * nb;
      float acc[16] = {};
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int8_t* w = wr + blk * kQ8Block;
        const int8_t* x = xr + blk * kQ8Block;
        int32_t s = 0;
        for (int i = 0; i < kQ8Block; ++i) s += static_cast<int32_t>(w[i]) * x[i];
        acc[blk & 15] = std::fma(static_cast<float>(s), dr[blk] * dx[blk], acc[blk & 15]);
      }
      const float s = reduce16(acc);
      out[b * ldo + j] = bias != nullptr ? s + bias[j] : s;
    }
  }
}

void bf16_cols_portable(float* out, int64_t ldo, const float* x, const uint16_t* w,
                        const float* bias, int64_t B, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint16_t* wr = w + j * K;
    for (int64_t b = 0; b < B; ++b) {
      const float* xr = x + b * K;
      float acc[16] = {};
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; ++l) acc[l] = std::fma(xr[k + l], bf16f(wr[k + l]), acc[l]);
      float s = reduce16(acc);
      for (; k < K; ++k) s = std::fma(xr[k], bf16f(wr[k]), s);
      out[b * ldo + j] = bias != nullptr ? s + bias[j] : s;
    }
  }
}

#if KGPT_X86
// ------------------------------------------------------------------------------- AVX2
KGPT_TARGET_AVX2 inline float reduce8_avx2(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// The exact int32 sums of 8 blocks' products (blocks blk0..blk0+nbk-1 of w and x, nbk <= 8),
// lane i holding block blk0 + i (0 past nbk).
KGPT_TARGET_AVX2 inline __m256i q8_isum8_avx2(const int8_t* w, const int8_t* x, int nbk) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s[8];
  for (int i = 0; i < 8; ++i) {
    if (i < nbk) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i * kQ8Block));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i * kQ8Block));
      s[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv)),
                               ones);
    } else {
      s[i] = _mm256_setzero_si256();
    }
  }
  const __m256i t0 = _mm256_hadd_epi32(s[0], s[1]), t1 = _mm256_hadd_epi32(s[2], s[3]);
  const __m256i t2 = _mm256_hadd_epi32(s[4], s[5]), t3 = _mm256_hadd_epi32(s[6], s[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// Lanes [0, n) set (n <= 8).
KGPT_TARGET_AVX2 inline __m256i lanes_below(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

KGPT_TARGET_AVX2 void q8_cols_avx2(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq,
                                   const float* wd, const float* bias, int64_t n0, int64_t n1) {
  const int64_t K = a.K, nb = K / kQ8Block;
  for (int64_t j = n0; j < n1; ++j) {
    const int8_t* wr = wq + j * K;
    const float* dr = wd + j * nb;
    for (int64_t b = 0; b < a.B; ++b) {  // the weight row stays in L1 across rows
      const int8_t* xr = a.q.data() + b * K;
      const float* dx = a.d.data() + b * nb;
      __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t blk = 0; blk < nb; blk += 8) {  // lanes blk & 15 .. (blk & 15) + 7
        const int nbk = static_cast<int>(std::min<int64_t>(8, nb - blk));
        const __m256 isum = _mm256_cvtepi32_ps(
            q8_isum8_avx2(wr + blk * kQ8Block, xr + blk * kQ8Block, nbk));
        __m256& h = acc[(blk >> 3) & 1];
        if (nbk == 8) {
          const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(dr + blk), _mm256_loadu_ps(dx + blk));
          h = _mm256_fmadd_ps(isum, sc, h);
        } else {  // the lanes past the last block keep their sums
          const __m256i m = lanes_below(nbk);
          const __m256 sc = _mm256_mul_ps(_mm256_maskload_ps(dr + blk, m),
                                          _mm256_maskload_ps(dx + blk, m));
          h = _mm256_blendv_ps(h, _mm256_fmadd_ps(isum, sc, h), _mm256_castsi256_ps(m));
        }
      }
      const float s = reduce8_avx2(_mm256_add_ps(acc[0], acc[1]));
      out[b * ldo + j] = bias != nullptr ? s + bias[j] : s;
    }
  }
}


KGPT_TARGET_AVX2 inline __m256 widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int RB>
KGPT_TARGET_AVX2 inline void bf16_col_avx2(float* out, int64_t ldo, const float* x,
                                           const uint16_t* wr, const float* bias, int64_t b0,
                                           int64_t K, int64_t j) {
  __m256 a0[RB], a1[RB];
  for (int r = 0; r < RB; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 w0 = widen8(wr + k), w1 = widen8(wr + k + 8);
    for (int r = 0; r < RB; ++r) {
      const float* xr = x + (b0 + r) * K + k;
      a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, a0[r]);
      a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, a1[r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    const float* xr = x + (b0 + r) * K;
    float s = reduce8_avx2(_mm256_add_ps(a0[r], a1[r]));
    for (int64_t t = k; t < K; ++t) s = std::fma(xr[t], bf16f(wr[t]), s);
    out[(b0 + r) * ldo + j] = bias != nullptr ? s + bias[j] : s;
  }
}

KGPT_TARGET_AVX2 void bf16_cols_avx2(float* out, int64_t ldo, const float* x, const uint16_t* w,
                                     const float* bias, int64_t B, int64_t K, int64_t n0,
                                     int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    const uint16_t* wr = w + j * K;
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
      switch (std::min<int64_t>(4, B - b0)) {
        case 1: bf16_col_avx2<1>(out, ldo, x, wr, bias, b0, K, j); break;
        case 2: bf16_col_avx2<2>(out, ldo, x, wr, bias, b0, K, j); break;
        case 3: bf16_col_avx2<3>(out, ldo, x, wr, bias, b0, K, j); break;
        default: bf16_col_avx2<4>(out, ldo, x, wr, bias, b0, K, j); break;
      }
    }
  }
}

// ------------------------------------------------------------------------------- AVX-512
// Lanes l and l + 8 of a 16-lane sum, then the AVX2 tree (the same additions as reduce16).
KGPT_TARGET_AVX512 inline float reduce16_avx512(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return reduce8_avx2(_mm256_add_ps(lo, hi));
}

// quant.h's lane tree (lanes l and l + 8, l + 4, l + 2, l + 1) on 16 columns' accumulators at
// once (int8: lanes in pi's order, see q8_rows_vnni): each stage pairs two vectors of n columns
// (16 / n lanes each) into one of 2n columns with half the lanes, adding each column's first
// half of lanes to its second half; after four stages lane c holds column c's sum, by the same
// additions as reduce16.
struct Q8Tree {
  __m512i lo[4], hi[4];
};

KGPT_TARGET_AVX512 inline Q8Tree q8_tree_idx(bool pi) {
  Q8Tree t;
  for (int st = 0; st < 4; ++st) {
    const int n = 1 << st, w = 16 >> st;  // columns per input vector, lanes per column
    alignas(64) int32_t lo[16], hi[16];
    for (int k = 0; k < 2 * n; ++k)
      for (int i = 0; i < w / 2; ++i) {
        const int from_y = k >= n ? 16 : 0, base = (k % n) * w;
        int a = base + i, b = base + i + w / 2;
        if (st == 0 && pi) {  // (int8) natural lane l sits at pi's position l / 2 + 8 (l mod 2)
          a = (a >> 1) + 8 * (a & 1);
          b = (b >> 1) + 8 * (b & 1);
        }
        lo[k * (w / 2) + i] = from_y + a;
        hi[k * (w / 2) + i] = from_y + b;
      }
    t.lo[st] = _mm512_load_si512(lo);
    t.hi[st] = _mm512_load_si512(hi);
  }
  return t;
}

// v[0..15]: 16 columns' accumulators; returns their 16 sums (lane c: column c).
KGPT_TARGET_AVX512 inline __m512 q8_tree16(const __m512* v, const Q8Tree& t) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_permutex2var_ps(v[2 * i], t.lo[0], v[2 * i + 1]),
                         _mm512_permutex2var_ps(v[2 * i], t.hi[0], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    b[i] = _mm512_add_ps(_mm512_permutex2var_ps(a[2 * i], t.lo[1], a[2 * i + 1]),
                         _mm512_permutex2var_ps(a[2 * i], t.hi[1], a[2 * i + 1]));
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_permutex2var_ps(b[2 * i], t.lo[2], b[2 * i + 1]),
                         _mm512_permutex2var_ps(b[2 * i], t.hi[2], b[2 * i + 1]));
  return _mm512_add_ps(_mm512_permutex2var_ps(c[0], t.lo[3], c[1]),
                       _mm512_permutex2var_ps(c[0], t.hi[3], c[1]));
}

KGPT_TARGET_AVX512 inline __m512 widen16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// RB rows by NC columns at a time: the NC columns' products are independent chains of fused
// multiply-adds (one chain per column would wait on the FMA latency), each column's lanes in
// the order of quant.h, so every value is that of the column computed alone.
template <int RB, int NC>
KGPT_TARGET_AVX512 inline void bf16_block_avx512(float* out, int64_t ldo, const float* x,
                                                 int64_t ldx, const uint16_t* w,
                                                 const float* bias, int64_t b0, int64_t K,
                                                 int64_t j, bool pf, __m512* held = nullptr) {
  __m512 acc[RB][NC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
  // The next NC columns' rows (contiguous: NC K bf16 values) are requested while these are
  // read, NC/2 cache lines per step of 16: the whole next block by the end of this one (the
  // hardware prefetcher follows one stream, not NC interleaved ones).
  const char* next = reinterpret_cast<const char*>(w + (j + NC) * K);
  int64_t k = 0;
  for (int64_t it = 0; k + 16 <= K; k += 16, ++it) {
    if (pf)
      for (int i = 0; i < (NC + 1) / 2; ++i)
        _mm_prefetch(next + (it * ((NC + 1) / 2) + i) * 64, _MM_HINT_T0);
    __m512 wv[NC];
    for (int c = 0; c < NC; ++c) wv[c] = widen16(w + (j + c) * K + k);
    for (int r = 0; r < RB; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + (b0 + r) * ldx + k);
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (held != nullptr) {  // K % 16 == 0: the lanes kept for q8_tree16 (no tail)
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < NC; ++c) held[r * 16 + c] = acc[r][c];
    return;
  }
  for (int r = 0; r < RB; ++r) {
    const float* xr = x + (b0 + r) * ldx;
    for (int c = 0; c < NC; ++c) {
      const uint16_t* wr = w + (j + c) * K;
      float s = reduce16_avx512(acc[r][c]);
      for (int64_t t = k; t < K; ++t) s = std::fma(xr[t], bf16f(wr[t]), s);
      out[(b0 + r) * ldo + j + c] = bias != nullptr ? s + bias[j + c] : s;
    }
  }
}

// Columns [n0, n1) for rows [b0, b0 + RB): NC columns at a time, then one by one.
template <int RB, int NC>
KGPT_TARGET_AVX512 void bf16_rows_avx512(float* out, int64_t ldo, const float* x, int64_t ldx,
                                         const uint16_t* w, const float* bias, int64_t b0,
                                         int64_t K, int64_t n0, int64_t n1) {
  int64_t j = n0;
  if (K % 16 == 0) {  // runs of 16 columns, their lane trees summed together (q8_tree16)
    const Q8Tree tree = q8_tree_idx(false);
    __m512 held[RB * 16];
    static_assert(16 % NC == 0, "columns per block divide 16");
    for (; j + 16 <= n1; j += 16) {
      for (int c = 0; c < 16; c += NC)
        bf16_block_avx512<RB, NC>(out, ldo, x, ldx, w, bias, b0, K, j + c, j + c + 2 * NC <= n1,
                                  held + c);
      for (int r = 0; r < RB; ++r) {
        __m512 sum = q8_tree16(held + r * 16, tree);
        if (bias != nullptr) sum = _mm512_add_ps(sum, _mm512_loadu_ps(bias + j));
        _mm512_storeu_ps(out + (b0 + r) * ldo + j, sum);
      }
    }
  }
  for (; j + NC <= n1; j += NC)
    bf16_block_avx512<RB, NC>(out, ldo, x, ldx, w, bias, b0, K, j, j + 2 * NC <= n1);
  for (; j < n1; ++j) bf16_block_avx512<RB, 1>(out, ldo, x, ldx, w, bias, b0, K, j, false);
}

// Columns per block by row count: RB * NC accumulators, NC weight vectors and one input vector
// within the 32 vector registers.
template <int RB>
constexpr int kBf16Cols = RB == 1 ? 4 : RB == 2 ? 4 : RB <= 4 ? 4 : 2;

KGPT_TARGET_AVX512 void bf16_cols_avx512(float* out, int64_t ldo, const float* x,
                                         const uint16_t* w, const float* bias, int64_t B,
                                         int64_t K, int64_t n0, int64_t n1) {
  // Groups of up to 8 rows; with several groups, columns in chunks whose weights (~32 KB) stay
  // in cache for the next group.
  const int64_t chunk = B <= 8 ? n1 - n0 : std::max<int64_t>(8, 16384 / std::max<int64_t>(K, 1));
  // Several rows: copied to 64-byte aligned rows first (each row is read once per column, and
  // an unaligned row splits every 64-byte load across two cache lines); where the copy cannot
  // be allocated, read in place (the same values).
  int64_t ldx = K;
  if (B > 1 && (reinterpret_cast<uintptr_t>(x) % 64 != 0 || K % 16 != 0)) {
    const int64_t ld = (K + 15) / 16 * 16;
    if (float* xa = tls_rows.try_get(static_cast<size_t>(B * ld))) {
      for (int64_t b = 0; b < B; ++b) std::memcpy(xa + b * ld, x + b * K, sizeof(float) * K);
      x = xa;
      ldx = ld;
    }
  }
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t b0 = 0; b0 < B; b0 += 8) {
      switch (std::min<int64_t>(8, B - b0)) {
        case 1: bf16_rows_avx512<1, kBf16Cols<1>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 2: bf16_rows_avx512<2, kBf16Cols<2>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 3: bf16_rows_avx512<3, kBf16Cols<3>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 4: bf16_rows_avx512<4, kBf16Cols<4>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 5: bf16_rows_avx512<5, kBf16Cols<5>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 6: bf16_rows_avx512<6, kBf16Cols<6>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        case 7: bf16_rows_avx512<7, kBf16Cols<7>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
        default: bf16_rows_avx512<8, kBf16Cols<8>>(out, ldo, x, ldx, w, bias, b0, K, c0, c1); break;
      }
    }
  }
}

// int8 with AVX-512 VNNI, 16 blocks (512 weights) of a column at a time: the column's 8 vectors
// of 64 bytes (vector v: blocks 2v and 2v + 1, 4 bytes per lane) are transposed so that lane l
// of each holds 4 bytes of one block, pi(l) = 2 (l mod 8) + l / 8, and the 8 vectors' lane
// slots are the block's 8 groups of 4 bytes. The activation rows are laid out the same way once
// (q8_quantize_rows), so 8 vpdpbusd give each lane its block's exact int32 sum, and one
// multiply and one fused multiply-add per 16 blocks add them to the lanes of quant.h (the lanes
// in pi's order, put back before the final sum). vpdpbusd multiplies unsigned by signed bytes,
// so the weights go in offset by 128 (w + 128 in [1, 255]) and each lane starts from -128 times
// the sum of its block's activation codes (negcorr).

// The three stages of the transposition: stage k swaps bit k of the vector index with bit k of
// the lane index (between vectors v and v | 2^k).
struct Q8Transpose {
  __m512i a[3], b[3];  // stage k: the lanes of vector v and of vector v | 2^k
};

KGPT_TARGET_VNNI inline Q8Transpose q8_transpose_idx() {
  Q8Transpose t;
  t.a[0] = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  t.b[0] = _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  t.a[1] = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
  t.b[1] = _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  t.a[2] = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
  t.b[2] = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  return t;
}

KGPT_TARGET_VNNI inline void q8_transpose8(__m512i* v, const Q8Transpose& t) {
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < 8; ++i)
      if ((i >> k & 1) == 0) {
        const __m512i lo = v[i], hi = v[i | (1 << k)];
        v[i] = _mm512_permutex2var_epi32(lo, t.a[k], hi);
        v[i | (1 << k)] = _mm512_permutex2var_epi32(lo, t.b[k], hi);
      }
}

#ifndef KGPT_Q8_PFD
#define KGPT_Q8_PFD 2048  // software prefetch distance in the weight stream, bytes
#endif

// Columns [n0, n1) for rows [b0, b0 + RB).
template <int RB>
KGPT_TARGET_VNNI void q8_rows_vnni(float* out, int64_t ldo, const Q8Rows& a, int64_t b0,
                                   const int8_t* wq, const float* wd, const float* bias,
                                   int64_t n0, int64_t n1) {
  constexpr int kChains = RB <= 2 ? 4 : RB <= 4 ? 2 : 1;
  const int64_t K = a.K, nb = K / kQ8Block, ng = (nb + 15) / 16;
  const __m512i off = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i pi = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m512i unpi = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  const char* pk = reinterpret_cast<const char*>(a.packed.p);
  const Q8Transpose tr = q8_transpose_idx();
  __mmask64 tail[8];  // the last group's bytes within the row, per vector
  for (int v = 0; v < 8; ++v) {
    const int64_t nbytes =
        std::max<int64_t>(0, std::min<int64_t>(64, (nb - 16 * (ng - 1)) * 32 - v * 64));
    tail[v] = nbytes == 64 ? ~__mmask64(0) : (__mmask64(1) << nbytes) - 1;
  }
  const int tail_vecs = static_cast<int>((nb - 16 * (ng - 1) + 1) / 2);
  const Q8Tree tree = q8_tree_idx(true);
  __m512 held[RB][16];  // runs of 16 columns: their accumulators, summed together at the end
  for (int64_t j = n0; j < n1; ++j) {
    const int8_t* wr = wq + j * K;
    const float* dr = wd + j * nb;
    __m512 acc[RB];
    for (int r = 0; r < RB; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t nbg = std::min<int64_t>(16, nb - 16 * g);
      const int8_t* wg = wr + g * 512;
      __m512i w[8];
      if (nbg == 16) {
        for (int v = 0; v < 8; ++v) {
          _mm_prefetch(reinterpret_cast<const char*>(wg + v * 64 + KGPT_Q8_PFD), _MM_HINT_T0);
          w[v] = _mm512_loadu_si512(wg + v * 64);
        }
      } else {  // the blocks past the row's end read as zero (their activation codes are 0)
        for (int v = 0; v < 8; ++v) {
          if (v < tail_vecs) {
            _mm_prefetch(reinterpret_cast<const char*>(wg + v * 64 + KGPT_Q8_PFD), _MM_HINT_T0);
            w[v] = _mm512_maskz_loadu_epi8(tail[v], wg + v * 64);
          } else {
            w[v] = _mm512_setzero_si512();
          }
        }
      }
      q8_transpose8(w, tr);
      for (int v = 0; v < 8; ++v) w[v] = _mm512_xor_si512(w[v], off);
      const __mmask16 lanes = nbg == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nbg) - 1);
      const __m512 dw = _mm512_permutexvar_ps(pi, _mm512_maskz_loadu_ps(lanes, dr + 16 * g));
      // (the lanes in pi's order whose block lies within the row)
      const __mmask16 valid = _mm512_cmplt_epi32_mask(pi, _mm512_set1_epi32(static_cast<int>(nbg)));
      const char* rec = pk + (g * a.B + b0) * kQ8GroupBytes;
      for (int r = 0; r < RB; ++r) {
        const char* xr = rec + r * kQ8GroupBytes;
        // (few rows: the 8 products in kChains independent chains, each vpdpbusd waiting on
        // the one before it otherwise; integer sums, so any split gives the same value)
        __m512i sc_[kChains];
        sc_[0] = _mm512_load_si512(xr + 512);
        for (int c = 1; c < kChains; ++c) sc_[c] = _mm512_setzero_si512();
        for (int v = 0; v < 8; ++v)
          sc_[v % kChains] =
              _mm512_dpbusd_epi32(sc_[v % kChains], w[v], _mm512_load_si512(xr + v * 64));
        __m512i s = sc_[0];
        for (int c = 1; c < kChains; ++c) s = _mm512_add_epi32(s, sc_[c]);
        const __m512 sc = _mm512_mul_ps(dw, _mm512_load_ps(reinterpret_cast<const float*>(xr + 576)));
        if (nbg == 16)
          acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r]);
        else
          acc[r] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[r], valid);
      }
    }
    const int64_t c = (j - n0) % 16, j0 = j - c;
    if (j0 + 16 <= n1) {  // a run of 16 columns: summed together once all are done
      for (int r = 0; r < RB; ++r) held[r][c] = acc[r];
      if (c == 15)
        for (int r = 0; r < RB; ++r) {
          __m512 sum = q8_tree16(held[r], tree);
          if (bias != nullptr) sum = _mm512_add_ps(sum, _mm512_loadu_ps(bias + j0));
          _mm512_storeu_ps(out + (b0 + r) * ldo + j0, sum);
        }
    } else {
      for (int r = 0; r < RB; ++r) {
        const float s = reduce16_avx512(_mm512_permutexvar_ps(unpi, acc[r]));
        out[(b0 + r) * ldo + j] = bias != nullptr ? s + bias[j] : s;
      }
    }
  }
}

KGPT_TARGET_VNNI void q8_cols_vnni(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq,
                                   const float* wd, const float* bias, int64_t n0, int64_t n1) {
  const int64_t K = a.K;
  const int64_t chunk = a.B <= 8 ? n1 - n0 : std::max<int64_t>(8, 32768 / std::max<int64_t>(K, 1));
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t b0 = 0; b0 < a.B; b0 += 8) {
      switch (std::min<int64_t>(8, a.B - b0)) {
        case 1: q8_rows_vnni<1>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 2: q8_rows_vnni<2>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 3: q8_rows_vnni<3>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 4: q8_rows_vnni<4>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 5: q8_rows_vnni<5>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 6: q8_rows_vnni<6>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        case 7: q8_rows_vnni<7>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
        default: q8_rows_vnni<8>(out, ldo, a, b0, wq, wd, bias, c0, c1); break;
      }
    }
  }
}
#endif

// splitmix64's finaliser
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Eight lanes, each step a bijection of the lane state for a fixed word and of the word for a
// fixed state: any one changed word changes the result.
uint64_t hash_chunk(const unsigned char* p, size_t n, uint64_t seed) {
  uint64_t h[8];
  for (int l = 0; l < 8; ++l) h[l] = mix64(seed * 8 + static_cast<uint64_t>(l) + 1);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t w[8];
    std::memcpy(w, p + i, 64);
    for (int l = 0; l < 8; ++l) {
      const uint64_t v = (h[l] ^ w[l]) * 0x9e3779b97f4a7c15ULL;
      h[l] = (v << 31) | (v >> 33);
    }
  }
  if (i < n) {
    uint64_t w[8] = {};
    std::memcpy(w, p + i, n - i);
    for (int l = 0; l < 8; ++l) {
      const uint64_t v = (h[l] ^ w[l]) * 0x9e3779b97f4a7c15ULL;
      h[l] = (v << 31) | (v >> 33);
    }
  }
  uint64_t r = n;
  for (int l = 0; l < 8; ++l) r = mix64(r ^ h[l]);
  return r;
}

}  // namespace

namespace {

#if KGPT_X86
// One block of 32 by the rule of q8_quantize_rows, with vector instructions (no libm call per
// element): the same IEEE operations (|x| maximum, d = amax / 127, x * (1/d) rounded to nearest
// even, clamped as std::max(-127, v) then std::min(127, .) clamp: NaN -> -127), so the same
// codes and scale.
KGPT_TARGET_AVX2 void q8_block_avx2(const float* xb, int8_t* qb, float* dout) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  __m256 v[4], amax = _mm256_setzero_ps();
  __m256i bad = _mm256_setzero_si256();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(xb + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], absmask));
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(
                                   _mm256_and_si256(_mm256_castps_si256(v[i]), expo), expo));
  }
  const bool finite = _mm256_testz_si256(bad, bad);
  float m[8];
  _mm256_storeu_ps(m, amax);
  float am = 0.f;
  for (int i = 0; i < 8; ++i) am = std::max(am, m[i]);
  float d = am / 127.f;
  if (!finite) d = NAN;
  const float id = (finite && d != 0.f) ? 1.f / d : 0.f;
  const __m256 idv = _mm256_set1_ps(id), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  alignas(32) int32_t q32[32];
  for (int i = 0; i < 4; ++i) {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], idv),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    _mm256_store_si256(reinterpret_cast<__m256i*>(q32 + 8 * i), _mm256_cvtps_epi32(r));
  }
  for (int i = 0; i < 32; ++i) qb[i] = static_cast<int8_t>(q32[i]);
  *dout = d;
}
// The same rule with AVX-512 (the VNNI path's rows): the same IEEE operations as
// q8_block_avx2, so the same codes and scale.
KGPT_TARGET_VNNI void q8_block_avx512(const float* xb, int8_t* qb, float* dout) {
  const __m512i expo = _mm512_set1_epi32(0x7f800000);
  const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
  const __m512 amax = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
  const __mmask16 bad =
      _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v0), expo), expo) |
      _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v1), expo), expo);
  const bool finite = bad == 0;
  float d = _mm512_reduce_max_ps(amax) / 127.f;
  if (!finite) d = NAN;
  const float id = (finite && d != 0.f) ? 1.f / d : 0.f;
  const __m512 idv = _mm512_set1_ps(id), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  const __m512 r0 = _mm512_roundscale_ps(_mm512_mul_ps(v0, idv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r1 = _mm512_roundscale_ps(_mm512_mul_ps(v1, idv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m128i q0 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r0, lo), hi)));
  const __m128i q1 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r1, lo), hi)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), q0);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), q1);
  *dout = d;
}

// The VNNI path's records (see q8_rows_vnni) from a.q and a.d: per 16 blocks g and row b, at
// (g * B + b) * kQ8GroupBytes: the codes transposed as the weights are (vector v, lane l: bytes
// 4v..4v+3 of block 16 g + pi(l)), the lanes' negcorr (-128 times the block's code sum) and
// scales; 0 for blocks past the row's end.
KGPT_TARGET_VNNI void q8_pack_vnni(Q8Rows& a) {
  const int64_t B = a.B, K = a.K, nb = K / kQ8Block, ng = (nb + 15) / 16;
  const Q8Transpose tr = q8_transpose_idx();
  const __m512i pi = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m512i ones = _mm512_set1_epi8(1);
  char* pk = reinterpret_cast<char*>(a.packed.p);
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t nbg = std::min<int64_t>(16, nb - 16 * g);
    __mmask64 m[8];
    for (int v = 0; v < 8; ++v) {
      const int64_t nbytes = std::max<int64_t>(0, std::min<int64_t>(64, nbg * 32 - v * 64));
      m[v] = nbytes == 64 ? ~__mmask64(0) : (__mmask64(1) << nbytes) - 1;
    }
    const __mmask16 lanes = nbg == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nbg) - 1);
    for (int64_t b = 0; b < B; ++b) {
      const int8_t* src = a.q.data() + b * K + g * 512;
      char* rec = pk + (g * B + b) * kQ8GroupBytes;
      __m512i c[8];
      for (int v = 0; v < 8; ++v) c[v] = _mm512_maskz_loadu_epi8(m[v], src + v * 64);
      q8_transpose8(c, tr);
      __m512i sum = _mm512_setzero_si512();
      for (int v = 0; v < 8; ++v) {
        _mm512_store_si512(rec + v * 64, c[v]);
        sum = _mm512_dpbusd_epi32(sum, ones, c[v]);
      }
      _mm512_store_si512(rec + 512, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)));
      _mm512_store_ps(rec + 576, _mm512_permutexvar_ps(
                                     pi, _mm512_maskz_loadu_ps(lanes, a.d.data() + b * nb + 16 * g)));
    }
  }
}
#endif


void q8_block_portable(const float* xb, int8_t* qb, float* dout) {
  float amax = 0.f;
  bool finite = true;
  for (int i = 0; i < kQ8Block; ++i) {
    finite = finite && std::isfinite(xb[i]);
    amax = std::max(amax, std::fabs(xb[i]));
  }
  float d = amax / 127.f;
  if (!finite) d = NAN;  // a non-finite block: a NaN scale (NaN outputs)
  const float id = (finite && d != 0.f) ? 1.f / d : 0.f;
  for (int i = 0; i < kQ8Block; ++i) {
    const float v = std::nearbyint(xb[i] * id);
    qb[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
  }
  *dout = d;
}

}  // namespace

// Whether B rows' products run on AMX (so their rows are packed for it).
static bool q8_amx_rows(int64_t B) { return B >= kQ8AmxMinRows && ops_use_amx() && q8_amx_built(); }

void Q8Rows::reserve(int64_t rows, int64_t k) {
  const int64_t nb = k / kQ8Block, ng = (nb + 15) / 16;
  if (static_cast<int64_t>(q.size()) < rows * k) q.resize(static_cast<size_t>(rows * k));
  if (static_cast<int64_t>(d.size()) < rows * nb) d.resize(static_cast<size_t>(rows * nb));
  packed.get(static_cast<size_t>(ng * rows * kQ8GroupFloats));
  if (q8_amx_rows(rows)) amx.get(static_cast<size_t>(q8_amx_floats(rows, k)));
}

void q8_quantize_rows(Q8Rows& a, const float* x, int64_t B, int64_t K) {
  const int64_t nb = K / kQ8Block;
  a.reserve(B, K);
  a.B = B;
  a.K = K;
#if KGPT_X86
  if (q8_choice() == Path::vnni) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t blk = 0; blk < nb; ++blk)
        q8_block_avx512(x + b * K + blk * kQ8Block, a.q.data() + b * K + blk * kQ8Block,
                        a.d.data() + b * nb + blk);
    q8_pack_vnni(a);
    a.packed_ok = true;
    a.amx_ok = q8_amx_rows(B);
    if (a.amx_ok) q8_amx_pack(a);
    return;
  }
  const bool avx2 = ops_use_avx2();
#endif
  for (int64_t b = 0; b < B; ++b)
    for (int64_t blk = 0; blk < nb; ++blk) {
      const float* xb = x + b * K + blk * kQ8Block;
      int8_t* qb = a.q.data() + b * K + blk * kQ8Block;
#if KGPT_X86
      if (avx2)
        q8_block_avx2(xb, qb, a.d.data() + b * nb + blk);
      else
#endif
        q8_block_portable(xb, qb, a.d.data() + b * nb + blk);
    }
  a.packed_ok = false;
  a.amx_ok = false;
}

void q8_matmul_cols(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq, const float* wd,
                    const float* bias, int64_t N, int64_t n0, int64_t n1) {
  if (n1 <= n0 || a.B <= 0) return;
#if KGPT_X86
  switch (q8_choice()) {
    case Path::vnni:
      if (a.amx_ok && ops_use_amx()) {  // whole runs of 16 columns on AMX, the rest below
        n0 = q8_cols_amx(out, ldo, a, wq, wd, bias, N, n0, n1);
        if (n0 >= n1) return;
      }
      if (a.packed_ok) return q8_cols_vnni(out, ldo, a, wq, wd, bias, n0, n1);
      return q8_cols_avx2(out, ldo, a, wq, wd, bias, n0, n1);  // (the same values)
    case Path::avx2: return q8_cols_avx2(out, ldo, a, wq, wd, bias, n0, n1);
    default: break;
  }
#endif
  q8_cols_portable(out, ldo, a, wq, wd, bias, n0, n1);
}

void bf16_matmul_cols(float* out, int64_t ldo, const float* x, const uint16_t* w,
                      const float* bias, int64_t B, int64_t N, int64_t K, int64_t n0,
                      int64_t n1) {
  (void)N;
  if (n1 <= n0 || B <= 0) return;
#if KGPT_X86
  switch (bf16_choice()) {
    case Path::avx512: return bf16_cols_avx512(out, ldo, x, w, bias, B, K, n0, n1);
    case Path::avx2: return bf16_cols_avx2(out, ldo, x, w, bias, B, K, n0, n1);
    default: break;
  }
#endif
  bf16_cols_portable(out, ldo, x, w, bias, B, K, n0, n1);
}

namespace {
// cols(n0, n1) on each thread's even share of the N output columns (one thread per 64K weights
// at most). cols must not throw: the *_cols kernels do not.
template <class Cols>
void by_column_shares(int64_t N, int64_t K, const Cols& cols) {
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(::kgpt::num_threads(), N * K / 65536)));
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    cols(N * t / T, N * (t + 1) / T);
  }
}
}  // namespace

void q8_matmul(float* out, const float* x, const int8_t* wq, const float* wd, const float* bias,
               int64_t B, int64_t N, int64_t K) {
  Q8Rows a;
  q8_quantize_rows(a, x, B, K);
  by_column_shares(N, K, [&](int64_t n0, int64_t n1) {
    q8_matmul_cols(out, N, a, wq, wd, bias, N, n0, n1);
  });
}

void bf16_matmul(float* out, const float* x, const uint16_t* w, const float* bias, int64_t B,
                 int64_t N, int64_t K) {
  by_column_shares(N, K, [&](int64_t n0, int64_t n1) {
    bf16_matmul_cols(out, N, x, w, bias, B, N, K, n0, n1);
  });
}

const char* q8_path() {
  switch (q8_choice()) {
    case Path::vnni: return "avx512_vnni";
    case Path::avx2: return "avx2";
    default: return "portable";
  }
}

const char* bf16_path() {
  switch (bf16_choice()) {
    case Path::avx512: return "avx512";
    case Path::avx2: return "avx2";
    default: return "portable";
  }
}

uint64_t fingerprint(const void* p, size_t n) {
  constexpr size_t kChunk = size_t(1) << 20;
  const int64_t nc = static_cast<int64_t>((n + kChunk - 1) / kChunk);
  std::vector<uint64_t> hs(static_cast<size_t>(nc));
  const unsigned char* c = static_cast<const unsigned char*>(p);
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (nc > 1)
  for (int64_t i = 0; i < nc; ++i)
    hs[i] = hash_chunk(c + i * kChunk, std::min(kChunk, n - static_cast<size_t>(i) * kChunk),
                       static_cast<uint64_t>(i));
  uint64_t r = mix64(n);
  for (int64_t i = 0; i < nc; ++i) r = mix64(r ^ hs[i]);
  return r;
}

}  // namespace cpu
}  // namespace kgpt
