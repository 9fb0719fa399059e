// Host-side launchers of the CUDA kernels in csrc/cuda/*.cu, called by csrc/bindings/cuda_ops.cpp.
// Arguments: device pointers (already validated by the caller), sizes, then the CUDA stream as an
// opaque pointer (CuPy's current stream). Each launcher checks the launch and throws
// std::runtime_error naming the kernel on failure. `=`/`+=` as in backends/base.py: activation
// outputs and activation gradients are overwritten, parameter gradients accumulated.
#pragma once
#include <cstdint>

namespace kgpt { namespace cuda {

int device_count();

// embedding.cu
void embedding_forward(float* out, const int32_t* idx, const float* wte, const float* wpe,
                       int B, int T, int C, void* stream);
// sorted_rows/sorted_tok: (N,) row n and token of the idx entries sorted by (token, n).
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* sorted_rows,
                        const int32_t* sorted_tok, int B, int T, int C, void* stream);

// layernorm.cu; partials: scratch of layernorm_partial_rows(N) * 2 * C floats
int layernorm_partial_blocks(int N);
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                       const float* b, int N, int C, float eps, void* stream);
void layernorm_backward(float* dx, float* dw, float* db, float* partials, const float* dout,
                        const float* x, const float* w, const float* mean, const float* rstd,
                        int N, int C, void* stream);

// elementwise.cu
void gelu_forward(float* out, const float* x, long long n, void* stream);
void gelu_backward(float* dx, const float* dout, const float* x, long long n, void* stream);
void add(float* out, const float* a, const float* b, long long n, void* stream);
void add_bias(float* out, const float* bias, int N, int OC, void* stream);
// dbias (OC,) += dout (N,OC).sum(0); partials: colsum_partial_blocks(N) * OC floats
int colsum_partial_blocks(int N);
void bias_backward(float* dbias, float* partials, const float* dout, int N, int OC, void* stream);
void scale_(float* g, float s, long long n, void* stream);

// attention.cu (HS <= 128); Dscratch: B*NH*T floats
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HS,
                       void* stream);
void attention_backward(float* dqkv, float* Dscratch, const float* dout, const float* qkv,
                        const float* out, const float* lse, int B, int T, int NH, int HS,
                        void* stream);
void attention_decode(float* out, const float* q, const float* kc, const float* vc, int B,
                      int NH, int maxT, int HS, int n_valid, void* stream);

// crossentropy.cu
void crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets,
                          int N, int V, void* stream);
void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, int N,
                           int V, float scale, void* stream);
// logits (N,V) in place -> scale * (softmax - onehot) when write_grad; losses (N,) =
void softmax_ce_fused(float* losses, float* logits, const int32_t* targets, int N, int V,
                      float scale, bool write_grad, void* stream);

// optimizer.cu
int norm_partial_blocks(long long n);
// out: one double on the device; partials: norm_partial_blocks(n) doubles
void global_norm_sq(double* out, double* partials, const float* g, long long n, void* stream);
void adamw_update(float* p, const float* g, float* m, float* v, long long n, float lr, float b1,
                  float b2, float eps, float wd, float bc1, float bc2, void* stream);

}}  // namespace kgpt::cuda
