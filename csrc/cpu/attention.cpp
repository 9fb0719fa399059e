// Causal multi-head attention on the CPU, flash-attention style: the forward walks each query row's
// keys in blocks of kBc with an online softmax (running max and sum, output rescaled as the max
// grows), so no (T,T) matrix exists; it saves lse (B,NH,T). The backward recomputes P = exp(S-lse)
// block by block: dV += P^T dO, dP = dO V^T, dS = P (dP - D) with D = rowsum(dO * O), dQ += dS K,
// dK += dS^T Q. Everything is overwritten (=). Work is split over B x NH, one head per thread at a
// time, each head computed serially: results are bitwise identical for any thread count.
// attention_decode is the KV-cache step: one new query per sequence against the cached keys.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kBc = 64;  // keys per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One (b, h): q/k/v rows have stride ld = 3C; o rows stride C. Kt scratch (HS, T).
KGPT_MULTIVERSION(void, attn_fwd_head, (float* o, float* lse, const float* q, const float* k,
                  const float* v, float* Kt, int64_t T, int64_t HS, int64_t ld, int64_t ldo),
                  (o, lse, q, k, v, Kt, T, HS, ld, ldo)) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < HS; ++d) Kt[d * T + t] = k[t * ld + d];
  float s[kBc];
  float qs[256], acc[256];  // HS <= 256 (checked by the binding)
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t d = 0; d < HS; ++d) {
      qs[d] = q[r * ld + d] * scale;
      acc[d] = 0.0f;
    }
    float m = kNegInf, l = 0.0f;
    for (int64_t j0 = 0; j0 <= r; j0 += kBc) {
      const int64_t n = std::min(kBc, r + 1 - j0);
      for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
      for (int64_t d = 0; d < HS; ++d) {
        const float qd = qs[d];
        const float* kt = Kt + d * T + j0;
        for (int64_t j = 0; j < n; ++j) s[j] += qd * kt[j];
      }
      float mb = m;
      for (int64_t j = 0; j < n; ++j) mb = s[j] > mb ? s[j] : mb;
      const float alpha = exp_approx(m - mb);  // 0 on the first block (m = -inf)
      l *= alpha;
      for (int64_t d = 0; d < HS; ++d) acc[d] *= alpha;
      l += exp_shift_sum(s, n, mb);
      for (int64_t j = 0; j < n; ++j) {
        const float p = s[j];
        const float* vr = v + (j0 + j) * ld;
        for (int64_t d = 0; d < HS; ++d) acc[d] += p * vr[d];
      }
      m = mb;
    }
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < HS; ++d) o[r * ldo + d] = acc[d] * inv;
    lse[r] = m + std::log(l);
  }
}

// One (b, h) backward. dq/dk/dv rows have stride ld = 3C (parts of dqkv); dO, O stride ldo.
// Scratch: Kt, Vt (HS, T); dK, dV (T, HS).
KGPT_MULTIVERSION(void, attn_bwd_head, (float* dq, float* dk, float* dv, const float* dO,
                  const float* q, const float* k, const float* v, const float* O, const float* lse,
                  float* Kt, float* Vt, float* dK, float* dV, int64_t T, int64_t HS, int64_t ld,
                  int64_t ldo),
                  (dq, dk, dv, dO, q, k, v, O, lse, Kt, Vt, dK, dV, T, HS, ld, ldo)) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < HS; ++d) {
      Kt[d * T + t] = k[t * ld + d];
      Vt[d * T + t] = v[t * ld + d];
    }
  for (int64_t i = 0; i < T * HS; ++i) dK[i] = dV[i] = 0.0f;
  float p[kBc], dp[kBc];
  float qs[256], dqr[256];
  for (int64_t r = 0; r < T; ++r) {
    const float* dor = dO + r * ldo;
    const float* orow = O + r * ldo;
    float Dl[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t H8 = HS & ~int64_t(7);
    for (int64_t d = 0; d < H8; d += 8)
      for (int jj = 0; jj < 8; ++jj) Dl[jj] += dor[d + jj] * orow[d + jj];
    float D = ((Dl[0] + Dl[1]) + (Dl[2] + Dl[3])) + ((Dl[4] + Dl[5]) + (Dl[6] + Dl[7]));
    for (int64_t d = H8; d < HS; ++d) D += dor[d] * orow[d];
    for (int64_t d = 0; d < HS; ++d) {
      qs[d] = q[r * ld + d] * scale;
      dqr[d] = 0.0f;
    }
    const float lr = lse[r];
    for (int64_t j0 = 0; j0 <= r; j0 += kBc) {
      const int64_t n = std::min(kBc, r + 1 - j0);
      for (int64_t j = 0; j < n; ++j) p[j] = dp[j] = 0.0f;
      for (int64_t d = 0; d < HS; ++d) {
        const float qd = qs[d], gd = dor[d];
        const float* kt = Kt + d * T + j0;
        const float* vt = Vt + d * T + j0;
        for (int64_t j = 0; j < n; ++j) {
          p[j] += qd * kt[j];
          dp[j] += gd * vt[j];
        }
      }
      exp_shift_sum(p, n, lr);
      for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - D) * scale;  // dS, scaled
      for (int64_t j = 0; j < n; ++j) {
        const float pj = p[j], sj = dp[j];
        float* dvr = dV + (j0 + j) * HS;
        float* dkr = dK + (j0 + j) * HS;
        const float* kr = k + (j0 + j) * ld;
        const float* qr = q + r * ld;
        for (int64_t d = 0; d < HS; ++d) {
          dvr[d] += pj * dor[d];
          dkr[d] += sj * qr[d];
          dqr[d] += sj * kr[d];
        }
      }
    }
    for (int64_t d = 0; d < HS; ++d) dq[r * ld + d] = dqr[d];
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < HS; ++d) {
      dk[t * ld + d] = dK[t * HS + d];
      dv[t * ld + d] = dV[t * HS + d];
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

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                       int64_t NH) {
  const int64_t HS = C / NH, ld = 3 * C;
#pragma omp parallel if (B * NH > 1 && B * T * C > kParallelMin / 4)
  {
    std::vector<float> Kt(static_cast<size_t>(HS * T));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      const int64_t b = bh / NH, h = bh % NH;
      const float* base = qkv + b * T * ld + h * HS;
      attn_fwd_head(out + b * T * C + h * HS, lse + bh * T, base, base + C, base + 2 * C,
                    Kt.data(), T, HS, ld, C);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH, ld = 3 * C;
#pragma omp parallel if (B * NH > 1 && B * T * C > kParallelMin / 4)
  {
    std::vector<float> scratch(static_cast<size_t>(4 * HS * T));
    float* Kt = scratch.data();
    float* Vt = Kt + HS * T;
    float* dK = Vt + HS * T;
    float* dV = dK + HS * T;
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      const int64_t b = bh / NH, h = bh % NH;
      const float* base = qkv + b * T * ld + h * HS;
      float* dbase = dqkv + b * T * ld + h * HS;
      attn_bwd_head(dbase, dbase + C, dbase + 2 * C, dout + b * T * C + h * HS, base, base + C,
                    base + 2 * C, out + b * T * C + h * HS, lse + bh * T, Kt, Vt, dK, dV, T, HS,
                    ld, C);
    }
  }
}

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      int64_t B, int64_t NH, int64_t maxT, int64_t HS, int64_t n_valid) {
  // Parallel only when there is enough cache to stream (batch-1 decoding of short contexts stays
  // on the calling thread: spawning work would cost more than the step).
#pragma omp parallel if (B * NH > 1 && B * NH * n_valid * HS > kParallelMin)
  {
    std::vector<float> s(static_cast<size_t>(n_valid));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * NH; ++bh) {
      const int64_t b = bh / NH, h = bh % NH;
      decode_head(out + b * NH * HS + h * HS, q + b * NH * HS + h * HS,
                  k_cache + bh * maxT * HS, v_cache + bh * maxT * HS, s.data(), HS, n_valid);
    }
  }
}

}  // namespace cpu
}  // namespace kgpt
