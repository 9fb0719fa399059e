// Run-time ISA dispatch for the non-GEMM kernels: KGPT_MULTIVERSION compiles one serial worker
// body twice, once for AVX2/FMA (function-level target attribute) and once portable, and picks
// the clone at run time with kgpt::cpu_has_avx2_fma(). OpenMP lives in the callers, outside the
// worker, because parallel regions are outlined before inlining and would lose the target.
#pragma once
#include <cstdint>

#include "common/cpu_features.h"

#include "common/isa.h"
#define KGPT_INLINE static inline __attribute__((always_inline))

// Usage: KGPT_MULTIVERSION(void, name, (float* a, int64_t n), (a, n)) { ...serial body... }
#define KGPT_MULTIVERSION(ret, name, params, args)                                  \
  KGPT_INLINE ret name##_body params;                                              \
  KGPT_TARGET_AVX2 static ret name##_avx2 params { return name##_body args; }     \
  static ret name##_portable params { return name##_body args; }                  \
  static ret name params {                                                         \
    return ::kgpt::cpu::ops_use_avx2() ? name##_avx2 args : name##_portable args;  \
  }                                                                                \
  KGPT_INLINE ret name##_body params

namespace kgpt {
namespace cpu {
// True when the CPU has AVX2+FMA and the portable paths are not forced (test hook below).
bool ops_use_avx2();
// Test hook (process-wide): force the portable clones of every non-GEMM kernel.
void ops_set_force_portable(bool on);
// True when ops_use_avx2() and the CPU has AVX-512F and the hook below allows it: the kernels
// with AVX-512 variants (attention tiles, AdamW) use them. Their results equal the AVX2 ones.
bool ops_use_avx512();
// Test hook (process-wide): allow (default) or forbid the AVX-512 variants.
void ops_set_allow_avx512(bool on);
// True when the CPU has AMX-INT8 (AMX-TILE + AMX-INT8 in CPUID, tile state enabled by the OS in
// XCR0) and Linux granted this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM,
// asked once); false elsewhere or where the build has no AMX code.
bool cpu_has_amx_int8();
// True when ops_use_avx512(), cpu_has_amx_int8() and the hook below allows it: the int8
// products of several rows run on AMX tiles (quant_amx.cpp). Their results equal the VNNI ones.
bool ops_use_amx();
// Test hook (process-wide): allow (default) or forbid AMX.
void ops_set_allow_amx(bool on);
// Below this many elements an elementwise op runs on the calling thread only.
constexpr int64_t kParallelMin = 1 << 15;
// Elementwise ops split their range into chunks of this size (static schedule).
constexpr int64_t kChunk = 1 << 13;
// The first 64-byte boundary at or after p: scratch vectors get 16 spare floats and start their
// data there (std::vector's 16-byte alignment makes 32- and 64-byte vector accesses straddle
// cache lines).
inline float* line_aligned(float* p) {
  return p + (16 - reinterpret_cast<uintptr_t>(p) / sizeof(float) % 16) % 16;
}
}  // namespace cpu
}  // namespace kgpt
