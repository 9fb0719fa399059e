// Registration hooks for kernelgpt._native: each binding file adds its functions to the module.
// Only csrc/bindings/ includes pybind11.
#pragma once
#include <pybind11/pybind11.h>

namespace kgpt_bind {
void init_pretokenize(pybind11::module_& m); // native_pretokenize.cpp
void init_tokenizer(pybind11::module_& m);  // native_tokenizer.cpp
void init_cpu_ops(pybind11::module_& m);    // native_cpu.cpp
void init_gemm(pybind11::module_& m);       // native_gemm.cpp
void init_decode(pybind11::module_& m);     // native_decode.cpp
}  // namespace kgpt_bind
