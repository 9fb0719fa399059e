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
void init_vocab(pybind11::module_& m);      // native_vocab.cpp
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
// The one reading of an int-like argument (int, numpy integer, anything with __index__; not bool,
// not float: TypeError naming it). *fits is false when the value lies outside int64 (the value
// returned is then unusable); *text, when given, is its decimal form for messages.
inline int64_t int_like(pybind11::handle h, const char* name, bool* fits,
                        std::string* text = nullptr) {
  if (PyBool_Check(h.ptr()))
    throw pybind11::type_error(std::string(name) + " must be an int, got bool");
  PyObject* idx = PyNumber_Index(h.ptr());
  if (idx == nullptr) {
    PyErr_Clear();
    throw pybind11::type_error(std::string(name) + " must be an int, got " +
                               Py_TYPE(h.ptr())->tp_name);
  }
  pybind11::object i = pybind11::reinterpret_steal<pybind11::object>(idx);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
  const bool err = overflow != 0 || (v == -1 && PyErr_Occurred() != nullptr);
  PyErr_Clear();
  *fits = !err;
  if (text != nullptr) *text = pybind11::str(i).cast<std::string>();
  return err ? 0 : int64_t(v);
}

// An int-like argument in [lo, hi]: ValueError naming it otherwise (any size, 2**64 included:
// never an overflow nor pybind11's "incompatible function arguments").
inline int64_t int_arg(pybind11::handle h, const char* name, int64_t lo, int64_t hi) {
  bool fits = false;
  std::string got;
  const int64_t v = int_like(h, name, &fits, &got);
  if (!fits || v < lo || v > hi)
    throw std::invalid_argument(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "], got " + got);
  return v;
}

// Defines the test hook `fn(name) -> str`: set(name) picks a tokenizer code path process-wide
// ('auto', 'scalar' or a SIMD path's name), get() names the one in use; ValueError (listing
// `names`) for a name set() refuses (unknown, or a path this CPU lacks).
inline void def_isa_hook(pybind11::module_& m, const char* fn, bool (*set)(const char*), const char* (*get)(),
                         const char* names, const char* doc) {
  m.def(
      fn,
      [set, get, fn, names](const std::string& name) {
        if (!set(name.c_str()))
          throw std::invalid_argument(std::string(fn) + ": the name must be " + names +
                                      " (and supported by this CPU), got '" + name + "'");
        return std::string(get());
      },
      pybind11::arg("name"), doc);
}
}  // namespace kgpt_bind
