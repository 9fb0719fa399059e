// Token + position embedding, forward and backward.
// forward: out (B,T,C) = wte[idx] + wpe[:T]  (=).
// backward: dwte (V,C) += rows of dout gathered by token, dwpe (maxT,C)[:T] += dout summed over B
// (+=). Deterministic without float atomics: the caller hands the (token, row) pairs sorted by
// (token, row), and one block per run of equal tokens adds its rows in that fixed order.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

__global__ void embedding_forward_kernel(float* out, const int32_t* idx, const float* wte,
                                         const float* wpe, int B, int T, int C) {
  const long long total = (long long)B * T * C;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const long long n = e / C;
    const int c = (int)(e - n * C);
    const int t = (int)(n % T);
    out[e] = wte[(long long)idx[n] * C + c] + wpe[(long long)t * C + c];
  }
}

// One block per sorted position i; only the first position of each run of equal tokens works.
__global__ void embedding_backward_wte_kernel(float* dwte, const float* dout,
                                              const int32_t* rows, const int32_t* tok, int N,
                                              int C) {
  const int i = blockIdx.x;
  if (i >= N) return;
  const int v = tok[i];
  if (i > 0 && tok[i - 1] == v) return;  // not the start of a run (uniform across the block)
  int end = i + 1;
  while (end < N && tok[end] == v) ++end;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int j = i; j < end; ++j) acc += dout[(long long)rows[j] * C + c];
    dwte[(long long)v * C + c] += acc;
  }
}

__global__ void embedding_backward_wpe_kernel(float* dwpe, const float* dout, int B, int T, int C) {
  const long long total = (long long)T * C;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    float acc = 0.f;
    for (int b = 0; b < B; ++b) acc += dout[(long long)b * total + e];
    dwpe[e] += acc;
  }
}

static unsigned grid_for(long long n, int block) {
  long long g = (n + block - 1) / block;
  return (unsigned)(g < 65535LL * 16 ? (g > 0 ? g : 1) : 65535LL * 16);
}

void embedding_forward(float* out, const int32_t* idx, const float* wte, const float* wpe,
                       int B, int T, int C, void* stream) {
  const long long n = (long long)B * T * C;
  embedding_forward_kernel<<<grid_for(n, 256), 256, 0, as_stream(stream)>>>(out, idx, wte, wpe,
                                                                            B, T, C);
  check_launch("embedding_forward");
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* sorted_rows,
                        const int32_t* sorted_tok, int B, int T, int C, void* stream) {
  const int N = B * T;
  const int threads = C >= 256 ? 256 : (C >= 128 ? 128 : (C >= 64 ? 64 : 32));
  embedding_backward_wte_kernel<<<N, threads, 0, as_stream(stream)>>>(dwte, dout, sorted_rows,
                                                                      sorted_tok, N, C);
  check_launch("embedding_backward_wte");
  embedding_backward_wpe_kernel<<<grid_for((long long)T * C, 256), 256, 0, as_stream(stream)>>>(
      dwpe, dout, B, T, C);
  check_launch("embedding_backward_wpe");
}

}}  // namespace kgpt::cuda
