// LayerNorm over the last axis, forward and backward, one warp per row.
// forward: out (N,C) = (x - mean) * rstd * w + b, saves mean (N,), rstd (N,) (=).
// backward: dx (N,C) = ; dw (C,) += ; db (C,) += . dw/db are reduced deterministically: per-block
// partial sums over fixed row ranges, then one fixed-order sum per channel (no float atomics).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

constexpr int LN_ROWS_PER_PARTIAL = 32;  // rows summed by one block of the dw/db partial pass

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* x,
                                         const float* w, const float* b, int N, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= N) return;  // whole warp exits together
  const float* xr = x + (long long)row * C;
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += xr[c];
  const float mu = warp_sum(s) / C;
  float v = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = xr[c] - mu;
    v += d * d;
  }
  const float r = rsqrtf(warp_sum(v) / C + eps);
  float* o = out + (long long)row * C;
  for (int c = lane; c < C; c += 32) o[c] = (xr[c] - mu) * r * w[c] + b[c];
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
}

__global__ void layernorm_backward_dx_kernel(float* dx, const float* dout, const float* x,
                                             const float* w, const float* mean, const float* rstd,
                                             int N, int C) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const float* xr = x + (long long)row * C;
  const float* dr = dout + (long long)row * C;
  const float mu = mean[row], r = rstd[row];
  float sg = 0.f, sgx = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float g = dr[c] * w[c];
    sg += g;
    sgx += g * (xr[c] - mu) * r;
  }
  const float mg = warp_sum(sg) / C, mgx = warp_sum(sgx) / C;
  float* o = dx + (long long)row * C;
  for (int c = lane; c < C; c += 32) {
    const float xhat = (xr[c] - mu) * r;
    o[c] = r * (dr[c] * w[c] - mg - xhat * mgx);
  }
}

// partials (P, 2, C): block p sums rows [p*R, min(N,(p+1)*R)) in order.
__global__ void layernorm_backward_partial_kernel(float* partials, const float* dout,
                                                  const float* x, const float* mean,
                                                  const float* rstd, int N, int C) {
  const int p = blockIdx.x;
  const int r0 = p * LN_ROWS_PER_PARTIAL;
  const int r1 = min(N, r0 + LN_ROWS_PER_PARTIAL);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float aw = 0.f, ab = 0.f;
    for (int r = r0; r < r1; ++r) {
      const float d = dout[(long long)r * C + c];
      aw += d * (x[(long long)r * C + c] - mean[r]) * rstd[r];
      ab += d;
    }
    partials[(long long)p * 2 * C + c] = aw;
    partials[(long long)p * 2 * C + C + c] = ab;
  }
}

__global__ void layernorm_backward_reduce_kernel(float* dw, float* db, const float* partials,
                                                 int P, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float aw = 0.f, ab = 0.f;
  for (int p = 0; p < P; ++p) {
    aw += partials[(long long)p * 2 * C + c];
    ab += partials[(long long)p * 2 * C + C + c];
  }
  dw[c] += aw;
  db[c] += ab;
}

int layernorm_partial_blocks(int N) { return (N + LN_ROWS_PER_PARTIAL - 1) / LN_ROWS_PER_PARTIAL; }

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int N, int C, float eps, void* stream) {
  const int warps = 8;
  layernorm_forward_kernel<<<ceil_div(N, warps), warps * 32, 0, as_stream(stream)>>>(
      out, mean, rstd, x, w, b, N, C, eps);
  check_launch("layernorm_forward");
}

void layernorm_backward(float* dx, float* dw, float* db, float* partials, const float* dout,
                        const float* x, const float* w, const float* mean, const float* rstd,
                        int N, int C, void* stream) {
  const int warps = 8;
  cudaStream_t s = as_stream(stream);
  const int P = layernorm_partial_blocks(N);
  const int threads = C >= 256 ? 256 : (C >= 128 ? 128 : (C >= 64 ? 64 : 32));
  layernorm_backward_partial_kernel<<<P, threads, 0, s>>>(partials, dout, x, mean, rstd, N, C);
  check_launch("layernorm_backward_partial");
  layernorm_backward_reduce_kernel<<<ceil_div(C, 128), 128, 0, s>>>(dw, db, partials, P, C);
  check_launch("layernorm_backward_reduce");
  // dx last, so dx may alias dout
  layernorm_backward_dx_kernel<<<ceil_div(N, warps), warps * 32, 0, s>>>(dx, dout, x, w, mean,
                                                                         rstd, N, C);
  check_launch("layernorm_backward_dx");
}

}}  // namespace kgpt::cuda
