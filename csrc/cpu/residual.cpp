// add: out = a + b (out may alias a or b), the residual connections and the backward's gradient
// sums. Elementwise: identical for any thread count.
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

}  // namespace

void add(float* out, const float* a, const float* b, int64_t n) {
  const int64_t nchunk = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < nchunk; ++c) {
    const int64_t i0 = c * kChunk, len = (n - i0 < kChunk) ? n - i0 : kChunk;
    add_chunk(out + i0, a + i0, b + i0, len);
  }
}

}  // namespace cpu
}  // namespace kgpt
