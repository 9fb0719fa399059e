"""A user's script: must pass `mypy --strict` with the types kernelgpt declares.
Type-checked only (tests/test_typing.py), never run. assert_type fails under mypy when an
expression is Any, so this also proves that the public names are not Any."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import kernelgpt
from kernelgpt import GPT, GPTConfig, Tokenizer, Trainer, available_backends, load_pretrained
from kernelgpt.checkpoint import Checkpoint, load_model
from kernelgpt.data import TokenDataset
from kernelgpt.train import TrainConfig

assert_type(kernelgpt.__version__, str)

tok = Tokenizer.train(["some text", "more text"], vocab_size=300)
assert_type(tok, Tokenizer)
assert_type(tok.vocab_size, int)
ids = tok.encode("def f(x): return x")
assert_type(ids, List[int])
assert_type(tok.decode(ids), str)
assert_type(tok.encode_to_numpy("x"), NDArray[np.int32])
assert_type(tok.special_tokens, Dict[str, int])
n_tokens: int = tok.vocab_size + len(ids)

cfg = GPTConfig.preset("xs", vocab_size=tok.vocab_size)
assert_type(cfg, GPTConfig)
assert_type(cfg.n_layer, int)
model = GPT(cfg, backend="numpy", seed=0)
assert_type(model, GPT)
assert_type(model.config, GPTConfig)
assert_type(model.num_params(), int)
logits, loss = model.forward(np.zeros((1, 4), dtype=np.int32))
assert_type(loss, Optional[float])

loaded = load_model("runs/xs")
assert_type(loaded, Tuple[GPT, Optional[Tokenizer], Checkpoint])
model2, tok2, ck = loaded
if tok2 is not None:
    text: str = tok2.decode(tok2.encode("def "))
pre = load_pretrained("hf-xs")
assert_type(pre, Tuple[GPT, Optional[Tokenizer]])
assert_type(available_backends(), List[str])

data = TokenDataset.from_file("tokens.bin", val_fraction=0.1, seed=0)
trainer = Trainer(model, data, TrainConfig(batch_size=8, max_steps=10), out_dir="run")
summary = trainer.fit()
assert_type(summary, Dict[str, Any])
