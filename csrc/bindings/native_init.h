// Registration hooks for kernelgpt._native: each binding file adds its functions to the module.
// Only csrc/bindings/ includes pybind11.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

namespace kgpt_bind {
void init_pretokenize(pybind11::module_& m); // native_pretokenize.cpp
void init_tokenizer(pybind11::module_& m);  // native_tokenizer.cpp
void init_cpu_ops(pybind11::module_& m);    // native_cpu.cpp
void init_gemm(pybind11::module_& m);       // native_gemm.cpp
void init_decode(pybind11::module_& m);     // native_decode.cpp
}  // namespace kgpt_bind

namespace kgpt_bind {
// The limits every backend enforces, stated once in kernelgpt/backends/base.py and read from
// there when the module is imported (native_module.cpp); the kernels' compiled capacity
// (kMaxHeadSizeCapacity, kgpt::kMaxThreads) must be at least that.
constexpr int64_t kMaxHeadSizeCapacity = 256;  // the attention kernels' register tiles
struct Limits {
  int64_t max_head_size = kMaxHeadSizeCapacity;
  int64_t max_threads = 4096;
};
inline Limits& limits() {
  static Limits l;
  return l;
}

// An integer argument (size, count, index) from Python: int, numpy integer or anything with
// __index__, bool excluded. TypeError for other types; ValueError naming the argument when it
// lies outside [lo, hi] (any size, 2**64 included: never an overflow nor pybind11's
// "incompatible function arguments").
inline int64_t int_arg(pybind11::handle h, const char* name, int64_t lo, int64_t hi) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (PyBool_Check(h.ptr()))
    throw pybind11::type_error(std::string(name) + " must be an int, got bool");
  PyObject* idx = PyNumber_Index(h.ptr());
  if (idx == nullptr) {
    PyErr_Clear();
    throw pybind11::type_error(std::string(name) + " must be an int, got " +
                               Py_TYPE(h.ptr())->tp_name);
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
  const bool err = overflow != 0 || (v == -1 && PyErr_Occurred() != nullptr);
  PyErr_Clear();
  if (err || v < lo || v > hi) {
    const std::string got = pybind11::str(pybind11::handle(idx)).cast<std::string>();
    Py_DECREF(idx);
    throw std::invalid_argument(std::string(name) + " must be in " + range + ", got " + got);
  }
  Py_DECREF(idx);
  return v;
}
}  // namespace kgpt_bind
