// The instruction-set target macros of the CPU kernels, in one place. Every file compiles without
// -march flags; the AVX2/FMA and AVX-512 variants are single functions compiled for their ISA
// through a function target attribute, and chosen at run time (common/cpu_features.h):
//   KGPT_X86            1 on x86 (the variants exist), 0 elsewhere (only the portable path);
//   KGPT_TARGET_AVX2    compile this function for AVX2 + FMA;
//   KGPT_TARGET_AVX512  compile this function for AVX-512F (+ AVX2, FMA).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define KGPT_X86 1
#include <immintrin.h>
#define KGPT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define KGPT_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define KGPT_X86 0
#define KGPT_TARGET_AVX2
#define KGPT_TARGET_AVX512
#endif
