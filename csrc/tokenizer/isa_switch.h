// A process-wide choice between a portable code path and one SIMD path of the tokenizer, settable
// by a test hook: "auto" (the SIMD path where this CPU has it), "scalar", or the SIMD path's name.
// The choice is made on first use and read with one relaxed atomic load.
#pragma once
#include <atomic>
#include <cstring>

namespace kgpt { namespace tok {

class IsaSwitch {
 public:
  // simd_name: the SIMD path's name; has_simd: whether this CPU runs it (nullptr: never).
  constexpr IsaSwitch(const char* simd_name, bool (*has_simd)()) : name_(simd_name), has_(has_simd) {}
  bool simd() const {
    int v = v_.load(std::memory_order_relaxed);
    if (v < 0) {
      v = best();
      v_.store(v, std::memory_order_relaxed);
    }
    return v == 1;
  }
  // false (nothing changed) for an unknown name or a path this CPU lacks.
  bool set(const char* name) {
    int v;
    if (std::strcmp(name, "auto") == 0) v = best();
    else if (std::strcmp(name, "scalar") == 0) v = 0;
    else if (std::strcmp(name, name_) == 0 && best() == 1) v = 1;
    else return false;
    v_.store(v, std::memory_order_relaxed);
    return true;
  }
  const char* name() const { return simd() ? name_ : "scalar"; }

 private:
  int best() const { return has_ != nullptr && has_() ? 1 : 0; }
  const char* name_;
  bool (*has_)();
  mutable std::atomic<int> v_{-1};  // -1: not chosen yet, 0 scalar, 1 SIMD
};

}}  // namespace kgpt::tok
