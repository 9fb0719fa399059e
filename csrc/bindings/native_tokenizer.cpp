// Tokenizer bindings (pre-tokenizer, BPE trainer, encoder). Filled in by the tokenizer work.
#include "bindings/native_init.h"

namespace kgpt_bind {
void init_tokenizer(pybind11::module_& m) { (void)m; }
}  // namespace kgpt_bind
