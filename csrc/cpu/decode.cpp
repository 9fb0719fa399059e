// Fused KV-cache decoding step (see decode.h).
#include "common/isa.h"
#include "common/parallel_errors.h"
#include "common/threads.h"
#include "cpu/decode.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <numeric>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "cpu/aligned_buf.h"
#include "cpu/gemm.h"
#include "cpu/gemm_kernels.h"
#include "cpu/lm_filter.h"
#include "cpu/ops.h"
#include "cpu/quant.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#include <sched.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <climits>

namespace kgpt {
namespace cpu {
namespace {

// The decoding step's barrier between dependent phases (about 4 per layer). A waiting thread
// spins briefly (a barrier is normally met within microseconds), then sleeps on a futex until
// the last thread arrives. OpenMP's own barrier keeps spinning for a long while by default; on
// a machine whose cores are shared with other processes (more runnable threads than cores), a
// team thread that loses its core then costs its peers that spinning at every barrier: decoding
// steps measured 25-50x slower with 2 threads on 2 loaded cores (S, 160 ms instead of 4 ms per
// token). A sleeping waiter gives its core back, so the preempted peer can run there. The
// release/acquire pair orders every write before the barrier before every read after it.
class StepBarrier {
 public:
  void set_team(int T) { T_ = T; }
  void wait() {
    if (T_ <= 1) return;
    const int g = gen_.load(std::memory_order_acquire);
    const auto t0 = std::chrono::steady_clock::now();
    if (count_.fetch_add(1, std::memory_order_acq_rel) == T_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      // seq_cst on both sides (gen_ then sleepers_ here, sleepers_ then gen_ below): a
      // store-buffer pattern, where acquire/release alone would let both sides read the old
      // values and leave a sleeper unwoken.
      gen_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake();
      return;
    }
    for (int i = 0; i < kSpins; ++i) {
      if (gen_.load(std::memory_order_acquire) != g) return;
#if KGPT_X86
      _mm_pause();
#endif
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (gen_.load(std::memory_order_seq_cst) == g) sleep_while(g);
    slept_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now() - t0).count(),
                        std::memory_order_relaxed);
    sleepers_.fetch_sub(1, std::memory_order_acq_rel);
  }
  // Nanoseconds the team's threads have spent in the waits that outlasted the spin (the spin
  // included: a waiter spins on its core while its preempted peer cannot run there), all
  // together. A wait met within the spin adds nothing.
  int64_t slept_ns() const { return slept_ns_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kSpins = 4000;
#ifdef __linux__
  void sleep_while(int g) {  // returns at once if gen_ has moved on (the kernel checks)
    syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAIT_PRIVATE, g, nullptr, nullptr, 0);
  }
  void wake() {
    syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
            nullptr, 0);
  }
#else
  void sleep_while(int) { sched_yield(); }
  void wake() {}
#endif
  std::atomic<int> count_{0}, gen_{0}, sleepers_{0};
  std::atomic<int64_t> slept_ns_{0};
  int T_ = 1;
};


#if KGPT_X86
#ifndef KGPT_RB
#define KGPT_RB 8
#endif
#ifndef KGPT_NC
#define KGPT_NC 1
#endif
// Software prefetch distance in the weight stream, floats (4 KB; S batch 8, 2 threads: none
// 2.2 ms/step, 512-4096 floats 1.8-2.0 ms within noise).
#ifndef KGPT_PFD
#define KGPT_PFD 1024
#endif
// Columns [n0, n1) of rows [0, R) of out: each row by the arithmetic of sgemm's one-row
// matrix-vector kernel (gemm_kernels.cpp, gemv_rows_avx512<1> and its gemv_finish: two 16-lane
// sums over steps of 32, the 8-wide tail into the low half of the first, the halves and sums
// added in that order, the scalar tail, then the bias), so each row's value is bitwise that
// kernel's for the row alone (tests/test_native_decode.py holds them equal). Rows of x at
// stride ldx. NC columns at a time: each weight load serves R rows and each row load NC
// columns (2 R NC accumulators: R NC <= 12 keeps them, the NC weight vectors and a row in the
// 32 registers).
template <int R, int NC>
KGPT_TARGET_AVX512 void gemv_rows_alone_avx512(float* out, int64_t ldo, const float* x,
                                               int64_t ldx, const float* w, const float* bias,
                                               int64_t K, int64_t n0, int64_t n1) {
  static_assert(R * NC <= 12, "accumulators");  // (measured: R 8, NC 1 fastest on S)
  int64_t n = n0;
  for (; n + NC <= n1; n += NC) {
    const float* wr = w + n * K;
    __m512 z[R][NC][2];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NC; ++c) z[r][c][0] = z[r][c][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512 wv[NC][2];
      for (int c = 0; c < NC; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(wr + c * K + k + KGPT_PFD), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wr + c * K + k + KGPT_PFD + 16), _MM_HINT_T0);
        wv[c][0] = _mm512_loadu_ps(wr + c * K + k);
        wv[c][1] = _mm512_loadu_ps(wr + c * K + k + 16);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 x0 = _mm512_loadu_ps(x + r * ldx + k);
        const __m512 x1 = _mm512_loadu_ps(x + r * ldx + k + 16);
        for (int c = 0; c < NC; ++c) {
          z[r][c][0] = _mm512_fmadd_ps(x0, wv[c][0], z[r][c][0]);
          z[r][c][1] = _mm512_fmadd_ps(x1, wv[c][1], z[r][c][1]);
        }
      }
    }
    for (int c = 0; c < NC; ++c) {
      const float* wc = wr + c * K;
      for (int r = 0; r < R; ++r) {
        __m256 acc[4];
        for (int v = 0; v < 2; ++v) {
          acc[2 * v] = _mm512_castps512_ps256(z[r][c][v]);
          acc[2 * v + 1] =
              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z[r][c][v]), 1));
        }
        const float* xr = x + r * ldx;
        int64_t kk = k;
        for (; kk + 8 <= K; kk += 8)
          acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + kk), _mm256_loadu_ps(wc + kk), acc[0]);
        __m256 s = acc[0];
        for (int u = 1; u < 4; ++u) s = _mm256_add_ps(s, acc[u]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float dot = _mm_cvtss_f32(h);
        for (; kk < K; ++kk) dot += xr[kk] * wc[kk];
        out[r * ldo + n + c] = bias != nullptr ? dot + bias[n + c] : dot;
      }
    }
  }
  if (NC > 1 && n < n1) gemv_rows_alone_avx512<R, 1>(out, ldo, x, ldx, w, bias, K, n, n1);
}

// gemv_rows_alone_avx512<rows, NC> for 1 <= rows <= R.
template <int NC, int R = KGPT_RB>
KGPT_TARGET_AVX512 void gemv_rows_upto(int rows, float* out, int64_t ldo, const float* x,
                                       int64_t ldx, const float* w, const float* bias, int64_t K,
                                       int64_t n0, int64_t n1) {
  if constexpr (R > 1) {
    if (rows < R) return gemv_rows_upto<NC, R - 1>(rows, out, ldo, x, ldx, w, bias, K, n0, n1);
  }
  gemv_rows_alone_avx512<R, NC>(out, ldo, x, ldx, w, bias, K, n0, n1);
}
#endif

thread_local AlignedFloats tls_xa;  // gemv_cols' aligned copy of its rows

// Columns [n0, n1) of out (B, N) = x (B, K) @ w (N, K).T + bias, float32. Each row is computed
// as the one-row matrix-vector kernel sgemm uses for a single row computes it (so row b's values
// are bitwise those of row b decoded alone, and those of the op-by-op step at batch 1), and the
// rows share each weight row's read: with AVX-512, up to 8 rows per weight load (more in groups,
// the columns in chunks of about 32 KB of weights that stay in cache for the next group);
// otherwise row by row over column blocks of about 32 KB.
void gemv_cols(float* out, const float* x, const float* w, const float* bias, int64_t B,
               int64_t N, int64_t K, int64_t n0, int64_t n1) {
  if (n1 <= n0) return;
  const int64_t cb = std::max<int64_t>(4, 8192 / std::max<int64_t>(K, 1));
#if KGPT_X86
  if (B > 1 && gemm_use_avx512()) {
    // The rows copied to 64-byte aligned rows first: each row is read once per column, and an
    // unaligned row splits every 64-byte load across two cache lines.
    // (Where the copy cannot be allocated, the rows are read in place: the same values.)
    int64_t ldx = (K + 15) / 16 * 16;
    const float* xr = x;
    if (float* xa = tls_xa.try_get(static_cast<size_t>(B * ldx))) {
      for (int64_t b = 0; b < B; ++b) std::memcpy(xa + b * ldx, x + b * K, sizeof(float) * K);
      xr = xa;
    } else {
      ldx = K;
    }
    const int64_t chunk = B <= KGPT_RB ? n1 - n0 : cb;
    for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
      const int64_t c1 = std::min(n1, c0 + chunk);
      for (int64_t b0 = 0; b0 < B; b0 += KGPT_RB) {
        const float* xb = xr + b0 * ldx;
        float* ob = out + b0 * N;
        gemv_rows_upto<KGPT_NC>(static_cast<int>(std::min<int64_t>(KGPT_RB, B - b0)), ob, N, xb,
                                ldx, w, bias, K, c0, c1);
      }
    }
    return;
  }
#endif
  const int64_t step = B == 1 ? n1 - n0 : cb;
  for (int64_t j0 = n0; j0 < n1; j0 += step) {
    const int64_t j1 = std::min(n1, j0 + step);
    for (int64_t b = 0; b < B; ++b)
      gemm_detail::gemv_nt_range({false, true, 1, N, K, 1.f, x + b * K, K, w, K, 0.f,
                                  out + b * N, N, bias}, j0, j1);
  }
}

// Per-thread scratch, grown once: attention scores, and the thread's own copy of the residual
// stream x and of the layernorm output (every thread keeps x up to date itself, so no thread
// waits for another to add a residual or normalise a row).
struct ThreadBuf {
  std::vector<float> scores, x, ln, stats, rope;
  Q8Rows qa;  // int8 weights: the thread's quantized copy of the current matrix input
  void size(int64_t maxT, int64_t BC, int64_t B, int64_t HS) {
    if (static_cast<int64_t>(scores.size()) < maxT) scores.resize(static_cast<size_t>(maxT));
    if (static_cast<int64_t>(rope.size()) < HS) rope.resize(static_cast<size_t>(HS));
    if (static_cast<int64_t>(x.size()) < BC) {
      x.resize(static_cast<size_t>(BC));
      ln.resize(static_cast<size_t>(BC));
    }
    if (static_cast<int64_t>(stats.size()) < 2 * B) stats.resize(static_cast<size_t>(2 * B));
  }
};
thread_local ThreadBuf tls_buf;

}  // namespace

// Widths: the qkv row (NH + 2 NKV) * HS (3C for GPT-2), c_fc's output (H or 2H: 4C for GPT-2).
static int64_t qkv_width(const DecodeModel& m) { return (m.NH + 2 * m.NKV) * (m.C / m.NH); }
static int64_t fc_width(const DecodeModel& m) { return m.swiglu ? 2 * m.H : m.H; }

// The final norm's output (B, C) in the scratch: after atty, proj (B,C); qkv (B,QW); fch
// (B,FW); fch_gelu (B,H). GPT-2: at 13 B C.
static float* scratch_lnf(const DecodeModel& m, float* scratch) {
  return scratch + m.B * (2 * m.C + qkv_width(m) + fc_width(m) + m.H);
}

int64_t decode_scratch_floats(const DecodeModel& m) {
  // shared between the threads: atty, proj (B,C); qkv (B,QW); fch (B,FW), fch_gelu (B,H); the
  // final norm's output (B,C), for the lm_head filter's exact logits
  return m.B * (2 * m.C + qkv_width(m) + fc_width(m) + m.H + m.C);
}

// The config's norm over B rows (the op-by-op path's call: the same bits).
static void norm_rows(const DecodeModel& m, float* out, float* mean, float* rstd, const float* x,
                      const float* w, const float* b) {
  if (m.rmsnorm)
    rmsnorm_forward(out, rstd, x, w, m.B, m.C, m.eps);
  else
    layernorm_forward(out, mean, rstd, x, w, b, m.B, m.C, m.eps);
}

// Threads meet at four barriers per layer. Each thread:
//   x, ln1 on its own copy -> q, k, v columns of its own heads -> those heads' attention
//   | proj columns | x += proj, ln2 on its own copy -> fc columns and their GELU | fc-proj columns |
// Every value is computed by the same kernel on the same inputs as in the op-by-op step of the
// row alone (column ranges of the matrix-vector kernel give the columns' exact values; GELU
// ranges start on multiples of 16 so every element takes the same vector path), so the two
// agree bitwise.
void decode_step(const DecodeModel& m, const int32_t* tok, const int64_t* pos, float* logits,
                 float* scratch, const LmFilter* filter) {
  const int64_t B = m.B, C = m.C, NH = m.NH, NKV = m.NKV, HS = C / NH, V = m.V, maxT = m.maxT;
  const int64_t G = NH / NKV, QW = qkv_width(m), FW = fc_width(m), H = m.H;
  float* atty = scratch;
  float* proj = atty + B * C;
  float* qkv = proj + B * C;
  float* fch = qkv + B * QW;
  float* fchg = fch + B * FW;
  float* lnf = scratch_lnf(m, scratch);
  // Threads: as the matrix-vector path sizes them, one per ~256 KB of weights per layer
  // (GPT-2: 12 C^2).
  const int64_t per_layer = C * QW + C * C + C * FW + H * C;
#ifdef _OPENMP
  int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(::kgpt::num_threads(), per_layer / 65536)));
#else
  int nt = 1;
#endif
  // Cores shared with other processes (see DecodeModel::single_steps_left): one thread for a
  // while after a step whose threads mostly waited for each other.
  if (nt > 1 && m.single_steps_left > 0) {
    --m.single_steps_left;
    nt = 1;
  }
  const auto t_start = std::chrono::steady_clock::now();
  // GELU by column range only when every range can start on a multiple of 16 and H is one
  // (then the op-by-op step's flat GELU also takes the 16-lane path for every element). SwiGLU
  // runs row by row in both paths: ranges starting on multiples of 16 always give its bits.
  const bool gelu_by_cols = H % 16 == 0;
  // A thread whose scratch cannot be sized keeps the exception in err; after the barrier every
  // thread sees the failure and skips the step (the same barriers for all), and it is rethrown
  // on the calling thread after the region.
  ErrorCarrier err;
  StepBarrier bar;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    ThreadBuf& tb = tls_buf;
    if (t == 0) bar.set_team(T);  // published by the OpenMP barrier below
    err.run([&] {
      tb.size(*std::max_element(pos, pos + B) + 1, B * C, B, B * HS);  // scores: pos + 1
      if (m.wformat == WeightFormat::int8) {  // sized once here: no allocation after the barrier
        const int64_t K = std::max(C, H);
        tb.qa.reserve(B, K);
      }
    });
#pragma omp barrier
    if (!err.failed()) {
      float *x = tb.x.data(), *ln = tb.ln.data(), *mean = tb.stats.data(), *rstd = mean + B;
      float* scores = tb.scores.data();
      float *rc = tb.rope.data(), *rs = rc + HS / 2;
      if (m.rope)  // row b's table at rc + b HS (cosines), rs + b HS (sines)
        for (int64_t b = 0; b < B; ++b)
          rope_table_serial(rc + b * HS, rs + b * HS, pos[b], HS, m.rope_theta);
      // Columns [n0, n1) of out (B, N) = in (B, K) @ the matrix.T + bias, in the model's weight
      // format (int8: from the thread's quantized copy of in, made by quant_in).
      auto cols = [&](float* out, const float* in, const float* w, const QMat& qm,
                      const float* bias, int64_t N, int64_t K, int64_t n0, int64_t n1) {
        switch (m.wformat) {
          case WeightFormat::fp32: return gemv_cols(out, in, w, bias, B, N, K, n0, n1);
          case WeightFormat::bf16:
            return bf16_matmul_cols(out, N, in, static_cast<const uint16_t*>(qm.w), bias, B, N,
                                    K, n0, n1);
          case WeightFormat::int8:
            return q8_matmul_cols(out, N, tb.qa, static_cast<const int8_t*>(qm.w), qm.d, bias,
                                  N, n0, n1);
        }
      };
      auto quant_in = [&](const float* in, int64_t K) {
        if (m.wformat == WeightFormat::int8) q8_quantize_rows(tb.qa, in, B, K);
      };
      auto even = [&](int64_t N) { return std::make_pair(N * t / T, N * (t + 1) / T); };
      // This thread's key/value heads [g0, g1) and their query heads [g0 G, g1 G) (GPT-2: G = 1).
      const int64_t g0 = NKV * t / T, g1 = NKV * (t + 1) / T, h0 = g0 * G, h1 = g1 * G;
      // Groups that do not split evenly (llama-S: NKV 3 on 2 threads, 1 + 2 groups, so one
      // thread would do twice the other's q/k/v product and attention): split by whole heads'
      // columns and by (row, query head) instead, at the cost of one more barrier per layer.
      const bool heads_split = NKV % T != 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c)
          x[b * C + c] = m.wpe != nullptr ? m.wte[tok[b] * C + c] + m.wpe[pos[b] * C + c]
                                          : m.wte[tok[b] * C + c];
      for (const DecodeLayer& L : m.layers) {
        norm_rows(m, ln, mean, rstd, x, L.ln1_w, L.ln1_b);
        quant_in(ln, C);
        const QMat& qa = L.q_attn;
        if (!heads_split) {  // the key/value head groups split evenly: no barrier here
          cols(qkv, ln, L.attn_w, qa, L.attn_b, QW, C, h0 * HS, h1 * HS);                  // q
          cols(qkv, ln, L.attn_w, qa, L.attn_b, QW, C, C + g0 * HS, C + g1 * HS);          // k
          cols(qkv, ln, L.attn_w, qa, L.attn_b, QW, C, C + (NKV + g0) * HS,
               C + (NKV + g1) * HS);                                                        // v
          for (int64_t b = 0; b < B; ++b) {
            float* row = qkv + b * QW;
            if (m.rope) {  // rotate this thread's q and k heads (rope_forward's bits)
              rope_heads_serial(row + h0 * HS, rc + b * HS, rs + b * HS, h1 - h0, HS);
              rope_heads_serial(row + C + g0 * HS, rc + b * HS, rs + b * HS, g1 - g0, HS);
            }
            for (int64_t g = g0; g < g1; ++g) {
              const int64_t bg = b * NKV + g;
              float* kc = L.k_cache + bg * maxT * HS;
              float* vc = L.v_cache + bg * maxT * HS;
              std::memcpy(kc + pos[b] * HS, row + C + g * HS, sizeof(float) * HS);
              std::memcpy(vc + pos[b] * HS, row + C + (NKV + g) * HS, sizeof(float) * HS);
              for (int64_t h = g * G; h < (g + 1) * G; ++h)
                attention_decode_head(atty + b * C + h * HS, row + h * HS, kc, vc, HS, pos[b] + 1,
                                      scores);
            }
          }
        } else {
          // Whole heads' q/k/v columns (blocks of HS) split evenly, each thread rotating its q
          // and k heads and writing its k and v heads to the caches; after the barrier, the
          // (row, query head) attention units split evenly.
          const int64_t NB = NH + 2 * NKV, s0 = NB * t / T, s1 = NB * (t + 1) / T;
          cols(qkv, ln, L.attn_w, qa, L.attn_b, QW, C, s0 * HS, s1 * HS);
          for (int64_t b = 0; b < B; ++b) {
            float* row = qkv + b * QW;
            for (int64_t s = s0; s < s1; ++s) {
              if (s < NH + NKV) {  // query head s, or key head s - NH
                if (m.rope) rope_heads_serial(row + s * HS, rc + b * HS, rs + b * HS, 1, HS);
                if (s >= NH)
                  std::memcpy(L.k_cache + ((b * NKV + s - NH) * maxT + pos[b]) * HS, row + s * HS,
                              sizeof(float) * HS);
              } else {  // value head g
                const int64_t g = s - NH - NKV;
                std::memcpy(L.v_cache + ((b * NKV + g) * maxT + pos[b]) * HS, row + s * HS,
                            sizeof(float) * HS);
              }
            }
          }
bar.wait();
          const int64_t U = B * NH, u0 = U * t / T, u1 = U * (t + 1) / T;
          for (int64_t u = u0; u < u1; ++u) {
            const int64_t b = u / NH, h = u % NH, bg = b * NKV + h / G;
            attention_decode_head(atty + b * C + h * HS, qkv + b * QW + h * HS,
                                  L.k_cache + bg * maxT * HS, L.v_cache + bg * maxT * HS, HS,
                                  pos[b] + 1, scores);
          }
        }
bar.wait();
        {
          const auto [n0, n1] = even(C);
          quant_in(atty, C);
          cols(proj, atty, L.proj_w, L.q_proj, L.proj_b, C, C, n0, n1);
        }
bar.wait();
        add(x, x, proj, B * C);
        norm_rows(m, ln, mean, rstd, x, L.ln2_w, L.ln2_b);
        quant_in(ln, C);
        if (m.swiglu) {  // gate columns [n0, n1) and their up columns, then silu(gate) * up
          const int64_t n0 = H / 16 * t / T * 16, n1 = t == T - 1 ? H : H / 16 * (t + 1) / T * 16;
          cols(fch, ln, L.fc_w, L.q_fc, L.fc_b, FW, C, n0, n1);
          cols(fch, ln, L.fc_w, L.q_fc, L.fc_b, FW, C, H + n0, H + n1);
          for (int64_t b = 0; b < B; ++b)
            swiglu_forward_serial(fchg + b * H + n0, fch + b * FW + n0, fch + b * FW + H + n0,
                                  n1 - n0);
bar.wait();
        } else if (gelu_by_cols) {
          const int64_t n0 = H / 16 * t / T * 16, n1 = H / 16 * (t + 1) / T * 16;
          cols(fch, ln, L.fc_w, L.q_fc, L.fc_b, H, C, n0, n1);
          for (int64_t b = 0; b < B; ++b)
            gelu_forward_serial(fchg + b * H + n0, fch + b * H + n0, n1 - n0);
bar.wait();
        } else {
          const auto [n0, n1] = even(H);
          cols(fch, ln, L.fc_w, L.q_fc, L.fc_b, H, C, n0, n1);
          bar.wait();
          if (t == 0)  // row by row: each row's bits those of the row alone
            for (int64_t b = 0; b < B; ++b) gelu_forward_serial(fchg + b * H, fch + b * H, H);
          bar.wait();
        }
        {
          const auto [n0, n1] = even(C);
          quant_in(fchg, H);
          cols(proj, fchg, L.fcproj_w, L.q_fcproj, L.fcproj_b, C, H, n0, n1);
        }
bar.wait();
        add(x, x, proj, B * C);
      }
      norm_rows(m, ln, mean, rstd, x, m.lnf_w, m.lnf_b);
      const auto [n0, n1] = even(V);
      if (filter != nullptr) {  // approximate logits; the chooser computes the exact ones it needs
        lm_filter_logits(logits, ln, *filter, B, n0, n1);
        if (t == 0) std::memcpy(lnf, ln, sizeof(float) * B * C);
      } else {
        quant_in(ln, C);
        cols(logits, ln, m.head, m.q_head, nullptr, V, C, n0, n1);
      }
    }
  }
  if (nt > 1) {
    const int64_t wall = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now() - t_start).count();
    if (bar.slept_ns() * 4 <= wall) {
      m.sleepy_steps = 0;
    } else if (++m.sleepy_steps >= kSleepyStepsBeforeAside) {
      m.sleepy_steps = 0;
      m.single_steps_left = kSingleThreadSteps;
    }
  }
  err.rethrow();
}

namespace {

// Sum of a[0..n) in the order of NumPy's pairwise summation for contiguous float64 (8 partial
// sums per block of up to 128, blocks split in halves), so probabilities normalise as in
// pick_tokens.
double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += a[i];
    return s;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) s += a[i];
    return s;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// The k-th largest of v[0..V) (duplicates counted, as np.partition does), 0 < k <= V. Where it
// splits v into blocks, their maxima stay in ps (ps.nb > 0) for gather_at_least on the same v.
float kth_largest(const float* v, int64_t V, int64_t k, PickScratch& ps) {
  // Blocks of bs values, at least 2k of them where V allows (8 <= bs <= 64).
  int64_t bs = 64;
  while (bs > 8 && (V + bs - 1) / bs < 2 * k) bs /= 2;
  const int64_t nb = (V + bs - 1) / bs;
  if (nb < k) {
    // Too few blocks (k > V/8): a min-heap of the k largest seen; most values fail the one
    // comparison with its top.
    ps.nb = 0;
    ps.sel.assign(v, v + k);
    std::make_heap(ps.sel.begin(), ps.sel.end(), std::greater<float>());
    for (int64_t j = k; j < V; ++j)
      if (v[j] > ps.sel.front()) {
        std::pop_heap(ps.sel.begin(), ps.sel.end(), std::greater<float>());
        ps.sel.back() = v[j];
        std::push_heap(ps.sel.begin(), ps.sel.end(), std::greater<float>());
      }
    return ps.sel.front();
  }
  // A lower bound t0 of the k-th largest: the k-th largest block maximum (the k largest maxima
  // are k distinct values, so at least k values reach t0). Only blocks whose maximum reaches t0
  // hold values >= t0, and the k-th largest among those is the k-th largest of all.
  ps.bs = bs;
  ps.nb = nb;
  ps.bmax.resize(static_cast<size_t>(nb));
  int64_t b = 0, j = 0;
  for (; j + bs <= V; j += bs, ++b) {
    float m[8];  // eight lanes the compiler keeps in SIMD registers
    for (int l = 0; l < 8; ++l) m[l] = v[j + l];
    for (int64_t i = 8; i < bs; i += 8)
      for (int l = 0; l < 8; ++l) m[l] = std::max(m[l], v[j + i + l]);
    ps.bmax[b] = *std::max_element(m, m + 8);
  }
  if (j < V) ps.bmax[b] = *std::max_element(v + j, v + V);
  ps.sel.assign(ps.bmax.begin(), ps.bmax.end());
  std::nth_element(ps.sel.begin(), ps.sel.begin() + (k - 1), ps.sel.end(), std::greater<float>());
  const float t0 = ps.sel[k - 1];
  ps.sel.clear();
  for (b = 0; b < nb; ++b) {
    if (ps.bmax[b] < t0) continue;
    for (int64_t i = b * bs, e = std::min(V, i + bs); i < e; ++i)
      if (v[i] >= t0) ps.sel.push_back(v[i]);
  }
  std::nth_element(ps.sel.begin(), ps.sel.begin() + (k - 1), ps.sel.end(), std::greater<float>());
  return ps.sel[k - 1];
}

// ps.cand = the ids j with v[j] >= thr, ascending (blocks whose maximum is below thr skipped
// where kth_largest left the maxima of this v).
void gather_at_least(const float* v, int64_t V, float thr, PickScratch& ps) {
  ps.cand.clear();
  if (ps.nb == 0) {
    for (int64_t j = 0; j < V; ++j)
      if (v[j] >= thr) ps.cand.push_back(j);
    return;
  }
  for (int64_t b = 0; b < ps.nb; ++b) {
    if (ps.bmax[b] < thr) continue;
    for (int64_t i = b * ps.bs, e = std::min(V, i + ps.bs); i < e; ++i)
      if (v[i] >= thr) ps.cand.push_back(i);
  }
}

// The draw among ps.cand (ascending ids, non-empty), temperature > 0, where z(id) is the
// candidate's finite logit / temperature: their softmax, the top_p cut, the min_p cut, and the
// first candidate whose cumulative probability exceeds u times the total.
template <class Z>
int64_t choose_candidate(Z&& z, double top_p, double min_p, double u, PickScratch& ps) {
  const int64_t n = static_cast<int64_t>(ps.cand.size());
  ps.p.resize(static_cast<size_t>(n));
  double zmax = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    ps.p[j] = z(ps.cand[j]);
    zmax = std::max(zmax, ps.p[j]);
  }
  for (int64_t j = 0; j < n; ++j) ps.p[j] = std::exp(ps.p[j] - zmax);
  const double total = pairwise_sum(ps.p.data(), n);
  for (int64_t j = 0; j < n; ++j) ps.p[j] /= total;
  if (top_p < 1.0) {  // keep the most likely tokens while the mass before each is < top_p
    ps.order.resize(static_cast<size_t>(n));
    std::iota(ps.order.begin(), ps.order.end(), int64_t(0));
    std::stable_sort(ps.order.begin(), ps.order.end(),
                     [&](int64_t a, int64_t b) { return -ps.p[a] < -ps.p[b]; });
    double before = 0.0;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t j = ps.order[r];
      const double pj = ps.p[j];
      const double cum = before + pj;
      if (r > 0 && !(cum - pj < top_p)) ps.p[j] = 0.0;
      before = cum;
    }
  }
  if (min_p > 0.0) {  // keep the tokens at least min_p times as likely as the most likely one
    double pmax = 0.0;
    for (int64_t j = 0; j < n; ++j) pmax = std::max(pmax, ps.p[j]);
    const double floor_p = min_p * pmax;
    for (int64_t j = 0; j < n; ++j)
      if (!(ps.p[j] >= floor_p)) ps.p[j] = 0.0;
  }
  ps.cdf.resize(static_cast<size_t>(n));
  double c = 0.0;
  for (int64_t j = 0; j < n; ++j) ps.cdf[j] = c += ps.p[j];
  const double thr = u * ps.cdf[n - 1];
  int64_t i = 0;
  for (int64_t j = 0; j < n; ++j) i += ps.cdf[j] <= thr;
  return ps.cand[std::min(i, n - 1)];
}

int64_t choose_candidate(const float* logits, double temperature, double top_p, double min_p,
                         double u, PickScratch& ps) {
  return choose_candidate(
      [&](int64_t id) { return static_cast<double>(logits[id]) / temperature; }, top_p, min_p, u,
      ps);
}

// pick_token with a repetition penalty: the rule on the penalised float64 logits of the row.
int64_t pick_token_penalised(const float* logits, int64_t V, const SamplingParams& sp, double u,
                             PickScratch& ps, const uint8_t* seen) {
  const double rp = sp.repetition_penalty, temperature = sp.temperature;
  ps.z.resize(static_cast<size_t>(V));
  double* z = ps.z.data();
  for (int64_t j = 0; j < V; ++j) {
    const double l = logits[j];
    z[j] = !seen[j] ? l : (l > 0.0 ? l / rp : l * rp);
  }
  if (temperature == 0.0) return std::max_element(z, z + V) - z;
  for (int64_t j = 0; j < V; ++j) z[j] /= temperature;
  ps.cand.clear();
  if (sp.top_k > 0 && sp.top_k < V) {
    ps.zsel.assign(z, z + V);
    std::nth_element(ps.zsel.begin(), ps.zsel.begin() + (sp.top_k - 1), ps.zsel.end(),
                     std::greater<double>());
    const double kth = ps.zsel[sp.top_k - 1];
    for (int64_t j = 0; j < V; ++j)
      if (z[j] >= kth) ps.cand.push_back(j);
  } else {
    ps.cand.resize(static_cast<size_t>(V));
    std::iota(ps.cand.begin(), ps.cand.end(), int64_t(0));
  }
  return choose_candidate([&](int64_t id) { return z[id]; }, sp.top_p, sp.min_p, u, ps);
}

// The largest float <= d.
float float_at_most(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) > d) f = std::nextafter(f, -INFINITY);
  return f;
}

// pick_token's choice (greedy, or top_k in (0, V)) from a row holding approximate logits, each
// within E of its exact value. exact(ids) writes the exact logits of those ids into the row; it
// is called once, for the tokens whose exact logit could reach the exact k-th largest (k = 1 for
// greedy), and the choice reads exact logits only.
//   With A the k-th largest approximate logit, at least k tokens have exact logits >= A - E, so
//   the exact k-th largest T is >= A - E; a token with exact logit >= T then has an approximate
//   one >= T - E >= A - 2E. Those tokens (at least k: all with approximate >= A) hold the top k
//   exactly, ties included.
template <class Exact>
int64_t pick_token_filtered(float* row, int64_t V, double E, double temperature, int64_t top_k,
                            double top_p, double min_p, double u, PickScratch& ps,
                            Exact&& exact) {
  const int64_t k = temperature == 0.0 ? 1 : top_k;
  const float a = kth_largest(row, V, k, ps);
  const double ad = a;
  gather_at_least(row, V, float_at_most(ad - 2.0 * E - std::abs(ad) * 0x1p-50), ps);
  exact(ps.cand);
  if (temperature == 0.0) {  // the first of the largest, as max_element
    int64_t best = ps.cand[0];
    for (int64_t j : ps.cand)
      if (row[j] > row[best]) best = j;
    return best;
  }
  ps.sel.resize(ps.cand.size());
  for (size_t i = 0; i < ps.cand.size(); ++i) ps.sel[i] = row[ps.cand[i]];
  std::nth_element(ps.sel.begin(), ps.sel.begin() + (k - 1), ps.sel.end(), std::greater<float>());
  const float kth = ps.sel[k - 1];
  size_t w = 0;
  for (size_t i = 0; i < ps.cand.size(); ++i)
    if (row[ps.cand[i]] >= kth) ps.cand[w++] = ps.cand[i];
  ps.cand.resize(w);
  return choose_candidate(row, temperature, top_p, min_p, u, ps);
}

}  // namespace

int64_t pick_token(const float* logits, int64_t V, const SamplingParams& sp, double u,
                   PickScratch& ps, const uint8_t* seen) {
  if (sp.repetition_penalty != 1.0 && seen != nullptr)
    return pick_token_penalised(logits, V, sp, u, ps, seen);
  const double temperature = sp.temperature, top_p = sp.top_p;
  const int64_t top_k = sp.top_k;
  if (temperature == 0.0) return std::max_element(logits, logits + V) - logits;
  if (top_k > 0 && top_k < V) {
    gather_at_least(logits, V, kth_largest(logits, V, top_k, ps), ps);
  } else {
    ps.cand.resize(static_cast<size_t>(V));
    std::iota(ps.cand.begin(), ps.cand.end(), int64_t(0));
  }
  return choose_candidate(logits, temperature, top_p, sp.min_p, u, ps);
}

int64_t decode_sample(const DecodeModel& m, float* scratch, float* logits, int32_t* tok,
                      int64_t pos, int64_t n, const double* u, const SamplingParams& sp,
                      uint8_t* done, int32_t* out, bool* nonfinite, PickScratch& ps,
                      const LmFilter* filter, uint8_t* seen) {
  const int64_t B = m.B, V = m.V, C = m.C;
  if (sp.repetition_penalty == 1.0) seen = nullptr;  // nothing to mark
  const double temperature = sp.temperature, top_p = sp.top_p;
  const int64_t top_k = sp.top_k, nstop = sp.nstop;
  const int32_t* stop = sp.stop;
  *nonfinite = false;
  if (m.wformat != WeightFormat::fp32) filter = nullptr;  // it bounds the float32 lm_head only
  if (filter != nullptr && !(filter->ok && filter->V == V && filter->C == C &&
                             lm_filter_applies(sp, V)))
    filter = nullptr;
  const float* lnf = scratch_lnf(m, scratch);
  // Exact logits of columns [j0, j1) for every row: the lm_head's own kernel on the same input,
  // so each is bitwise the value of the unfiltered step.
  auto exact_cols = [&](int64_t j0, int64_t j1) {
    gemv_cols(logits, lnf, m.head, nullptr, B, V, C, j0, j1);
  };
  double E[kDecodeMaxBatch];
  for (int64_t i = 0; i < n; ++i) {
    int64_t pv[kDecodeMaxBatch];
    for (int64_t b = 0; b < B; ++b) pv[b] = pos + i;
    decode_step(m, tok, pv, logits, scratch, filter);
    bool filtered = filter != nullptr;
    for (int64_t b = 0; filtered && b < B; ++b) {
      E[b] = lm_filter_bound(*filter, lnf + b * C);
      filtered = E[b] >= 0.0;  // else x is not finite or a logit could overflow
    }
    if (filter != nullptr && !filtered) exact_cols(0, V);
    if (!filtered) {
      uint32_t bad = 0;  // any exponent field all ones (inf or NaN); an integer OR vectorises
      for (int64_t j = 0; j < B * V; ++j) {
        uint32_t bits;
        std::memcpy(&bits, logits + j, sizeof(bits));
        bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
      }
      if (bad) {
        *nonfinite = true;
        return i;
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      int32_t t;
      if (filtered) {
        auto exact = [&](const std::vector<int64_t>& ids) {
          if (static_cast<int64_t>(ids.size()) * 4 > V) return exact_cols(0, V);
          // Scattered rows: request them all first, so their reads overlap.
          for (int64_t j : ids)
            for (int64_t c = 0; c < C; c += 16) __builtin_prefetch(m.head + j * C + c);
          for (int64_t j : ids) exact_cols(j, j + 1);
        };
        t = static_cast<int32_t>(pick_token_filtered(logits + b * V, V, E[b], temperature, top_k,
                                                     top_p, sp.min_p, u[i * B + b], ps, exact));
      } else {
        t = static_cast<int32_t>(pick_token(logits + b * V, V, sp, u[i * B + b], ps,
                                            seen != nullptr ? seen + b * V : nullptr));
      }
      if (nstop > 0 && done[b]) t = tok[b];
      out[i * B + b] = t;
    }
    bool all_done = nstop > 0;
    for (int64_t b = 0; b < B; ++b) {
      tok[b] = out[i * B + b];
      if (seen != nullptr) seen[b * V + tok[b]] = 1;
      if (nstop > 0) {
        for (int64_t s = 0; s < nstop; ++s)
          if (stop[s] == tok[b]) done[b] = 1;
        all_done = all_done && done[b];
      }
    }
    if (all_done) return i + 1;
  }
  return n;
}

}  // namespace cpu
}  // namespace kgpt
