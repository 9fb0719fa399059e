// Elementwise ops: GELU (tanh form) forward/backward, add, bias add, bias gradient, in-place
// scale. Rule: gelu_forward/backward, add, add_bias write (=); bias_backward (dbias)
// accumulates (+=). Precise tanhf is used on
// purpose (no fast math: the tests compare against NumPy). bias_backward sums columns with
// per-block partials over fixed row ranges then one ordered pass: deterministic, no atomics.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

constexpr float GELU_K = 0.7978845608028654f;  // sqrt(2/pi)
constexpr int COLSUM_ROWS = 64;

#define GRID_STRIDE(e, n)                                                     \
  for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < (n); \
       e += (long long)gridDim.x * blockDim.x)

static unsigned ew_grid(long long n) {
  long long g = (n + 255) / 256;
  if (g < 1) g = 1;
  if (g > 65535LL * 8) g = 65535LL * 8;
  return (unsigned)g;
}

__global__ void gelu_forward_kernel(float* out, const float* x, long long n) {
  GRID_STRIDE(e, n) {
    const float v = x[e];
    out[e] = 0.5f * v * (1.f + tanhf(GELU_K * v * (1.f + 0.044715f * v * v)));
  }
}

__global__ void gelu_backward_kernel(float* dx, const float* dout, const float* x, long long n) {
  GRID_STRIDE(e, n) {
    const float v = x[e];
    const float th = tanhf(GELU_K * v * (1.f + 0.044715f * v * v));
    const float du = GELU_K * (1.f + 3.f * 0.044715f * v * v);
    dx[e] = dout[e] * (0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * du);
  }
}

__global__ void add_kernel(float* out, const float* a, const float* b, long long n) {
  GRID_STRIDE(e, n) { out[e] = a[e] + b[e]; }
}

__global__ void add_bias_kernel(float* out, const float* bias, long long n, int OC) {
  GRID_STRIDE(e, n) { out[e] += bias[e % OC]; }
}

__global__ void scale_kernel(float* g, float s, long long n) {
  GRID_STRIDE(e, n) { g[e] *= s; }
}

// partials (P, OC): block (p, column chunk) sums rows [p*R, min(N,(p+1)*R)).
__global__ void colsum_partial_kernel(float* partials, const float* dout, int N, int OC) {
  const int p = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  const int r0 = p * COLSUM_ROWS, r1 = min(N, r0 + COLSUM_ROWS);
  float acc = 0.f;
  for (int r = r0; r < r1; ++r) acc += dout[(long long)r * OC + c];
  partials[(long long)p * OC + c] = acc;
}

__global__ void colsum_reduce_kernel(float* dbias, const float* partials, int P, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float acc = 0.f;
  for (int p = 0; p < P; ++p) acc += partials[(long long)p * OC + c];
  dbias[c] += acc;
}

void gelu_forward(float* out, const float* x, long long n, void* stream) {
  gelu_forward_kernel<<<ew_grid(n), 256, 0, as_stream(stream)>>>(out, x, n);
  check_launch("gelu_forward");
}
void gelu_backward(float* dx, const float* dout, const float* x, long long n, void* stream) {
  gelu_backward_kernel<<<ew_grid(n), 256, 0, as_stream(stream)>>>(dx, dout, x, n);
  check_launch("gelu_backward");
}
void add(float* out, const float* a, const float* b, long long n, void* stream) {
  add_kernel<<<ew_grid(n), 256, 0, as_stream(stream)>>>(out, a, b, n);
  check_launch("add");
}
void add_bias(float* out, const float* bias, int N, int OC, void* stream) {
  const long long n = (long long)N * OC;
  add_bias_kernel<<<ew_grid(n), 256, 0, as_stream(stream)>>>(out, bias, n, OC);
  check_launch("add_bias");
}
void scale_(float* g, float s, long long n, void* stream) {
  scale_kernel<<<ew_grid(n), 256, 0, as_stream(stream)>>>(g, s, n);
  check_launch("scale_");
}
int colsum_partial_blocks(int N) { return (N + COLSUM_ROWS - 1) / COLSUM_ROWS; }
void bias_backward(float* dbias, float* partials, const float* dout, int N, int OC, void* stream) {
  const int P = colsum_partial_blocks(N);
  dim3 grid(ceil_div(OC, 128), P);
  colsum_partial_kernel<<<grid, 128, 0, as_stream(stream)>>>(partials, dout, N, OC);
  check_launch("bias_backward_partial");
  colsum_reduce_kernel<<<ceil_div(OC, 128), 128, 0, as_stream(stream)>>>(dbias, partials, P, OC);
  check_launch("bias_backward_reduce");
}

}}  // namespace kgpt::cuda
