// Measured single-precision FMA peak (GFLOP/s) of this machine; see peak.cpp.
#pragma once
#include <string>

namespace kgpt {
namespace cpu {
// isa: "avx512" or "avx2_fma"; runs `threads` threads for `seconds` each and sums their rates.
// Throws std::invalid_argument for bad arguments or an ISA the CPU lacks.
double fma_peak_gflops(const std::string& isa, int threads, double seconds);
// GB/s of `threads` threads each summing its part of one `megabytes` buffer, repeatedly, for
// `seconds`; rates are summed. Throws std::invalid_argument for bad arguments.
double read_bandwidth_gbs(double megabytes, int threads, double seconds);
}  // namespace cpu
}  // namespace kgpt
