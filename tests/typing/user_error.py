"""A user's script with deliberate type errors: `mypy --strict` must report each line marked
`# E: <code>` (tests/test_typing.py), which it cannot while the public names are Any."""
from __future__ import annotations

import kernelgpt
from kernelgpt import GPTConfig, Tokenizer
from kernelgpt.checkpoint import load_model

tok = Tokenizer.train("some text", vocab_size=300)
tok.vocab_size + "x"  # E: operator
cfg: GPTConfig = GPTConfig.preset("xs")
cfg.n_layer.upper()  # E: attr-defined
model, tok2, ck = load_model("runs/xs")
tok2.decode([1])  # E: union-attr
kernelgpt.no_such_name  # E: attr-defined
