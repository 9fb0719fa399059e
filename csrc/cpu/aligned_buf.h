// A thread's reusable 64-byte aligned float buffer, grown when asked for more (never shrunk;
// freed with its owner, typically a thread_local at thread exit).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace kgpt {
namespace cpu {

struct AlignedFloats {
  float* p = nullptr;
  size_t n = 0;
  AlignedFloats() = default;
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  ~AlignedFloats() { std::free(p); }
  // At least `need` floats, or nullptr when they cannot be allocated (the old buffer is gone
  // then, so a failed call never leaves a stale size behind).
  float* try_get(size_t need) noexcept {
    if (need > n) {
      std::free(p);
      n = 0;
      p = static_cast<float*>(std::aligned_alloc(64, ((need * sizeof(float) + 63) / 64) * 64));
      if (p != nullptr) n = need;
    }
    return p;
  }
  // The same, std::bad_alloc when they cannot be allocated.
  float* get(size_t need) {
    float* q = try_get(need);
    if (q == nullptr) throw std::bad_alloc();
    return q;
  }
};

}  // namespace cpu
}  // namespace kgpt
