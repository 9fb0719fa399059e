// kernelgpt._cuda: CUDA kernels operating on device pointers handed over from CuPy arrays.
#include <pybind11/pybind11.h>

#include "bindings/cuda_init.h"
#include "cuda/kernels.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "kernelgpt CUDA module";
  m.def("device_count", &kgpt::cuda::device_count, "Number of CUDA devices visible (0 without a GPU).");
  init_cuda_ops(m);
}
