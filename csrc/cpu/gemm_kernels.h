// Internal to the GEMM (csrc/cpu/gemm.cpp, gemm_kernels.cpp): the problem description and the
// kernels that compute one register tile (portable 4x8, AVX2/FMA 6x16, AVX-512 6x64, over packed
// panels) or a range of output columns of a matrix-vector product. Every output element is
// summed in a fixed k order. Not a public interface: sgemm in gemm.h is.
#pragma once
#include "common/isa.h"
#include <cstdint>

#include "cpu/gemm.h"

namespace kgpt {
namespace cpu {
namespace gemm_detail {

// C (M,N) = alpha * op(A) @ op(B) + beta * C + bias; see sgemm in gemm.h.
using Problem = GemmArgs;

// Scalar epilogue shared by edge tiles and the portable kernel:
// c = alpha*acc (+ beta*c when beta != 0) (+ bias).
inline float epi(float acc, float alpha, float beta, const float* c, const float* bias, int j) {
  float v = alpha * acc;
  if (beta != 0.f) v += beta * (*c);
  if (bias) v += bias[j];
  return v;
}

// One MR x NR tile: c = alpha * (packed A sliver)(MR,kc) @ (packed B sliver)(kc,NR), epilogue as epi.
using Ukr = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                     float alpha, float beta, const float* bias);

// The same tile with A read in place (row-major op(A): element (i, k) at a[i*lda + k]): used
// for full-height tiles when op(A) is not transposed, so A needs no packing.
using UkrD = void (*)(int64_t kc, const float* a, int64_t lda, const float* b, float* c,
                      int64_t ldc, float alpha, float beta, const float* bias);

constexpr int kPMR = 4, kPNR = 8;  // the portable kernel's tile
void ukr_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                  float beta, const float* bias);
// Matrix-vector (M <= 4, A (M,K) rows, B (N,K) rows): output columns [n0, n1).
void gemv_nt_portable(const Problem& p, int64_t n0, int64_t n1);
// Columns [n0, n1) of an NT matrix-vector product (M <= 4) on the active ISA's kernel.
void gemv_nt_range(const Problem& p, int64_t n0, int64_t n1);

#if KGPT_X86
void ukr_avx2_6x16(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                   float beta, const float* bias);
void ukrd_avx2_6x16(int64_t kc, const float* a, int64_t lda, const float* b, float* c,
                    int64_t ldc, float alpha, float beta, const float* bias);
void ukr_avx512_6x64(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                     float alpha, float beta, const float* bias);
void ukrd_avx512_6x64(int64_t kc, const float* a, int64_t lda, const float* b, float* c,
                      int64_t ldc, float alpha, float beta, const float* bias);
void ukrt_avx512_6x64(int64_t kc, const float* a, int64_t lda, const float* b, float* c,
                      int64_t ldc, float alpha, float beta, const float* bias);
void gemv_nt_avx2(const Problem& p, int64_t n0, int64_t n1);
void gemv_nt_avx512(const Problem& p, int64_t n0, int64_t n1);
#endif

}  // namespace gemm_detail
}  // namespace cpu
}  // namespace kgpt
