// Tiny fork-safe parallel loop for the tokenizer: fresh std::threads per call, items handed out
// one at a time from an atomic counter (dynamic schedule), so any number of threads >= 1 does all
// the work: a thread the system refuses to create (std::system_error: a PID/thread limit, no memory
// for its stack) is not fatal, the loop runs on the threads it got and records the shortfall in
// thread_shortfall() for the caller to report. Not OpenMP on purpose: GNU libgomp's
// thread pool does not survive fork(), so a child of a process that had trained or batch-encoded
// would hang (multiprocessing "fork" workers, data loaders). Thread-count default: OpenMP's
// (OMP_NUM_THREADS / cores), read without starting an OpenMP pool.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt { namespace tok {

inline int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  if (const char* s = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(s);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

// What parallel_for could not start, per calling thread: `wanted` threads asked for (0: no
// shortfall since the caller last reset it), `started` the fewest it ran on, `what` the system's
// reason. Callers reset it, run, and report it (the bindings log a warning).
struct ThreadShortfall {
  size_t wanted = 0, started = 0;
  std::string what;
};
inline ThreadShortfall& thread_shortfall() {
  thread_local ThreadShortfall s;
  return s;
}

// Calls fn(item, thread_index) for item in [0, n) on up to min(threads, n) threads (threads <= 0:
// the default), thread_index < that count. The first exception thrown by fn is rethrown here after
// all threads have joined. Threads that cannot be created: fewer threads (see above).
template <class Fn>
void parallel_for(size_t n, int threads, Fn&& fn) {
  if (threads <= 0) threads = default_threads();
  const size_t nt = std::min<size_t>(size_t(threads), n);
  if (nt <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;
  auto work = [&](int t) {
    try {
      for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(i, t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!err) err = std::current_exception();
      next.store(n);
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(nt - 1);
    for (size_t t = 1; t < nt; ++t) pool.emplace_back(work, int(t));
  } catch (const std::exception& e) {  // std::system_error (EAGAIN) or std::bad_alloc
    ThreadShortfall& s = thread_shortfall();
    if (s.wanted == 0 || pool.size() + 1 < s.started) {
      s.wanted = nt;
      s.started = pool.size() + 1;
      s.what = e.what();
    }
  }
  work(0);  // the threads started so far (at least this one) share every item
  for (auto& th : pool) th.join();
  if (err) std::rethrow_exception(err);
}

}}  // namespace kgpt::tok
