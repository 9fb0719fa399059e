// GEMM bindings (matmul_forward/backward, fused classifier). Filled in by the GEMM work.
#include "bindings/native_init.h"

namespace kgpt_bind {
void init_gemm(pybind11::module_& m) { (void)m; }
}  // namespace kgpt_bind
