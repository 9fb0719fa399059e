// GEMM bindings: matmul_forward/backward (the linear layer), the fused classifier, a general
// gemm entry for tests and benchmarks, and the kernel-selection hooks. Validates shapes (ValueError
// naming the argument), dtype/layout (TypeError through noconvert), outputs that overlap inputs,
// and target ids; then releases the GIL around the kernels.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>  // std::optional arrays (None)

#include "bindings/array_checks.h"
#include "bindings/native_init.h"
#include "common/threads.h"  // kMaxThreads
#include "cpu/classifier.h"
#include "cpu/gemm.h"
#include "cpu/peak.h"

namespace py = pybind11;

namespace kgpt_bind {
namespace {


void check_no_overlap(const char* out_name, const py::array& out, const char* in_name,
                      const py::array& in) {
  if (overlaps(out, in))
    throw std::invalid_argument(std::string(out_name) + " must not overlap " + in_name);
}

void matmul_forward(FArr out, FArr x, FArr w, OptF bias) {
  check_ndim("x", x, 2, "(N, C)");
  check_ndim("w", w, 2, "(OC, C)");
  const int64_t N = x.shape(0), C = x.shape(1), OC = w.shape(0);
  check_shape("w", w, "(OC, C)", {OC, C});
  check_shape("out", out, "(N, OC)", {N, OC});
  if (bias) check_shape("bias", *bias, "(OC,)", {OC});
  check_no_overlap("out", out, "x", x);
  check_no_overlap("out", out, "w", w);
  if (bias) check_no_overlap("out", out, "bias", *bias);
  float* po = out.mutable_data();
  const float *px = x.data(), *pw = w.data(), *pb = bias ? bias->data() : nullptr;
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::sgemm(false, true, N, OC, C, 1.f, px, C, pw, C, 0.f, po, OC, pb);
  }
}

void matmul_backward(OptF dx, FArr dw, OptF dbias, FArr dout, FArr x, FArr w) {
  check_ndim("x", x, 2, "(N, C)");
  check_ndim("w", w, 2, "(OC, C)");
  const int64_t N = x.shape(0), C = x.shape(1), OC = w.shape(0);
  check_shape("w", w, "(OC, C)", {OC, C});
  check_shape("dout", dout, "(N, OC)", {N, OC});
  check_shape("dw", dw, "(OC, C)", {OC, C});
  if (dx) check_shape("dx", *dx, "(N, C)", {N, C});
  if (dbias) check_shape("dbias", *dbias, "(OC,)", {OC});
  for (auto [name, arr] : {std::pair<const char*, const py::array*>{"dout", &dout}, {"x", &x}, {"w", &w}}) {
    check_no_overlap("dw", dw, name, *arr);
    if (dx) check_no_overlap("dx", *dx, name, *arr);
    if (dbias) check_no_overlap("dbias", *dbias, name, *arr);
  }
  if (dx) check_no_overlap("dx", *dx, "dw", dw);
  if (dbias) check_no_overlap("dbias", *dbias, "dw", dw);
  if (dx && dbias) check_no_overlap("dx", *dx, "dbias", *dbias);
  float* pdx = dx ? dx->mutable_data() : nullptr;
  float* pdw = dw.mutable_data();
  float* pdb = dbias ? dbias->mutable_data() : nullptr;
  const float *pdo = dout.data(), *px = x.data(), *pw = w.data();
  {
    py::gil_scoped_release nogil;
    const kgpt::cpu::GemmArgs gdw{true, false, OC, C, N, 1.f, pdo, OC, px, C, 1.f, pdw, C, nullptr};
    const kgpt::cpu::ColumnSum db{pdb, pdo, N, OC};
    if (pdx) {
      const kgpt::cpu::GemmArgs gdx{false, false, N, C, OC, 1.f, pdo, OC, pw, C, 0.f, pdx, C,
                                    nullptr};
      kgpt::cpu::sgemm_pair(gdx, gdw, pdb ? &db : nullptr);  // dx (then dbias) and dw
    } else {
      kgpt::cpu::sgemm(gdw);
      if (pdb) kgpt::cpu::column_sum_acc(db);
    }
  }
}

void classifier_forward_backward(FArr losses, OptF dx, OptF dwte, FArr x, FArr wte, IArr targets,
                        float scale) {
  check_ndim("x", x, 2, "(N, C)");
  check_ndim("wte", wte, 2, "(V, C)");
  const int64_t N = x.shape(0), C = x.shape(1), V = wte.shape(0);
  check_shape("wte", wte, "(V, C)", {V, C});
  if (V < 1) throw std::invalid_argument("wte must have at least one row (V >= 1)");
  check_shape("targets", targets, "(N,)", {N});
  check_shape("losses", losses, "(N,)", {N});
  if (dx) check_shape("dx", *dx, "(N, C)", {N, C});
  if (dwte) check_shape("dwte", *dwte, "(V, C)", {V, C});
  const int32_t* pt = targets.data();
  for (int64_t i = 0; i < N; ++i)
    if (pt[i] < 0 || pt[i] >= V)
      throw std::invalid_argument("targets must be in [0, V)=[0, " + std::to_string(V) + "), got " +
                                  std::to_string(pt[i]) + " at index " + std::to_string(i));
  for (auto [name, arr] : {std::pair<const char*, const py::array*>{"x", &x}, {"wte", &wte}, {"targets", &targets}}) {
    check_no_overlap("losses", losses, name, *arr);
    if (dx) check_no_overlap("dx", *dx, name, *arr);
    if (dwte) check_no_overlap("dwte", *dwte, name, *arr);
  }
  if (dx) check_no_overlap("dx", *dx, "losses", losses);
  if (dwte) check_no_overlap("dwte", *dwte, "losses", losses);
  if (dx && dwte) check_no_overlap("dx", *dx, "dwte", *dwte);
  float* pl = losses.mutable_data();
  float* pdx = dx ? dx->mutable_data() : nullptr;
  float* pdw = dwte ? dwte->mutable_data() : nullptr;
  const float *px = x.data(), *pw = wte.data();
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::classifier_forward_backward(pl, pdx, pdw, px, pw, pt, N, C, V, scale);
  }
}

void gemm(FArr c, FArr a, FArr b, bool trans_a, bool trans_b, float alpha, float beta,
          OptF bias) {
  check_ndim("a", a, 2, trans_a ? "(K, M)" : "(M, K)");
  check_ndim("b", b, 2, trans_b ? "(N, K)" : "(K, N)");
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t N = trans_b ? b.shape(0) : b.shape(1);
  if (trans_b) check_shape("b", b, "(N, K)", {N, K});
  else check_shape("b", b, "(K, N)", {K, N});
  check_shape("c", c, "(M, N)", {M, N});
  if (bias) check_shape("bias", *bias, "(N,)", {N});
  check_no_overlap("c", c, "a", a);
  check_no_overlap("c", c, "b", b);
  if (bias) check_no_overlap("c", c, "bias", *bias);
  float* pc = c.mutable_data();
  const float *pa = a.data(), *pb = b.data(), *pbias = bias ? bias->data() : nullptr;
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  {
    py::gil_scoped_release nogil;
    kgpt::cpu::sgemm(trans_a, trans_b, M, N, K, alpha, pa, lda, pb, ldb, beta, pc, N, pbias);
  }
}

}  // namespace

void init_gemm(py::module_& m) {
  m.def("matmul_forward", &matmul_forward, py::arg("out").noconvert(), py::arg("x").noconvert(),
        py::arg("w").noconvert(), py::arg("bias").noconvert().none(true),
        "out (N,OC) = x (N,C) @ w (OC,C).T + bias (OC,) (bias may be None). Overwrites out.");
  m.def("matmul_backward", &matmul_backward, py::arg("dx").noconvert().none(true),
        py::arg("dw").noconvert(), py::arg("dbias").noconvert().none(true),
        py::arg("dout").noconvert(), py::arg("x").noconvert(), py::arg("w").noconvert(),
        "dx (N,C) = dout @ w (skipped if None); dw (OC,C) += dout.T @ x; "
        "dbias (OC,) += dout.sum(0) (skipped if None).");
  m.def("classifier_forward_backward", &classifier_forward_backward, py::arg("losses").noconvert(),
        py::arg("dx").noconvert().none(true), py::arg("dwte").noconvert().none(true),
        py::arg("x").noconvert(), py::arg("wte").noconvert(), py::arg("targets").noconvert(),
        py::arg("scale"),
        "Fused lm_head + softmax + cross-entropy over blocks of rows. losses (N,) = "
        "-log softmax(x @ wte.T)[n, targets[n]]; when dx/dwte are given, the backward of "
        "scale * sum(losses): dx (N,C) = dlogits @ wte (overwrite), dwte (V,C) += dlogits.T @ x.");
  m.def("gemm", &gemm, py::arg("c").noconvert(), py::arg("a").noconvert(),
        py::arg("b").noconvert(), py::kw_only(), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0f, py::arg("beta") = 0.0f,
        py::arg("bias").noconvert().none(true) = py::none(),
        "c (M,N) = alpha * op(a) @ op(b) + beta * c + bias (N,). op(a) is a (M,K), or a.T when "
        "trans_a (a is then (K,M)); op(b) is b (K,N), or b.T when trans_b (b is (N,K)). "
        "beta == 0 never reads c.");
  m.def("fma_peak_gflops", [](const std::string& isa, const py::object& threads_arg,
                              double seconds) {
    const int threads = static_cast<int>(int_arg(threads_arg, "threads", 1, kgpt::kMaxThreads));
    py::gil_scoped_release nogil;
    return kgpt::cpu::fma_peak_gflops(isa, threads, seconds);
  }, py::arg("isa"), py::arg("threads") = 1, py::arg("seconds") = 0.5,
        "Measured single-precision FMA peak in GFLOP/s: `threads` threads each run independent "
        "register-only FMA chains ('avx512' or 'avx2_fma') for `seconds`; rates are summed.");
  m.def("read_bandwidth_gbs", [](double megabytes, const py::object& threads_arg,
                                 double seconds) {
    const int threads = static_cast<int>(int_arg(threads_arg, "threads", 1, kgpt::kMaxThreads));
    py::gil_scoped_release nogil;
    return kgpt::cpu::read_bandwidth_gbs(megabytes, threads, seconds);
  }, py::arg("megabytes"), py::arg("threads") = 1, py::arg("seconds") = 0.5,
        "Measured streaming read bandwidth in GB/s: `threads` threads each sum their share of a "
        "`megabytes` buffer repeatedly for `seconds`; rates are summed.");
  m.def("gemm_kernel_name", []() { return std::string(kgpt::cpu::gemm_kernel_name()); },
        "The GEMM micro-kernel in use: 'avx512', 'avx2_fma' or 'portable'.");
  m.def("_set_gemm_force_portable", &kgpt::cpu::gemm_set_force_portable, py::arg("on"),
        "Test hook: force the portable GEMM/classifier kernels (process-wide).");
  m.def("_set_gemm_kernel", [](const std::string& name) {
    if (!kgpt::cpu::gemm_set_kernel(name))
      throw std::invalid_argument("gemm kernel must be one of 'auto', 'avx512', 'avx2_fma', "
                                  "'portable' and supported by this CPU, got '" + name + "'");
  }, py::arg("name"), "Test/benchmark hook: pick the GEMM kernel (process-wide).");
}

}  // namespace kgpt_bind
