// Run-time CPU feature detection: kernels compiled with target attributes pick their
// AVX2/FMA path only when the running CPU has it, so one binary runs everywhere.
#pragma once

namespace kgpt {
bool cpu_has_avx2_fma();
}
