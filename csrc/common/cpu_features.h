// Run-time CPU feature detection: kernels compiled with target attributes pick their
// AVX2/FMA (or AVX-512) path only when the running CPU has it, so one binary runs everywhere.
#pragma once

namespace kgpt {
bool cpu_has_avx2_fma();
// AVX-512F together with AVX2/FMA (every AVX-512 kernel here also uses AVX2/FMA code).
bool cpu_has_avx512f();
}
