// CPU kernel bindings (gemm, attention, layernorm, ...). Filled in by the native backend work.
#include "bindings/native_init.h"

namespace kgpt_bind {
void init_cpu_ops(pybind11::module_& m) { (void)m; }
}  // namespace kgpt_bind
