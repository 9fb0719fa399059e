// Causal multi-head attention in fp32, flash-style: forward with an online softmax over K/V tiles in
// shared memory (one thread per query row), saving only lse (B,NH,T); backward recomputes
// P = exp(S - lse) in two passes without atomics: a key-outer pass (one thread per key) writes dK,
// dV, and a query-outer pass (one thread per query) writes dQ. Plus the KV-cache decode step.
// All outputs are overwritten (=). Head size HS <= 128, padded to D in {16, 32, 64, 128}.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace kgpt { namespace cuda {

constexpr int FWD_BQ = 64;  // queries per block (one per thread) in the forward and dQ passes
constexpr int FWD_BK = 32;  // keys per shared-memory tile

template <int D>
__device__ __forceinline__ float dot_sh(const float* a_reg, const float* b_sh) {
  // a_reg: register array (compile-time indexed); b_sh: 16-byte aligned shared row
  const float4* b4 = reinterpret_cast<const float4*>(b_sh);
  float acc = 0.f;
#pragma unroll
  for (int d4 = 0; d4 < D / 4; ++d4) {
    const float4 v = b4[d4];
    acc += a_reg[4 * d4] * v.x + a_reg[4 * d4 + 1] * v.y + a_reg[4 * d4 + 2] * v.z +
           a_reg[4 * d4 + 3] * v.w;
  }
  return acc;
}

template <int D>
__device__ __forceinline__ void axpy_sh(float* y_reg, float a, const float* x_sh) {
  const float4* x4 = reinterpret_cast<const float4*>(x_sh);
#pragma unroll
  for (int d4 = 0; d4 < D / 4; ++d4) {
    const float4 v = x4[d4];
    y_reg[4 * d4] += a * v.x;
    y_reg[4 * d4 + 1] += a * v.y;
    y_reg[4 * d4 + 2] += a * v.z;
    y_reg[4 * d4 + 3] += a * v.w;
  }
}

// Dot products for the backward passes, whose key/query loops are not unrolled: four
// independent accumulators so the FMAs are not one latency-bound chain.
template <int D>
__device__ __forceinline__ float dot_sh2(const float* a_sh, const float* b_sh) {
  // both 16-byte aligned shared rows
  const float4* a4 = reinterpret_cast<const float4*>(a_sh);
  const float4* b4 = reinterpret_cast<const float4*>(b_sh);
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
  for (int d4 = 0; d4 < D / 4; ++d4) {
    const float4 a = a4[d4], b = b4[d4];
    s0 += a.x * b.x;
    s1 += a.y * b.y;
    s2 += a.z * b.z;
    s3 += a.w * b.w;
  }
  return (s0 + s1) + (s2 + s3);
}

template <int D>
__device__ __forceinline__ float dot_reg4(const float* a_reg, const float* b_sh) {
  const float4* b4 = reinterpret_cast<const float4*>(b_sh);
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
  for (int d4 = 0; d4 < D / 4; ++d4) {
    const float4 v = b4[d4];
    s0 += a_reg[4 * d4] * v.x;
    s1 += a_reg[4 * d4 + 1] * v.y;
    s2 += a_reg[4 * d4 + 2] * v.z;
    s3 += a_reg[4 * d4 + 3] * v.w;
  }
  return (s0 + s1) + (s2 + s3);
}

// Loads rows [j0, j0+ROWS) of the k (part=1) or v (part=2) columns of head h into sh[ROWS][LD],
// zero-filling rows >= T and columns >= HS.
template <int ROWS, int LD, int D>
__device__ __forceinline__ void load_tile(float (*sh)[LD], const float* base, int j0, int T,
                                          int C3, int col0, int HS) {
  for (int e = threadIdx.x; e < ROWS * D; e += blockDim.x) {
    const int r = e / D, d = e - (e / D) * D, j = j0 + r;
    sh[r][d] = (j < T && d < HS) ? base[(long long)j * C3 + col0 + d] : 0.f;
  }
}

template <int D>
__global__ void __launch_bounds__(FWD_BQ) attention_forward_kernel(float* out, float* lse,
                                                                   const float* qkv, int T, int NH,
                                                                   int HS, float scale) {
  __shared__ __align__(16) float Ks[FWD_BK][D];
  __shared__ __align__(16) float Vs[FWD_BK][D];
  const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * FWD_BQ;  // heaviest (latest) query tiles first
  const int i = q0 + threadIdx.x;
  const int C = NH * HS, C3 = 3 * C;
  const float* base = qkv + (long long)b * T * C3;
  const bool active = i < T;
  float q[D], acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    q[d] = (active && d < HS) ? base[(long long)i * C3 + h * HS + d] * scale : 0.f;
    acc[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int kend = min(T, q0 + FWD_BQ);
  for (int k0 = 0; k0 < kend; k0 += FWD_BK) {
    __syncthreads();
    load_tile<FWD_BK, D, D>(Ks, base, k0, T, C3, C + h * HS, HS);
    load_tile<FWD_BK, D, D>(Vs, base, k0, T, C3, 2 * C + h * HS, HS);
    __syncthreads();
    if (active && k0 <= i) {
      float s[FWD_BK];
      float mt = -INFINITY;
#pragma unroll
      for (int r = 0; r < FWD_BK; ++r) {
        s[r] = (k0 + r <= i) ? dot_sh<D>(q, Ks[r]) : -INFINITY;
        mt = fmaxf(mt, s[r]);
      }
      const float mnew = fmaxf(m, mt);  // finite: key k0 <= i is always visible
      const float corr = expf(m - mnew);
      l *= corr;
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] *= corr;
#pragma unroll
      for (int r = 0; r < FWD_BK; ++r) {
        const float p = expf(s[r] - mnew);  // 0 for masked keys
        l += p;
        axpy_sh<D>(acc, p, Vs[r]);
      }
      m = mnew;
    }
  }
  if (active) {
    const float inv = 1.f / l;
    float* o = out + ((long long)b * T + i) * C + h * HS;
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (d < HS) o[d] = acc[d] * inv;
    lse[(long long)bh * T + i] = m + logf(l);
  }
}

// Dvec (B,NH,T) = rowsum(dout * out) per head; one warp per (b, h, t).
__global__ void attention_dvec_kernel(float* Dvec, const float* dout, const float* out, int B,
                                      int T, int NH, int HS) {
  const long long row = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= (long long)B * NH * T) return;
  const int t = (int)(row % T);
  const long long bh = row / T;
  const int h = (int)(bh % NH), b = (int)(bh / NH);
  const long long off = ((long long)b * T + t) * NH * HS + (long long)h * HS;
  float s = 0.f;
  for (int d = lane; d < HS; d += 32) s += dout[off + d] * out[off + d];
  s = warp_sum(s);
  if (lane == 0) Dvec[row] = s;
}

template <int D>
struct BwdCfg {
  static constexpr int BKV = D <= 64 ? 64 : 32;  // keys per block (one per thread)
  static constexpr int BQT = D <= 64 ? 16 : 8;   // query rows per shared tile
};

template <int D>
__global__ void __launch_bounds__(BwdCfg<D>::BKV) attention_backward_dkdv_kernel(
    float* dqkv, const float* dout, const float* qkv, const float* lse, const float* Dvec, int T,
    int NH, int HS, float scale) {
  constexpr int BKV = BwdCfg<D>::BKV, BQT = BwdCfg<D>::BQT, LD = D + 4;  // +4: no bank conflicts
  __shared__ __align__(16) float Kown[BKV][LD];
  __shared__ __align__(16) float Vown[BKV][LD];
  __shared__ __align__(16) float Qs[BQT][D];
  __shared__ __align__(16) float dOs[BQT][D];
  __shared__ float Ls[BQT], Ds[BQT];
  const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
  const int k0 = blockIdx.y * BKV;  // early keys see the most queries: heaviest blocks first
  const int j = k0 + threadIdx.x;
  const int C = NH * HS, C3 = 3 * C;
  const float* base = qkv + (long long)b * T * C3;
  const float* dbase = dout + (long long)b * T * C;
  const bool active = j < T;
  load_tile<BKV, LD, D>(Kown, base, k0, T, C3, C + h * HS, HS);
  load_tile<BKV, LD, D>(Vown, base, k0, T, C3, 2 * C + h * HS, HS);
  float dk[D], dv[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dk[d] = dv[d] = 0.f;
  for (int i0 = k0; i0 < T; i0 += BQT) {  // queries i >= j >= k0
    __syncthreads();
    for (int e = threadIdx.x; e < BQT * D; e += blockDim.x) {
      const int r = e / D, d = e - (e / D) * D, i = i0 + r;
      const bool ok = i < T && d < HS;
      Qs[r][d] = ok ? base[(long long)i * C3 + h * HS + d] * scale : 0.f;
      dOs[r][d] = ok ? dbase[(long long)i * C + h * HS + d] : 0.f;
    }
    for (int e = threadIdx.x; e < BQT; e += blockDim.x) {
      const int i = i0 + e;
      Ls[e] = i < T ? lse[(long long)bh * T + i] : 0.f;
      Ds[e] = i < T ? Dvec[(long long)bh * T + i] : 0.f;
    }
    __syncthreads();
    if (active) {
      for (int r = 0; r < BQT; ++r) {
        const int i = i0 + r;
        if (i >= T) break;
        if (i < j) continue;  // causal: query i sees key j only when j <= i
        const float p = expf(dot_sh2<D>(Qs[r], Kown[threadIdx.x]) - Ls[r]);
        const float dp = dot_sh2<D>(dOs[r], Vown[threadIdx.x]);
        const float ds = p * (dp - Ds[r]);
        axpy_sh<D>(dv, p, dOs[r]);
        axpy_sh<D>(dk, ds, Qs[r]);  // Qs already carries the 1/sqrt(HS) scale
      }
    }
  }
  if (active) {
    float* g = dqkv + ((long long)b * T + j) * C3 + h * HS;
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (d < HS) {
        g[C + d] = dk[d];
        g[2 * C + d] = dv[d];
      }
    }
  }
}

template <int D>
__global__ void __launch_bounds__(FWD_BQ) attention_backward_dq_kernel(
    float* dqkv, const float* dout, const float* qkv, const float* lse, const float* Dvec, int T,
    int NH, int HS, float scale) {
  __shared__ __align__(16) float Ks[FWD_BK][D];
  __shared__ __align__(16) float Vs[FWD_BK][D];
  const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * FWD_BQ;
  const int i = q0 + threadIdx.x;
  const int C = NH * HS, C3 = 3 * C;
  const float* base = qkv + (long long)b * T * C3;
  const bool active = i < T;
  float q[D], dor[D], dq[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const bool ok = active && d < HS;
    q[d] = ok ? base[(long long)i * C3 + h * HS + d] * scale : 0.f;
    dor[d] = ok ? dout[((long long)b * T + i) * C + h * HS + d] : 0.f;
    dq[d] = 0.f;
  }
  const float Li = active ? lse[(long long)bh * T + i] : 0.f;
  const float Di = active ? Dvec[(long long)bh * T + i] : 0.f;
  const int kend = min(T, q0 + FWD_BQ);
  for (int k0 = 0; k0 < kend; k0 += FWD_BK) {
    __syncthreads();
    load_tile<FWD_BK, D, D>(Ks, base, k0, T, C3, C + h * HS, HS);
    load_tile<FWD_BK, D, D>(Vs, base, k0, T, C3, 2 * C + h * HS, HS);
    __syncthreads();
    if (active) {
      for (int r = 0; r < FWD_BK; ++r) {
        if (k0 + r > i) break;
        const float p = expf(dot_reg4<D>(q, Ks[r]) - Li);
        const float ds = p * (dot_reg4<D>(dor, Vs[r]) - Di);
        axpy_sh<D>(dq, ds, Ks[r]);
      }
    }
  }
  if (active) {
    float* g = dqkv + ((long long)b * T + i) * C3 + h * HS;
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (d < HS) g[d] = dq[d] * scale;
  }
}

// One block per (b, h): scores into shared memory, block max/sum, then threads over channels.
__global__ void attention_decode_kernel(float* out, const float* q, const float* kc,
                                        const float* vc, int NH, int maxT, int HS, int n_valid,
                                        float scale) {
  extern __shared__ float sm[];
  float* p = sm;                 // n_valid scores / probabilities
  float* scratch = sm + n_valid;  // 32 floats for the block reductions
  const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
  const int C = NH * HS;
  const float* qh = q + (long long)b * C + h * HS;
  const float* K = kc + (long long)bh * maxT * HS;
  const float* V = vc + (long long)bh * maxT * HS;
  float mloc = -INFINITY;
  for (int j = threadIdx.x; j < n_valid; j += blockDim.x) {
    float dot = 0.f;
    for (int d = 0; d < HS; ++d) dot += qh[d] * K[(long long)j * HS + d];
    p[j] = dot * scale;
    mloc = fmaxf(mloc, p[j]);
  }
  const float m = block_max(mloc, scratch);
  float lsum = 0.f;
  for (int j = threadIdx.x; j < n_valid; j += blockDim.x) {
    const float e = expf(p[j] - m);
    p[j] = e;
    lsum += e;
  }
  const float l = block_sum(lsum, scratch);  // contains __syncthreads: p is complete after it
  __syncthreads();
  for (int d = threadIdx.x; d < HS; d += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < n_valid; ++j) acc += p[j] * V[(long long)j * HS + d];
    out[(long long)b * C + h * HS + d] = acc / l;
  }
}

template <int D>
static void launch_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HS,
                           cudaStream_t s) {
  dim3 grid(B * NH, ceil_div(T, FWD_BQ));
  attention_forward_kernel<D><<<grid, FWD_BQ, 0, s>>>(out, lse, qkv, T, NH, HS,
                                                      1.f / sqrtf((float)HS));
  check_launch("attention_forward");
}

template <int D>
static void launch_backward(float* dqkv, const float* Dvec, const float* dout, const float* qkv,
                            const float* lse, int B, int T, int NH, int HS, cudaStream_t s) {
  const float scale = 1.f / sqrtf((float)HS);
  constexpr int BKV = BwdCfg<D>::BKV;
  dim3 g1(B * NH, ceil_div(T, BKV));
  attention_backward_dkdv_kernel<D><<<g1, BKV, 0, s>>>(dqkv, dout, qkv, lse, Dvec, T, NH, HS,
                                                       scale);
  check_launch("attention_backward_dkdv");
  dim3 g2(B * NH, ceil_div(T, FWD_BQ));
  attention_backward_dq_kernel<D><<<g2, FWD_BQ, 0, s>>>(dqkv, dout, qkv, lse, Dvec, T, NH, HS,
                                                        scale);
  check_launch("attention_backward_dq");
}

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HS,
                       void* stream) {
  cudaStream_t s = as_stream(stream);
  if (HS <= 16) launch_forward<16>(out, lse, qkv, B, T, NH, HS, s);
  else if (HS <= 32) launch_forward<32>(out, lse, qkv, B, T, NH, HS, s);
  else if (HS <= 64) launch_forward<64>(out, lse, qkv, B, T, NH, HS, s);
  else if (HS <= 128) launch_forward<128>(out, lse, qkv, B, T, NH, HS, s);
  else throw std::invalid_argument("attention_forward: head size must be <= 128");
}

void attention_backward(float* dqkv, float* Dscratch, const float* dout, const float* qkv,
                        const float* out, const float* lse, int B, int T, int NH, int HS,
                        void* stream) {
  cudaStream_t s = as_stream(stream);
  if (HS > 128) throw std::invalid_argument("attention_backward: head size must be <= 128");
  const long long rows = (long long)B * NH * T;
  attention_dvec_kernel<<<ceil_div(rows, 8), 256, 0, s>>>(Dscratch, dout, out, B, T, NH, HS);
  check_launch("attention_backward_dvec");
  if (HS <= 16) launch_backward<16>(dqkv, Dscratch, dout, qkv, lse, B, T, NH, HS, s);
  else if (HS <= 32) launch_backward<32>(dqkv, Dscratch, dout, qkv, lse, B, T, NH, HS, s);
  else if (HS <= 64) launch_backward<64>(dqkv, Dscratch, dout, qkv, lse, B, T, NH, HS, s);
  else launch_backward<128>(dqkv, Dscratch, dout, qkv, lse, B, T, NH, HS, s);
}

void attention_decode(float* out, const float* q, const float* kc, const float* vc, int B,
                      int NH, int maxT, int HS, int n_valid, void* stream) {
  const size_t smem = (size_t)(n_valid + 32) * sizeof(float);
  attention_decode_kernel<<<B * NH, 128, smem, as_stream(stream)>>>(
      out, q, kc, vc, NH, maxT, HS, n_valid, 1.f / sqrtf((float)HS));
  check_launch("attention_decode");
}

}}  // namespace kgpt::cuda
