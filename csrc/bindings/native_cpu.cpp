// Bindings of the non-GEMM CPU kernels (csrc/cpu/ops.h) under their base.py names. Each function
// validates shapes (std::invalid_argument -> ValueError naming the argument and both shapes) and
// id ranges; dtype and layout are enforced by py::array_t<..., c_style> + noconvert (TypeError).
// Pointers are taken with the GIL held, then the kernel runs with the GIL released.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>  // std::optional arrays (None)

#include "bindings/array_checks.h"
#include "bindings/native_init.h"
#include "cpu/dispatch.h"  // ops_set_force_portable (test hook)
#include "common/parallel_errors.h"  // checked_mul
#include "cpu/ops.h"

namespace py = pybind11;

namespace kgpt_bind {
namespace {

int64_t check_heads(int64_t C, const py::object& n_head_arg) {
  const int64_t n_head = int_arg(n_head_arg, "n_head", 1, INT64_MAX);
  if (C % n_head != 0)
    throw std::invalid_argument("n_head must be a positive divisor of C=" + std::to_string(C) +
                                ", got " + std::to_string(n_head));
  if (C / n_head > limits().max_head_size)  // base.check_head_size's limit and message
    throw std::invalid_argument("head size C/n_head must be <= " +
                                std::to_string(limits().max_head_size) + ", got " +
                                std::to_string(C / n_head));
  return n_head;
}

// wpe / dwpe None: no position table (rotary positions act inside attention).
void embedding_forward(FArr out, IArr idx, FArr wte, OptF wpe) {
  check_ndim("idx", idx, 2, "(B, T)");
  check_ndim("wte", wte, 2, "(V, C)");
  if (wpe) check_ndim("wpe", *wpe, 2, "(maxT, C)");
  const int64_t B = idx.shape(0), T = idx.shape(1), V = wte.shape(0), C = wte.shape(1);
  if (wpe && (wpe->shape(1) != C || wpe->shape(0) < T))
    throw std::invalid_argument("wpe must have shape (maxT>=" + std::to_string(T) + ", C=" +
                                std::to_string(C) + "), got " + tstr(shape_of(*wpe)));
  check_shape("out", out, "(B, T, C)", {B, T, C});
  check_ids("idx", idx, V);
  float* po = out.mutable_data();
  const int32_t* pi = idx.data();
  const float *pt = wte.data(), *pp = wpe ? wpe->data() : nullptr;
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::embedding_forward(po, pi, pt, pp, B, T, C);
  }
}

void embedding_backward(FArr dwte, OptF dwpe, FArr dout, IArr idx) {
  check_ndim("dout", dout, 3, "(B, T, C)");
  check_ndim("dwte", dwte, 2, "(V, C)");
  if (dwpe) check_ndim("dwpe", *dwpe, 2, "(maxT, C)");
  const int64_t B = dout.shape(0), T = dout.shape(1), C = dout.shape(2), V = dwte.shape(0);
  check_shape("dwte", dwte, "(V, C)", {V, C});
  if (dwpe && (dwpe->shape(1) != C || dwpe->shape(0) < T))
    throw std::invalid_argument("dwpe must have shape (maxT>=" + std::to_string(T) + ", C=" +
                                std::to_string(C) + "), got " + tstr(shape_of(*dwpe)));
  check_shape("idx", idx, "(B, T)", {B, T});
  check_ids("idx", idx, V);
  float *pw = dwte.mutable_data(), *pp = dwpe ? dwpe->mutable_data() : nullptr;
  const float* pd = dout.data();
  const int32_t* pi = idx.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::embedding_backward(pw, pp, pd, pi, B, T, C);
  }
}

void layernorm_forward(FArr out, FArr mean, FArr rstd, FArr x, FArr w, FArr b, float eps) {
  check_ndim("x", x, 2, "(N, C)");
  const int64_t N = x.shape(0), C = x.shape(1);
  check_shape("out", out, "(N, C)", {N, C});
  check_shape("mean", mean, "(N,)", {N});
  check_shape("rstd", rstd, "(N,)", {N});
  check_shape("w", w, "(C,)", {C});
  check_shape("b", b, "(C,)", {C});
  if (!(eps > 0.0f) || !std::isfinite(eps))  // base.check_norm_eps's rule and message
    throw std::invalid_argument("eps must be a finite number > 0, got " + std::to_string(eps));
  float *po = out.mutable_data(), *pm = mean.mutable_data(), *pr = rstd.mutable_data();
  const float *px = x.data(), *pw = w.data(), *pb = b.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::layernorm_forward(po, pm, pr, px, pw, pb, N, C, eps);
  }
}

void layernorm_backward(FArr dx, FArr dw, FArr db, FArr dout, FArr x, FArr w, FArr mean,
                        FArr rstd) {
  check_ndim("x", x, 2, "(N, C)");
  const int64_t N = x.shape(0), C = x.shape(1);
  check_shape("dx", dx, "(N, C)", {N, C});
  check_shape("dout", dout, "(N, C)", {N, C});
  check_shape("dw", dw, "(C,)", {C});
  check_shape("db", db, "(C,)", {C});
  check_shape("w", w, "(C,)", {C});
  check_shape("mean", mean, "(N,)", {N});
  check_shape("rstd", rstd, "(N,)", {N});
  float *pdx = dx.mutable_data(), *pdw = dw.mutable_data(), *pdb = db.mutable_data();
  const float *pd = dout.data(), *px = x.data(), *pw = w.data(), *pm = mean.data(),
              *pr = rstd.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::layernorm_backward(pdx, pdw, pdb, pd, px, pw, pm, pr, N, C);
  }
}

// (B, T, NH, NKV, HS) of a qkv array (B, T, (NH + 2 NKV) * HS) named `name`: q (NH heads), k and
// v (NKV heads each); n_kv_head None: NKV = NH and the last dimension is 3C (GPT-2's layout).
struct QkvDims {
  int64_t B, T, NH, NKV, HS;
};

QkvDims qkv_dims(const py::array& qkv, const py::object& n_head, const py::object& n_kv_head,
                 const char* name) {
  check_ndim(name, qkv, 3, "(B, T, (NH + 2 NKV) * HS)");
  const int64_t B = qkv.shape(0), T = qkv.shape(1), D = qkv.shape(2);
  if (n_kv_head.is_none()) {
    if (D % 3 != 0 || D == 0)
      throw std::invalid_argument(std::string(name) + " last dimension must be 3*C, got shape " +
                                  tstr(shape_of(qkv)));
    const int64_t C = D / 3, NH = check_heads(C, n_head);
    return {B, T, NH, NH, C / NH};
  }
  const int64_t NH = int_arg(n_head, "n_head", 1, INT64_MAX);
  const int64_t NKV = int_arg(n_kv_head, "n_kv_head", 1, NH);
  if (NH % NKV != 0)
    throw std::invalid_argument("n_kv_head must be a positive divisor of n_head=" +
                                std::to_string(NH) + ", got " + std::to_string(NKV));
  if (D == 0 || NH > D || D % (NH + 2 * NKV) != 0)  // NH <= D: NH + 2 NKV <= 3 D cannot overflow
    throw std::invalid_argument(std::string(name) +
                                " last dimension must be (n_head + 2 n_kv_head) * head size = " +
                                std::to_string(NH + 2 * NKV) + " * HS, got " +
                                tstr(shape_of(qkv)));
  const int64_t HS = D / (NH + 2 * NKV);
  if (HS > 256)
    throw std::invalid_argument("head size C/n_head must be <= 256, got " + std::to_string(HS));
  return {B, T, NH, NKV, HS};
}

void attention_forward(FArr out, FArr lse, FArr qkv, const py::object& n_head,
                       const py::object& n_kv_head) {
  const QkvDims d = qkv_dims(qkv, n_head, n_kv_head, "qkv");
  const int64_t C = d.NH * d.HS;
  check_shape("out", out, "(B, T, C)", {d.B, d.T, C});
  check_shape("lse", lse, "(B, NH, T)", {d.B, d.NH, d.T});
  if (out.size() == 0) return;  // zero-size batch or sequence: any other dimension is allowed
  float *po = out.mutable_data(), *pl = lse.mutable_data();
  const float* pq = qkv.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::attention_forward(po, pl, pq, d.B, d.T, d.NH, d.NKV, d.HS);
  }
}

void attention_backward(FArr dqkv, FArr dout, FArr qkv, FArr out, FArr lse,
                        const py::object& n_head, const py::object& n_kv_head) {
  const QkvDims d = qkv_dims(qkv, n_head, n_kv_head, "qkv");
  const int64_t C = d.NH * d.HS;
  check_shape("dqkv", dqkv, "(B, T, (NH + 2 NKV) * HS)", shape_of(qkv));
  check_shape("dout", dout, "(B, T, C)", {d.B, d.T, C});
  check_shape("out", out, "(B, T, C)", {d.B, d.T, C});
  check_shape("lse", lse, "(B, NH, T)", {d.B, d.NH, d.T});
  if (dqkv.size() == 0) return;
  float* pd = dqkv.mutable_data();
  const float *pdo = dout.data(), *pq = qkv.data(), *po = out.data(), *pl = lse.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::attention_backward(pd, pdo, pq, po, pl, d.B, d.T, d.NH, d.NKV, d.HS);
  }
}

void attention_decode(FArr out, FArr q, FArr k_cache, FArr v_cache, const py::object& n_valid_arg) {
  check_ndim("k_cache", k_cache, 4, "(B, NKV, maxT, HS)");
  const int64_t B = k_cache.shape(0), NKV = k_cache.shape(1), maxT = k_cache.shape(2),
                HS = k_cache.shape(3);
  check_shape("v_cache", v_cache, "(B, NKV, maxT, HS)", {B, NKV, maxT, HS});
  // Zero-size caches may carry any dimensions: NKV * HS is checked, not assumed, to fit.
  const int64_t Ckv = kgpt::checked_mul(NKV, HS, "C = NKV * HS of k_cache");
  int64_t NH = NKV;
  if (Ckv == 0) {
    check_shape("q", q, "(B, C)", {B, Ckv});
  } else {
    check_ndim("q", q, 2, "(B, NH*HS)");
    const int64_t Cq = q.shape(1);
    if (q.shape(0) != B || Cq == 0 || Cq % HS != 0 || (Cq / HS) % NKV != 0)
      throw std::invalid_argument(
          "q must have shape (B=" + std::to_string(B) + ", NH*HS) with NH a multiple of the "
          "cache's " + std::to_string(NKV) + " heads of size " + std::to_string(HS) + ", got " +
          tstr(shape_of(q)));
    NH = Cq / HS;
  }
  check_shape("out", out, "(B, NH*HS)", {B, NH * HS});
  if (maxT < 1)
    throw std::invalid_argument("k_cache must have maxT >= 1 positions, got shape " +
                                tstr(shape_of(k_cache)));
  const int64_t n_valid = int_arg(n_valid_arg, "n_valid", 1, maxT);
  if (out.size() == 0) return;  // B, NH or HS is zero: nothing to compute, whatever maxT is
  float* po = out.mutable_data();
  const float *pq = q.data(), *pk = k_cache.data(), *pv = v_cache.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::attention_decode(po, pq, pk, pv, B, NH, NKV, maxT, HS, n_valid);
  }
}

float norm_eps(float eps) {
  if (!(std::isfinite(eps) && eps > 0.0f))
    throw std::invalid_argument("eps must be a finite number > 0, got " + std::to_string(eps));
  return eps;
}

void rmsnorm_forward(FArr out, FArr rstd, FArr x, FArr w, float eps) {
  check_ndim("x", x, 2, "(N, C)");
  const int64_t N = x.shape(0), C = x.shape(1);
  check_shape("out", out, "(N, C)", {N, C});
  check_shape("rstd", rstd, "(N,)", {N});
  check_shape("w", w, "(C,)", {C});
  norm_eps(eps);
  if (C == 0) throw std::invalid_argument("x must have C >= 1 columns, got shape " +
                                          tstr(shape_of(x)));
  if (x.size() == 0) return;
  float *po = out.mutable_data(), *pr = rstd.mutable_data();
  const float *px = x.data(), *pw = w.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::rmsnorm_forward(po, pr, px, pw, N, C, eps);
  }
}

void rmsnorm_backward(FArr dx, FArr dw, FArr dout, FArr x, FArr w, FArr rstd) {
  check_ndim("x", x, 2, "(N, C)");
  const int64_t N = x.shape(0), C = x.shape(1);
  check_shape("dx", dx, "(N, C)", {N, C});
  check_shape("dw", dw, "(C,)", {C});
  check_shape("dout", dout, "(N, C)", {N, C});
  check_shape("w", w, "(C,)", {C});
  check_shape("rstd", rstd, "(N,)", {N});
  if (x.size() == 0) return;  // dw += nothing
  float *pdx = dx.mutable_data(), *pdw = dw.mutable_data();
  const float *pd = dout.data(), *px = x.data(), *pw = w.data(), *pr = rstd.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::rmsnorm_backward(pdx, pdw, pd, px, pw, pr, N, C);
  }
}

// Whether the float ranges of a and b overlap without starting at the same address.
bool partial_overlap(const py::array& a, const py::array& b) {
  const char *pa = static_cast<const char*>(a.data()), *pb = static_cast<const char*>(b.data());
  if (pa == pb || a.nbytes() == 0 || b.nbytes() == 0) return false;
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

void rope(FArr out, FArr x, const py::object& n_head, const py::object& n_kv_head,
          const py::object& theta_arg, const py::object& pos0_arg, bool backward) {
  const char* xn = backward ? "dout" : "x";
  const char* on = backward ? "dx" : "out";
  const QkvDims d = qkv_dims(x, n_head, n_kv_head, "qkv");
  check_same(on, out, xn, x);
  if (d.HS % 2 != 0)
    throw std::invalid_argument("rotary positions need an even head size, got " +
                                std::to_string(d.HS));
  double theta = 0.0;
  const bool number = !PyBool_Check(theta_arg.ptr()) &&
                      (PyFloat_Check(theta_arg.ptr()) || PyLong_Check(theta_arg.ptr()) ||
                       py::isinstance(theta_arg, py::module_::import("numpy").attr("floating")) ||
                       py::isinstance(theta_arg, py::module_::import("numpy").attr("integer")));
  if (number) {
    theta = PyFloat_AsDouble(theta_arg.ptr());
    if (theta == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      theta = std::nan("");
    }
  }
  if (!number || !std::isfinite(theta) || !(theta > 0.0))
    throw std::invalid_argument("rope_theta must be a finite number > 0, got " +
                                py::repr(theta_arg).cast<std::string>());
  const int64_t pos0 = int_arg(pos0_arg, "pos0", 0, int64_t(1) << 53);
  if (partial_overlap(out, x))
    throw std::invalid_argument(std::string(on) + " must be " + xn +
                                " itself or not overlap it");
  if (out.size() == 0) return;
  float* po = out.mutable_data();
  const float* px = x.data();
  {
    py::gil_scoped_release nogil;
    if (backward)
      kgpt::cpu::rope_backward(po, px, d.B, d.T, d.NH, d.NKV, d.HS, theta, pos0);
    else
      kgpt::cpu::rope_forward(po, px, d.B, d.T, d.NH, d.NKV, d.HS, theta, pos0);
  }
}

void rope_forward(FArr out, FArr x, const py::object& n_head, const py::object& n_kv_head,
                  const py::object& theta, const py::object& pos0) {
  rope(out, x, n_head, n_kv_head, theta, pos0, false);
}

void rope_backward(FArr dx, FArr dout, const py::object& n_head, const py::object& n_kv_head,
                   const py::object& theta, const py::object& pos0) {
  rope(dx, dout, n_head, n_kv_head, theta, pos0, true);
}

int64_t swiglu_half(const FArr& x) {
  check_ndim("x", x, 2, "(N, 2H)");
  if (x.shape(1) % 2 != 0)
    throw std::invalid_argument("x must have an even last dimension (gate and up halves), got " +
                                tstr(shape_of(x)));
  return x.shape(1) / 2;
}

void swiglu_forward(FArr out, FArr x) {
  const int64_t H = swiglu_half(x), N = x.shape(0);
  check_shape("out", out, "(N, H)", {N, H});
  if (partial_overlap(out, x) || (out.size() && out.data() == x.data()))
    throw std::invalid_argument("out must not overlap x");
  if (x.size() == 0) return;  // N or H zero (the other may be huge): nothing to compute
  float* po = out.mutable_data();
  const float* px = x.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::swiglu_forward(po, px, N, H);
  }
}

void swiglu_backward(FArr dx, FArr dout, FArr x) {
  const int64_t H = swiglu_half(x), N = x.shape(0);
  check_shape("dx", dx, "(N, 2H)", {N, 2 * H});
  check_shape("dout", dout, "(N, H)", {N, H});
  if (partial_overlap(dx, x) || partial_overlap(dx, dout) ||
      (dout.size() && dx.data() == dout.data()))
    throw std::invalid_argument("dx must be x itself or overlap neither x nor dout");
  if (x.size() == 0) return;
  float* pdx = dx.mutable_data();
  const float *pd = dout.data(), *px = x.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::swiglu_backward(pdx, pd, px, N, H);
  }
}

void gelu_forward(FArr out, FArr x) {
  check_same("out", out, "x", x);
  float* po = out.mutable_data();
  const float* px = x.data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::gelu_forward(po, px, n);
  }
}

void gelu_backward(FArr dx, FArr dout, FArr x) {
  check_same("dout", dout, "x", x);
  check_same("dx", dx, "x", x);
  float* pdx = dx.mutable_data();
  const float *pd = dout.data(), *px = x.data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::gelu_backward(pdx, pd, px, n);
  }
}

void add(FArr out, FArr a, FArr b) {
  check_same("b", b, "a", a);
  check_same("out", out, "a", a);
  float* po = out.mutable_data();
  const float *pa = a.data(), *pb = b.data();
  const int64_t n = a.size();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::add(po, pa, pb, n);
  }
}

void crossentropy_forward(FArr losses, FArr probs, FArr logits, IArr targets) {
  check_ndim("logits", logits, 2, "(N, V)");
  const int64_t N = logits.shape(0), V = logits.shape(1);
  if (V < 1) throw std::invalid_argument("logits must have V >= 1 columns");
  check_shape("probs", probs, "(N, V)", {N, V});
  check_shape("losses", losses, "(N,)", {N});
  check_shape("targets", targets, "(N,)", {N});
  check_ids("targets", targets, V);
  float *pl = losses.mutable_data(), *pp = probs.mutable_data();
  const float* px = logits.data();
  const int32_t* pt = targets.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::crossentropy_forward(pl, pp, px, pt, N, V);
  }
}

void crossentropy_backward(FArr dlogits, FArr probs, IArr targets, float scale) {
  check_ndim("probs", probs, 2, "(N, V)");
  const int64_t N = probs.shape(0), V = probs.shape(1);
  check_shape("dlogits", dlogits, "(N, V)", {N, V});
  check_shape("targets", targets, "(N,)", {N});
  check_ids("targets", targets, V);
  float* pd = dlogits.mutable_data();
  const float* pp = probs.data();
  const int32_t* pt = targets.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::crossentropy_backward(pd, pp, pt, N, V, scale);
  }
}

double global_norm_sq(FArr g) {
  check_ndim("g", g, 1, "(n,)");
  const float* p = g.data();
  const int64_t n = g.size();
  double r;
  {
    py::gil_scoped_release nogil;
    r = kgpt::cpu::global_norm_sq(p, n);
  }
  return r;
}

void zero_(FArr a) {
  float* p = a.mutable_data();
  const int64_t n = a.size();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::zero_inplace(p, n);
  }
}

void scale_(FArr g, float s) {
  check_ndim("g", g, 1, "(n,)");
  float* p = g.mutable_data();
  const int64_t n = g.size();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::scale_(p, s, n);
  }
}

void adamw_update(FArr params, FArr grads, FArr m, FArr v, float lr, float beta1, float beta2,
                  float eps, float weight_decay, const py::object& step_arg) {
  check_ndim("params", params, 1, "(n,)");
  const int64_t n = params.shape(0);
  check_shape("grads", grads, "(n,)", {n});
  check_shape("m", m, "(n,)", {n});
  check_shape("v", v, "(n,)", {n});
  const int64_t step = int_arg(step_arg, "step", 1, INT64_MAX);
  float *pp = params.mutable_data(), *pm = m.mutable_data(), *pv = v.mutable_data();
  const float* pg = grads.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::adamw_update(pp, pg, pm, pv, n, lr, beta1, beta2, eps, weight_decay, step);
  }
}

}  // namespace

void init_cpu_ops(py::module_& m) {
  auto a = [](const char* name) { return py::arg(name).noconvert(); };
  m.def("embedding_forward", &embedding_forward, a("out"), a("idx"), a("wte"),
        py::arg("wpe").noconvert().none(true), "out (B,T,C) = wte[idx] + wpe[:T] (wpe may be None).");
  m.def("embedding_backward", &embedding_backward, a("dwte"), py::arg("dwpe").noconvert().none(true),
        a("dout"), a("idx"),
        "dwte (V,C) += scatter of dout by idx; dwpe[:T] += dout.sum(0). Thread-count independent.");
  m.def("layernorm_forward", &layernorm_forward, a("out"), a("mean"), a("rstd"), a("x"), a("w"),
        a("b"), py::arg("eps") = 1e-5f, "out (N,C) = (x-mean)*rstd*w + b; saves mean, rstd (N,).");
  m.def("layernorm_backward", &layernorm_backward, a("dx"), a("dw"), a("db"), a("dout"), a("x"),
        a("w"), a("mean"), a("rstd"), "dx (N,C) = ; dw, db (C,) += .");
  m.def("attention_forward", &attention_forward, a("out"), a("lse"), a("qkv"), py::arg("n_head"),
        py::arg("n_kv_head") = py::none(),
        "Causal (grouped-query) attention, online softmax; out (B,T,C) = , lse (B,NH,T) = .");
  m.def("attention_backward", &attention_backward, a("dqkv"), a("dout"), a("qkv"), a("out"),
        a("lse"), py::arg("n_head"), py::arg("n_kv_head") = py::none(),
        "dqkv (B,T,(NH+2NKV)*HS) = , recomputing P from lse block by block.");
  m.def("attention_decode", &attention_decode, a("out"), a("q"), a("k_cache"), a("v_cache"),
        py::arg("n_valid"),
        "One KV-cache step over (B,NKV,maxT,HS) caches: out (B,C) = softmax(q k^T/sqrt(HS)) v.");
  m.def("rmsnorm_forward", &rmsnorm_forward, a("out"), a("rstd"), a("x"), a("w"),
        py::arg("eps") = 1e-5f, "out (N,C) = x*rstd*w; saves rstd (N,) = 1/sqrt(mean(x^2)+eps).");
  m.def("rmsnorm_backward", &rmsnorm_backward, a("dx"), a("dw"), a("dout"), a("x"), a("w"),
        a("rstd"), "dx (N,C) = ; dw (C,) += .");
  m.def("rope_forward", &rope_forward, a("out"), a("x"), py::arg("n_head"),
        py::arg("n_kv_head") = py::none(), py::arg("theta") = 10000.0, py::arg("pos0") = 0,
        "Rotary positions (rotate half) on the q and k heads of x (B,T,(NH+2NKV)*HS); out may "
        "alias x.");
  m.def("rope_backward", &rope_backward, a("dx"), a("dout"), py::arg("n_head"),
        py::arg("n_kv_head") = py::none(), py::arg("theta") = 10000.0, py::arg("pos0") = 0,
        "dx = dout rotated back (q and k heads), v copied; dx may alias dout.");
  m.def("swiglu_forward", &swiglu_forward, a("out"), a("x"),
        "x (N,2H) = gate|up; out (N,H) = silu(gate) * up.");
  m.def("swiglu_backward", &swiglu_backward, a("dx"), a("dout"), a("x"),
        "dx (N,2H) = gradient of swiglu_forward.");
  m.def("gelu_forward", &gelu_forward, a("out"), a("x"), "out = tanh-GELU(x).");
  m.def("gelu_backward", &gelu_backward, a("dx"), a("dout"), a("x"), "dx = dout * gelu'(x).");
  m.def("add", &add, a("out"), a("a"), a("b"), "out = a + b (out may alias a or b).");
  m.def("crossentropy_forward", &crossentropy_forward, a("losses"), a("probs"), a("logits"),
        a("targets"), "probs (N,V) = softmax(logits); losses (N,) = -log probs[n, targets[n]].");
  m.def("crossentropy_backward", &crossentropy_backward, a("dlogits"), a("probs"), a("targets"),
        py::arg("scale"), "dlogits (N,V) = scale * (probs - onehot(targets)).");
  m.def("global_norm_sq", &global_norm_sq, a("g"),
        "Sum of squares of g in float64, fixed chunk order (thread-count independent).");
  m.def("scale_", &scale_, a("g"), py::arg("s"), "g *= s in place.");
  m.def("zero_", &zero_, a("a"), "a[...] = 0 in place (any shape; threaded above 32K floats).");
  m.def("adamw_update", &adamw_update, a("params"), a("grads"), a("m"), a("v"), py::kw_only(),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), "Fused AdamW step over flat arrays, in place.");
  m.def("_set_ops_force_portable", &kgpt::cpu::ops_set_force_portable, py::arg("on"),
        "Test hook: force the portable (non-AVX2) paths of the non-GEMM kernels (process-wide).");
  m.def("_set_ops_allow_avx512", &kgpt::cpu::ops_set_allow_avx512, py::arg("on"),
        "Test hook: allow (default) or forbid the AVX-512 variants of the non-GEMM kernels.");
  m.def("_set_ops_allow_amx", &kgpt::cpu::ops_set_allow_amx, py::arg("on"),
        "Test hook: allow (default) or forbid the AMX int8 products (several rows).");
  m.def("_set_decode_attention_reference", &kgpt::cpu::attention_decode_set_reference,
        py::arg("on"), "Test hook: decoding attention by the reference kernel (process-wide).");
  m.def("ops_use_amx", &kgpt::cpu::ops_use_amx,
        "Whether int8 products of several rows run on AMX tiles (CPU, OS and test hook).");
  m.def("ops_use_avx512", &kgpt::cpu::ops_use_avx512,
        "Whether the non-GEMM kernels with AVX-512 variants run them.");
  m.def("ops_use_avx2", &kgpt::cpu::ops_use_avx2,
        "Whether the non-GEMM kernels run their AVX2/FMA paths.");
}

}  // namespace kgpt_bind
