// Softmax + cross-entropy over full logits, the unfused path used when the caller wants logits
// (the training step uses the fused classifier in classifier.cpp instead). Forward probs (N,V) =,
// losses (N,) = logsumexp - logit[target]; backward dlogits (N,V) = scale * (probs - onehot)
// (may alias probs). Rows are independent: identical for any thread count.
#include <cmath>

#include "common/threads.h"
#include "cpu/dispatch.h"
#include "cpu/ops.h"
#include "cpu/vecmath.h"

namespace kgpt {
namespace cpu {
namespace {

KGPT_MULTIVERSION(void, ce_row, (float* loss, float* p, const float* x, int32_t target, int64_t V),
                  (loss, p, x, target, V)) {
  float m = x[0];
  for (int64_t j = 1; j < V; ++j) m = x[j] > m ? x[j] : m;
  for (int64_t j = 0; j < V; ++j) p[j] = x[j];
  // Sum in blocks of 512 accumulated in double: the float lane sums stay short.
  double z = 0.0;
  for (int64_t j = 0; j < V; j += 512) z += exp_shift_sum(p + j, V - j < 512 ? V - j : 512, m);
  const float inv = static_cast<float>(1.0 / z);
  for (int64_t j = 0; j < V; ++j) p[j] *= inv;
  *loss = static_cast<float>(double(m) + std::log(z) - double(x[target]));
}

KGPT_MULTIVERSION(void, ce_back_row, (float* d, const float* p, int32_t target, int64_t V,
                  float scale), (d, p, target, V, scale)) {
  for (int64_t j = 0; j < V; ++j) d[j] = scale * p[j];
  d[target] -= scale;
}

}  // namespace

void crossentropy_forward(float* losses, float* probs, const float* logits,
                          const int32_t* targets, int64_t N, int64_t V) {
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * V > kParallelMin)
  for (int64_t n = 0; n < N; ++n)
    ce_row(losses + n, probs + n * V, logits + n * V, targets[n], V);
}

void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                           int64_t N, int64_t V, float scale) {
#pragma omp parallel for num_threads(::kgpt::num_threads()) schedule(static) \
    if (N * V > kParallelMin)
  for (int64_t n = 0; n < N; ++n) ce_back_row(dlogits + n * V, probs + n * V, targets[n], V, scale);
}

}  // namespace cpu
}  // namespace kgpt
