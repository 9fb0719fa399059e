// Pre-tokenizer bindings. Filled in by the pre-tokenizer work.
#include "bindings/native_init.h"

namespace kgpt_bind {
void init_pretokenize(pybind11::module_& m) { (void)m; }
}  // namespace kgpt_bind
