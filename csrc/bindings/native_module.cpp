// kernelgpt._native: the CPU tokenizer and the CPU kernels, registered by their binding files.
#include "bindings/native_init.h"
#include "common/threads.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "kernelgpt native CPU module: BPE tokenizer and CPU kernels";
  kgpt::threads_init();  // the initial thread count; the fork handler (common/threads.h)
  {  // the limits, from the one place they are stated (kernelgpt/backends/base.py)
    pybind11::module_ base = pybind11::module_::import("kernelgpt.backends.base");
    kgpt_bind::Limits& l = kgpt_bind::limits();
    l.max_head_size = base.attr("MAX_HEAD_SIZE").cast<int64_t>();
    l.max_threads = base.attr("MAX_THREADS").cast<int64_t>();
    if (l.max_head_size < 1 || l.max_head_size > kgpt_bind::kMaxHeadSizeCapacity ||
        l.max_threads < 1 || l.max_threads > kgpt::kMaxThreads)
      throw std::runtime_error("kernelgpt.backends.base limits exceed what _native was built for");
  }
#ifdef _OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.def("max_threads", []() { return kgpt::num_threads(); },
        "Number of threads the kernels use: OMP_NUM_THREADS (or OpenMP's default) until "
        "set_num_threads is called; 1 in a process forked after the module was loaded (GNU "
        "OpenMP's pool does not survive fork).");
  m.def("set_num_threads", [](pybind11::object n) {
    kgpt::set_num_threads(static_cast<int>(
        kgpt_bind::int_arg(n, "num_threads", 1, kgpt_bind::limits().max_threads)));
  }, pybind11::arg("n"),
        "Set the kernels' thread count (process-wide, any thread; an int in [1, "
        "kernelgpt.backends.base.MAX_THREADS]). In a forked child the kernels keep running on "
        "one thread.");
  kgpt_bind::init_pretokenize(m);
  kgpt_bind::init_tokenizer(m);
  kgpt_bind::init_cpu_ops(m);
  kgpt_bind::init_gemm(m);
  kgpt_bind::init_decode(m);
  kgpt_bind::init_vocab(m);
}
