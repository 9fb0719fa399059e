// Optimizer-side kernels over the flat parameter/gradient buffers: global_norm_sq (float64 sum of
// squares over fixed 64 Ki-element chunks, partials added serially in chunk order, so the result
// is the same for any thread count), scale_ (g *= s) and the fused AdamW step (p, m, v updated in
// place in one pass). All elementwise work is identical for any thread count.
#include <cmath>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr int64_t kNormChunk = 1 << 16;

KGPT_MULTIVERSION(double, sumsq_chunk, (const float* g, int64_t n), (g, n)) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  const int64_t n4 = n & ~int64_t(3);
  for (int64_t i = 0; i < n4; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += double(g[i + j]) * double(g[i + j]);
  for (int64_t i = n4; i < n; ++i) acc[0] += double(g[i]) * double(g[i]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

KGPT_MULTIVERSION(void, scale_chunk, (float* g, int64_t n, float s), (g, n, s)) {
  for (int64_t i = 0; i < n; ++i) g[i] *= s;
}

KGPT_MULTIVERSION(void, adamw_chunk, (float* p, const float* g, float* m, float* v, int64_t n,
                  float lr, float b1, float b2, float eps, float wd, float c1, float c2),
                  (p, g, m, v, n, lr, b1, b2, eps, wd, c1, c2)) {
  const float a1 = 1.0f - b1, a2 = 1.0f - b2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + a1 * gi;
    const float vi = b2 * v[i] + a2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / c1, vhat = vi / c2;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
  }
}

}  // namespace

double global_norm_sq(const float* g, int64_t n) {
  const int64_t nchunk = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> part(static_cast<size_t>(nchunk));
#pragma omp parallel for schedule(static) if (n > 4 * kNormChunk)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kNormChunk, len = (n - i0 < kNormChunk) ? n - i0 : kNormChunk;
    part[c] = sumsq_chunk(g + i0, len);
  }
  double total = 0.0;
  for (int64_t c = 0; c < nchunk; ++c) total += part[c];
  return total;
}

void scale_inplace(float* g, int64_t n, float s) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    scale_chunk(g + i0, len, s);
  }
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) {
  // Bias corrections in double, then rounded once (as the float32 reference sees them).
  const float c1 = static_cast<float>(1.0 - std::pow(double(beta1), double(step)));
  const float c2 = static_cast<float>(1.0 - std::pow(double(beta2), double(step)));
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    adamw_chunk(p + i0, g + i0, m + i0, v + i0, len, lr, beta1, beta2, eps, weight_decay, c1, c2);
  }
}

}  // namespace cpu
}  // namespace kgpt
