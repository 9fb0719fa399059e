#include "common/isa.h"
#include "common/cpu_features.h"

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
}  // namespace kgpt
