// tanh-GELU: out = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi); backward dx = dout *
// gelu'(x) (overwrite). Uses 0.5 (1 + tanh(u)) = sigmoid(2u) and 1 - tanh(u)^2 = 4 s (1 - s), so
// only one exp per element is needed; the exp is our accurate polynomial (precise math: llm.c saw
// GELU break under fast-math), vectorised by the AVX2 clone. Elementwise: thread-count independent.
#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

constexpr float kK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kA = 0.044715f;

KGPT_MULTIVERSION(void, gelu_fwd_chunk, (float* out, const float* x, int64_t n), (out, x, n)) {
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float u = kK * xi * (1.0f + kA * xi * xi);
    const float s = 1.0f / (1.0f + exp_approx(-2.0f * u));
    out[i] = xi * s;
  }
}

KGPT_MULTIVERSION(void, gelu_bwd_chunk, (float* dx, const float* dout, const float* x, int64_t n),
                  (dx, dout, x, n)) {
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float u = kK * xi * (1.0f + kA * xi * xi);
    const float s = 1.0f / (1.0f + exp_approx(-2.0f * u));
    const float dudx = kK * (1.0f + 3.0f * kA * xi * xi);
    dx[i] = dout[i] * (s + 2.0f * xi * s * (1.0f - s) * dudx);
  }
}

}  // namespace

void gelu_forward(float* out, const float* x, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin / 4)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    gelu_fwd_chunk(out + i0, x + i0, len);
  }
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin / 4)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    gelu_bwd_chunk(dx + i0, dout + i0, x + i0, len);
  }
}

}  // namespace cpu
}  // namespace kgpt
