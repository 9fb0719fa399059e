// Measured ceilings of this machine, reported by the benchmarks next to what the kernels reach
// (benchmarks/README.md): the FMA peak (each thread runs independent chains of fused multiply-adds
// in registers, no memory traffic, for a fixed wall time) and the streaming read bandwidth over a
// buffer of a given size (the bound of batch-1 decoding, which reads every weight once a token).
#include "cpu/peak.h"

#include "common/cpu_features.h"
#include "common/threads.h"

#include <atomic>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/isa.h"

namespace kgpt {
namespace cpu {
namespace {

using Clock = std::chrono::steady_clock;

// 12 independent accumulators hide the FMA latency (4 cycles) on two FMA ports.
constexpr int64_t kInner = 1 << 16;
constexpr int kChains = 12;

#if KGPT_X86
KGPT_TARGET_AVX512 double spin_avx512(double seconds, float* sink) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1.0f + 1e-3f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  int64_t reps = 0;
  const auto t0 = Clock::now();
  double dt = 0;
  do {
    for (int64_t r = 0; r < kInner; ++r)
      for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    ++reps;
    dt = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (dt < seconds);
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  *sink = _mm512_reduce_add_ps(s);
  return double(reps) * kInner * kChains * 16 * 2 / dt;
}

KGPT_TARGET_AVX2 double spin_avx2(double seconds, float* sink) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1.0f + 1e-3f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  int64_t reps = 0;
  const auto t0 = Clock::now();
  double dt = 0;
  do {
    for (int64_t r = 0; r < kInner; ++r)
      for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    ++reps;
    dt = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (dt < seconds);
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  float v[8];
  _mm256_storeu_ps(v, s);
  *sink = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
  return double(reps) * kInner * kChains * 8 * 2 / dt;
}
#endif

// Sum of n floats with 4 independent vector accumulators: a pure streaming read.
#if KGPT_X86
KGPT_TARGET_AVX2 float read_sum_avx2(const float* p, int64_t n) {
  __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
    b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
    c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16));
    d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
  }
  float v[8];
  _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
  float s = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
  for (; i < n; ++i) s += p[i];
  return s;
}
#endif

float read_sum_portable(const float* p, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  float s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  for (; i < n; ++i) s += p[i];
  return s;
}

// Starts body(t) on `threads` std::threads that wait at a common start line (a counter), then
// joins them. A thread the system refuses to create (std::system_error: a PID/thread limit, no
// memory for its stack): the started ones are released with abort = true, joined, and a
// std::runtime_error names the shortfall (a probe on fewer threads would measure something else).
template <class Body>
void run_together(int threads, Body&& body) {
  std::atomic<int> ready{0};
  std::atomic<bool> abort{false};
  std::vector<std::thread> pool;
  std::string failure;
  try {
    pool.reserve(size_t(threads));
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        ready.fetch_add(1);
        while (ready.load() < threads && !abort.load()) std::this_thread::yield();  // start together
        if (!abort.load()) body(t);
      });
  } catch (const std::exception& e) {
    failure = "could not start thread " + std::to_string(pool.size() + 1) + " of " +
              std::to_string(threads) + " (" + e.what() + ")";
    abort.store(true);
  }
  for (auto& th : pool) th.join();
  if (!failure.empty()) throw std::runtime_error(failure);
}

}  // namespace

double read_bandwidth_gbs(double megabytes, int threads, double seconds) {
  if (threads < 1 || threads > kMaxThreads)
    throw std::invalid_argument("threads must be in [1, " + std::to_string(kMaxThreads) +
                                "], got " + std::to_string(threads));
  if (!(megabytes > 0) || megabytes > 4096)
    throw std::invalid_argument("megabytes must be in (0, 4096], got " + std::to_string(megabytes));
  if (!(seconds > 0) || seconds > 60)
    throw std::invalid_argument("seconds must be in (0, 60], got " + std::to_string(seconds));
  const int64_t n = static_cast<int64_t>(megabytes * 1e6 / sizeof(float)) / threads * threads;
  std::vector<float> buf(static_cast<size_t>(n), 1.0f);  // touched once: resident in the caches
                                                         // or RAM as its size allows
  const bool avx2 = cpu_has_avx2_fma();
  (void)avx2;
  std::vector<float> sink(threads, 0.f);
  std::vector<double> bytes(threads, 0.0), secs(threads, 0.0);
  run_together(threads, [&](int t) {
      const float* p = buf.data() + n / threads * t;
      const int64_t len = n / threads;
      const auto t0 = Clock::now();
      double dt = 0;
      int64_t reps = 0;
      do {
#if KGPT_X86
        sink[t] += avx2 ? read_sum_avx2(p, len) : read_sum_portable(p, len);
#else
        sink[t] += read_sum_portable(p, len);
#endif
        ++reps;
        dt = std::chrono::duration<double>(Clock::now() - t0).count();
      } while (dt < seconds);
      bytes[t] = double(reps) * len * sizeof(float);
      secs[t] = dt;
    });
  double total = 0;
  for (int t = 0; t < threads; ++t) total += bytes[t] / secs[t];
  volatile float keep = sink[0];
  (void)keep;
  return total / 1e9;
}

double fma_peak_gflops(const std::string& isa, int threads, double seconds) {
  if (threads < 1 || threads > kMaxThreads)
    throw std::invalid_argument("threads must be in [1, " + std::to_string(kMaxThreads) +
                                "], got " + std::to_string(threads));
  if (!(seconds > 0) || seconds > 60)
    throw std::invalid_argument("seconds must be in (0, 60], got " + std::to_string(seconds));
  double (*spin)(double, float*) = nullptr;
#if KGPT_X86
  if (isa == "avx512") {
    if (!cpu_has_avx512f())
      throw std::invalid_argument("this CPU has no AVX-512F");
    spin = spin_avx512;
  } else if (isa == "avx2_fma") {
    if (!cpu_has_avx2_fma())
      throw std::invalid_argument("this CPU has no AVX2/FMA");
    spin = spin_avx2;
  }
#endif
  if (!spin)
    throw std::invalid_argument("isa must be 'avx512' or 'avx2_fma' (x86-64 only), got '" + isa + "'");
  std::vector<double> rate(threads, 0.0);
  std::vector<float> sink(threads, 0.f);
  run_together(threads, [&](int t) { rate[t] = spin(seconds, &sink[t]); });
  double total = 0;
  for (double r : rate) total += r;
  volatile float keep = sink[0];  // the chains' results are used
  (void)keep;
  return total / 1e9;
}

}  // namespace cpu
}  // namespace kgpt
