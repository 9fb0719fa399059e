#include "common/isa.h"
#include "common/cpu_features.h"
#include "cpu/dispatch.h"

#include <atomic>

#if KGPT_X86 && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace kgpt {
bool cpu_has_avx2_fma() {
#if KGPT_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx512f() {
#if KGPT_X86
  static const bool ok = __builtin_cpu_supports("avx512f") && cpu_has_avx2_fma();
  return ok;
#else
  return false;
#endif
}

namespace cpu {
namespace {
std::atomic<bool> g_allow_amx{true};

#if KGPT_X86 && defined(__linux__) && defined(__x86_64__)
bool amx_probe() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1;
  if (!tile || !int8 || !osxsave) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3) != 3) return false;  // XTILECFG and XTILEDATA enabled by the OS
  // Linux hands out the 8 KB tile data state only on request (once per process).
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#else
bool amx_probe() { return false; }
#endif
}  // namespace

bool cpu_has_amx_int8() {
  static const bool ok = amx_probe();
  return ok;
}

bool ops_use_amx() {
  return g_allow_amx.load(std::memory_order_relaxed) && ops_use_avx512() && cpu_has_amx_int8();
}

void ops_set_allow_amx(bool on) { g_allow_amx.store(on); }
}  // namespace cpu
}  // namespace kgpt
