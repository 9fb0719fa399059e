// Shared helpers for the CUDA kernels: launch error checks that throw (never exit), warp and block
// reductions with a fixed combination order (so results are bit-identical run to run), and the
// stream cast. Included by every csrc/cuda/*.cu file; no pybind11 here.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace kgpt { namespace cuda {

// Throws std::runtime_error naming the kernel when the launch (or an earlier async op) failed.
// With KERNELGPT_CUDA_SYNC=1 in the environment every launch is also synchronised, so an
// asynchronous fault (illegal address, ...) is pinned on the kernel that caused it (debug only).
inline void check_launch(const char* kernel) {
  static const bool sync_each = [] {
    const char* v = std::getenv("KERNELGPT_CUDA_SYNC");
    return v != nullptr && v[0] == '1';
  }();
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_each) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA kernel ") + kernel + " failed: " +
                             cudaGetErrorString(e));
  }
}

inline cudaStream_t as_stream(void* s) { return reinterpret_cast<cudaStream_t>(s); }

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` must hold 32 values; the fixed tree order keeps it deterministic.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[wid] = v;
  __syncthreads();
  T r = lane < nw ? scratch[lane] : T(0);
  return warp_sum(r);
}

__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[wid] = v;
  __syncthreads();
  float r = lane < nw ? scratch[lane] : -INFINITY;
  return warp_max(r);
}

}}  // namespace kgpt::cuda
