"""The native CPU backend: the op interface of :mod:`kernelgpt.backends.base` on the C++ kernels
of ``kernelgpt._native`` (csrc/cpu/, bound in csrc/bindings/native_cpu.cpp and native_gemm.cpp).

Arrays are float32 (int32 for ids) C-contiguous numpy arrays; the bindings raise TypeError for any
other dtype or layout and ValueError for shapes and id ranges, naming the argument. Same ``=``/``+=``
rule as base.py. Threads: OpenMP, sized by OMP_NUM_THREADS or an explicit :func:`set_num_threads`
call (this module never sets a thread count by itself); one thread in a forked child.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy
import numpy as np

from kernelgpt.backends.numpy_backend import empty, to_numpy, zeros  # noqa: F401  (same helpers)

try:
    from kernelgpt import _native
except ImportError:  # not built: is_available() is False and get_backend skips this backend
    _native = None

name = "native"
xp = numpy


def is_available() -> bool:
    return _native is not None


# ---------------------------------------------------------------------------------- array helpers
# Host numpy arrays, as in the NumPy backend (empty, zeros, to_numpy come from there); only
# asarray differs (float32 unless told).
def asarray(a: Any, dtype: Any = None) -> np.ndarray:
    """Host array -> a C-contiguous numpy array (float32 unless ``dtype`` says otherwise; no copy
    when already one)."""
    if dtype is None:
        arr = np.asarray(a)
        dtype = arr.dtype if arr.dtype.kind in "iub" else np.float32
        return np.ascontiguousarray(arr, dtype=dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def set_num_threads(n: int) -> None:
    """Set the thread count the kernels use (process-wide, from any thread; only when the caller
    asks). ``n``: an int (numpy integers too) in [1, 4096], else ValueError/TypeError. In a
    process forked after the module was loaded (``multiprocessing`` with the fork start method)
    the kernels run on one thread whatever this says: GNU OpenMP's pool does not survive fork."""
    _native.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels use now: 1 in a forked child (see :func:`set_num_threads`)."""
    return int(_native.max_threads())


# ---------------------------------------------------------------------------------- ops
if _native is not None:
    embedding_forward = _native.embedding_forward
    embedding_backward = _native.embedding_backward
    layernorm_forward = _native.layernorm_forward
    layernorm_backward = _native.layernorm_backward
    attention_forward = _native.attention_forward
    attention_backward = _native.attention_backward
    attention_decode = _native.attention_decode
    gelu_forward = _native.gelu_forward
    gelu_backward = _native.gelu_backward
    residual_forward = _native.residual_forward
    residual_backward = _native.residual_backward
    crossentropy_forward = _native.crossentropy_forward
    crossentropy_backward = _native.crossentropy_backward
    global_norm_sq = _native.global_norm_sq
    scale_ = _native.scale_
    zero_ = _native.zero_

    def adamw_update(params, grads, m, v, *, lr: float, beta1: float, beta2: float, eps: float,
                     weight_decay: float, step: int) -> None:
        """One fused AdamW step over flat float32 arrays, in place (see base.py)."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        _native.adamw_update(params, grads, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, step=int(step))

    # The GEMM kernels come from native_gemm.cpp; fall back to the reference where a build lacks
    # them (they are float32-only here too).
    if hasattr(_native, "matmul_forward"):
        matmul_forward = _native.matmul_forward
        matmul_backward = _native.matmul_backward
    else:  # pragma: no cover - only for partial builds
        from kernelgpt.backends.numpy_backend import matmul_backward, matmul_forward  # noqa: F401
    def make_decoder(param_views, caches, n_head: int, batch: int):
        """A fused KV-cache decoder (``_native.Decoder``) over the model's weights and these
        caches, or None where it does not apply (batch > 4, or a build without it). Its
        ``step(tok, pos, logits)`` equals the op-by-op step bitwise (tests/test_sample.py)."""
        if not hasattr(_native, "Decoder") or not 1 <= batch <= 4:
            return None
        p = param_views
        n_layer = len(caches)
        names = ("ln_1.w", "ln_1.b", "attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w",
                 "attn.c_proj.b", "ln_2.w", "ln_2.b", "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w",
                 "mlp.c_proj.b")
        layers = [tuple(p[f"h.{l}.{n}"] for n in names) for l in range(n_layer)]
        return _native.Decoder(p["wte"], p["wpe"], p["ln_f.w"], p["ln_f.b"], layers,
                               [tuple(kv) for kv in caches], n_head, batch)

    if hasattr(_native, "classifier_forward"):
        def classifier_forward(losses, dx: Optional[np.ndarray], dwte: Optional[np.ndarray], x,
                               wte, targets, scale: float) -> None:
            """Fused lm_head + softmax + cross-entropy (see base.py)."""
            _native.classifier_forward(losses, dx, dwte, x, wte, targets, float(scale))
    else:  # pragma: no cover
        from kernelgpt.backends.numpy_backend import classifier_forward  # noqa: F401
