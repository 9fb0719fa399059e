// _native.tiktoken_ranks_to_merges(data: bytes): the fast path of Tokenizer.from_tiktoken (see
// tokenizer/tiktoken_ranks.h). None when the file needs the Python path (anything unusual, every
// error included); else (byte_ranks int64 (256,), merges int32 (n, 2), ranks int64 (n,)).
#include <pybind11/numpy.h>

#include <cstring>

#include "bindings/native_init.h"
#include "tokenizer/tiktoken_ranks.h"

namespace py = pybind11;

namespace kgpt_bind {

void init_vocab(py::module_& m) {
  m.def(
      "tiktoken_ranks_to_merges",
      [](py::bytes data) -> py::object {
        char* p = nullptr;
        Py_ssize_t n = 0;
        if (PyBytes_AsStringAndSize(data.ptr(), &p, &n) != 0) throw py::error_already_set();
        kgpt::tok::RanksMerges rm;
        bool ok = false;
        {
          py::gil_scoped_release nogil;  // `data` is referenced by the caller: immutable bytes
          try {
            ok = kgpt::tok::tiktoken_ranks_to_merges(std::string_view(p, size_t(n)), &rm);
          } catch (const std::bad_alloc&) {
            ok = false;  // the Python path then runs (and raises MemoryError if it must)
          }
        }
        if (!ok) return py::none();
        py::array_t<int64_t> byte_ranks(256);
        std::memcpy(byte_ranks.mutable_data(), rm.byte_rank, sizeof(rm.byte_rank));
        const py::ssize_t k = py::ssize_t(rm.merges.size());
        py::array_t<int32_t> merges({k, py::ssize_t(2)});
        int32_t* w = merges.mutable_data();
        for (py::ssize_t i = 0; i < k; ++i) {
          w[2 * i] = rm.merges[size_t(i)].first;
          w[2 * i + 1] = rm.merges[size_t(i)].second;
        }
        py::array_t<int64_t> ranks(k);
        if (k) std::memcpy(ranks.mutable_data(), rm.ranks.data(), sizeof(int64_t) * size_t(k));
        return py::make_tuple(byte_ranks, merges, ranks);
      },
      py::arg("data"),
      "A tiktoken ranks file's text -> (byte_ranks, merges, ranks), or None when the file needs "
      "Tokenizer.from_tiktoken's Python path (which then raises on errors).");
}

}  // namespace kgpt_bind
