// SGEMM driver: Goto/BLIS-style loops (NC columns of B, KC deep, MC rows of A) over packed panels
// (op(A) is read in place by the AVX kernels instead of packed when row-major, and by the AVX-512
// one when transposed and small),
// a register-blocked micro-kernel per (MR, NR) tile (gemm_kernels.cpp), and a streaming
// matrix-vector path for op(A) with <= 4 rows (batch-1 decoding). The kernel is picked per call
// from the CPU's features (AVX-512 > AVX2/FMA > portable) unless a test caps it.
// Threads own disjoint rectangles of C whose edges are multiples of MR/NR, so tile positions and
// the k order of every element do not depend on the thread count: results are bitwise identical.
#include "common/parallel_errors.h"
#include "common/threads.h"
#include "cpu/aligned_buf.h"
#include "cpu/gemm.h"

#include "common/isa.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/cpu_features.h"
#include "cpu/gemm_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace cpu {
namespace {

using namespace gemm_detail;

// ---------------------------------------------------------------- kernel selection
// Highest kernel allowed: 0 = best the CPU has, 1 = at most AVX2/FMA, 2 = portable only.
std::atomic<int> g_cap{0};

int max_threads() {
#ifdef _OPENMP
  return ::kgpt::num_threads();
#else
  return 1;
#endif
}

// Work below this many flops runs on one thread (spawning costs more than it saves).
constexpr double kMinFlopsPerThread = 4e6;

int threads_for(double flops) {
  const int nt = max_threads();
  // compared in double: a huge product must not overflow the conversion to int
  if (!(flops / kMinFlopsPerThread < nt)) return nt;
  return std::max(1, static_cast<int>(flops / kMinFlopsPerThread));
}

// ---------------------------------------------------------------- per-thread pack buffers
thread_local AlignedFloats tls_a, tls_b;
// ---------------------------------------------------------------- packing (portable code)
#if KGPT_X86
// pack_transposed of a full 64-row sliver in 16x16 AVX-512 transposes (16 loads, 64 shuffles,
// 16 aligned stores per 256 floats, against 4x4 SSE transposes' 64, 128 and 64); only used with
// the AVX-512 kernel (NR = 64), so only on CPUs that have it. Columns past the last multiple of
// 16 of kc one by one. A pure copy: the same packed panel either way.
KGPT_TARGET_AVX512 void transpose_rows64_avx512(const float* src, int64_t ld,
                                                                int64_t kc, float* d) {
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16)
    for (int j0 = 0; j0 < 64; j0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (j0 + i) * ld + k);
      for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: a0 b0 a1 b1 / a2 b2 a3 b3
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 16; i += 4) {  // r[i + m], lane L: column 4L + m of rows i..i+3
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      for (int m = 0; m < 4; ++m) {  // 4x4 transpose of the 128-bit lanes of r[m], r[4+m], ...
        const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
        const __m512 v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
        const __m512 v3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
        _mm512_store_ps(d + (k + m) * 64 + j0, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_store_ps(d + (k + 4 + m) * 64 + j0, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_store_ps(d + (k + 8 + m) * 64 + j0, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_store_ps(d + (k + 12 + m) * 64 + j0, _mm512_shuffle_f32x4(v1, v3, 0xDD));
      }
    }
  for (; k < kc; ++k)
    for (int j = 0; j < 64; ++j) d[k * 64 + j] = src[j * ld + k];
}
#endif

// d[k*S + i] = src[i*ld + k] for i < n (n <= S source rows, each contiguous along k), zero for
// n <= i < S. 4x4 SSE transposes (baseline x86-64, no target attribute needed).
template <int S>
void pack_transposed(const float* src, int64_t ld, int n, int64_t kc, float* d) {
#if KGPT_X86
  if (S == 64 && n == S) return transpose_rows64_avx512(src, ld, kc, d);
#endif
  int i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= n; i += 4) {
    const float* r0 = src + i * ld;
    const float* r1 = r0 + ld;
    const float* r2 = r1 + ld;
    const float* r3 = r2 + ld;
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      __m128 a = _mm_loadu_ps(r0 + k), b = _mm_loadu_ps(r1 + k);
      __m128 c = _mm_loadu_ps(r2 + k), e = _mm_loadu_ps(r3 + k);
      _MM_TRANSPOSE4_PS(a, b, c, e);
      _mm_storeu_ps(d + (k + 0) * S + i, a);
      _mm_storeu_ps(d + (k + 1) * S + i, b);
      _mm_storeu_ps(d + (k + 2) * S + i, c);
      _mm_storeu_ps(d + (k + 3) * S + i, e);
    }
    for (; k < kc; ++k) {
      d[k * S + i] = r0[k];
      d[k * S + i + 1] = r1[k];
      d[k * S + i + 2] = r2[k];
      d[k * S + i + 3] = r3[k];
    }
  }
#endif
  for (; i < n; ++i)
    for (int64_t k = 0; k < kc; ++k) d[k * S + i] = src[i * ld + k];
  if (n < S)
    for (int64_t k = 0; k < kc; ++k)
      for (int j = n; j < S; ++j) d[k * S + j] = 0.f;
}

#if KGPT_X86
// A full 64-wide sliver of pack_straight in AVX-512 registers (4 loads, 4 aligned stores per k):
// only used with the AVX-512 kernel (whose NR is 64), so only on CPUs that have it. The default
// inline copy is 16-byte moves (the file is built without -m flags), and packing B this way was
// 9% of a single-threaded dW product on XS's shapes.
KGPT_TARGET_AVX512 void copy_rows64_avx512(const float* src, int64_t ld,
                                                           int64_t kc, float* d) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* r = src + k * ld;
    float* dk = d + k * 64;
    const __m512 v0 = _mm512_loadu_ps(r), v1 = _mm512_loadu_ps(r + 16);
    const __m512 v2 = _mm512_loadu_ps(r + 32), v3 = _mm512_loadu_ps(r + 48);
    _mm512_store_ps(dk, v0);
    _mm512_store_ps(dk + 16, v1);
    _mm512_store_ps(dk + 32, v2);
    _mm512_store_ps(dk + 48, v3);
  }
}
#endif

// d[k*S + j] = src[k*ld + j] for j < n (rows of the source are contiguous along the sliver).
template <int S>
void pack_straight(const float* src, int64_t ld, int n, int64_t kc, float* d) {
#if KGPT_X86
  if (S == 64 && n == S) return copy_rows64_avx512(src, ld, kc, d);
#endif
  for (int64_t k = 0; k < kc; ++k) {
    const float* r = src + k * ld;
    float* dk = d + k * S;
    if (n == S) {
      std::memcpy(dk, r, sizeof(float) * S);
    } else {
      for (int j = 0; j < n; ++j) dk[j] = r[j];
      for (int j = n; j < S; ++j) dk[j] = 0.f;
    }
  }
}

// A block rows [i0, i0+mc) x k [p0, p0+kc) -> slivers of MR rows: dst[s][k][0..MR), zero padded.
template <int MR>
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0,
            int64_t kc, float* dst) {
  for (int64_t s = 0; s < mc; s += MR) {
    const int m = static_cast<int>(std::min<int64_t>(MR, mc - s));
    if (!trans) pack_transposed<MR>(A + (i0 + s) * lda + p0, lda, m, kc, dst + s * kc);
    else pack_straight<MR>(A + p0 * lda + i0 + s, lda, m, kc, dst + s * kc);
  }
}

// B block k [p0, p0+kc) x cols [j0, j0+nc) -> slivers of NR columns: dst[s][k][0..NR).
template <int NR>
void pack_b(bool trans, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0,
            int64_t nc, float* dst) {
  for (int64_t s = 0; s < nc; s += NR) {
    const int n = static_cast<int>(std::min<int64_t>(NR, nc - s));
    if (!trans) pack_straight<NR>(B + p0 * ldb + j0 + s, ldb, n, kc, dst + s * kc);
    else pack_transposed<NR>(B + (j0 + s) * ldb + p0, ldb, n, kc, dst + s * kc);
  }
}

// ---------------------------------------------------------------- blocked driver
struct Blocking {
  int64_t MC, KC, NC;
};

// The micro-kernels of one ISA: ukr over packed A slivers, and (when not null) ukrd reading a
// row-major op(A) in place and ukrt reading a transposed one in place. All do the same FMAs in
// the same k order.
struct Kern {
  Ukr ukr;
  UkrD ukrd;
  UkrD ukrt = nullptr;
};

// Each ISA's kernels and the blocking every one of them uses (sgemm and sgemm_pair).
constexpr Blocking kBlocking{192, 384, 1024};
#if KGPT_X86
const Kern kKernAvx512{ukr_avx512_6x64, ukrd_avx512_6x64, ukrt_avx512_6x64};
const Kern kKernAvx2{ukr_avx2_6x16, ukrd_avx2_6x16};
#endif
const Kern kKernPortable{ukr_portable, nullptr};

// Block of `len` split into even pieces of at most `blk`, rounded up to multiples of `unit` (so
// tile positions stay on the MR/NR grid; the summation order depends on KC only).
int64_t even_block(int64_t len, int64_t blk, int64_t unit) {
  const int64_t nblk = std::max<int64_t>(1, (len + blk - 1) / blk);
  return ((len + nblk - 1) / nblk + unit - 1) / unit * unit;
}

// Whether the kernel reads op(A) in place instead of packing it: always for a row-major op(A);
// for a transposed one (A stored (K, M), e.g. dout in dW = dout^T x) only while all of A fits
// in about half an L2 (measured: +10-14% on XS's dW, -2% on S's, whose strided rows then come
// from L3).
constexpr int64_t kTransposedInPlaceMax = int64_t(1) << 19;  // floats of A (2 MB)
bool reads_a_in_place(const Problem& p, Kern kr) {
  if (!p.ta) return kr.ukrd != nullptr;
  return kr.ukrt != nullptr && p.M * p.K <= kTransposedInPlaceMax;
}

// Rows [m0, m1) of C (m0 on the MR grid) times the packed B panel k [pc, pc+kc) x cols
// [jc, jc+nc): A blocks of MC rows, packed into Ap unless the kernel reads op(A) in place (then
// only a last, partial sliver is packed); full tiles straight into C, edge tiles through tmp.
template <int MR, int NR>
void panel_rows(const Problem& p, Kern kr, const float* Bp, int64_t jc, int64_t nc, int64_t pc,
                int64_t kc, int64_t m0, int64_t m1, int64_t MC, float* Ap) {
  const bool first = pc == 0;
  const float beta = first ? p.beta : 1.f;
  const float* bias = (first && p.bias) ? p.bias + jc : nullptr;
  const bool direct = reads_a_in_place(p, kr);
  const UkrD kd = p.ta ? kr.ukrt : kr.ukrd;
  alignas(64) float tmp[MR * NR];
  for (int64_t ic = m0; ic < m1; ic += MC) {
    const int64_t mc = std::min(MC, m1 - ic);
    const int64_t in_place = direct ? mc / MR * MR : 0;  // rows [ic, ic+in_place) read in place
    if (in_place < mc) pack_a<MR>(p.ta, p.A, p.lda, ic + in_place, mc - in_place, pc, kc, Ap);
    for (int64_t jr = 0; jr < nc; jr += NR) {
      const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
      const float* bp = Bp + jr * kc;
      const float* bj = bias ? bias + jr : nullptr;
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
        float* c = p.C + (ic + ir) * p.ldc + jc + jr;
        const bool inp = ir < in_place;
        const float* ap = inp ? (p.ta ? p.A + pc * p.lda + (ic + ir) : p.A + (ic + ir) * p.lda + pc)
                              : Ap + (ir - in_place) * kc;
        if (mr == MR && nr == NR) {
          if (inp) kd(kc, ap, p.lda, bp, c, p.ldc, p.alpha, beta, bj);
          else kr.ukr(kc, ap, bp, c, p.ldc, p.alpha, beta, bj);
        } else {
          if (inp) kd(kc, ap, p.lda, bp, tmp, NR, 1.f, 0.f, nullptr);
          else kr.ukr(kc, ap, bp, tmp, NR, 1.f, 0.f, nullptr);
          for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j) {
              float* cij = c + i * p.ldc + j;
              *cij = epi(tmp[i * NR + j], p.alpha, beta, cij, bj, j);
            }
        }
      }
    }
  }
}

// One thread computes the rectangle rows [m0, m1) x cols [n0, n1) of C on its own.
template <int MR, int NR>
void gemm_rect(const Problem& p, Kern kr, Blocking bl, int64_t m0, int64_t m1, int64_t n0,
               int64_t n1) {
  const int64_t MC = std::min(bl.MC, even_block(m1 - m0, bl.MC, MR)), KC = bl.KC;
  const int64_t NC = std::min(bl.NC, even_block(n1 - n0, bl.NC, NR));
  float* Ap = tls_a.get(static_cast<size_t>(bl.MC * KC));
  float* Bp = tls_b.get(static_cast<size_t>(bl.NC * KC));
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += KC) {
      const int64_t kc = std::min(KC, p.K - pc);
      pack_b<NR>(p.tb, p.B, p.ldb, pc, kc, jc, nc, Bp);
      panel_rows<MR, NR>(p, kr, Bp, jc, nc, pc, kc, m0, m1, MC, Ap);
    }
  }
}

// Even k blocks (depends on K only, so the summation order stays thread-count independent).
Blocking even_kc(const Problem& p, Blocking bl) {
  const int64_t nkb = (p.K + bl.KC - 1) / bl.KC;
  bl.KC = ((p.K + nkb - 1) / nkb + 3) / 4 * 4;
  return bl;
}

// Whether a team of nt threads splits C by rows (else by columns). A row-major op(A) read in
// place (activations: forward products and dx) splits by rows whenever every thread gets a
// sliver, so each thread reads the rows that the row-wise ops before it (layernorm, GELU,
// residual, attention, all split by rows the same way) left in its own core's cache (measured:
// XS step 1.5% faster than the pack-cost model below, S neutral). Otherwise whichever gives the
// slowest thread less to do, by a rough cycle model: FMAs / 32 per cycle, plus ~1 cycle per
// packed element. Splitting rows, every thread packs all of B and its own rows of A; splitting
// columns, its columns of B and all of A. A costs nothing to pack when the kernel reads it in
// place. (Sharing one packed B across the team was measured slower: the other core's half
// arrives through cache-to-cache transfers.)
template <int MR, int NR>
bool split_rows(const Problem& p, Kern kr, Blocking bl, int nt) {
  const int64_t mb = (p.M + MR - 1) / MR, nb = (p.N + NR - 1) / NR;
  const bool direct = reads_a_in_place(p, kr);
  if (direct && !p.ta && mb >= nt) return true;
  auto cost = [&](double rows, double cols, double b_cols) {
    const double a_pack = direct ? 0.0 : rows * p.K * std::ceil(cols / bl.NC);
    return rows * cols * p.K / 32.0 + a_pack + b_cols * p.K;
  };
  const double rows_m = std::min<double>(p.M, double((mb + nt - 1) / nt) * MR);
  const double cols_n = std::min<double>(p.N, double((nb + nt - 1) / nt) * NR);
  const double cost_m = cost(rows_m, double(p.N), double(p.N));
  const double cost_n = cost(double(p.M), cols_n, cols_n);
  return nb < nt || (mb >= nt && cost_m <= cost_n);
}

// Thread t's share (of T) of the product: a band of rows or of columns on the MR/NR grid.
template <int MR, int NR>
void gemm_share(const Problem& p, Kern kr, Blocking bl, bool by_rows, int t, int T) {
  if (by_rows) {
    const int64_t mb = (p.M + MR - 1) / MR, s0 = mb * t / T, s1 = mb * (t + 1) / T;
    if (s1 > s0) gemm_rect<MR, NR>(p, kr, bl, s0 * MR, std::min(p.M, s1 * MR), 0, p.N);
  } else {
    const int64_t nb = (p.N + NR - 1) / NR, s0 = nb * t / T, s1 = nb * (t + 1) / T;
    if (s1 > s0) gemm_rect<MR, NR>(p, kr, bl, 0, p.M, s0 * NR, std::min(p.N, s1 * NR));
  }
}

template <int MR, int NR>
void gemm_threaded(const Problem& p, Kern kr, Blocking bl) {
  bl = even_kc(p, bl);
  const int nt = threads_for(2.0 * p.M * p.N * p.K);
  if (nt <= 1) {
    gemm_rect<MR, NR>(p, kr, bl, 0, p.M, 0, p.N);
    return;
  }
  const bool by_rows = split_rows<MR, NR>(p, kr, bl, nt);
  ErrorCarrier err;  // a failed pack-buffer allocation, carried out of the region
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    err.run([&] { gemm_share<MR, NR>(p, kr, bl, by_rows, t, T); });
  }
  err.rethrow();
}

// Columns [o0, o1) of sum->dst += column sums of sum->src (every column added row by row in
// order, so any split of the columns gives the same bits).
constexpr int64_t kSumChunk = 256;  // columns per chunk: the partial sums stay in L1

void column_sum_range(const ColumnSum& s, int64_t o0, int64_t o1) {
  for (int64_t c0 = o0; c0 < o1; c0 += kSumChunk) {
    const int64_t c1 = std::min(o1, c0 + kSumChunk);
    float acc[kSumChunk] = {};
    for (int64_t n = 0; n < s.N; ++n) {
      const float* row = s.src + n * s.OC;
      for (int64_t o = c0; o < c1; ++o) acc[o - c0] += row[o];
    }
    for (int64_t o = c0; o < c1; ++o) s.dst[o] += acc[o - c0];
  }
}

// Two independent products at once: the team splits in two halves, each computing one product
// with its half (on two cores: each product on one core, so no operand is packed twice), and
// p's half then does the column sum. Every element is still computed on the fixed tile grid with
// the k order of sgemm: bitwise the same results as two sgemm calls.
template <int MR, int NR>
void gemm_pair_threaded(const Problem& p, const Problem& q, const ColumnSum* sum, Kern kr,
                        Blocking bl0) {
  const Blocking bp = even_kc(p, bl0), bq = even_kc(q, bl0);
  const int nt = std::min(max_threads(), threads_for(2.0 * p.M * p.N * p.K) +
                                             threads_for(2.0 * q.M * q.N * q.K));
  if (nt < 2) {
    gemm_threaded<MR, NR>(p, kr, bl0);
    gemm_threaded<MR, NR>(q, kr, bl0);
    if (sum) column_sum_acc(*sum);
    return;
  }
  const int tp = nt / 2, tq = nt - tp;
  const bool rows_p = split_rows<MR, NR>(p, kr, bp, tp), rows_q = split_rows<MR, NR>(q, kr, bq, tq);
  ErrorCarrier err;  // as in gemm_threaded (run() returns normally, so the barrier is met)
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    if (T < nt) {  // the runtime gave fewer threads: every thread does its share of both
      err.run([&] { gemm_share<MR, NR>(p, kr, bp, rows_p, t, T); });
#pragma omp barrier
      err.run([&] { gemm_share<MR, NR>(q, kr, bq, rows_q, t, T); });
      if (sum) column_sum_range(*sum, sum->OC * t / T, sum->OC * (t + 1) / T);
    } else if (t < tp) {
      err.run([&] { gemm_share<MR, NR>(p, kr, bp, rows_p, t, tp); });
      if (sum) column_sum_range(*sum, sum->OC * t / tp, sum->OC * (t + 1) / tp);
    } else {
      err.run([&] { gemm_share<MR, NR>(q, kr, bq, rows_q, t - tp, tq); });
    }
  }
  err.rethrow();
}

void gemv_nt(const Problem& p) {
  // Memory-bound: a thread pays off once it streams ~256 KB of B.
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(max_threads(), p.N * p.K / 65536)));
  if (nt <= 1) return gemm_detail::gemv_nt_range(p, 0, p.N);
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    gemm_detail::gemv_nt_range(p, p.N * t / T, p.N * (t + 1) / T);
  }
}

}  // namespace

// ---------------------------------------------------------------- public entry points
void gemm_detail::gemv_nt_range(const Problem& p, int64_t n0, int64_t n1) {
#if KGPT_X86
  if (gemm_use_avx512()) return gemv_nt_avx512(p, n0, n1);
  if (gemm_use_avx2()) return gemv_nt_avx2(p, n0, n1);
#endif
  gemv_nt_portable(p, n0, n1);
}

bool gemm_use_avx2() { return g_cap.load() < 2 && cpu_has_avx2_fma(); }
bool gemm_use_avx512() { return g_cap.load() < 1 && cpu_has_avx512f(); }
void gemm_set_force_portable(bool on) { g_cap.store(on ? 2 : 0); }

bool gemm_set_kernel(const std::string& name) {
  if (name == "auto") g_cap.store(0);
  else if (name == "avx512" && cpu_has_avx512f()) g_cap.store(0);
  else if (name == "avx2_fma" && cpu_has_avx2_fma()) g_cap.store(1);
  else if (name == "portable") g_cap.store(2);
  else return false;
  return true;
}

const char* gemm_kernel_name() {
  if (gemm_use_avx512()) return "avx512";
  if (gemm_use_avx2()) return "avx2_fma";
  return "portable";
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc, const float* bias) {
  sgemm(GemmArgs{trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias});
}

void sgemm(const GemmArgs& p) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) {  // nothing to multiply: C = beta*C + bias
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) {
        float* c = p.C + m * p.ldc + n;
        *c = epi(0.f, 0.f, p.beta, c, p.bias, static_cast<int>(n));
      }
    return;
  }
  if (!p.ta && p.tb && p.M <= 4) return gemv_nt(p);
#if KGPT_X86
  if (gemm_use_avx512())
    return gemm_threaded<6, 64>(p, kKernAvx512, kBlocking);
  if (gemm_use_avx2())
    return gemm_threaded<6, 16>(p, kKernAvx2, kBlocking);
#endif
  gemm_threaded<kPMR, kPNR>(p, kKernPortable, kBlocking);
}

// Side by side pays while each product is small (measured: XS's dx/dW pairs 6-17% faster than
// one after the other on 2 cores); above this many flops a product keeps both cores busy on its
// own and the pair split was 0-8% slower on S's shapes.
constexpr double kPairMaxFlops = 2e8;

void sgemm_pair(const GemmArgs& p, const GemmArgs& q, const ColumnSum* sum) {
  // Degenerate products, the matrix-vector path and large products: one after the other.
  auto plain = [](const GemmArgs& g) {
    return g.M <= 0 || g.N <= 0 || g.K <= 0 || (!g.ta && g.tb && g.M <= 4) ||
           2.0 * g.M * g.N * g.K > kPairMaxFlops;
  };
  if (plain(p) || plain(q)) {
    sgemm(p);
    sgemm(q);
    if (sum) column_sum_acc(*sum);
    return;
  }
#if KGPT_X86
  if (gemm_use_avx512())
    return gemm_pair_threaded<6, 64>(p, q, sum, kKernAvx512, kBlocking);
  if (gemm_use_avx2())
    return gemm_pair_threaded<6, 16>(p, q, sum, kKernAvx2, kBlocking);
#endif
  gemm_pair_threaded<kPMR, kPNR>(p, q, sum, kKernPortable, kBlocking);
}

void column_sum_acc(const ColumnSum& sum) {
  const int64_t OC = sum.OC, nchunks = (OC + kSumChunk - 1) / kSumChunk;
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(double(sum.N) * OC * 4), nchunks));
  (void)nt;  // unused without OpenMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t ch = 0; ch < nchunks; ++ch)
    column_sum_range(sum, ch * kSumChunk, std::min(OC, (ch + 1) * kSumChunk));
}

}  // namespace cpu
}  // namespace kgpt
