// Fused classifier for training: lm_head GEMM, softmax and cross-entropy over blocks of rows, the
// logits' gradient fed straight into the two backward GEMMs, so the (N, V) logits never exist
// whole (one (rows-block, V) buffer). `=`/`+=` rule: losses and dx are overwritten, dwte is
// accumulated. Deterministic, and bitwise identical for any thread count (each GEMM is).
#pragma once
#include <cstdint>

namespace kgpt {
namespace cpu {

// x (N,C), wte (V,C), targets (N,) in [0,V) (checked by the caller).
// losses (N,) = -log softmax(x @ wte.T)[n, targets[n]].
// If dx / dwte are non-null, the backward of scale * sum(losses):
//   dlogits = scale * (softmax - onehot);  dx (N,C) = dlogits @ wte;  dwte (V,C) += dlogits.T @ x.
void classifier_forward_backward(float* losses, float* dx, float* dwte, const float* x, const float* wte,
                        const int32_t* targets, int64_t N, int64_t C, int64_t V, float scale);

// Rows per block: up to kClassifierMaxRows, and the (rows, V) buffer at most this many floats
// (16 MB): larger blocks mean fewer read-modify-write passes over dwte.
constexpr int64_t kClassifierBufferFloats = int64_t(4) << 20;
constexpr int64_t kClassifierMaxRows = 512;

}  // namespace cpu
}  // namespace kgpt
