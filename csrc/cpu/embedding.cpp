// Token + position embedding. Forward out (B,T,C) = wte[idx] + wpe[:T] (overwrite). Backward
// accumulates into the tables: dwte (V,C) += dout rows scattered by idx, dwpe[:T] += dout summed
// over B. Determinism without atomics: threads own disjoint channel ranges and each walks the
// rows in order n = 0..N-1, so every element sees the same additions in the same order for any
// thread count (bitwise identical, and equal to the serial loop).
#include <algorithm>
#include <cstdint>

#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"

namespace kgpt {
namespace cpu {

void embedding_forward(float* out, const int32_t* idx, const float* wte, const float* wpe,
                       int64_t B, int64_t T, int64_t C) {
  const int64_t N = B * T;
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const float* te = wte + static_cast<int64_t>(idx[n]) * C;
    float* o = out + n * C;
    if (wpe == nullptr) {  // no position table (rotary positions act inside attention)
      for (int64_t c = 0; c < C; ++c) o[c] = te[c];
      continue;
    }
    const float* pe = wpe + (n % T) * C;
    for (int64_t c = 0; c < C; ++c) o[c] = te[c] + pe[c];
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* idx,
                        int64_t B, int64_t T, int64_t C) {
  // Channel blocks of 16 floats on dwte's cache-line grid (the first block is the part of a line
  // before the first boundary), so threads never write one line of a dwte row when C % 16 == 0
  // (rows of a misaligned table straddling lines were shared by the two threads at the boundary
  // between their halves: 2 threads ran 2.3x slower than 1 on XS's shapes).
  const int64_t CB = 16;
  const int64_t lead = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(dwte) % 64) % 64) / 4;
  const int64_t first = std::min(C, lead % CB == 0 ? CB : lead % CB);  // width of block 0
  const int64_t nblk = 1 + (C - first + CB - 1) / CB;
  // Each thread walks every row for its channels: below 8 * kParallelMin elements (XS: 64K) one
  // thread was faster (22 us against 38 on two); S's 786K run 1.8x faster on two.
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (B * T * C > 8 * kParallelMin)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t c0 = blk == 0 ? 0 : first + (blk - 1) * CB;
    const int64_t c1 = std::min(C, blk == 0 ? first : c0 + CB);
    // Positions first (each pe row summed over b in a local block, stored once), then tokens:
    // interleaving the two read-modify-write streams made every load wait on the stores before
    // it (their rows are 4 KB-aliased). Per element the additions keep their order.
    for (int64_t t = 0; t < (dwpe != nullptr ? T : 0); ++t) {  // dwpe null: no position table
      float acc[CB];
      float* pe = dwpe + t * C;
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] = pe[c];
      for (int64_t b = 0; b < B; ++b) {
        const float* d = dout + (b * T + t) * C;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += d[c];
      }
      for (int64_t c = c0; c < c1; ++c) pe[c] = acc[c - c0];
    }
    for (int64_t n = 0; n < B * T; ++n) {
      const float* d = dout + n * C;
      float* te = dwte + static_cast<int64_t>(idx[n]) * C;
      for (int64_t c = c0; c < c1; ++c) te[c] += d[c];
    }
  }
}

}  // namespace cpu
}  // namespace kgpt
