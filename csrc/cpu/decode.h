// Fused KV-cache decoding step on the CPU: one new position per sequence through every layer and
// the lm_head in one call and one OpenMP parallel region (the matrix-vector products split by
// output columns across the team, barriers between dependent steps, the tiny row ops on one
// thread), instead of ~25 bound calls each starting its own parallel region. It runs exactly the
// kernels of the op-by-op path (layernorm or RMSNorm, matrix-vector GEMM, RoPE, attention_decode
// over NKV cache heads, GELU or SwiGLU, residual) in the same order, each row as the op-by-op
// path computes a batch of one, so row b's logits are bitwise those of row b decoded alone (at
// batch 1, those of the op-by-op step; at batch > 1 the op-by-op step's matrix products take
// other kernels, equal up to float32 rounding). Each row may sit at its own position.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/lm_filter.h"

namespace kgpt {
namespace cpu {

// The matrices' weight formats (quant.h): float32 (the exact path), bfloat16, int8 (Q8_0).
enum class WeightFormat { fp32 = 0, bf16 = 1, int8 = 2 };

// Fused decoder batch limit (every weight format): each weight row is read once per step for
// all rows, and every row's values are those of that row decoded alone.
constexpr int64_t kDecodeMaxBatch = 16;

// A matrix (N, K) in a quantized format: w (N, K) uint16 (bf16) or int8 with d (N, K/32) float32.
struct QMat {
  const void* w = nullptr;
  const float* d = nullptr;
};

// Biases may be null (no bias); ln*_b are null with RMSNorm.
struct DecodeLayer {
  const float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
  const float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
  float *k_cache, *v_cache;  // (B, NKV, maxT, HS)
  QMat q_attn, q_proj, q_fc, q_fcproj;  // the matrices in m.wformat (unused with fp32)
};

// The architecture: GPT-2 (layernorm, learned positions, GELU MLP of width 4C, NKV = NH, tied
// lm_head) or any mix of the llama-style fields (RMSNorm, rotary positions, SwiGLU of hidden
// width H, grouped-query attention, an lm_head of its own).
struct DecodeModel {
  int64_t B = 0, C = 0, NH = 0, NKV = 0, V = 0, maxT = 0;
  int64_t H = 0;  // the MLP's hidden width (4C for GPT-2); c_fc writes H (GELU) or 2H (SwiGLU)
  float eps = 1e-5f;  // the norms' epsilon
  bool rmsnorm = false, rope = false, swiglu = false;
  double rope_theta = 10000.0;
  // wpe: null with rotary positions; lnf_b: null with RMSNorm
  const float *wte = nullptr, *wpe = nullptr, *lnf_w = nullptr, *lnf_b = nullptr;
  const float* head = nullptr;  // the lm_head (V, C): wte when tied
  std::vector<DecodeLayer> layers;
  // The format the matrices (qkv, projections, MLP, lm_head) are read in; the token and position
  // tables, norms and biases stay float32, and so does the KV cache. Not fp32: the q_* matrices
  // and q_head are read instead of the float32 ones, and the lm_head filter is not used.
  WeightFormat wformat = WeightFormat::fp32;
  QMat q_head;
  // Thread use when the cores are shared with other processes: after a step on several threads
  // whose threads spent over a quarter of its time in barrier waits that outlasted the short
  // spin (spin and sleep together: a peer had lost its core, so the others waited), decode_step runs the next kSingleThreadSteps steps on one
  // thread, then tries several again. On an idle machine no thread sleeps there and this stays
  // 0. Every value is the same on any thread count (tested), so only the speed changes. It takes
  // kSleepyStepsBeforeAside such steps in a row (sleepy_steps counts them): one step held up by
  // a passing interruption on an otherwise idle machine must not cost the next 32 steps their
  // second thread (measured: rounds of S sampling 20-30% slower now and then with a single step).
  mutable int64_t single_steps_left = 0;
  mutable int64_t sleepy_steps = 0;
};

constexpr int64_t kSingleThreadSteps = 32;
constexpr int64_t kSleepyStepsBeforeAside = 3;

// Scratch for one DecodeModel (sized by decode_scratch_floats).
int64_t decode_scratch_floats(const DecodeModel& m);

// tok (B,) ids already validated to lie in [0, V); pos (B,) row b's position, 0 <= pos[b] < maxT
// (rows of a ragged batch each at their own: row b's token is embedded and rotated at pos[b],
// written to its caches at pos[b], and attends to its positions 0..pos[b]). Writes the caches and
// logits (B, V). B <= kDecodeMaxBatch; every row's values are those of that row decoded alone
// (with fp32 weights, bitwise those of the op-by-op step at batch 1). With a filter (built
// from m.wte), logits are instead the filter's approximations and the final layernorm's output
// is left in the scratch for the exact logits (decode_sample's use).
void decode_step(const DecodeModel& m, const int32_t* tok, const int64_t* pos, float* logits,
                 float* scratch, const LmFilter* filter = nullptr);

// Reusable buffers for pick_token (sized on first use).
struct PickScratch {
  std::vector<float> sel, bmax;
  std::vector<int64_t> cand, order;
  int64_t bs = 0, nb = 0;  // the block size and count of bmax (nb = 0: none)
  std::vector<double> p, cdf;
  std::vector<double> z, zsel;  // repetition_penalty: the row's penalised, scaled logits
};

// The token-choice options: the C++ twin of kernelgpt.sample.SamplingParams (validated there,
// once; the binding copies them here). A new option is a field here, a field there, the rule in
// pick_tokens and pick_token, and their tests.
struct SamplingParams {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // <= 0 or >= V: no top-k filter
  double top_p = 1.0;        // >= 1: no top-p filter
  double min_p = 0.0;        // <= 0: no min-p filter
  double repetition_penalty = 1.0;  // 1: none; else applied to the ids a row has seen
  const int32_t* stop = nullptr;  // stop ids (nstop of them; none: a row never ends)
  int64_t nstop = 0;
};

// One token from one row of finite logits (V,), by the rule of kernelgpt.sample.pick_tokens, in
// float64: with repetition_penalty != 1 and seen (V,) given, each seen id's logit (in float64)
// is divided by the penalty where > 0 and multiplied by it otherwise; temperature 0 then gives
// the first argmax; otherwise softmax(logits / temperature) over the top_k largest (ties at the
// k-th value all kept; top_k <= 0 or >= V keeps all), then the smallest set of most likely
// candidates whose mass reaches top_p (top_p >= 1 keeps all; the most likely one always stays),
// then those whose probability is >= min_p times the largest, and the first candidate in id
// order whose cumulative probability exceeds u times the total.
int64_t pick_token(const float* logits, int64_t V, const SamplingParams& sp, double u,
                   PickScratch& ps, const uint8_t* seen = nullptr);

// Whether decode_sample uses a filter for this choice: greedy, or top_k in (0, V), and no
// repetition penalty (the filter bounds the plain lm_head's logits; the penalty changes them
// after it). min_p keeps the filter: it reads only the candidates' exact probabilities.
inline bool lm_filter_applies(const SamplingParams& sp, int64_t V) {
  return sp.repetition_penalty == 1.0 &&
         (sp.temperature == 0.0 || (sp.top_k > 0 && sp.top_k < V));
}

// Up to n decoding steps with the token choice in the loop (what sampling does per token,
// without returning to Python). Step i feeds tok (B,) at position pos + i, picks row b's token
// with u[i*B + b], and writes it to out[i*B + b] and tok[b]. With stop ids (sp.nstop > 0), a row
// that is done repeats its last token, and a row becomes done when it emits a stop id; the loop
// ends after the step where every row is done. Returns the steps taken. A row of logits that is
// not finite ends the loop before its token is picked: *nonfinite is set, the return value is
// that step's index, the step itself has run (caches written, logits in `logits`).
// With a filter built from m.wte (used where lm_filter_applies; ignored otherwise), the
// lm_head reads the filter's bfloat16 table and only the candidates get exact logits: the same
// tokens. `logits` then holds exact values only where the choice read them, except on a
// non-finite return, where it holds every exact logit of that step.
// seen (B, V), needed where sp.repetition_penalty != 1: row b's ids seen so far (prompt and
// tokens); each chosen token is marked in it.
int64_t decode_sample(const DecodeModel& m, float* scratch, float* logits, int32_t* tok,
                      int64_t pos, int64_t n, const double* u, const SamplingParams& sp,
                      uint8_t* done, int32_t* out, bool* nonfinite, PickScratch& ps,
                      const LmFilter* filter = nullptr, uint8_t* seen = nullptr);

}  // namespace cpu
}  // namespace kgpt
