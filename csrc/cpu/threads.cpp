// kgpt::num_threads and the fork handler (see common/threads.h).
#include "common/threads.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kgpt {
namespace {

std::atomic<int> g_requested{0};  // 0: not read yet
std::atomic<bool> g_forked{false};
std::once_flag g_init_once;

void on_fork_child() { g_forked.store(true, std::memory_order_relaxed); }

int initial_threads() {
#ifdef _OPENMP
  return std::max(1, std::min(kMaxThreads, omp_get_max_threads()));
#else
  return 1;
#endif
}

}  // namespace

void threads_init() {
  std::call_once(g_init_once, [] {
    int expected = 0;
    g_requested.compare_exchange_strong(expected, initial_threads());
    pthread_atfork(nullptr, nullptr, on_fork_child);
  });
}

int requested_threads() {
  int n = g_requested.load(std::memory_order_relaxed);
  if (n == 0) {  // used before threads_init (a static library user): read it now
    threads_init();
    n = g_requested.load(std::memory_order_relaxed);
  }
  return n;
}

int num_threads() {
  if (g_forked.load(std::memory_order_relaxed)) return 1;
  return requested_threads();
}

void set_num_threads(int n) {
  threads_init();
  n = std::max(1, std::min(kMaxThreads, n));
  g_requested.store(n, std::memory_order_relaxed);
#ifdef _OPENMP
  // Also OpenMP's own count for the calling thread (code that reads omp_get_max_threads).
  if (!g_forked.load(std::memory_order_relaxed)) omp_set_num_threads(n);
#endif
}

bool in_forked_child() { return g_forked.load(std::memory_order_relaxed); }

}  // namespace kgpt
