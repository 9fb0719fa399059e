// Fused KV-cache decoding step (see decode.h).
#include "cpu/decode.h"

#include <algorithm>
#include <cstring>
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

// Per-thread attention scores, grown once to the longest context seen.
struct ScoreBuf {
  std::vector<float> v;
  float* get(int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  }
};
thread_local ScoreBuf tls_scores;

}  // namespace

int64_t decode_scratch_floats(const DecodeModel& m) {
  // x, ln, atty, proj (B,C); qkv (B,3C); fch, fch_gelu (B,4C); mean, rstd (B)
  return m.B * (4 * m.C + 3 * m.C + 8 * m.C + 2);
}

void decode_step(const DecodeModel& m, const int32_t* tok, int64_t pos, float* logits,
                 float* scratch) {
  const int64_t B = m.B, C = m.C, NH = m.NH, HS = C / NH, V = m.V, maxT = m.maxT;
  float* x = scratch;
  float* ln = x + B * C;
  float* atty = ln + B * C;
  float* proj = atty + B * C;
  float* qkv = proj + B * C;
  float* fch = qkv + B * 3 * C;
  float* fchg = fch + B * 4 * C;
  float* mean = fchg + B * 4 * C;
  float* rstd = mean + B;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) x[b * C + c] = m.wte[tok[b] * C + c] + m.wpe[pos * C + c];
  // Threads: as the matrix-vector path sizes them, one per ~256 KB of weights per layer.
  const int64_t per_layer = 12 * C * C;
#ifdef _OPENMP
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(omp_get_max_threads(), per_layer / 65536)));
#else
  const int nt = 1;
#endif
  (void)nt;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    float* scores = tls_scores.get(maxT);  // this thread's attention scratch
    auto cols = [&](float* out, const float* in, const float* w, const float* bias, int64_t N,
                    int64_t K) {
      gemv_cols(out, in, w, bias, B, N, K, N * t / T, N * (t + 1) / T);
    };
    for (const DecodeLayer& L : m.layers) {
#pragma omp single
      layernorm_forward(ln, mean, rstd, x, L.ln1_w, L.ln1_b, B, C, kLnEps);
      cols(qkv, ln, L.attn_w, L.attn_b, 3 * C, C);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * NH; ++bh) {
        const int64_t b = bh / NH, h = bh % NH;
        float* kc = L.k_cache + bh * maxT * HS;
        float* vc = L.v_cache + bh * maxT * HS;
        std::memcpy(kc + pos * HS, qkv + b * 3 * C + C + h * HS, sizeof(float) * HS);
        std::memcpy(vc + pos * HS, qkv + b * 3 * C + 2 * C + h * HS, sizeof(float) * HS);
        attention_decode_head(atty + b * C + h * HS, qkv + b * 3 * C + h * HS, kc, vc, HS,
                              pos + 1, scores);
      }
      cols(proj, atty, L.proj_w, L.proj_b, C, C);
#pragma omp barrier
#pragma omp single
      {
        residual_forward(x, x, proj, B * C);
        layernorm_forward(ln, mean, rstd, x, L.ln2_w, L.ln2_b, B, C, kLnEps);
      }
      cols(fch, ln, L.fc_w, L.fc_b, 4 * C, C);
#pragma omp barrier
#pragma omp single
      gelu_forward(fchg, fch, B * 4 * C);
      cols(proj, fchg, L.fcproj_w, L.fcproj_b, C, 4 * C);
#pragma omp barrier
#pragma omp single
      residual_forward(x, x, proj, B * C);
    }
#pragma omp single
    layernorm_forward(ln, mean, rstd, x, m.lnf_w, m.lnf_b, B, C, kLnEps);
    cols(logits, ln, m.wte, nullptr, V, C);
  }
}

}  // namespace cpu
}  // namespace kgpt
