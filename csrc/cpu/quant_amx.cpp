// int8 (Q8_0) products on AMX-INT8 tiles, several activation rows at a time (quant.h's order,
// bit for bit). One tdpbssd gives the exact int32 block sums of 16 weight columns by up to 8
// rows by 2 blocks:
//   A tile: the weights as they are stored, 16 columns (rows of A, stride K bytes) by the 64
//     bytes of blocks 2pp and 2pp + 1 (no second copy of the weights);
//   B tile: the activation rows (q8_amx_pack), dword column n = 2 b + q holding row b's block
//     2pp + q in B rows 8q .. 8q + 7 and zeros in the other 8 rows, so column n sums block q only;
//   C tile: 16 columns by (row, block) int32 sums: row j of C is one vector of 16 lanes (b, q).
// Each C row then takes quant.h's step for its 16 (row, block) pairs: lane = fma(float(isum),
// d_w * d_x, lane), the lanes of blocks 2pp and 2pp + 1 being quant.h's lanes 2 (pp mod 8) + q,
// kept in an L1 scratch acc[pp mod 8][column] of 16 lanes (b, q); blocks in order, so each lane
// sums its blocks in block order. The lane tree: lanes l and l + 8 are acc[p] and acc[p + 4]
// (same b, q), l + 4 and l + 2 likewise, and l, l + 1 the two q lanes of one row.
#include "cpu/quant_amx.h"

#include <algorithm>
#include <cstring>

#include "common/isa.h"
#include "cpu/dispatch.h"

#if KGPT_X86 && defined(__x86_64__) && defined(__linux__) && \
    (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define KGPT_AMX 1
#define KGPT_TARGET_AMX \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define KGPT_AMX 0
#endif

namespace kgpt {
namespace cpu {

bool q8_amx_built() { return KGPT_AMX != 0; }

int64_t q8_amx_floats(int64_t B, int64_t K) {
  const int64_t nb = K / kQ8Block, npairs = (nb + 1) / 2, groups = (B + 7) / 8;
  return groups * npairs * (kQ8AmxRecBytes / 4);
}

void q8_amx_pack(Q8Rows& a) {
  const int64_t B = a.B, K = a.K, nb = K / kQ8Block, npairs = (nb + 1) / 2;
  const int64_t groups = (B + 7) / 8;
  char* base = reinterpret_cast<char*>(a.amx.p);
  std::memset(base, 0, static_cast<size_t>(groups * npairs * kQ8AmxRecBytes));
  for (int64_t gr = 0; gr < groups; ++gr) {
    const int64_t rows = std::min<int64_t>(8, B - gr * 8);
    for (int64_t pp = 0; pp < npairs; ++pp) {
      char* rec = base + (gr * npairs + pp) * kQ8AmxRecBytes;
      float* dx = reinterpret_cast<float*>(rec + 1024);
      for (int q = 0; q < 2; ++q) {
        const int64_t blk = 2 * pp + q;
        if (blk >= nb) continue;
        for (int64_t b = 0; b < rows; ++b) {
          const int8_t* src = a.q.data() + (gr * 8 + b) * K + blk * kQ8Block;
          for (int r = 0; r < 8; ++r)
            std::memcpy(rec + (8 * q + r) * 64 + (2 * b + q) * 4, src + 4 * r, 4);
          dx[2 * b + q] = a.d[static_cast<size_t>((gr * 8 + b) * nb + blk)];
        }
      }
    }
  }
}

#if KGPT_AMX
#ifndef KGPT_AMX_PFD
#define KGPT_AMX_PFD 8  // software prefetch distance in pairs of blocks (64 bytes per row)
#endif
namespace {
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// tdpbssd on the pair of blocks pp into C tile TC (A tile pp mod 2, B tile 2 + pp mod 2:
// tiles are not renamed, so alternating them lets the next loads overlap this product).
#define KGPT_AMX_PAIR(TC, PA, PB)                    \
  do {                                               \
    _tile_loadd(PA, wa + pp * 64, K);                \
    _tile_loadd(PB, recs + pp * kQ8AmxRecBytes, 64); \
    _tile_zero(TC);                                  \
    _tile_dpbssd(TC, PA, PB);                        \
  } while (0)
}  // namespace

// Tiles: 0, 1 A (16 x 64 bytes), 2, 3 B (16 x 64), 4..7 C (16 x 16 int32): up to 4 pairs of
// blocks in flight, their sums stored, then their fused multiply-adds.
KGPT_TARGET_AMX int64_t q8_cols_amx(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq,
                                    const float* wd, const float* bias, int64_t N, int64_t n0,
                                    int64_t n1) {
  const int64_t K = a.K, nb = K / kQ8Block, npairs = (nb + 1) / 2;
  const int64_t groups = (a.B + 7) / 8;
  if (n1 - n0 < 16 || nb == 0) return n0;
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  alignas(64) int32_t cbuf[4 * 256];
  alignas(64) float acc[8 * 16 * 16];  // [lane pair p][column][lanes (b, q)]
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i unpi = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  // swaps of vector index bit k with lane bit k (k = 0, 1, 2), as q8_transpose8 in quant.cpp
  const __m512i ta[3] = {
      _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
      _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
      _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)};
  const __m512i tb[3] = {
      _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31),
      _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31),
      _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31)};
  const char* base = reinterpret_cast<const char*>(a.amx.p);
  int64_t j0 = n0;
  for (; j0 + 16 <= n1; j0 += 16) {
    // A lone last block (nb odd) reads 32 bytes past each column's row (times zero codes in
    // the B tile): past the matrix for its last column, so that run is left to the caller.
    if (nb % 2 == 1 && j0 + 16 >= N) break;
    const int8_t* wa = wq + j0 * K;
    const float* wdj = wd + j0 * nb;
    for (int64_t gr = 0; gr < groups; ++gr) {
      const char* recs = base + gr * npairs * kQ8AmxRecBytes;
      // acc[p] is written first by pair p (the fused multiply-adds onto +0, as onto a zeroed
      // scratch) and read by the lane tree only for p < pu (+0 vectors for the others): no
      // zeroing pass over the 8 KB scratch per run.
      const int pu = static_cast<int>(std::min<int64_t>(8, npairs));
      // Pair pp + 2's product is issued before pair pp's fused multiply-adds (C tiles and
      // cbuf slots round-robin over 4), so its tile work and store overlap them.
      auto issue = [&](int64_t pp) {
        if (pp >= npairs) return;
        int32_t* cb = cbuf + (pp & 3) * 256;
        switch (pp & 3) {
          case 0: KGPT_AMX_PAIR(4, 0, 2); _tile_stored(4, cb, 64); break;
          case 1: KGPT_AMX_PAIR(5, 1, 3); _tile_stored(5, cb, 64); break;
          case 2: KGPT_AMX_PAIR(6, 0, 2); _tile_stored(6, cb, 64); break;
          default: KGPT_AMX_PAIR(7, 1, 3); _tile_stored(7, cb, 64); break;
        }
      };
      issue(0);
      issue(1);
      for (int64_t pp = 0; pp < npairs; ++pp) {
        issue(pp + 2);
        {
          const char* rec = recs + pp * kQ8AmxRecBytes;
          float* ac = acc + (pp & 7) * 256;
          const int32_t* cb = cbuf + (pp & 3) * 256;
          const __m512 dxv = _mm512_load_ps(reinterpret_cast<const float*>(rec + 1024));
          const bool first = pp < 8;  // acc[pp & 7] not yet written in this run: it is +0
          // (the weights' 16 row streams prefetched KGPT_AMX_PFD pairs ahead, into the next
          // run's rows past the end; once per run)
          const int64_t pf = pp + KGPT_AMX_PFD;
          const int8_t* pfb = pf < npairs ? wa + pf * 64 : wa + 16 * K + (pf - npairs) * 64;
          if (gr == 0)
            for (int r = 0; r < 16; ++r)
              _mm_prefetch(reinterpret_cast<const char*>(pfb + r * K), _MM_HINT_T0);
          if (2 * pp + 1 < nb) {
            for (int r = 0; r < 16; ++r) {
              double dd;
              std::memcpy(&dd, wdj + r * nb + 2 * pp, sizeof(dd));  // d_w of 2 pp, 2 pp + 1
              const __m512 sc = _mm512_mul_ps(_mm512_castpd_ps(_mm512_set1_pd(dd)), dxv);
              const __m512 is = _mm512_cvtepi32_ps(_mm512_load_si512(cb + 16 * r));
              const __m512 prev = first ? _mm512_setzero_ps() : _mm512_load_ps(ac + 16 * r);
              _mm512_store_ps(ac + 16 * r, _mm512_fmadd_ps(is, sc, prev));
            }
          } else {  // the lone last block: lanes q = 0 only
            for (int r = 0; r < 16; ++r) {
              const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(wdj[r * nb + 2 * pp]), dxv);
              const __m512 is = _mm512_cvtepi32_ps(_mm512_load_si512(cb + 16 * r));
              const __m512 prev = first ? _mm512_setzero_ps() : _mm512_load_ps(ac + 16 * r);
              _mm512_store_ps(ac + 16 * r,
                              _mm512_mask3_fmadd_ps(is, sc, prev, __mmask16(0x5555)));
            }
          }
        }
      }
      // The lane tree: stages l + 8, l + 4, l + 2 across acc[p], then l + 1 within a vector
      // (two columns at a time, lanes (column parity c, b)), then rows and columns swapped.
      __m512 w[8];
      for (int i = 0; i < 8; ++i) {
        __m512 v[2];
        for (int c = 0; c < 2; ++c) {
          const int64_t col = (2 * i + c) * 16;
          __m512 A[8];
          for (int p = 0; p < 8; ++p)
            A[p] = p < pu ? _mm512_load_ps(acc + p * 256 + col) : _mm512_setzero_ps();
          const __m512 t0 = _mm512_add_ps(A[0], A[4]), t1 = _mm512_add_ps(A[1], A[5]);
          const __m512 t2 = _mm512_add_ps(A[2], A[6]), t3 = _mm512_add_ps(A[3], A[7]);
          v[c] = _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3));
        }
        w[i] = _mm512_add_ps(_mm512_permutex2var_ps(v[0], ev, v[1]),
                             _mm512_permutex2var_ps(v[0], od, v[1]));
      }
      for (int k = 0; k < 3; ++k)
        for (int i = 0; i < 8; ++i)
          if ((i >> k & 1) == 0) {
            const __m512 lo = w[i], hi = w[i | (1 << k)];
            w[i] = _mm512_permutex2var_ps(lo, ta[k], hi);
            w[i | (1 << k)] = _mm512_permutex2var_ps(lo, tb[k], hi);
          }
      const int64_t rows = std::min<int64_t>(8, a.B - gr * 8);
      for (int64_t b = 0; b < rows; ++b) {
        __m512 o = _mm512_permutexvar_ps(unpi, w[b]);
        if (bias != nullptr) o = _mm512_add_ps(o, _mm512_loadu_ps(bias + j0));
        _mm512_storeu_ps(out + (gr * 8 + b) * ldo + j0, o);
      }
    }
  }
  _tile_release();
  return j0;
}
#else
int64_t q8_cols_amx(float*, int64_t, const Q8Rows&, const int8_t*, const float*, const float*,
                    int64_t, int64_t n0, int64_t) {
  return n0;
}
#endif

}  // namespace cpu
}  // namespace kgpt
