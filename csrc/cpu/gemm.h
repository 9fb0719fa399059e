// Our own single-precision GEMM (no BLAS): C = alpha * op(A) @ op(B) + beta * C + bias.
// Packed, cache-blocked (KC/MC/NC), with AVX2/FMA (and AVX-512 where present) micro-kernels
// chosen at run time and a portable fallback; OpenMP over disjoint output tiles, so every output
// element is computed by one thread with a fixed k order: results are bitwise identical for any
// thread count. `=`/`+=` rule: beta == 0 overwrites C without reading it (no zeroing pass needed);
// beta == 1 accumulates (parameter gradients). Row-major throughout.
#pragma once
#include <cstdint>
#include <string>

namespace kgpt {
namespace cpu {

// C (M,N), row stride ldc. op(A) is (M,K): A[m*lda+k], or A[k*lda+m] when trans_a.
// op(B) is (K,N): B[k*ldb+n], or B[n*ldb+k] when trans_b. bias (N,) or nullptr is added once.
// If beta == 0, C is write-only (NaN/garbage in C never leaks into the result).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc, const float* bias);

// The arguments of one sgemm call, in the same order (ta, tb = trans_a, trans_b).
struct GemmArgs {
  bool ta, tb;
  int64_t M, N, K;
  float alpha;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float beta;
  float* C;
  int64_t ldc;
  const float* bias;
};
void sgemm(const GemmArgs& g);
// dst (OC,) += column sums of src (N, OC), rows added in order (deterministic).
struct ColumnSum {
  float* dst;
  const float* src;
  int64_t N, OC;
};
void column_sum_acc(const ColumnSum& sum);

// Two independent products (outputs must not overlap each other's inputs) and, when `sum` is
// given, a column sum after x. Small products run side by side on halves of the thread team
// (the sum on x's half, which is usually the faster one); large ones one after the other on the
// whole team. Results bitwise equal to sgemm(x), sgemm(y), column_sum_acc(sum) in any case.
void sgemm_pair(const GemmArgs& x, const GemmArgs& y, const ColumnSum* sum = nullptr);

// Name of the micro-kernel sgemm uses now: "avx512", "avx2_fma" or "portable".
const char* gemm_kernel_name();
// Test hook: force the portable kernels (process-wide; affects gemm and the classifier).
void gemm_set_force_portable(bool on);
// Select the kernel: "auto", "avx512", "avx2_fma" or "portable"; false if this CPU lacks it.
bool gemm_set_kernel(const std::string& name);
bool gemm_use_avx2();    // the AVX2/FMA (or wider) vector paths are active
bool gemm_use_avx512();  // the AVX-512 micro-kernel is active

}  // namespace cpu
}  // namespace kgpt
