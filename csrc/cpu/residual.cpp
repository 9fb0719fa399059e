// Residual connection: out = a + b (out may alias a or b); backward da += dout, db += dout
// (both branches receive the stream's gradient; they are accumulated, never overwritten, because
// the model adds them onto gradients already there). Elementwise: identical for any thread count.
#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace kgpt {
namespace cpu {
namespace {

KGPT_MULTIVERSION(void, add_chunk, (float* out, const float* a, const float* b, int64_t n),
                  (out, a, b, n)) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

KGPT_MULTIVERSION(void, acc2_chunk, (float* da, float* db, const float* d, int64_t n),
                  (da, db, d, n)) {
  for (int64_t i = 0; i < n; ++i) {
    da[i] += d[i];
    db[i] += d[i];
  }
}

}  // namespace

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    add_chunk(out + i0, a + i0, b + i0, len);
  }
}

void residual_backward(float* da, float* db, const float* dout, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    acc2_chunk(da + i0, db + i0, dout + i0, len);
  }
}

}  // namespace cpu
}  // namespace kgpt
