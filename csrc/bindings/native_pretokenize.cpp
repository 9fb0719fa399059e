// Pre-tokenizer bindings: _native.pretokenize (str -> list[str], bytes -> list[bytes]) and
// _native.pretokenize_spans (-> int64 (n, 2) byte offsets). Checks the arguments, takes a view of
// the input's UTF-8, splits with the GIL released, then builds the Python result.
#include <pybind11/numpy.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bindings/native_init.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/pretokenize_simd.h"
#include "tokenizer/unicode_tables.h"

namespace py = pybind11;

namespace kgpt_bind {
namespace {

using Spans = std::vector<std::pair<uint32_t, uint32_t>>;

kgpt::tok::Pattern pattern_from_name(const std::string& name) {
  kgpt::tok::Pattern p;
  if (!kgpt::tok::parse_pattern(name, &p))
    throw std::invalid_argument("pattern must be 'gpt4', 'gpt2', 'cl100k', 'o200k', 'r50k' or 'p50k', got '" + name + "'");
  return p;
}

// The UTF-8 bytes of a str or bytes argument. A str holding lone surrogates has no UTF-8 form: it
// is encoded with "surrogatepass" and split as WTF-8 so each surrogate stays one code point.
struct Input {
  std::string_view bytes;
  bool is_str = false;
  bool wtf8 = false;
  py::object keep;  // owns the surrogatepass encoding when there is one
};

Input read_input(py::handle text, const char* arg) {
  Input in;
  if (PyUnicode_Check(text.ptr())) {
    in.is_str = true;
    Py_ssize_t len = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &len);
    if (data == nullptr) {
      PyErr_Clear();
      in.keep = py::reinterpret_steal<py::object>(
          PyUnicode_AsEncodedString(text.ptr(), "utf-8", "surrogatepass"));
      if (!in.keep) throw py::error_already_set();
      data = PyBytes_AS_STRING(in.keep.ptr());
      len = PyBytes_GET_SIZE(in.keep.ptr());
      in.wtf8 = true;
    }
    in.bytes = std::string_view(data, size_t(len));
  } else if (PyBytes_Check(text.ptr())) {
    in.bytes = std::string_view(PyBytes_AS_STRING(text.ptr()), size_t(PyBytes_GET_SIZE(text.ptr())));
  } else {
    throw py::type_error(std::string(arg) + " must be str or bytes, got " +
                         std::string(py::str(py::type::handle_of(text).attr("__name__"))));
  }
  if (in.bytes.size() >= (size_t(1) << 32))
    throw std::invalid_argument(std::string(arg) + " must be shorter than 2^32 bytes (UTF-8), got " +
                                std::to_string(in.bytes.size()));
  return in;
}

Spans split(const Input& in, kgpt::tok::Pattern pattern) {
  Spans spans;
  {
    py::gil_scoped_release nogil;
    spans.reserve(in.bytes.size() / 4 + 16);
    if (in.wtf8) kgpt::tok::pretokenize_wtf8(in.bytes, pattern, spans);
    else kgpt::tok::pretokenize(in.bytes, pattern, spans);
  }
  return spans;
}

py::array_t<int64_t> to_array(const Spans& spans) {
  py::array_t<int64_t> out({py::ssize_t(spans.size()), py::ssize_t(2)});
  int64_t* o = out.mutable_data();
  for (size_t i = 0; i < spans.size(); ++i) {
    o[2 * i] = spans[i].first;
    o[2 * i + 1] = spans[i].second;
  }
  return out;
}

py::list pretokenize_py(py::handle text, const std::string& pattern_name) {
  const kgpt::tok::Pattern pattern = pattern_from_name(pattern_name);
  const Input in = read_input(text, "text");
  const Spans spans = split(in, pattern);
  py::list out(spans.size());
  const char* base = in.bytes.data();
  if (!in.is_str) {
    for (size_t i = 0; i < spans.size(); ++i) {
      PyObject* o = PyBytes_FromStringAndSize(base + spans[i].first,
                                              Py_ssize_t(spans[i].second - spans[i].first));
      if (o == nullptr) throw py::error_already_set();
      PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), o);  // steals the reference
    }
    return out;
  }
  // str chunks are slices of the input str: count code points (UTF-8 lead bytes; a surrogatepass
  // surrogate is one lead byte too) to turn byte offsets into indices, and let CPython copy.
  const bool ascii = PyUnicode_IS_ASCII(text.ptr());
  Py_ssize_t cp = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    Py_ssize_t len = Py_ssize_t(spans[i].second - spans[i].first);
    if (!ascii) {
      len = 0;
      for (uint32_t b = spans[i].first; b < spans[i].second; ++b)
        len += (static_cast<uint8_t>(base[b]) & 0xC0) != 0x80;
    }
    PyObject* o = PyUnicode_Substring(text.ptr(), cp, cp + len);
    if (o == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), o);
    cp += len;
  }
  return out;
}

py::array_t<int64_t> pretokenize_spans_py(py::handle data, const std::string& pattern_name) {
  const kgpt::tok::Pattern pattern = pattern_from_name(pattern_name);
  const Input in = read_input(data, "data");
  return to_array(split(in, pattern));
}

// A byte offset argument: an int-like (int, NumPy integer; not bool); a value outside int64 comes
// back as -1 (outside every valid range) so the caller's range check names it, never pybind's
// "incompatible function arguments".
int64_t offset_arg(py::handle h, const char* what) {
  bool fits = false;
  const int64_t v = int_like(h, what, &fits);
  return fits ? v : -1;
}

std::string int_text(py::handle h) {
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!i) { PyErr_Clear(); return "?"; }
  return std::string(py::str(i));
}

// Test hook for kgpt::tok::next_safe_boundary (byte offsets into the UTF-8 of data).
size_t safe_boundary_py(py::handle data, py::handle pos_arg) {
  const Input in = read_input(data, "data");
  const int64_t pos = offset_arg(pos_arg, "pos");
  if (pos < 0 || size_t(pos) > in.bytes.size())
    throw std::invalid_argument("pos must be in [0, " + std::to_string(in.bytes.size()) + "], got " +
                                int_text(pos_arg));
  return kgpt::tok::next_safe_boundary(in.bytes, size_t(pos));
}

// Test hook for kgpt::tok::pretokenize_range: spans of the chunks of data starting in [begin, end).
py::array_t<int64_t> range_spans_py(py::handle data, py::handle begin_arg, py::handle end_arg,
                                    const std::string& pattern_name) {
  const kgpt::tok::Pattern pattern = pattern_from_name(pattern_name);
  const Input in = read_input(data, "data");
  const int64_t begin = offset_arg(begin_arg, "begin"), end = offset_arg(end_arg, "end");
  if (begin < 0 || end < begin || size_t(end) > in.bytes.size())
    throw std::invalid_argument("need 0 <= begin <= end <= " + std::to_string(in.bytes.size()) +
                                ", got begin " + int_text(begin_arg) + ", end " + int_text(end_arg));
  Spans spans;
  {
    py::gil_scoped_release nogil;
    kgpt::tok::pretokenize_range(in.bytes, size_t(begin), size_t(end), pattern, spans);
  }
  return to_array(spans);
}

// Test hook: the compiled class of every code point (0 other, 1 letter, 2 number, 3 whitespace).
py::array_t<uint8_t> unicode_classes_py() {
  py::array_t<uint8_t> out(py::ssize_t(0x110000));
  uint8_t* o = out.mutable_data();
  for (uint32_t cp = 0; cp < 0x110000; ++cp) o[cp] = kgpt::tok::uni::unicode_class(cp);
  return out;
}

}  // namespace

void init_pretokenize(py::module_& m) {
  m.def("pretokenize", &pretokenize_py, py::arg("text"), py::arg("pattern") = "gpt4",
        R"pbdoc(Split text into pre-tokenizer chunks exactly as regex.findall(PATTERN, text) does.

pattern is "gpt4" (cl100k) or "gpt2". str in -> list of str; bytes in -> list of bytes (UTF-8;
each invalid byte counts as one code point of category "other"). The chunks concatenate to the
input. Unknown pattern -> ValueError.)pbdoc");
  m.def("pretokenize_spans", &pretokenize_spans_py, py::arg("data"), py::arg("pattern") = "gpt4",
        R"pbdoc(Byte offsets of the pre-tokenizer chunks of data (bytes, or str taken as UTF-8):
an int64 array of shape (n, 2) holding [begin, end) per chunk; the spans tile the input.)pbdoc");
  m.def("_pretokenize_safe_boundary", &safe_boundary_py, py::arg("data"), py::arg("pos"),
        "Smallest byte offset >= pos where a chunk boundary is certain (test hook).");
  m.def("_pretokenize_range", &range_spans_py, py::arg("data"), py::arg("begin"), py::arg("end"),
        py::arg("pattern") = "gpt4", "Spans of the chunks starting in [begin, end) (test hook).");
  m.def("_pretokenize_unicode_classes", &unicode_classes_py,
        "Class of every code point in the compiled tables: 0 other, 1 letter, 2 number, 3 space.");
  def_isa_hook(m, "_pretokenize_set_isa", kgpt::tok::set_pretokenize_isa, kgpt::tok::pretokenize_isa,
               "'auto', 'avx512', 'avx2' or 'scalar'",
               "Test hook (process-wide): the block classifier of the pre-tokenizer and encoder ('auto', "
               "'avx512', 'avx2', 'scalar'); returns the one in use. ValueError if the CPU lacks it.");
  m.def("_pretokenize_isa", [] { return std::string(kgpt::tok::pretokenize_isa()); },
        "The pre-tokenizer's block classifier in use: 'avx512', 'avx2' or 'scalar'.");
  m.attr("_pretokenize_unicode_version") = kgpt::tok::uni::kUnicodeVersion;
}

}  // namespace kgpt_bind
