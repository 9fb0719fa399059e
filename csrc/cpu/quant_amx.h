// The int8 (Q8_0) products of several activation rows on AMX tiles (quant_amx.cpp); same bits as
// the other paths (quant.h's order). Used by quant.cpp only where ops_use_amx() (dispatch.h).
#pragma once
#include <cstdint>

#include "cpu/quant.h"

namespace kgpt {
namespace cpu {

// True where this build has the AMX kernels (x86-64 Linux, GCC or Clang).
bool q8_amx_built();

// Makes a.amx from a.q and a.d (a.amx sized by Q8Rows::reserve): per group of 8 rows gr and
// pair of blocks pp, at (gr * npairs + pp) * kQ8AmxRecBytes, the B tile (16 rows of 64 bytes:
// row r, dword n = 2 b + q holds bytes 4 (r mod 8) .. + 3 of row b's block 2 pp + q when
// q = r / 8, else 0) and the 16 scales (lane 2 b + q: row b's scale of block 2 pp + q); 0 for
// rows and blocks past the ends. Serial.
void q8_amx_pack(Q8Rows& a);

// Floats a.amx needs for rows (B, K).
int64_t q8_amx_floats(int64_t B, int64_t K);

// Columns [n0, e) of out (a.B, N) = a @ w.T + bias in whole runs of 16 columns, e <= n1 (with
// K / 32 odd, short of a run that ends at N); returns e (the caller computes [e, n1)).
// a.amx_ok must hold. Serial; the calling thread's tile configuration is loaded and released
// inside.
int64_t q8_cols_amx(float* out, int64_t ldo, const Q8Rows& a, const int8_t* wq, const float* wd,
                    const float* bias, int64_t N, int64_t n0, int64_t n1);

}  // namespace cpu
}  // namespace kgpt
