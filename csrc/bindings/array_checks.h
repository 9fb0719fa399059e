// The native bindings' array checks, written once: NumPy argument types (float32 / int32,
// C-contiguous: pybind11 refuses anything else with a TypeError, never a silent copy that would
// detach an output), shapes with the message "<name> must have shape (N, C)=(12, 4), got (...)",
// dimensions, id ranges and overlap. Every message names the argument.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/numpy.h>

namespace kgpt_bind {

using FArr = pybind11::array_t<float, pybind11::array::c_style>;
using IArr = pybind11::array_t<int32_t, pybind11::array::c_style>;
using OptF = std::optional<FArr>;
using Shape = std::vector<int64_t>;

// "(2, 3)", "(5,)"
inline std::string tstr(const Shape& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

inline Shape shape_of(const pybind11::array& a) {
  Shape s(static_cast<size_t>(a.ndim()));
  for (pybind11::ssize_t i = 0; i < a.ndim(); ++i) s[static_cast<size_t>(i)] = a.shape(i);
  return s;
}

inline std::string shape_str(const pybind11::array& a) { return tstr(shape_of(a)); }

// "rstd must have shape (N,)=(12,), got (11,)"
inline void check_shape(const char* name, const pybind11::array& a, const char* letters,
                        const Shape& want) {
  if (shape_of(a) != want)
    throw std::invalid_argument(std::string(name) + " must have shape " + letters + "=" +
                                tstr(want) + ", got " + tstr(shape_of(a)));
}

inline void check_same(const char* name, const pybind11::array& a, const char* ref_name,
                       const pybind11::array& ref) {
  if (shape_of(a) != shape_of(ref))
    throw std::invalid_argument(std::string(name) + " must have the shape of " + ref_name + " " +
                                tstr(shape_of(ref)) + ", got " + tstr(shape_of(a)));
}

inline void check_ndim(const char* name, const pybind11::array& a, int nd, const char* letters) {
  if (a.ndim() != nd)
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(nd) + "-D " +
                                letters + ", got shape " + tstr(shape_of(a)));
}

// Every id in [0, upper), read once each (checked before any kernel reads them).
inline void check_ids(const char* name, const IArr& ids, int64_t upper) {
  const int32_t* p = ids.data();
  for (pybind11::ssize_t i = 0; i < ids.size(); ++i)
    if (p[i] < 0 || p[i] >= upper)
      throw std::invalid_argument(std::string(name) + " values must lie in [0, " +
                                  std::to_string(upper) + "), got " + std::to_string(p[i]) +
                                  " at flat index " + std::to_string(i));
}

// Whether two arrays share any byte (outputs that must not alias an input).
inline bool overlaps(const pybind11::array& a, const pybind11::array& b) {
  const char* a0 = static_cast<const char*>(a.data());
  const char* b0 = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

}  // namespace kgpt_bind
