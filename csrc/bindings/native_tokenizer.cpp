// BPE bindings: _native.BpeTrainer (add_documents / add_file / train) and _native.BpeEncoder
// (encode, encode_batch, decode, token_bytes). Arguments are checked and str/bytes turned into
// UTF-8 views with the GIL held; the work runs with the GIL released; ids come back as int32
// NumPy arrays that own their std::vector through a capsule (no copy). With the GIL released other
// Python threads run: every object a view points into is referenced until the work ends, and
// caller memory that may change meanwhile (NumPy ids) is read once (BpeEncoder::decode).
// Integer arguments take any int-like (int, NumPy integer) and report a value out of range as one
// ValueError line, never as pybind's "incompatible function arguments".
#include <cstring>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <climits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>


#include "bindings/native_init.h"
#include "tokenizer/bpe_encode.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/parallel.h"
#include "tokenizer/utf8_encode.h"

namespace py = pybind11;
using kgpt::tok::BpeEncoder;
using kgpt::tok::BpeTrainer;
using kgpt::tok::Pattern;

namespace kgpt_bind {
namespace {

Pattern pattern_arg(const std::string& name) {
  Pattern p;
  if (!kgpt::tok::parse_pattern(name, &p))
    throw std::invalid_argument("pattern must be 'gpt4', 'gpt2', 'cl100k', 'o200k', 'r50k' or 'p50k', got '" + name + "'");
  return p;
}

// UTF-8 view of a str or bytes. ASCII str: its own buffer; other str: a temporary bytes object
// kept in `keep` (not the str's cached UTF-8, which would live as long as the str). A str with
// lone surrogates raises UnicodeEncodeError (tokenizer.py replaces them and retries). `keep` also
// holds a reference to obj itself: a list item may be dropped by another thread while the GIL is
// released, and the view must outlive that.
std::string_view utf8_view(py::handle obj, std::vector<py::object>& keep, const char* what) {
  PyObject* o = obj.ptr();
  if (PyUnicode_Check(o) || PyBytes_Check(o)) keep.push_back(py::reinterpret_borrow<py::object>(obj));
  if (PyUnicode_Check(o)) {
    if (PyUnicode_IS_ASCII(o))
      return std::string_view(static_cast<const char*>(PyUnicode_DATA(o)), size_t(PyUnicode_GET_LENGTH(o)));
    PyObject* b = PyUnicode_AsUTF8String(o);
    if (!b) throw py::error_already_set();
    keep.push_back(py::reinterpret_steal<py::object>(b));
    return std::string_view(PyBytes_AS_STRING(b), size_t(PyBytes_GET_SIZE(b)));
  }
  if (PyBytes_Check(o)) return std::string_view(PyBytes_AS_STRING(o), size_t(PyBytes_GET_SIZE(o)));
  throw py::type_error(std::string(what) + " must be str or bytes, got " +
                       std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

// UTF-8 of a str that is not ASCII: the one the str caches if something asked it for one (then
// no copy), else written (tokenizer/utf8_encode.h) into a buffer this thread reuses from call to
// call (the view stays valid until the thread's next call): no new bytes object per call, whose
// pages the kernel would hand out (and zero) afresh each time. A str holding a surrogate gets no
// view: the caller then takes utf8_view, which raises UnicodeEncodeError (tokenizer.py replaces
// them and retries).
struct Utf8Buffer {
  std::unique_ptr<unsigned char[]> p;
  size_t cap = 0;
};
constexpr size_t kKeepUtf8Buffer = size_t(16) << 20;  // a larger buffer is freed after its call

// The UTF-8 view of a str or bytes for one encode call: ASCII str and bytes as utf8_view; other
// str encoded into `buf` (nullptr view on a surrogate: use utf8_view).
std::string_view utf8_view_reusing(py::handle obj, Utf8Buffer& buf, bool* done) {
  PyObject* o = obj.ptr();
  *done = false;
  if (!PyUnicode_Check(o) || PyUnicode_IS_ASCII(o)) return std::string_view();
#if PY_VERSION_HEX < 0x030F0000 && !defined(Py_LIMITED_API)
  // The str already holds its UTF-8 (PyUnicode_AsUTF8 was called on it, by us never): that one.
  if (PyUnicode_IS_COMPACT(o)) {
    const auto* c = reinterpret_cast<const PyCompactUnicodeObject*>(o);
    if (c->utf8) {
      *done = true;
      return std::string_view(c->utf8, size_t(c->utf8_length));
    }
  }
#endif
  const size_t n = size_t(PyUnicode_GET_LENGTH(o));
  const int kind = PyUnicode_KIND(o);
  if (n > (size_t(1) << 40) / 4) return std::string_view();
  const size_t need = kgpt::tok::utf8_room(n, kind);
  if (buf.cap < need) {
    buf.p.reset();
    buf.cap = 0;
    buf.p.reset(new unsigned char[need]);  // std::bad_alloc -> MemoryError
    buf.cap = need;
  }
  bool ok = false;
  const size_t len = kgpt::tok::utf8_from_units(PyUnicode_DATA(o), n, kind, buf.p.get(), &ok);
  if (!ok) return std::string_view();
  *done = true;
  return std::string_view(reinterpret_cast<const char*>(buf.p.get()), len);
}

py::array_t<int32_t> to_numpy(std::vector<int32_t>&& v) {
  // The array keeps the vector's whole capacity alive: give back an unused tail larger than the
  // ids (a copy), so at most half the block is spare. A smaller tail stays: shrinking would copy
  // every id (~5% of a warm encode), and a large block's never-written pages are not resident.
  if (v.capacity() > 2 * v.size() + 4096) v.shrink_to_fit();
  auto* owned = new std::vector<int32_t>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<int32_t>*>(p); });
  return py::array_t<int32_t>({py::ssize_t(owned->size())}, {py::ssize_t(sizeof(int32_t))},
                              owned->data(), owner);
}

// A Python list of the ids, built directly from the encoder's cached ints (no NumPy round trip).
py::list to_list(const std::vector<int32_t>& v, std::vector<PyObject*>& ints, size_t vocab) {
  if (ints.size() != vocab) {
    ints.reserve(vocab);
    while (ints.size() < vocab) {
      PyObject* x = PyLong_FromSsize_t(Py_ssize_t(ints.size()));
      if (!x) throw py::error_already_set();
      ints.push_back(x);
    }
  }
  PyObject* l = PyList_New(Py_ssize_t(v.size()));
  if (!l) throw py::error_already_set();
  for (size_t i = 0; i < v.size(); ++i) {
    PyObject* x = ints[size_t(v[i])];  // encode only returns ids below vocab_size
    Py_INCREF(x);
    PyList_SET_ITEM(l, Py_ssize_t(i), x);
  }
  return py::reinterpret_steal<py::list>(l);
}

// An int-like argument (native_init.h's int_like); *fits is false outside int64.
int64_t int_arg(py::handle h, const char* what, bool* fits) { return int_like(h, what, fits); }

std::string int_text(py::handle h) {
  py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!i) { PyErr_Clear(); return "?"; }
  return std::string(py::str(i));
}

int threads_arg(py::handle h) {
  bool fits = false;
  const int64_t n = int_arg(h, "num_threads", &fits);
  if (!fits || n < 0 || n > INT_MAX)
    throw std::invalid_argument("num_threads must be in [1, " + std::to_string(INT_MAX) +
                                "] (or 0 for the default), got " + int_text(h));
  return n == 0 ? kgpt::tok::default_threads() : int(n);
}

// The special tokens: a list/tuple of non-empty str with a UTF-8 form (no lone surrogates).
std::vector<std::string> specials_arg(py::handle h) {
  if (!PyList_Check(h.ptr()) && !PyTuple_Check(h.ptr()))
    throw py::type_error(std::string("specials must be a list of str, got ") + Py_TYPE(h.ptr())->tp_name);
  std::vector<std::string> out;
  size_t k = 0;
  for (py::handle s : py::reinterpret_borrow<py::sequence>(h)) {
    if (!PyUnicode_Check(s.ptr()))
      throw py::type_error("special token " + std::to_string(k) + " must be str, got " + Py_TYPE(s.ptr())->tp_name);
    Py_ssize_t len = 0;
    const char* d = PyUnicode_AsUTF8AndSize(s.ptr(), &len);
    if (!d) {
      PyErr_Clear();
      throw std::invalid_argument("special token " + std::to_string(k) +
                                  " is not valid Unicode text (it holds a lone surrogate)");
    }
    out.emplace_back(d, size_t(len));
    ++k;
  }
  return out;
}

// Logs (Python logging, "kernelgpt.tokenizer") and clears what parallel_for could not start on
// this thread since the last clear. GIL held.
void report_shortfall(const char* where) {
  kgpt::tok::ThreadShortfall& s = kgpt::tok::thread_shortfall();
  if (s.wanted == 0) return;
  const std::string msg = std::string(where) + ": could not start " + std::to_string(s.wanted) +
                          " threads (" + s.what + "); ran on " + std::to_string(s.started);
  s = kgpt::tok::ThreadShortfall();
  py::module_::import("logging").attr("getLogger")("kernelgpt.tokenizer").attr("warning")(msg);
}

// The indices of the special tokens to recognise: a list/tuple of int-likes in [0, nspecial).
std::vector<int> allowed_arg(py::handle h, size_t nspecial) {
  if (!PyList_Check(h.ptr()) && !PyTuple_Check(h.ptr()))
    throw py::type_error(std::string("allowed must be a list of ints, got ") + Py_TYPE(h.ptr())->tp_name);
  std::vector<int> out;
  // A tuple snapshot: int_arg may run __index__, which could change a list being walked.
  py::object items = py::reinterpret_steal<py::object>(PySequence_Tuple(h.ptr()));
  if (!items) throw py::error_already_set();
  for (py::handle k : items) {
    bool fits = false;
    const int64_t v = int_arg(k, "allowed special index", &fits);
    if (!fits || v < 0 || uint64_t(v) >= nspecial)
      throw std::invalid_argument("allowed special index " + int_text(k) + " out of range [0, " +
                                  std::to_string(nspecial) + ")");
    out.push_back(int(v));
  }
  return out;
}

// A list of str/bytes items (a tuple is taken too).
py::list list_arg(py::handle h, const char* what) {
  if (PyList_Check(h.ptr())) return py::reinterpret_borrow<py::list>(h);
  if (PyTuple_Check(h.ptr())) return py::reinterpret_steal<py::list>(PySequence_List(h.ptr()));
  throw py::type_error(std::string(what) + " must be a list of str or bytes, got " + Py_TYPE(h.ptr())->tp_name);
}

// The trainer mutates its tables with the GIL released: one lock per trainer keeps two Python
// threads sharing it from racing (they take turns).
struct PyTrainer {
  explicit PyTrainer(Pattern p) : t(p) {}
  BpeTrainer t;
  std::mutex mu;
};

struct PyEncoder {
  std::unique_ptr<BpeEncoder> enc;
  size_t nspecial = 0;
  // One Python int per id, made on the first call that returns lists (with the GIL held, as every
  // use): a list then costs a reference count per id instead of an allocation.
  std::vector<PyObject*> ints;
  ~PyEncoder() { for (PyObject* o : ints) Py_XDECREF(o); }
};

}  // namespace

void init_tokenizer(py::module_& m) {
  def_isa_hook(m, "_bpe_merge_set_isa", kgpt::tok::set_bpe_merge_isa, kgpt::tok::bpe_merge_isa,
               "'auto', 'avx512' or 'scalar'",
               "Test hook (process-wide): how the encoder merges a batch of short chunks it has not "
               "cached ('auto', 'avx512', 'scalar'); returns the one in use. ValueError if the CPU lacks it.");
  def_isa_hook(m, "_encode_utf8_set_isa", kgpt::tok::set_utf8_isa, kgpt::tok::utf8_isa,
               "'auto', 'avx512' or 'scalar'",
               "Test hook (process-wide): the encoder's str -> UTF-8 conversion ('auto', 'avx512', "
               "'scalar'); returns the one in use. ValueError if the CPU lacks it.");
  m.def(
      "_encode_utf8",
      [](py::str text) -> py::object {
        PyObject* o = text.ptr();
        const size_t n = size_t(PyUnicode_GET_LENGTH(o));
        const int kind = PyUnicode_KIND(o);
        std::vector<unsigned char> buf(kgpt::tok::utf8_room(n, kind));
        bool ok = false;
        const size_t len = kgpt::tok::utf8_from_units(PyUnicode_DATA(o), n, kind, buf.data(), &ok);
        if (!ok) return py::none();
        return py::bytes(reinterpret_cast<const char*>(buf.data()), len);
      },
      py::arg("text"),
      "Test hook: the encoder's UTF-8 of a str (any storage kind, converted by the ISA in use), "
      "None if it holds a surrogate.");
  py::class_<PyTrainer>(m, "BpeTrainer",
                         "Counts pre-split chunks of streamed text, then learns BPE merges.")
      .def(py::init([](const std::string& pattern) { return new PyTrainer(pattern_arg(pattern)); }),
           py::arg("pattern") = "gpt4")
      .def("add_documents", [](PyTrainer& t, py::handle docs_arg, py::handle num_threads) {
        py::list docs = list_arg(docs_arg, "docs");
        const int nt = threads_arg(num_threads);
        std::vector<py::object> keep;
        std::vector<std::string_view> views;
        views.reserve(docs.size());
        for (py::handle d : docs) views.push_back(utf8_view(d, keep, "each document"));
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(t.mu);
          kgpt::tok::thread_shortfall() = kgpt::tok::ThreadShortfall();
          t.t.add_documents(views, nt);
        }
        report_shortfall("BpeTrainer.add_documents");
      }, py::arg("docs"), py::arg("num_threads") = 0,
         "Split each str/bytes document on its own and add its chunk counts.")
      .def("add_file", [](PyTrainer& t, py::handle path_arg, py::handle num_threads, py::handle block_arg) {
        // str, bytes or os.PathLike, as the OS spells it (os.fsencode); a NUL would cut the name.
        if (!PyUnicode_Check(path_arg.ptr()) && !PyBytes_Check(path_arg.ptr()) &&
            !py::hasattr(path_arg, "__fspath__"))
          throw py::type_error(std::string("path must be str, bytes or os.PathLike, got ") +
                               Py_TYPE(path_arg.ptr())->tp_name);
        const std::string path = py::module_::import("os").attr("fsencode")(path_arg).cast<std::string>();
        if (path.find('\0') != std::string::npos) throw std::invalid_argument("path must not contain NUL bytes");
        const int nt = threads_arg(num_threads);
        bool bfits = false;
        const int64_t block_bytes = int_arg(block_arg, "block_bytes", &bfits);
        if (!bfits || block_bytes < 0)
          throw std::invalid_argument("block_bytes must be >= 0, got " + int_text(block_arg));
        // The messages hold the path's bytes, which need not be UTF-8: shown with backslashes.
        std::string err;
        bool value_err = false;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(t.mu);
          kgpt::tok::thread_shortfall() = kgpt::tok::ThreadShortfall();
          try {
            t.t.add_file(path, nt, size_t(block_bytes));
          } catch (const std::invalid_argument& e) {
            err = e.what();
            value_err = true;
          } catch (const std::runtime_error& e) {
            err = e.what();
          }
        }
        report_shortfall("BpeTrainer.add_file");
        if (!err.empty()) {
          const std::string msg = py::bytes(err).attr("decode")("utf-8", "backslashreplace").cast<std::string>();
          if (value_err) throw py::value_error(msg);
          throw std::runtime_error(msg);
        }
      }, py::arg("path"), py::arg("num_threads") = 0, py::arg("block_bytes") = 0,
         "Stream a UTF-8 file as one document, read in blocks of block_bytes (0: 16 MiB; small "
         "values are for tests: the counts do not depend on it); ValueError naming the offset if "
         "it is not UTF-8.")
      .def("train", [](PyTrainer& t, py::handle num_merges_arg) {
        bool fits = false;
        const int64_t num_merges = int_arg(num_merges_arg, "num_merges", &fits);
        const int64_t max_merges = int64_t(INT32_MAX) - 255;  // ids 256 + i stay int32
        if (!fits || num_merges < 0 || num_merges > max_merges)
          throw std::invalid_argument("num_merges must be in [0, " + std::to_string(max_merges) +
                                      "], got " + int_text(num_merges_arg));
        std::vector<kgpt::tok::Merge> merges;
        {
          py::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(t.mu);
          merges = t.t.train(size_t(num_merges));
        }
        py::array_t<int32_t> out({py::ssize_t(merges.size()), py::ssize_t(2)});
        int32_t* o = out.mutable_data();
        for (size_t i = 0; i < merges.size(); ++i) { o[2 * i] = merges[i].first; o[2 * i + 1] = merges[i].second; }
        return out;
      }, py::arg("num_merges"), "Learn up to num_merges merges; returns an int32 (n, 2) array.")
      .def_property_readonly("num_unique_chunks", [](PyTrainer& t) {
        std::lock_guard<std::mutex> lock(t.mu);
        return t.t.num_unique_chunks();
      })
      .def_property_readonly("num_chunks", [](PyTrainer& t) {
        std::lock_guard<std::mutex> lock(t.mu);
        return t.t.num_chunks();
      });

  py::class_<PyEncoder>(m, "BpeEncoder", "Encodes and decodes with fixed merges and special tokens.")
      .def(py::init([](py::handle merges_obj, py::handle specials_obj, const std::string& pattern,
                       const std::vector<int32_t>& ids, bool whole_lookup) {
        using Merges = py::array_t<int32_t, py::array::c_style>;
        if (!Merges::check_(merges_obj))
          throw py::type_error("merges must be a C-contiguous int32 array of shape (n, 2), got " +
                               (py::isinstance<py::array>(merges_obj)
                                    ? "a " + std::string(py::str(merges_obj.attr("dtype"))) + " array" +
                                          (py::reinterpret_borrow<py::array>(merges_obj).flags() & py::array::c_style
                                               ? std::string() : std::string(" (not C-contiguous)"))
                                    : std::string(Py_TYPE(merges_obj.ptr())->tp_name)));
        const Merges merges = py::reinterpret_borrow<Merges>(merges_obj);
        const std::vector<std::string> specials = specials_arg(specials_obj);
        if (merges.ndim() != 2 || merges.shape(1) != 2)
          throw std::invalid_argument("merges must have shape (n, 2)");
        const int32_t* p = merges.data();
        std::vector<std::pair<int32_t, int32_t>> mv(size_t(merges.shape(0)));
        for (size_t i = 0; i < mv.size(); ++i) mv[i] = {p[2 * i], p[2 * i + 1]};
        auto* e = new PyEncoder();
        std::unique_ptr<PyEncoder> holder(e);
        e->enc.reset(new BpeEncoder(mv, specials, pattern_arg(pattern), ids, whole_lookup));
        e->nspecial = specials.size();
        return holder.release();
      }), py::arg("merges"), py::arg("specials"), py::arg("pattern"),
         py::arg("ids") = std::vector<int32_t>{}, py::arg("whole_lookup") = true)
      .def("encode", [](PyEncoder& e, py::handle text, py::handle allowed, bool as_list) -> py::object {
        // allowed first: its __index__ calls run Python code, which could encode on this thread
        // (and reuse the buffer below).
        std::vector<int> al = allowed_arg(allowed, e.nspecial);
        std::vector<py::object> keep;
        // Non-ASCII str: encoded into this thread's reusable buffer (kept up to 16 MiB). Nothing
        // runs Python code between here and the end of the encode.
        static thread_local Utf8Buffer buf;
        bool reused = false;
        std::string_view v = utf8_view_reusing(text, buf, &reused);
        if (!reused) v = utf8_view(text, keep, "text");
        else keep.push_back(py::reinterpret_borrow<py::object>(text));
        std::vector<int32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids.reserve(v.size() / 3 + 16);  // ~3-4.5 bytes per token on code and prose: no growth copy
          e.enc->encode(v, al, ids);
        }
        if (buf.cap > kKeepUtf8Buffer) { buf.p.reset(); buf.cap = 0; }
        if (as_list) return to_list(ids, e.ints, e.enc->vocab_size());
        return to_numpy(std::move(ids));
      }, py::arg("text"), py::arg("allowed") = py::list(), py::arg("as_list") = false,
         "Encode str/bytes; `allowed` lists the indices of special tokens to recognise.")
      .def("encode_batch", [](PyEncoder& e, py::handle texts_arg, py::handle allowed, py::handle num_threads,
                              bool as_lists) {
        py::list texts = list_arg(texts_arg, "texts");
        const int nt = threads_arg(num_threads);
        std::vector<py::object> keep;
        std::vector<std::string_view> views;
        views.reserve(texts.size());
        for (py::handle t : texts) views.push_back(utf8_view(t, keep, "each text"));
        std::vector<int> al = allowed_arg(allowed, e.nspecial);
        std::vector<std::vector<int32_t>> res(views.size());
        {
          py::gil_scoped_release nogil;
          const BpeEncoder& enc = *e.enc;
          kgpt::tok::thread_shortfall() = kgpt::tok::ThreadShortfall();
          enc.encode_batch(views, al, nt, res);  // one cache set per thread, one reserve per result
        }
        report_shortfall("BpeEncoder.encode_batch");
        py::list out(res.size());
        for (size_t i = 0; i < res.size(); ++i) {
          if (as_lists) { out[i] = to_list(res[i], e.ints, e.enc->vocab_size()); std::vector<int32_t>().swap(res[i]); }
          else out[i] = to_numpy(std::move(res[i]));
        }
        return out;
      }, py::arg("texts"), py::arg("allowed") = py::list(), py::arg("num_threads") = 0,
         py::arg("as_lists") = false)
      .def("decode", [](const PyEncoder& e, py::handle ids) {
        std::string out;
        PyObject* o = ids.ptr();
        if (PyList_Check(o) || PyTuple_Check(o)) {  // read the ints directly: no NumPy round trip
          // Items that are not int (NumPy integers) go through __index__, Python code that could
          // change the list under the item pointer: then walk a tuple snapshot of it instead.
          py::object seq = py::reinterpret_borrow<py::object>(o);
          if (PyList_Check(o)) {
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); ++i)
              if (!PyLong_Check(PyList_GET_ITEM(o, i))) {
                seq = py::reinterpret_steal<py::object>(PyList_AsTuple(o));
                if (!seq) throw py::error_already_set();
                break;
              }
          }
          const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
          PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
          std::vector<int64_t> v(static_cast<size_t>(n));
          for (Py_ssize_t i = 0; i < n; ++i) {
            py::handle item = items[i];
            py::object conv;
            if (!PyLong_Check(item.ptr())) {
              if (!PyIndex_Check(item.ptr()))
                throw py::type_error("ids must be ints, got " + std::string(Py_TYPE(item.ptr())->tp_name) +
                                     " at position " + std::to_string(i));
              conv = py::reinterpret_steal<py::object>(PyNumber_Index(item.ptr()));
              if (!conv) throw py::error_already_set();
              item = conv;
            }
            int overflow = 0;
            const long long x = PyLong_AsLongLongAndOverflow(item.ptr(), &overflow);
            if (overflow)
              throw std::invalid_argument("token id " + std::string(py::str(item)) + " at position " +
                                          std::to_string(i) + " is out of range [0, " +
                                          std::to_string(e.enc->vocab_size()) + ")");
            v[size_t(i)] = int64_t(x);
          }
          py::gil_scoped_release nogil;
          e.enc->decode(v.data(), v.size(), out);
        } else if (py::isinstance<py::array>(ids)) {
          py::array a = py::reinterpret_borrow<py::array>(ids);
          if (a.ndim() != 1) throw std::invalid_argument("ids must be 1-D, got " + std::to_string(a.ndim()) + "-D");
          if (py::isinstance<py::array_t<int32_t>>(a) && (a.flags() & py::array::c_style)) {
            auto t = py::array_t<int32_t, py::array::c_style>::ensure(a);
            py::gil_scoped_release nogil;
            e.enc->decode(t.data(), size_t(t.shape(0)), out);
          } else if (py::isinstance<py::array_t<int64_t>>(a) && (a.flags() & py::array::c_style)) {
            auto t = py::array_t<int64_t, py::array::c_style>::ensure(a);
            py::gil_scoped_release nogil;
            e.enc->decode(t.data(), size_t(t.shape(0)), out);
          } else {
            throw py::type_error("ids must be a contiguous int32 or int64 array");
          }
        } else {
          throw py::type_error("ids must be a list, tuple or 1-D integer array");
        }
        return py::bytes(out);
      }, py::arg("ids"), "Bytes of the ids (list/tuple of ints or int32/int64 1-D array); ValueError on an id out of range.")
      .def("token_bytes", [](const PyEncoder& e, py::handle id_arg) {
        bool fits = false;
        const int64_t id = int_arg(id_arg, "token id", &fits);
        if (!fits || !e.enc->valid_id(id))
          throw std::invalid_argument("token id " + int_text(id_arg) +
                                      (fits && id >= 0 && size_t(id) < e.enc->vocab_size()
                                           ? std::string(" is not a token of this vocabulary")
                                           : " is out of range [0, " + std::to_string(e.enc->vocab_size()) + ")"));
        std::string_view t = e.enc->token(size_t(id));
        return py::bytes(t.data(), t.size());
      }, py::arg("id"))
      .def_property_readonly("vocab_size", [](const PyEncoder& e) { return e.enc->vocab_size(); });
}

}  // namespace kgpt_bind
