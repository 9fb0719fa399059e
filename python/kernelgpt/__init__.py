"""kernelgpt: train a byte-level BPE tokenizer and a small GPT from Python, with C++/CUDA kernels
and a pure-NumPy reference for every one of them. No PyTorch.

This is the public API; heavy modules are imported on first use so ``import kernelgpt`` is fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Tokenizer", "GPT", "GPTConfig", "Trainer", "get_backend", "available_backends",
           "load_pretrained"]


def __getattr__(name: str):
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    if name in ("GPT", "GPTConfig"):
        from . import model
        return getattr(model, name)
    if name == "Trainer":
        from .train import Trainer
        return Trainer
    if name in ("get_backend", "available_backends"):
        from . import backends
        return getattr(backends, name)
    if name == "load_pretrained":
        from .interop_hf import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'kernelgpt' has no attribute {name!r}")
