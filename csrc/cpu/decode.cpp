// Fused KV-cache decoding step (see decode.h).
#include "cpu/decode.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/gemm_kernels.h"
#include "cpu/ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace cpu {
namespace {

constexpr float kLnEps = 1e-5f;  // the model's layernorm epsilon

// Columns [n0, n1) of out (B, N) = x (B, K) @ w (N, K).T + bias: the kernels sgemm uses for
// these shapes, so each column is bitwise what a matmul_forward call gives.
void gemv_cols(float* out, const float* x, const float* w, const float* bias, int64_t B,
               int64_t N, int64_t K, int64_t n0, int64_t n1) {
  if (n1 <= n0) return;
  const gemm_detail::Problem p{false, true, B, N, K, 1.f, x, K, w, K, 0.f, out, N, bias};
#if defined(__x86_64__) || defined(__i386__)
  if (gemm_use_avx2()) return gemm_detail::gemv_nt_avx2(p, n0, n1);
#endif
  gemm_detail::gemv_nt_portable(p, n0, n1);
}

// Per-thread scratch, grown once: attention scores, and the thread's own copy of the residual
// stream x and of the layernorm output (every thread keeps x up to date itself, so no thread
// waits for another to add a residual or normalise a row).
struct ThreadBuf {
  std::vector<float> scores, x, ln, stats;
  void size(int64_t maxT, int64_t BC, int64_t B) {
    if (static_cast<int64_t>(scores.size()) < maxT) scores.resize(static_cast<size_t>(maxT));
    if (static_cast<int64_t>(x.size()) < BC) {
      x.resize(static_cast<size_t>(BC));
      ln.resize(static_cast<size_t>(BC));
    }
    if (static_cast<int64_t>(stats.size()) < 2 * B) stats.resize(static_cast<size_t>(2 * B));
  }
};
thread_local ThreadBuf tls_buf;

}  // namespace

int64_t decode_scratch_floats(const DecodeModel& m) {
  // shared between the threads: atty, proj (B,C); qkv (B,3C); fch, fch_gelu (B,4C)
  return m.B * (2 * m.C + 3 * m.C + 8 * m.C);
}

// Threads meet at four barriers per layer. Each thread:
//   x, ln1 on its own copy -> q, k, v columns of its own heads -> those heads' attention
//   | proj columns | x += proj, ln2 on its own copy -> fc columns and their GELU | fc-proj columns |
// Every value is computed by the same kernel on the same inputs as in the op-by-op step
// (column ranges of the matrix-vector kernel give the columns' exact values; GELU ranges start
// on multiples of 16 so every element takes the same vector path), so the two agree bitwise.
void decode_step(const DecodeModel& m, const int32_t* tok, int64_t pos, float* logits,
                 float* scratch) {
  const int64_t B = m.B, C = m.C, NH = m.NH, HS = C / NH, V = m.V, maxT = m.maxT;
  float* atty = scratch;
  float* proj = atty + B * C;
  float* qkv = proj + B * C;
  float* fch = qkv + B * 3 * C;
  float* fchg = fch + B * 4 * C;
  // Threads: as the matrix-vector path sizes them, one per ~256 KB of weights per layer.
  const int64_t per_layer = 12 * C * C;
#ifdef _OPENMP
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(omp_get_max_threads(), per_layer / 65536)));
#else
  const int nt = 1;
#endif
  (void)nt;
  // GELU by column range only when every range can start on a multiple of 16 and 4C is one
  // (then the op-by-op step's flat GELU also takes the 16-lane path for every element).
  const bool gelu_by_cols = (4 * C) % 16 == 0;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    ThreadBuf& tb = tls_buf;
    tb.size(maxT, B * C, B);
    float *x = tb.x.data(), *ln = tb.ln.data(), *mean = tb.stats.data(), *rstd = mean + B;
    float* scores = tb.scores.data();
    auto cols = [&](float* out, const float* in, const float* w, const float* bias, int64_t N,
                    int64_t K, int64_t n0, int64_t n1) {
      gemv_cols(out, in, w, bias, B, N, K, n0, n1);
    };
    auto even = [&](int64_t N) { return std::make_pair(N * t / T, N * (t + 1) / T); };
    const int64_t h0 = NH * t / T, h1 = NH * (t + 1) / T;  // this thread's heads
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) x[b * C + c] = m.wte[tok[b] * C + c] + m.wpe[pos * C + c];
    for (const DecodeLayer& L : m.layers) {
      layernorm_forward(ln, mean, rstd, x, L.ln1_w, L.ln1_b, B, C, kLnEps);
      for (int64_t part = 0; part < 3; ++part)  // q, k and v columns of heads [h0, h1)
        cols(qkv, ln, L.attn_w, L.attn_b, 3 * C, C, part * C + h0 * HS, part * C + h1 * HS);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = h0; h < h1; ++h) {
          const int64_t bh = b * NH + h;
          float* kc = L.k_cache + bh * maxT * HS;
          float* vc = L.v_cache + bh * maxT * HS;
          std::memcpy(kc + pos * HS, qkv + b * 3 * C + C + h * HS, sizeof(float) * HS);
          std::memcpy(vc + pos * HS, qkv + b * 3 * C + 2 * C + h * HS, sizeof(float) * HS);
          attention_decode_head(atty + b * C + h * HS, qkv + b * 3 * C + h * HS, kc, vc, HS,
                                pos + 1, scores);
        }
#pragma omp barrier
      {
        const auto [n0, n1] = even(C);
        cols(proj, atty, L.proj_w, L.proj_b, C, C, n0, n1);
      }
#pragma omp barrier
      residual_forward(x, x, proj, B * C);
      layernorm_forward(ln, mean, rstd, x, L.ln2_w, L.ln2_b, B, C, kLnEps);
      if (gelu_by_cols) {
        const int64_t n0 = 4 * C / 16 * t / T * 16, n1 = 4 * C / 16 * (t + 1) / T * 16;
        cols(fch, ln, L.fc_w, L.fc_b, 4 * C, C, n0, n1);
        for (int64_t b = 0; b < B; ++b)
          gelu_forward_serial(fchg + b * 4 * C + n0, fch + b * 4 * C + n0, n1 - n0);
      } else {
        const auto [n0, n1] = even(4 * C);
        cols(fch, ln, L.fc_w, L.fc_b, 4 * C, C, n0, n1);
#pragma omp barrier
#pragma omp single
        gelu_forward(fchg, fch, B * 4 * C);
      }
#pragma omp barrier
      {
        const auto [n0, n1] = even(C);
        cols(proj, fchg, L.fcproj_w, L.fcproj_b, C, 4 * C, n0, n1);
      }
#pragma omp barrier
      residual_forward(x, x, proj, B * C);
    }
    layernorm_forward(ln, mean, rstd, x, m.lnf_w, m.lnf_b, B, C, kLnEps);
    const auto [n0, n1] = even(V);
    cols(logits, ln, m.wte, nullptr, V, C, n0, n1);
  }
}

}  // namespace cpu
}  // namespace kgpt
