// Certified lm_head filter for sampling. Batch-1 decoding streams every weight once per token, and
// the tied lm_head (the (V, C) embedding table) is the largest single read. Top-k and greedy
// sampling need the exact logits of only the tokens that can make the cut, so a bfloat16 copy of
// the table (half the bytes) gives every logit to within a proven bound E, and only the tokens
// that bound cannot rule out get their exact fp32 logit, from the fp32 table by the very kernel
// the full product uses. The chosen token, and every probability it is drawn with, are therefore
// bitwise those of the unfiltered path; nothing about the numerics changes.
//
// The bound, for one row x (C,) of the final layernorm output and table row w_j, with w'_j its
// bfloat16 rounding and d_j = w_j - w'_j: the exact fp32 logit f_j and the approximate a_j are
// both fp32 dot products of C terms, so (Higham, with n = C + 16 roundings on any path,
// gamma_n = n u / (1 - n u) and u = 2^-23, which holds in any rounding mode)
// |f_j - x.w_j| <= gamma_n sum|x_k w_jk| + n eta and |a_j - x.w'_j| <= gamma_n sum|x_k w'_jk|
// + n eta (eta = 2^-126 covers underflow, with or without flush-to-zero), while
// |x.w_j - x.w'_j| <= ||x|| ||d_j||. By Cauchy-Schwarz and ||w'_j|| <= ||w_j|| + ||d_j||:
//   |f_j - a_j| <= ||x|| * r_j + 2 n eta,   r_j = gamma_n (2 ||w_j|| + ||d_j||) + ||d_j||,
// to which E adds 2 n eta ||x|| for subnormal operands read as zero.
// E uses the largest r_j (upper bounds of the norms, with margins for their own rounding).
#pragma once
#include <cstdint>
#include <vector>

namespace kgpt {
namespace cpu {

struct LmFilter {
  int64_t V = 0, C = 0;
  std::vector<uint16_t> w16;  // (V, C) bfloat16, rounded to nearest even
  double rmax = 0.0;          // max_j r_j, rounded up
  double wmax = 0.0;          // max_j ||w_j||, rounded up (bounds |f_j| against overflow)
  bool ok = false;            // every table entry finite
};

// (Re)builds f from the fp32 table wte (V, C); rows split over the OpenMP team.
void lm_filter_build(LmFilter& f, const float* wte, int64_t V, int64_t C);

// approx[b * V + j] for j in [n0, n1) and b < B: fp32 dot products of x (B, C) rows with the
// bfloat16 rows j. Serial (called by each thread of the decoder on its own columns).
void lm_filter_logits(float* approx, const float* x, const LmFilter& f, int64_t B, int64_t n0,
                      int64_t n1);

// The bound E for one row x (C,): |f_j - a_j| <= E for every j, or a negative value when x is
// not finite or some exact logit could overflow (then the caller needs the exact logits).
double lm_filter_bound(const LmFilter& f, const float* x);

}  // namespace cpu
}  // namespace kgpt
