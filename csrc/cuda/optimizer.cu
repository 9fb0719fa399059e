// Optimizer kernels over flat float32 buffers: deterministic global squared norm (double
// accumulation, fixed grid, two passes in fixed order) and fused AdamW (in place: p, m, v =).
// The grid of the norm depends only on n, never on the device, so the sum is reproducible.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

constexpr int NORM_THREADS = 256;
constexpr int NORM_MAX_BLOCKS = 1024;

__global__ void norm_partial_kernel(double* partials, const float* g, long long n) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
       e += (long long)gridDim.x * blockDim.x) {
    const double v = g[e];
    acc += v * v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void norm_final_kernel(double* out, const double* partials, int P) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int p = threadIdx.x; p < P; p += blockDim.x) acc += partials[p];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc;
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, long long n, float lr,
                             float b1, float b2, float eps, float wd, float bc1, float bc2) {
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n;
       e += (long long)gridDim.x * blockDim.x) {
    const float gr = g[e];
    const float mm = b1 * m[e] + (1.f - b1) * gr;
    const float vv = b2 * v[e] + (1.f - b2) * gr * gr;
    m[e] = mm;
    v[e] = vv;
    const float mhat = mm / bc1, vhat = vv / bc2;
    p[e] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[e]);
  }
}

int norm_partial_blocks(long long n) {
  long long P = (n + NORM_THREADS * 8 - 1) / (NORM_THREADS * 8);
  if (P < 1) P = 1;
  if (P > NORM_MAX_BLOCKS) P = NORM_MAX_BLOCKS;
  return (int)P;
}

void global_norm_sq(double* out, double* partials, const float* g, long long n, void* stream) {
  const int P = norm_partial_blocks(n);
  norm_partial_kernel<<<P, NORM_THREADS, 0, as_stream(stream)>>>(partials, g, n);
  check_launch("global_norm_sq_partial");
  norm_final_kernel<<<1, NORM_THREADS, 0, as_stream(stream)>>>(out, partials, P);
  check_launch("global_norm_sq_final");
}

void adamw_update(float* p, const float* g, float* m, float* v, long long n, float lr, float b1,
                  float b2, float eps, float wd, float bc1, float bc2, void* stream) {
  long long grid = (n + 255) / 256;
  if (grid < 1) grid = 1;
  if (grid > 65535LL * 8) grid = 65535LL * 8;
  adamw_kernel<<<(unsigned)grid, 256, 0, as_stream(stream)>>>(p, g, m, v, n, lr, b1, b2, eps, wd,
                                                              bc1, bc2);
  check_launch("adamw_update");
}

}}  // namespace kgpt::cuda
