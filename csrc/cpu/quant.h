// Matrix-vector products over weights stored in fewer bytes, for decoding (batch-1 decoding reads
// every weight once per token, so bytes per weight set its speed). The formats and their NumPy
// specification are in python/kernelgpt/quant.py; in short:
//   int8 ("Q8_0"): a weight matrix (N, K) in blocks of 32 along K, each block one float32 scale d
//     = max|w| / 127 and 32 int8 q = rint(w * (1/d)) (ties to even), |q| <= 127. The activation
//     rows are quantized by the same rule on the fly (q8_quantize_rows), the block products are
//     exact int32 sums, and out[b, j] = sum over blocks of (d_w * d_x) * isum, in float32.
//   bf16: each weight rounded to bfloat16 (to nearest even); activations stay float32; out[b, j]
//     = sum_k x[b, k] * w[j, k] in float32 with fused multiply-adds.
// Summation order, the same on every ISA path, so AVX-512 (VNNI for int8), AVX2 and the
// portable path give the same bits:
//   int8: each block's 32 products summed exactly in int32 (any order gives the same integer);
//     16 float lanes, lane l accumulating the blocks blk with blk mod 16 = l in block order, one
//     fused multiply-add per block: lane = fma(float(isum), d_w * d_x (float32 product), lane).
//   bf16: 16 float lanes, lane l accumulating (one fused multiply-add per step, in k order) the
//     terms x_k * w_k with k mod 16 = l over k below the last multiple of 16.
// Then (both) lanes l and l + 8, then l and l + 4, l and l + 2, l and l + 1; then (bf16) the tail
// k past the last multiple of 16 one by one with fused multiply-adds; then the bias.
// Every row b of out is computed the same way whatever the row count B: a row's result does not
// depend on the rows beside it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/aligned_buf.h"

namespace kgpt {
namespace cpu {

constexpr int64_t kQ8Block = 32;  // int8 block length along the input dimension

// Activation rows (B, K) quantized for q8_matmul_cols (K a multiple of 32).
struct Q8Rows {
  int64_t B = 0, K = 0;
  std::vector<int8_t> q;  // (B, K)
  std::vector<float> d;   // (B, K/32) the block scales
  // The AVX-512 VNNI path's operands (quant.cpp, q8_rows_vnni), 64-byte aligned: per 16 blocks
  // and row a record of kQ8GroupBytes; packed_ok: made for the current rows.
  AlignedFloats packed;
  bool packed_ok = false;
  // The AMX path's operands (quant_amx.cpp), made with packed when AMX is in use and B >=
  // kQ8AmxMinRows: per 8 rows and pair of blocks a record of kQ8AmxRecBytes; amx_ok: made for
  // the current rows.
  AlignedFloats amx;
  bool amx_ok = false;
  // Sizes the buffers for rows (B, K) (std::bad_alloc when they cannot be allocated), so that
  // q8_quantize_rows of at most that size allocates nothing.
  void reserve(int64_t B, int64_t K);
};

constexpr int64_t kQ8GroupBytes = 640;  // 8 x 64 bytes of codes, 16 negcorr, 16 scales
constexpr int64_t kQ8GroupFloats = kQ8GroupBytes / 4;
// AMX (quant_amx.cpp): from this many activation rows on, the int8 products of 16 columns at a
// time run on the AMX tiles (fewer rows: the VNNI path).
constexpr int64_t kQ8AmxMinRows = 4;
constexpr int64_t kQ8AmxRecBytes = 1088;  // a B tile (16 x 64 bytes) and 16 scales

// Quantizes x (B, K) into a (resized as needed); serial. x must be finite (a non-finite block
// gives a scale that is not finite, and non-finite outputs).
void q8_quantize_rows(Q8Rows& a, const float* x, int64_t B, int64_t K);

// Columns [n0, n1) of out (a.B, N) (row stride ldo) = a @ w.T + bias, w (N, K) int8 with scales
// wd (N, K/32); bias may be null. Serial (the decoder's threads each call it on their columns).
void q8_matmul_cols(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq, const float* wd,
                    const float* bias, int64_t N, int64_t n0, int64_t n1);

// Columns [n0, n1) of out (B, N) (row stride ldo) = x (B, K) @ bf16(w) (N, K).T + bias (bias may
// be null); serial. Any K >= 1.
void bf16_matmul_cols(float* out, int64_t ldo, const float* x, const uint16_t* w,
                      const float* bias, int64_t B, int64_t N, int64_t K, int64_t n0, int64_t n1);

// Whole products with the columns split over the OpenMP team (test hooks and tools).
void q8_matmul(float* out, const float* x, const int8_t* wq, const float* wd, const float* bias,
               int64_t B, int64_t N, int64_t K);
void bf16_matmul(float* out, const float* x, const uint16_t* w, const float* bias, int64_t B,
                 int64_t N, int64_t K);

// The code path each format takes now: "avx512_vnni", "avx512", "avx2" or "portable" (the
// ops' ISA test hooks of dispatch.h select it). With "avx512_vnni", products of at least
// kQ8AmxMinRows rows run on AMX where ops_use_amx() (dispatch.h); same bits.
const char* q8_path();
const char* bf16_path();

// A 64-bit fingerprint of n bytes (any thread count gives the same value): the weights'
// identity, to tell whether a quantized copy is still that of the weights.
uint64_t fingerprint(const void* p, size_t n);

}  // namespace cpu
}  // namespace kgpt
