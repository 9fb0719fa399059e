// Fused KV-cache decoding step on the CPU: one new position per sequence through every layer and
// the lm_head in one call and one OpenMP parallel region (the matrix-vector products split by
// output columns across the team, barriers between dependent steps, the tiny row ops on one
// thread), instead of ~25 bound calls each starting its own parallel region. It runs exactly the
// kernels of the op-by-op path (layernorm, matrix-vector GEMM, attention_decode, GELU, residual)
// in the same order, so its logits are bitwise those of that path.
#pragma once
#include <cstdint>
#include <vector>

namespace kgpt {
namespace cpu {

struct DecodeLayer {
  const float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
  const float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
  float *k_cache, *v_cache;  // (B, NH, maxT, HS)
};

struct DecodeModel {
  int64_t B = 0, C = 0, NH = 0, V = 0, maxT = 0;
  const float *wte = nullptr, *wpe = nullptr, *lnf_w = nullptr, *lnf_b = nullptr;
  std::vector<DecodeLayer> layers;
};

// Scratch for one DecodeModel (sized by decode_scratch_floats).
int64_t decode_scratch_floats(const DecodeModel& m);

// tok (B,) ids already validated to lie in [0, V); 0 <= pos < maxT. Writes the caches at pos and
// logits (B, V). B must be <= 4 (the matrix-vector kernels' row count).
void decode_step(const DecodeModel& m, const int32_t* tok, int64_t pos, float* logits,
                 float* scratch);

}  // namespace cpu
}  // namespace kgpt
