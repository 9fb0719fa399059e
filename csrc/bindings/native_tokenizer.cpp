// BPE bindings: _native.BpeTrainer (add_documents / add_file / train) and _native.BpeEncoder
// (encode, encode_batch, decode, token_bytes). Arguments are checked and str/bytes turned into
// UTF-8 views with the GIL held; the work runs with the GIL released; ids come back as int32
// NumPy arrays that own their std::vector through a capsule (no copy).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>


#include "bindings/native_init.h"
#include "tokenizer/bpe_encode.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/parallel.h"

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
// lone surrogates raises UnicodeEncodeError (tokenizer.py replaces them and retries).
std::string_view utf8_view(py::handle obj, std::vector<py::object>& keep, const char* what) {
  PyObject* o = obj.ptr();
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

py::array_t<int32_t> to_numpy(std::vector<int32_t>&& v) {
  // The array keeps the vector's whole capacity alive: give back a large unused tail first.
  if (v.capacity() > v.size() + v.size() / 4 + 4096) v.shrink_to_fit();
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

int threads_arg(int n) {
  if (n < 0) throw std::invalid_argument("num_threads must be >= 1 (or 0 for the default), got " + std::to_string(n));
  return n == 0 ? kgpt::tok::default_threads() : n;
}

std::vector<int> allowed_arg(const BpeEncoder& enc, const std::vector<int>& allowed, size_t nspecial) {
  for (int k : allowed)
    if (k < 0 || size_t(k) >= nspecial)
      throw std::invalid_argument("allowed special index " + std::to_string(k) + " out of range [0, " +
                                  std::to_string(nspecial) + ")");
  (void)enc;
  return allowed;
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
  py::class_<PyTrainer>(m, "BpeTrainer",
                         "Counts pre-split chunks of streamed text, then learns BPE merges.")
      .def(py::init([](const std::string& pattern) { return new PyTrainer(pattern_arg(pattern)); }),
           py::arg("pattern") = "gpt4")
      .def("add_documents", [](PyTrainer& t, py::list docs, int num_threads) {
        const int nt = threads_arg(num_threads);
        std::vector<py::object> keep;
        std::vector<std::string_view> views;
        views.reserve(docs.size());
        for (py::handle d : docs) views.push_back(utf8_view(d, keep, "each document"));
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(t.mu);
        t.t.add_documents(views, nt);
      }, py::arg("docs"), py::arg("num_threads") = 0,
         "Split each str/bytes document on its own and add its chunk counts.")
      .def("add_file", [](PyTrainer& t, const std::string& path, int num_threads, int64_t block_bytes) {
        const int nt = threads_arg(num_threads);
        if (block_bytes < 0) throw std::invalid_argument("block_bytes must be >= 0, got " + std::to_string(block_bytes));
        py::gil_scoped_release nogil;
        std::lock_guard<std::mutex> lock(t.mu);
        t.t.add_file(path, nt, size_t(block_bytes));
      }, py::arg("path"), py::arg("num_threads") = 0, py::arg("block_bytes") = 0,
         "Stream a UTF-8 file as one document, read in blocks of block_bytes (0: 16 MiB; small "
         "values are for tests: the counts do not depend on it).")
      .def("train", [](PyTrainer& t, int64_t num_merges) {
        if (num_merges < 0) throw std::invalid_argument("num_merges must be >= 0, got " + std::to_string(num_merges));
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
      .def(py::init([](py::array_t<int32_t, py::array::c_style> merges,
                       const std::vector<std::string>& specials, const std::string& pattern,
                       const std::vector<int32_t>& ids, bool whole_lookup) {
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
      }), py::arg("merges").noconvert(), py::arg("specials"), py::arg("pattern"),
         py::arg("ids") = std::vector<int32_t>{}, py::arg("whole_lookup") = true)
      .def("encode", [](PyEncoder& e, py::handle text, const std::vector<int>& allowed, bool as_list) -> py::object {
        std::vector<py::object> keep;
        std::string_view v = utf8_view(text, keep, "text");
        std::vector<int> al = allowed_arg(*e.enc, allowed, e.nspecial);
        std::vector<int32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids.reserve(v.size() / 5 + 16);  // ~4+ bytes per token on text
          e.enc->encode(v, al, ids);
        }
        if (as_list) return to_list(ids, e.ints, e.enc->vocab_size());
        return to_numpy(std::move(ids));
      }, py::arg("text"), py::arg("allowed") = std::vector<int>{}, py::arg("as_list") = false,
         "Encode str/bytes; `allowed` lists the indices of special tokens to recognise.")
      .def("encode_batch", [](PyEncoder& e, py::list texts, const std::vector<int>& allowed, int num_threads,
                              bool as_lists) {
        const int nt = threads_arg(num_threads);
        std::vector<py::object> keep;
        std::vector<std::string_view> views;
        views.reserve(texts.size());
        for (py::handle t : texts) views.push_back(utf8_view(t, keep, "each text"));
        std::vector<int> al = allowed_arg(*e.enc, allowed, e.nspecial);
        std::vector<std::vector<int32_t>> res(views.size());
        {
          py::gil_scoped_release nogil;
          const BpeEncoder& enc = *e.enc;
          kgpt::tok::parallel_for(views.size(), nt, [&](size_t i, int) { enc.encode(views[i], al, res[i]); });
        }
        py::list out(res.size());
        for (size_t i = 0; i < res.size(); ++i) {
          if (as_lists) { out[i] = to_list(res[i], e.ints, e.enc->vocab_size()); std::vector<int32_t>().swap(res[i]); }
          else out[i] = to_numpy(std::move(res[i]));
        }
        return out;
      }, py::arg("texts"), py::arg("allowed") = std::vector<int>{}, py::arg("num_threads") = 0,
         py::arg("as_lists") = false)
      .def("decode", [](const PyEncoder& e, py::handle ids) {
        std::string out;
        PyObject* o = ids.ptr();
        if (PyList_Check(o) || PyTuple_Check(o)) {  // read the ints directly: no NumPy round trip
          const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
          PyObject** items = PySequence_Fast_ITEMS(o);
          std::vector<int64_t> v(static_cast<size_t>(n));
          for (Py_ssize_t i = 0; i < n; ++i) {
            if (!PyLong_Check(items[i]))
              throw py::type_error("ids must be ints, got " + std::string(Py_TYPE(items[i])->tp_name) +
                                   " at position " + std::to_string(i));
            int overflow = 0;
            const long long x = PyLong_AsLongLongAndOverflow(items[i], &overflow);
            v[size_t(i)] = overflow ? -1 : int64_t(x);
            if (overflow)
              throw std::invalid_argument("token id at position " + std::to_string(i) + " is out of range [0, " +
                                          std::to_string(e.enc->vocab_size()) + ")");
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
      .def("token_bytes", [](const PyEncoder& e, int64_t id) {
        if (!e.enc->valid_id(id))
          throw std::invalid_argument("token id " + std::to_string(id) +
                                      (id >= 0 && size_t(id) < e.enc->vocab_size()
                                           ? std::string(" is not a token of this vocabulary")
                                           : " is out of range [0, " + std::to_string(e.enc->vocab_size()) + ")"));
        std::string_view t = e.enc->token(size_t(id));
        return py::bytes(t.data(), t.size());
      }, py::arg("id"))
      .def_property_readonly("vocab_size", [](const PyEncoder& e) { return e.enc->vocab_size(); });
}

}  // namespace kgpt_bind
