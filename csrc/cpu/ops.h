// Declarations of the non-GEMM CPU kernels (one family per .cpp: embedding, layernorm, gelu,
// residual, attention, crossentropy, optimizer). Kernels assume valid input: the bindings check.
// `=`/`+=` rule: activation outputs and activation gradients are overwritten; parameter
// gradients (dwte, dwpe, dw, db) are accumulated. Every kernel is deterministic for a given
// thread count, and (as documented per kernel) bitwise identical across thread counts.
#pragma once
#include <cstdint>

namespace kgpt {
namespace cpu {

// embedding.cpp. out (B,T,C) = wte[idx] + wpe[:T]; dwte (V,C) += scatter of dout by idx;
// dwpe[:T] += dout summed over B; wpe / dwpe may be null (no position table: rotary positions).
// The backward splits channels over threads and adds rows in index order, so it is bitwise
// identical for any thread count.
void embedding_forward(float* out, const int32_t* idx, const float* wte, const float* wpe,
                       int64_t B, int64_t T, int64_t C);
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* idx,
                        int64_t B, int64_t T, int64_t C);

// layernorm.cpp. x (N,C) -> out (N,C) =, mean (N,) =, rstd (N,) =; backward dx =, dw +=, db +=.
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int64_t N, int64_t C, float eps);
void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                        const float* w, const float* mean, const float* rstd, int64_t N,
                        int64_t C);

// gelu.cpp (tanh approximation). out = gelu(x); dx = dout * gelu'(x). n elements.
void gelu_forward(float* out, const float* x, int64_t n);
// The same on the calling thread only (for callers already inside a parallel region).
void gelu_forward_serial(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);

// residual.cpp. out = a + b (may alias).
void add(float* out, const float* a, const float* b, int64_t n);

// attention.cpp, grouped-query: qkv (B,T,(NH+2NKV)*HS) holds q (NH heads), k and v (NKV heads
// each; NKV divides NH, NKV = NH is GPT-2's (B,T,3C)); query head h reads kv head h/(NH/NKV).
// out (B,T,NH*HS) =, lse (B,NH,T) =; dqkv =. No K/V copy per query head.
void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T,
                       int64_t NH, int64_t NKV, int64_t HS);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                        int64_t HS);
// q (B,NH*HS), caches (B,NKV,maxT,HS) with positions [0, n_valid) filled; out (B,NH*HS) =.
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache,
                      int64_t B, int64_t NH, int64_t NKV, int64_t maxT, int64_t HS,
                      int64_t n_valid);
// One head of it, on the calling thread: q, out (HS,), caches (maxT, HS); scores: n_valid floats
// of scratch. attention_decode runs exactly this per (b, h).
void attention_decode_head(float* out, const float* q, const float* k_cache, const float* v_cache,
                           int64_t HS, int64_t n_valid, float* scores);
// Test hook (process-wide): on, every decoding head runs the reference kernel (the one the fast
// AVX2 kernel must equal bit for bit); off (default), the fast one where it applies.
void attention_decode_set_reference(bool on);

// llama_ops.cpp. RMSNorm: x (N,C) -> out (N,C) =, rstd (N,) =; backward dx =, dw +=.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                     int64_t C, float eps);
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C);
// Rotary positions over a qkv array (B,T,(NH+2NKV)*HS) (HS even): the q and k heads' pairs
// (i, i+HS/2) rotated by (pos0+t)*theta^(-2i/HS) (backward: rotated back), v copied. out may
// alias x (exactly; no partial overlap).
void rope_forward(float* out, const float* x, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                  int64_t HS, double theta, int64_t pos0);
void rope_backward(float* dx, const float* dout, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                   int64_t HS, double theta, int64_t pos0);
// For the fused decoder (one position, on the calling thread, the same bits as rope_forward
// with T = 1): cs, sn (HS/2,) = the cos and sin of position pos; then nheads heads of HS floats
// at p rotated in place.
void rope_table_serial(float* cs, float* sn, int64_t pos, int64_t HS, double theta);
void rope_heads_serial(float* p, const float* cs, const float* sn, int64_t nheads, int64_t HS);
// One row's gate a, up b (n,) -> out (n,) on the calling thread: swiglu_forward's per-row work
// (a range starting on a multiple of 16 of a row gives that row's bits).
void swiglu_forward_serial(float* out, const float* a, const float* b, int64_t n);
// SwiGLU: x (N,2H) = gate | up; out (N,H) = silu(gate) * up; dx (N,2H) =.
void swiglu_forward(float* out, const float* x, int64_t N, int64_t H);
void swiglu_backward(float* dx, const float* dout, const float* x, int64_t N, int64_t H);

// crossentropy.cpp. logits (N,V) -> probs (N,V) =, losses (N,) =; dlogits = scale*(probs-onehot).
void crossentropy_forward(float* losses, float* probs, const float* logits,
                          const int32_t* targets, int64_t N, int64_t V);
void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets,
                           int64_t N, int64_t V, float scale);

// optimizer.cpp. Sum of squares in float64 over fixed chunks (identical for any thread count);
// g *= s; fused AdamW (elementwise, identical for any thread count).
double global_norm_sq(const float* g, int64_t n);
void scale_(float* g, float s, int64_t n);
// a[0..n) = 0 (a memset, threaded over chunks above kParallelMin).
void zero_inplace(float* a, int64_t n);
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step);

}  // namespace cpu
}  // namespace kgpt
