// Carrying C++ exceptions out of OpenMP regions and threads: an exception that leaves a parallel
// region's structured block (or a std::thread's function) calls std::terminate and aborts the
// process. Every region whose body can throw (allocations) runs it through ErrorCarrier::run,
// which keeps the first exception; the caller rethrows it after the region, on its own thread,
// where the binding turns it into a Python exception (std::bad_alloc -> MemoryError).
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>

namespace kgpt {

class ErrorCarrier {
 public:
  // Runs f(); an exception it throws is kept (the first one) instead of propagating.
  template <class F>
  void run(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      keep(std::current_exception());
    }
  }
  void keep(std::exception_ptr e) noexcept {
    if (!claimed_.exchange(true, std::memory_order_acq_rel)) error_ = e;
    failed_.store(true, std::memory_order_release);
  }
  // Whether some thread has failed (other threads skip the remaining work).
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }
  // After the region (its join orders the writes): rethrows the kept exception, if any.
  void rethrow() const {
    if (failed_.load(std::memory_order_acquire) && error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> claimed_{false}, failed_{false};
  std::exception_ptr error_;
};

// a * b for sizes >= 0, or std::invalid_argument (ValueError) naming `what` when it overflows
// int64. Negative operands are the caller's bug: also an error.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + " overflows int64 (" + std::to_string(a) +
                                " * " + std::to_string(b) + ")");
  return r;
}

}  // namespace kgpt
