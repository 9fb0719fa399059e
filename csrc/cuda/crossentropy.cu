// Softmax + cross-entropy over rows of logits (N,V), one block per row, fixed-order block
// reductions (deterministic). crossentropy_forward writes probs (N,V) and losses (N,) (=);
// crossentropy_backward writes dlogits = scale * (probs - onehot) (=, may alias probs);
// softmax_ce_fused is the classifier's single pass: losses (=) and, when asked, the logits
// overwritten in place by their gradient scale * (softmax - onehot).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

constexpr int CE_THREADS = 256;

// Per-thread online (max, sum of exp) over a strided slice, then combined across the block.
// Returns the row's log-sum-exp to every thread.
__device__ float row_logsumexp(const float* row, int V, float* scratch) {
  float m = -INFINITY, s = 0.f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = row[v];
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  const float M = block_max(m, scratch);
  const float part = (m == -INFINITY) ? 0.f : s * expf(m - M);
  const float S = block_sum(part, scratch);
  return M + logf(S);
}

__global__ void crossentropy_forward_kernel(float* losses, float* probs, const float* logits,
                                            const int32_t* targets, int V) {
  __shared__ float scratch[32];
  const long long n = blockIdx.x;
  const float* row = logits + n * V;
  const int tgt = targets[n];
  const float lse = row_logsumexp(row, V, scratch);
  float* pr = probs + n * V;
  for (int v = threadIdx.x; v < V; v += blockDim.x) pr[v] = expf(row[v] - lse);
  if (threadIdx.x == 0) losses[n] = lse - row[tgt];
}

__global__ void crossentropy_backward_kernel(float* dlogits, const float* probs,
                                             const int32_t* targets, int V, float scale) {
  const long long n = blockIdx.x;
  const int tgt = targets[n];
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float p = probs[n * V + v];
    dlogits[n * V + v] = scale * (p - (v == tgt ? 1.f : 0.f));
  }
}

__global__ void softmax_ce_fused_kernel(float* losses, float* logits, const int32_t* targets,
                                        int V, float scale, bool write_grad) {
  __shared__ float scratch[32];
  const long long n = blockIdx.x;
  float* row = logits + n * V;
  const int tgt = targets[n];
  const float xt = row[tgt];  // read before any thread overwrites the row
  const float lse = row_logsumexp(row, V, scratch);  // ends with __syncthreads-ordered reads
  if (threadIdx.x == 0) losses[n] = lse - xt;
  if (!write_grad) return;
  for (int v = threadIdx.x; v < V; v += blockDim.x)
    row[v] = scale * (expf(row[v] - lse) - (v == tgt ? 1.f : 0.f));
}

void crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets,
                          int N, int V, void* stream) {
  crossentropy_forward_kernel<<<N, CE_THREADS, 0, as_stream(stream)>>>(losses, probs, logits,
                                                                       targets, V);
  check_launch("crossentropy_forward");
}

void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, int N,
                           int V, float scale, void* stream) {
  crossentropy_backward_kernel<<<N, CE_THREADS, 0, as_stream(stream)>>>(dlogits, probs, targets,
                                                                        V, scale);
  check_launch("crossentropy_backward");
}

void softmax_ce_fused(float* losses, float* logits, const int32_t* targets, int N, int V,
                      float scale, bool write_grad, void* stream) {
  softmax_ce_fused_kernel<<<N, CE_THREADS, 0, as_stream(stream)>>>(losses, logits, targets, V,
                                                                   scale, write_grad);
  check_launch("softmax_ce_fused");
}

}}  // namespace kgpt::cuda
