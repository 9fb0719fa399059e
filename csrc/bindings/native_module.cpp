// kernelgpt._native: the CPU tokenizer and the CPU kernels, registered by their binding files.
#include "bindings/native_init.h"

#ifdef _OPENMP
#include <omp.h>
#endif

PYBIND11_MODULE(_native, m) {
  m.doc() = "kernelgpt native CPU module: BPE tokenizer and CPU kernels";
#ifdef _OPENMP
  m.attr("has_openmp") = true;
  m.def("max_threads", []() { return omp_get_max_threads(); },
        "Number of OpenMP threads kernels use (OMP_NUM_THREADS or set_num_threads).");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
    omp_set_num_threads(n);
  }, pybind11::arg("n"));
#else
  m.attr("has_openmp") = false;
  m.def("max_threads", []() { return 1; });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
  }, pybind11::arg("n"));
#endif
  kgpt_bind::init_pretokenize(m);
  kgpt_bind::init_tokenizer(m);
  kgpt_bind::init_cpu_ops(m);
  kgpt_bind::init_gemm(m);
  kgpt_bind::init_decode(m);
}
