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
from numpy.typing import NDArray

from kernelgpt.backends.numpy_backend import empty, to_numpy, zeros  # noqa: F401  (same helpers)

try:
    from kernelgpt import _native
except ImportError:  # not built: is_available() is False and get_backend skips this backend
    _native = None  # type: ignore[assignment]  # the ops are only reached once is_available()

name = "native"
xp = numpy


def unsupported(config: Any) -> Optional[str]:
    """Why this backend cannot run a model of ``config``, or None: every architecture of
    GPTConfig runs here (GPT-2, and the llama-style fields: RMSNorm, rotary positions, SwiGLU,
    grouped-query attention, no biases, untied lm_head). The fused decoder runs GPT-2 only
    (:func:`decoder_supports`); other configs decode op by op."""
    return None


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
    add = _native.add
    rmsnorm_forward = _native.rmsnorm_forward
    rmsnorm_backward = _native.rmsnorm_backward
    rope_forward = _native.rope_forward
    rope_backward = _native.rope_backward
    swiglu_forward = _native.swiglu_forward
    swiglu_backward = _native.swiglu_backward
    crossentropy_forward = _native.crossentropy_forward
    crossentropy_backward = _native.crossentropy_backward
    classifier_forward_backward = _native.classifier_forward_backward
    global_norm_sq = _native.global_norm_sq
    scale_ = _native.scale_
    zero_ = _native.zero_
    matmul_forward = _native.matmul_forward
    matmul_backward = _native.matmul_backward

    def adamw_update(params: NDArray[np.float32], grads: NDArray[np.float32],
                     m: NDArray[np.float32], v: NDArray[np.float32], *, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, step: int) -> None:
        """One fused AdamW step over flat float32 arrays, in place (see base.py)."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        _native.adamw_update(params, grads, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, step=int(step))


# The fused KV-cache decoder (_native.Decoder, csrc/cpu/decode.cpp) runs GPT-2's block and the
# llama-style variants (RMSNorm, rotary positions, SwiGLU, grouped-query attention, no biases, an
# untied lm_head), batches of 1 to 16 in every weight format (fp32, and bf16 or int8 matrices,
# kernelgpt.quant), each weight read once per step for all rows, each row's values bitwise those
# of the row alone. It declares that here; make_decoder returns None for anything else and the
# model decodes op by op.
_DECODER_MAX_BATCH = 16
# The decoder's slots, in its order: the names of the parameter table that fill them (a slot
# whose parameter the config lacks gets None).
_DECODER_TOP = ("wte", "wpe", "ln_f.w", "ln_f.b", "lm_head.w")
_DECODER_BLOCK = ("ln_1.w", "ln_1.b", "attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w",
                  "attn.c_proj.b", "ln_2.w", "ln_2.b", "mlp.c_fc.w", "mlp.c_fc.b",
                  "mlp.c_proj.w", "mlp.c_proj.b")


def decoder_supports(model: Any, batch: int, weights: str = "fp32") -> bool:
    """Whether the fused decoder can run ``model`` at this batch size: a float32 model, batch 1 to
    16 (``weights`` "fp32", "bf16" or "int8" alike), and every parameter of the model's table in
    one of the decoder's slots (GPT-2 and the llama-style fields all are)."""
    del weights  # every format has the same limit
    if not (_native is not None and np.dtype(model.dtype) == np.float32
            and 1 <= batch <= _DECODER_MAX_BATCH):
        return False
    from kernelgpt.model import param_table
    t = param_table(model.config)
    return ({s.name for s in t.embedding + t.final} <= set(_DECODER_TOP)
            and {s.name for s in t.block} <= set(_DECODER_BLOCK))


def make_decoder(model: Any, caches: Any, batch: int, qweights: Any = None) -> Any:
    """A fused KV-cache decoder (``_native.Decoder``) over the model's weights and these caches,
    or None where it does not apply (:func:`decoder_supports`). Its ``step(tok, pos, logits)``
    gives each row bitwise the logits of that row alone, and at batch 1 those of the op-by-op step
    (tests/test_native_decode.py). ``qweights``: a
    :class:`kernelgpt.quant.QuantizedWeights` whose matrices the decoder reads instead of the
    float32 ones (tests/test_quant.py)."""
    fmt = "fp32" if qweights is None else qweights.fmt
    if not decoder_supports(model, batch, fmt):
        return None
    extra = {} if qweights is None else qweights.decoder_args()
    cfg, p = model.config, model.param_views
    top = [(n, p.get(n)) for n in _DECODER_TOP]
    layers = [[(f"h.{l}.{n}", w.get(n)) for n in _DECODER_BLOCK]
              for l, w in enumerate(model.layer_params)]
    return _native.Decoder(top, layers, [tuple(kv) for kv in caches], cfg.n_head, batch,
                           cfg.norm_eps, n_kv_head=cfg.kv_heads, rmsnorm=cfg.norm == "rmsnorm",
                           rope=cfg.pos_emb == "rope", swiglu=cfg.mlp == "swiglu",
                           rope_theta=float(cfg.rope_theta), **extra)
