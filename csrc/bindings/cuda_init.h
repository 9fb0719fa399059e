// Registration hooks of kernelgpt._cuda: each cuda_*.cpp binding file defines one.
#pragma once
#include <pybind11/pybind11.h>

void init_cuda_ops(pybind11::module_& m);
