// LayerNorm over the last axis. Forward out (N,C) = (x-mean)*rstd*w + b, saving mean and rstd
// (all overwritten). Backward dx (N,C) = (overwrite), dw, db (C,) += (parameter gradients).
// Row statistics use 8 float lanes combined in double (vectorisable, and accurate for the C we
// use). The backward's dw/db are summed per fixed chunk of rows into scratch, then the chunks are
// added in chunk order: the result does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kRowsPerChunk = 32;

// The 8-lane helpers below are always inlined, so the AVX-vs-SSE argument-passing ABI note GCC
// gives for 32-byte vectors in the portable clone does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));  // GCC/Clang generic vector: AVX on the
                                                     // AVX2 clone, two SSE halves otherwise
KGPT_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
KGPT_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

KGPT_INLINE double lanes_sum(const float* acc) {
  double s = 0.0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

KGPT_MULTIVERSION(void, ln_rows, (float* out, float* mean, float* rstd, const float* x,
                  const float* w, const float* b, int64_t r0, int64_t r1, int64_t C, float eps),
                  (out, mean, rstd, x, w, b, r0, r1, C, eps)) {
  const int64_t C8 = C & ~int64_t(7);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < C8; c += 8)
      for (int j = 0; j < 8; ++j) acc[j] += xr[c + j];
    double s = lanes_sum(acc);
    for (int64_t c = C8; c < C; ++c) s += xr[c];
    const float mu = static_cast<float>(s / C);
    float acc2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t c = 0; c < C8; c += 8)
      for (int j = 0; j < 8; ++j) {
        const float d = xr[c + j] - mu;
        acc2[j] += d * d;
      }
    double v = lanes_sum(acc2);
    for (int64_t c = C8; c < C; ++c) v += double(xr[c] - mu) * double(xr[c] - mu);
    const float rs = static_cast<float>(1.0 / std::sqrt(v / C + double(eps)));
    float* o = out + r * C;
    for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] - mu) * rs * w[c] + b[c];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dx for rows [r0, r1), and this chunk's dw/db partial sums (overwritten into pdw, pdb).
KGPT_MULTIVERSION(void, ln_back_rows, (float* __restrict dx, float* __restrict pdw,
                  float* __restrict pdb, const float* __restrict dout,
                  const float* __restrict x, const float* __restrict w, const float* mean,
                  const float* rstd, int64_t r0, int64_t r1, int64_t C),
                  (dx, pdw, pdb, dout, x, w, mean, rstd, r0, r1, C)) {
  const int64_t C8 = C & ~int64_t(7);
  for (int64_t c = 0; c < C; ++c) pdw[c] = pdb[c] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* dr = dout + r * C;
    const float mu = mean[r], rs = rstd[r];
    // 8 lanes (lane j sums columns c = j mod 8 in order), as vectors the compiler keeps in one
    // register on every target (the scalar-array form was vectorised with lane shuffles).
    v8f ag = {}, agx = {};
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f xh = (load8(xr + c) - mu) * rs;
      const v8f g = load8(dr + c) * load8(w + c);
      ag += g;
      agx += g * xh;
    }
    float la[8], lx[8];
    std::memcpy(la, &ag, sizeof(la));
    std::memcpy(lx, &agx, sizeof(lx));
    double sg = lanes_sum(la), sgx = lanes_sum(lx);
    for (int64_t c = C8; c < C; ++c) {
      const float xh = (xr[c] - mu) * rs;
      const float g = dr[c] * w[c];
      sg += g;
      sgx += double(g) * xh;
    }
    const float mg = static_cast<float>(sg / C), mgx = static_cast<float>(sgx / C);
    float* dxr = dx + r * C;
    for (int64_t c = 0; c < C8; c += 8) {
      const v8f d = load8(dr + c);
      const v8f xh = (load8(xr + c) - mu) * rs;
      store8(dxr + c, rs * (d * load8(w + c) - mg - xh * mgx));
      store8(pdw + c, load8(pdw + c) + d * xh);
      store8(pdb + c, load8(pdb + c) + d);
    }
    for (int64_t c = C8; c < C; ++c) {
      const float xh = (xr[c] - mu) * rs;
      dxr[c] = rs * (dr[c] * w[c] - mg - xh * mgx);
      pdw[c] += dr[c] * xh;
      pdb[c] += dr[c];
    }
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps) {
  const int64_t nchunk = (N + kRowsPerChunk - 1) / kRowsPerChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * C > kParallelMin)
  for (int64_t k = 0; k < nchunk; ++k) {
    const int64_t r0 = k * kRowsPerChunk, r1 = std::min(N, r0 + kRowsPerChunk);
    ln_rows(out, mean, rstd, x, w, b, r0, r1, C, eps);
  }
}

void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N,
                        int64_t C) {
  const int64_t nchunk = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> part(static_cast<size_t>(nchunk * 2 * C + 16));
  float* pp = line_aligned(part.data());
  const bool par = N * C > kParallelMin;
#pragma omp parallel num_threads(::kgpt::num_threads()) if (par)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < nchunk; ++k) {
      const int64_t r0 = k * kRowsPerChunk, r1 = std::min(N, r0 + kRowsPerChunk);
      ln_back_rows(dx, pp + k * 2 * C, pp + k * 2 * C + C, dout, x, w, mean, rstd, r0, r1, C);
    }
    // Chunk partials added in chunk order, channels split over threads: thread-count independent.
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      float sw = 0.0f, sb = 0.0f;
      for (int64_t k = 0; k < nchunk; ++k) {
        sw += pp[k * 2 * C + c];
        sb += pp[k * 2 * C + C + c];
      }
      dw[c] += sw;
      db[c] += sb;
    }
  }
}

}  // namespace cpu
}  // namespace kgpt
