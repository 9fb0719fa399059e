"""kernelgpt: train a byte-level BPE tokenizer and a small GPT from Python, with C++/CUDA kernels
and a pure-NumPy reference for every one of them. No PyTorch.

This is the public API; heavy modules are imported on first use so ``import kernelgpt`` is fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Tokenizer", "GPT", "GPTConfig", "Trainer", "get_backend", "available_backends",
           "load_pretrained", "evaluate", "set_num_threads"]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each is imported on first use
    from .backends import available_backends, get_backend
    from .evaluation import evaluate
    from .interop_hf import load_pretrained
    from .model import GPT, GPTConfig
    from .tokenizer import Tokenizer
    from .train import Trainer
else:
    def __getattr__(name: str) -> Any:
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
        if name == "evaluate":
            from .evaluation import evaluate
            return evaluate
        raise AttributeError(f"module 'kernelgpt' has no attribute {name!r}")


def set_num_threads(n: int) -> None:
    """Set the number of threads the native C++ kernels use (OpenMP; process-wide), as
    ``kernelgpt.backends.native_backend.set_num_threads``. ValueError unless 1 <= n <= backends.base.MAX_THREADS;
    RuntimeError when the native module is not built. The NumPy backend's threads are those of
    its BLAS (set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting Python)."""
    from .backends.base import check_num_threads
    from .backends import native_backend
    n = check_num_threads(n)
    if not native_backend.is_available():
        raise RuntimeError("kernelgpt.set_num_threads: the native module (kernelgpt._native) is "
                           "not built")
    native_backend.set_num_threads(n)
