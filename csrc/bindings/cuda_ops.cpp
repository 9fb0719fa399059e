// pybind11 bindings of the CUDA kernels (csrc/cuda/kernels.h). Arrays arrive as device pointers
// (Python ints from cupy's `arr.data.ptr`) plus explicit sizes and the stream pointer: the Python
// backend (cuda_backend.py) has already checked device, dtype, contiguity and shapes; here sizes
// are re-checked (positive, consistent) -> ValueError, and kernel failures -> RuntimeError.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/cuda_init.h"
#include "cuda/kernels.h"

namespace py = pybind11;
namespace kc = kgpt::cuda;

namespace {

void need(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}
void positive(long long v, const char* name) {
  need(v > 0, std::string(name) + " must be positive, got " + std::to_string(v));
}
template <typename T>
T* ptr(std::uintptr_t p, const char* name) {
  need(p != 0, std::string(name) + " is a null device pointer");
  return reinterpret_cast<T*>(p);
}
void* stream_of(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace

void init_cuda_ops(py::module_& m) {
  using u = std::uintptr_t;

  m.def("embedding_forward", [](u out, u idx, u wte, u wpe, int B, int T, int C, u stream) {
    positive(B, "B"); positive(T, "T"); positive(C, "C");
    py::gil_scoped_release nogil;
    kc::embedding_forward(ptr<float>(out, "out"), ptr<const int32_t>(idx, "idx"),
                          ptr<const float>(wte, "wte"), ptr<const float>(wpe, "wpe"), B, T, C,
                          stream_of(stream));
  }, py::arg("out"), py::arg("idx"), py::arg("wte"), py::arg("wpe"), py::arg("B"), py::arg("T"),
     py::arg("C"), py::arg("stream"));

  m.def("embedding_backward", [](u dwte, u dwpe, u dout, u rows, u tok, int B, int T, int C,
                                 u stream) {
    positive(B, "B"); positive(T, "T"); positive(C, "C");
    py::gil_scoped_release nogil;
    kc::embedding_backward(ptr<float>(dwte, "dwte"), ptr<float>(dwpe, "dwpe"),
                           ptr<const float>(dout, "dout"), ptr<const int32_t>(rows, "sorted_rows"),
                           ptr<const int32_t>(tok, "sorted_tok"), B, T, C, stream_of(stream));
  }, py::arg("dwte"), py::arg("dwpe"), py::arg("dout"), py::arg("sorted_rows"),
     py::arg("sorted_tok"), py::arg("B"), py::arg("T"), py::arg("C"), py::arg("stream"));

  m.def("layernorm_partial_blocks", &kc::layernorm_partial_blocks, py::arg("N"));
  m.def("layernorm_forward", [](u out, u mean, u rstd, u x, u w, u b, int N, int C, float eps,
                                u stream) {
    positive(N, "N"); positive(C, "C");
    need(std::isfinite(eps) && eps > 0.f, "eps must be a finite number > 0");
    py::gil_scoped_release nogil;
    kc::layernorm_forward(ptr<float>(out, "out"), ptr<float>(mean, "mean"),
                          ptr<float>(rstd, "rstd"), ptr<const float>(x, "x"),
                          ptr<const float>(w, "w"), ptr<const float>(b, "b"), N, C, eps,
                          stream_of(stream));
  }, py::arg("out"), py::arg("mean"), py::arg("rstd"), py::arg("x"), py::arg("w"), py::arg("b"),
     py::arg("N"), py::arg("C"), py::arg("eps"), py::arg("stream"));

  m.def("layernorm_backward", [](u dx, u dw, u db, u partials, long long n_partials, u dout, u x,
                                 u w, u mean, u rstd, int N, int C, u stream) {
    positive(N, "N"); positive(C, "C");
    need(n_partials >= (long long)kc::layernorm_partial_blocks(N) * 2 * C,
         "partials buffer too small for layernorm_backward");
    py::gil_scoped_release nogil;
    kc::layernorm_backward(ptr<float>(dx, "dx"), ptr<float>(dw, "dw"), ptr<float>(db, "db"),
                           ptr<float>(partials, "partials"), ptr<const float>(dout, "dout"),
                           ptr<const float>(x, "x"), ptr<const float>(w, "w"),
                           ptr<const float>(mean, "mean"), ptr<const float>(rstd, "rstd"), N, C,
                           stream_of(stream));
  }, py::arg("dx"), py::arg("dw"), py::arg("db"), py::arg("partials"), py::arg("n_partials"),
     py::arg("dout"), py::arg("x"), py::arg("w"), py::arg("mean"), py::arg("rstd"), py::arg("N"),
     py::arg("C"), py::arg("stream"));

  m.def("gelu_forward", [](u out, u x, long long n, u stream) {
    positive(n, "n");
    py::gil_scoped_release nogil;
    kc::gelu_forward(ptr<float>(out, "out"), ptr<const float>(x, "x"), n, stream_of(stream));
  }, py::arg("out"), py::arg("x"), py::arg("n"), py::arg("stream"));
  m.def("gelu_backward", [](u dx, u dout, u x, long long n, u stream) {
    positive(n, "n");
    py::gil_scoped_release nogil;
    kc::gelu_backward(ptr<float>(dx, "dx"), ptr<const float>(dout, "dout"),
                      ptr<const float>(x, "x"), n, stream_of(stream));
  }, py::arg("dx"), py::arg("dout"), py::arg("x"), py::arg("n"), py::arg("stream"));
  m.def("add", [](u out, u a, u b, long long n, u stream) {
    positive(n, "n");
    py::gil_scoped_release nogil;
    kc::add(ptr<float>(out, "out"), ptr<const float>(a, "a"),
            ptr<const float>(b, "b"), n, stream_of(stream));
  }, py::arg("out"), py::arg("a"), py::arg("b"), py::arg("n"), py::arg("stream"));
  m.def("add_bias", [](u out, u bias, int N, int OC, u stream) {
    positive(N, "N"); positive(OC, "OC");
    py::gil_scoped_release nogil;
    kc::add_bias(ptr<float>(out, "out"), ptr<const float>(bias, "bias"), N, OC,
                 stream_of(stream));
  }, py::arg("out"), py::arg("bias"), py::arg("N"), py::arg("OC"), py::arg("stream"));
  m.def("colsum_partial_blocks", &kc::colsum_partial_blocks, py::arg("N"));
  m.def("bias_backward", [](u dbias, u partials, long long n_partials, u dout, int N, int OC,
                            u stream) {
    positive(N, "N"); positive(OC, "OC");
    need(n_partials >= (long long)kc::colsum_partial_blocks(N) * OC,
         "partials buffer too small for bias_backward");
    py::gil_scoped_release nogil;
    kc::bias_backward(ptr<float>(dbias, "dbias"), ptr<float>(partials, "partials"),
                      ptr<const float>(dout, "dout"), N, OC, stream_of(stream));
  }, py::arg("dbias"), py::arg("partials"), py::arg("n_partials"), py::arg("dout"), py::arg("N"),
     py::arg("OC"), py::arg("stream"));
  m.def("scale_", [](u g, float s, long long n, u stream) {
    positive(n, "n");
    py::gil_scoped_release nogil;
    kc::scale_(ptr<float>(g, "g"), s, n, stream_of(stream));
  }, py::arg("g"), py::arg("s"), py::arg("n"), py::arg("stream"));

  m.def("attention_forward", [](u out, u lse, u qkv, int B, int T, int NH, int HS, u stream) {
    positive(B, "B"); positive(T, "T"); positive(NH, "NH"); positive(HS, "HS");
    need(HS <= 128, "head size HS must be <= 128, got " + std::to_string(HS));
    py::gil_scoped_release nogil;
    kc::attention_forward(ptr<float>(out, "out"), ptr<float>(lse, "lse"),
                          ptr<const float>(qkv, "qkv"), B, T, NH, HS, stream_of(stream));
  }, py::arg("out"), py::arg("lse"), py::arg("qkv"), py::arg("B"), py::arg("T"), py::arg("NH"),
     py::arg("HS"), py::arg("stream"));
  m.def("attention_backward", [](u dqkv, u dscratch, u dout, u qkv, u out, u lse, int B, int T,
                                 int NH, int HS, u stream) {
    positive(B, "B"); positive(T, "T"); positive(NH, "NH"); positive(HS, "HS");
    need(HS <= 128, "head size HS must be <= 128, got " + std::to_string(HS));
    py::gil_scoped_release nogil;
    kc::attention_backward(ptr<float>(dqkv, "dqkv"), ptr<float>(dscratch, "scratch"),
                           ptr<const float>(dout, "dout"), ptr<const float>(qkv, "qkv"),
                           ptr<const float>(out, "out"), ptr<const float>(lse, "lse"), B, T, NH,
                           HS, stream_of(stream));
  }, py::arg("dqkv"), py::arg("scratch"), py::arg("dout"), py::arg("qkv"), py::arg("out"),
     py::arg("lse"), py::arg("B"), py::arg("T"), py::arg("NH"), py::arg("HS"), py::arg("stream"));
  m.def("attention_decode", [](u out, u q, u kc_, u vc, int B, int NH, int maxT, int HS,
                               int n_valid, u stream) {
    positive(B, "B"); positive(NH, "NH"); positive(maxT, "maxT"); positive(HS, "HS");
    need(n_valid >= 1 && n_valid <= maxT, "n_valid must lie in [1, maxT]");
    need(n_valid <= 8192, "attention_decode supports at most 8192 cached positions");
    py::gil_scoped_release nogil;
    kc::attention_decode(ptr<float>(out, "out"), ptr<const float>(q, "q"),
                         ptr<const float>(kc_, "k_cache"), ptr<const float>(vc, "v_cache"), B, NH,
                         maxT, HS, n_valid, stream_of(stream));
  }, py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("B"),
     py::arg("NH"), py::arg("maxT"), py::arg("HS"), py::arg("n_valid"), py::arg("stream"));

  m.def("crossentropy_forward", [](u losses, u probs, u logits, u targets, int N, int V,
                                   u stream) {
    positive(N, "N"); positive(V, "V");
    py::gil_scoped_release nogil;
    kc::crossentropy_forward(ptr<float>(losses, "losses"), ptr<float>(probs, "probs"),
                             ptr<const float>(logits, "logits"),
                             ptr<const int32_t>(targets, "targets"), N, V, stream_of(stream));
  }, py::arg("losses"), py::arg("probs"), py::arg("logits"), py::arg("targets"), py::arg("N"),
     py::arg("V"), py::arg("stream"));
  m.def("crossentropy_backward", [](u dlogits, u probs, u targets, int N, int V, float scale,
                                    u stream) {
    positive(N, "N"); positive(V, "V");
    py::gil_scoped_release nogil;
    kc::crossentropy_backward(ptr<float>(dlogits, "dlogits"), ptr<const float>(probs, "probs"),
                              ptr<const int32_t>(targets, "targets"), N, V, scale,
                              stream_of(stream));
  }, py::arg("dlogits"), py::arg("probs"), py::arg("targets"), py::arg("N"), py::arg("V"),
     py::arg("scale"), py::arg("stream"));
  m.def("softmax_ce_fused", [](u losses, u logits, u targets, int N, int V, float scale,
                               bool write_grad, u stream) {
    positive(N, "N"); positive(V, "V");
    py::gil_scoped_release nogil;
    kc::softmax_ce_fused(ptr<float>(losses, "losses"), ptr<float>(logits, "logits"),
                         ptr<const int32_t>(targets, "targets"), N, V, scale, write_grad,
                         stream_of(stream));
  }, py::arg("losses"), py::arg("logits"), py::arg("targets"), py::arg("N"), py::arg("V"),
     py::arg("scale"), py::arg("write_grad"), py::arg("stream"));

  m.def("norm_partial_blocks", &kc::norm_partial_blocks, py::arg("n"));
  m.def("global_norm_sq", [](u out, u partials, long long n_partials, u g, long long n,
                             u stream) {
    positive(n, "n");
    need(n_partials >= kc::norm_partial_blocks(n), "partials buffer too small for global_norm_sq");
    py::gil_scoped_release nogil;
    kc::global_norm_sq(ptr<double>(out, "out"), ptr<double>(partials, "partials"),
                       ptr<const float>(g, "g"), n, stream_of(stream));
  }, py::arg("out"), py::arg("partials"), py::arg("n_partials"), py::arg("g"), py::arg("n"),
     py::arg("stream"));
  m.def("adamw_update", [](u p, u g, u m_, u v, long long n, float lr, float b1, float b2,
                           float eps, float wd, float bc1, float bc2, u stream) {
    positive(n, "n");
    need(bc1 > 0.f && bc2 > 0.f, "bias corrections must be positive (step >= 1)");
    py::gil_scoped_release nogil;
    kc::adamw_update(ptr<float>(p, "params"), ptr<const float>(g, "grads"), ptr<float>(m_, "m"),
                     ptr<float>(v, "v"), n, lr, b1, b2, eps, wd, bc1, bc2, stream_of(stream));
  }, py::arg("params"), py::arg("grads"), py::arg("m"), py::arg("v"), py::arg("n"),
     py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
     py::arg("bc1"), py::arg("bc2"), py::arg("stream"));
}
