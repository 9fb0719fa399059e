"""The op interface every backend implements, name for name.

One model (``model.py``) runs over three backends: ``numpy_backend`` (the readable reference and
test oracle), ``native_backend`` (C++ kernels in ``kernelgpt._native``) and ``cuda_backend`` (CUDA
kernels in ``kernelgpt._cuda`` on CuPy arrays). Each backend is a module exposing the functions
declared by :class:`Backend` below, with the same signatures.

Shape letters, used in every docstring and in csrc/:
    B batch, T sequence length (<= block_size), C channels (n_embd), NH heads, HS = C // NH head
    size, V vocabulary size, N = B*T rows, OC output channels of a matmul, maxT = block_size.

Conventions (the contract the tests check):
- Arrays are the backend's own array type (numpy.ndarray on the CPU, cupy.ndarray on CUDA),
  C-contiguous. Activations and parameters are float32; token ids and targets are int32.
  The NumPy backend also accepts float64 everywhere (the parity tests' reference runs in float64).
- Outputs come first, then inputs, then sizes/scalars. Every function writes into the ``out``/
  ``d*`` buffers it is given and returns nothing (unless stated): nothing is allocated per call.
- ``=`` / ``+=`` rule: activation outputs and activation gradients are OVERWRITTEN (``=``);
  parameter gradients (dw, db, dwte, dwpe, ...) are ACCUMULATED (``+=``) so gradient
  accumulation over micro-batches needs no extra pass. The model zeroes the flat gradient
  buffer once per optimizer step.
- Saved tensors: a forward writes what its backward needs into buffers the caller owns (e.g.
  layernorm's mean/rstd, attention's per-row log-sum-exp); the backward takes them explicitly,
  so no hidden state lives in a backend.
- A backend validates shapes/dtypes/contiguity and raises ValueError (shape) or TypeError
  (dtype/layout) naming the argument; it never crashes on bad input.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Protocol, Tuple, Type

if TYPE_CHECKING:
    import numpy

# A backend array: numpy.ndarray on the CPU backends, cupy.ndarray on CUDA. The Backend protocol
# is polymorphic over the two (and CuPy ships no type information), so the alias is Any.
Array = Any

# ---------------------------------------------------------------------------------- limits
# Each limit is stated here once; every backend enforces it through the functions below (the
# native bindings read these values when the extension is imported), so the same bad call gets
# the same exception and message on every backend.
MAX_HEAD_SIZE = 256
"""Largest head size (C / n_head) of attention: the native kernels keep a query row and its
output accumulator in registers sized for it. The CUDA kernels hold one head in a warp and stop
at CUDA_MAX_HEAD_SIZE (a narrower, CUDA-only limit, checked by the same function)."""
CUDA_MAX_HEAD_SIZE = 128
MAX_THREADS = 4096
"""Largest thread count set_num_threads accepts (a larger team only oversubscribes)."""


def check_heads(C: int, n_head: Any, backend: str = "") -> int:
    """n_head must be an int dividing C, and the head size at most the backend's limit."""
    if isinstance(n_head, bool) or not isinstance(n_head, (int, _np_integer())) or n_head < 1 \
            or C % n_head:
        raise ValueError(f"n_head must be a positive divisor of C={C}, got {n_head!r}")
    check_head_size(C // int(n_head), backend)
    return int(n_head)


def check_head_size(hs: int, backend: str = "") -> None:
    limit = CUDA_MAX_HEAD_SIZE if backend == "cuda" else MAX_HEAD_SIZE
    if hs > limit:
        raise ValueError(f"head size C/n_head must be <= {limit}"
                         f"{' on cuda' if backend == 'cuda' else ''}, got {hs}")


def check_norm_eps(eps: Any, argname: str = "eps") -> float:
    """A norm's epsilon: a finite number > 0 (zero would divide by zero on a constant row)."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a finite number > 0, got {eps!r}") from None
    if isinstance(eps, bool) or not (math.isfinite(e) and e > 0.0):
        raise ValueError(f"{argname} must be a finite number > 0, got {eps!r}")
    return e


def check_num_threads(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, _np_integer())) \
            or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be an int in [1, {MAX_THREADS}], got {n!r}")
    return int(n)


def check_n_valid(n_valid: Any, maxT: int) -> int:
    if isinstance(n_valid, bool) or not isinstance(n_valid, (int, _np_integer())) \
            or not 1 <= n_valid <= maxT:
        raise ValueError(f"n_valid must be an int in [1, {maxT}], got {n_valid!r}")
    return int(n_valid)


def check_shape(a: Any, argname: str, shape: Tuple[int, ...]) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{argname} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def check_ndim(a: Any, argname: str, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{argname} must be {ndim}-D, got shape {tuple(a.shape)}")


def check_id_range(argname: str, lo: int, hi: int, upper: int) -> None:
    if lo < 0 or hi >= upper:
        raise ValueError(f"{argname} values must lie in [0, {upper}), got range [{lo}, {hi}]")


def linear_dims(x: Any, w: Any, wname: str = "w", rows: str = "OC") -> Tuple[int, int, int]:
    """(N, C, rows) of x (N, C) and a weight w (rows, C), checked."""
    check_ndim(x, "x", 2)
    check_ndim(w, wname, 2)
    N, C = x.shape
    if w.shape[1] != C:
        raise ValueError(f"{wname} must have shape ({rows}, C={C}), got {tuple(w.shape)}")
    return N, C, w.shape[0]


def check_kv_heads(n_head: int, n_kv_head: Any) -> int:
    """n_kv_head (None: n_head) must be an int dividing n_head (grouped-query attention)."""
    if n_kv_head is None:
        return n_head
    if isinstance(n_kv_head, bool) or not isinstance(n_kv_head, (int, _np_integer())) \
            or n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"n_kv_head must be a positive divisor of n_head={n_head}, got "
                         f"{n_kv_head!r}")
    return int(n_kv_head)


def qkv_dims(qkv: Any, n_head: Any, backend: str = "",
             n_kv_head: Any = None) -> Tuple[int, int, int, int, int]:
    """(B, T, C, NH, HS) of a qkv array (B, T, (NH + 2 NKV) * HS) holding q (NH heads), k and v
    (NKV heads each; NKV = n_kv_head, None: NH, so (B, T, 3C)), checked."""
    check_ndim(qkv, "qkv", 3)
    B, T, D = qkv.shape
    if n_kv_head is None:
        if D % 3:
            raise ValueError(f"qkv last dimension must be 3*C, got {tuple(qkv.shape)}")
        C = D // 3
        nh = check_heads(C, n_head, backend)
        return B, T, C, nh, C // nh
    if isinstance(n_head, bool) or not isinstance(n_head, (int, _np_integer())) or n_head < 1:
        raise ValueError(f"n_head must be a positive int, got {n_head!r}")
    nkv = check_kv_heads(int(n_head), n_kv_head)
    units = int(n_head) + 2 * nkv
    if D % units:
        raise ValueError(f"qkv last dimension must be (n_head + 2 n_kv_head) * head size = "
                         f"{units} * HS, got {tuple(qkv.shape)}")
    hs = D // units
    check_head_size(hs, backend)
    return B, T, int(n_head) * hs, int(n_head), hs


def _np_integer() -> Type[numpy.integer[Any]]:
    import numpy
    return numpy.integer


class Backend(Protocol):
    name: str        # "numpy" | "native" | "cuda"
    xp: Any          # the array module: numpy or cupy

    def unsupported(self, config: Any) -> Optional[str]:
        """Why this backend cannot run a model of ``config`` (one line), or None. The CUDA
        backend has no kernels for the llama-style ops yet and says so."""

    # ------------------------------------------------------------------ array helpers
    def is_available(self) -> bool: ...
    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """Host array -> backend array (identity on the CPU, a device copy on CUDA)."""
    def to_numpy(self, a: Array) -> Any:
        """Backend array -> numpy.ndarray (identity on the CPU, a host copy on CUDA)."""
    def empty(self, shape: Tuple[int, ...], dtype: Any = "float32") -> Array: ...
    def zeros(self, shape: Tuple[int, ...], dtype: Any = "float32") -> Array: ...

    # ------------------------------------------------------------------ embedding
    def embedding_forward(self, out: Array, idx: Array, wte: Array, wpe: Optional[Array]) -> None:
        """out (B,T,C) = wte[idx] + wpe[:T].  idx (B,T) int32 in [0,V); wte (V,C); wpe (maxT,C),
        or None (no position table: rotary positions)."""
    def embedding_backward(self, dwte: Array, dwpe: Optional[Array], dout: Array,
                           idx: Array) -> None:
        """dwte (V,C) += scatter-add of dout (B,T,C) by idx; dwpe (maxT,C)[:T] += dout summed
        over B (skipped when None). Deterministic: the same result for any thread count."""

    # ------------------------------------------------------------------ layernorm
    def layernorm_forward(self, out: Array, mean: Array, rstd: Array, x: Array, w: Array,
                          b: Array, eps: float = 1e-5) -> None:
        """x (N,C); w, b (C,) -> out (N,C) = (x-mean)*rstd*w + b; saves mean (N,), rstd (N,)
        with rstd = 1/sqrt(var + eps), var the biased variance."""
    def layernorm_backward(self, dx: Array, dw: Array, db: Array, dout: Array, x: Array,
                           w: Array, mean: Array, rstd: Array) -> None:
        """dx (N,C) = ;  dw (C,) += ;  db (C,) += ."""

    # ------------------------------------------------------------------ matmul (linear layer)
    def matmul_forward(self, out: Array, x: Array, w: Array, bias: Optional[Array]) -> None:
        """out (N,OC) = x (N,C) @ w(OC,C).T + bias (OC,) (bias may be None)."""
    def matmul_backward(self, dx: Optional[Array], dw: Array, dbias: Optional[Array],
                        dout: Array, x: Array, w: Array) -> None:
        """dx (N,C) = dout @ w (skipped when dx is None); dw (OC,C) += dout.T @ x;
        dbias (OC,) += dout.sum(0) (skipped when None)."""

    # ------------------------------------------------------------------ attention
    def attention_forward(self, out: Array, lse: Array, qkv: Array, n_head: int,
                          n_kv_head: Optional[int] = None) -> None:
        """Causal multi-head self-attention, grouped-query when n_kv_head < n_head. qkv
        (B,T,(NH+2NKV)*HS) holds q (NH heads), k and v (NKV heads each; NKV = n_kv_head, None:
        NH, so (B,T,3C)) side by side along the last axis, head h in columns h*HS:(h+1)*HS of
        its part; query head h reads key/value head h // (NH/NKV), never copied. out (B,T,C) =
        softmax(q k^T / sqrt(HS), causal) v, heads concatenated. Saves lse (B,NH,T): the
        natural-log log-sum-exp of each row of scaled scores, which lets the backward recompute
        the probabilities without storing any (T,T) matrix."""
    def attention_backward(self, dqkv: Array, dout: Array, qkv: Array, out: Array, lse: Array,
                           n_head: int, n_kv_head: Optional[int] = None) -> None:
        """dqkv (qkv's shape) = gradient of the forward w.r.t. qkv, given dout (B,T,C) and the
        forward's out and lse; a key/value head's gradient sums over its group's query heads."""
    def attention_decode(self, out: Array, q: Array, k_cache: Array, v_cache: Array,
                         n_valid: int) -> None:
        """One decoding step with a KV cache. q (B,C), C = NH*HS, for the newest position;
        k_cache, v_cache (B,NKV,maxT,HS) (NKV dividing NH) of which positions [0, n_valid) are
        filled (the newest one's k and v included). out (B,C) = softmax(q k^T/sqrt(HS)) v over
        those positions, query head h reading cache head h // (NH/NKV)."""

    # ------------------------------------------------------------------ llama-style ops
    def rmsnorm_forward(self, out: Array, rstd: Array, x: Array, w: Array,
                        eps: float = 1e-5) -> None:
        """x (N,C); w (C,) -> out (N,C) = x * rstd * w, rstd (N,) = 1/sqrt(mean(x^2) + eps)."""
    def rmsnorm_backward(self, dx: Array, dw: Array, dout: Array, x: Array, w: Array,
                         rstd: Array) -> None:
        """dx (N,C) = ;  dw (C,) += ."""
    def rope_forward(self, out: Array, x: Array, n_head: int, n_kv_head: Optional[int] = None,
                     theta: float = 10000.0, pos0: int = 0) -> None:
        """Rotary positions on the q and k heads of a qkv array x (attention_forward's layout):
        pairs (i, i + HS/2) rotated by (pos0 + t) * theta^(-2i/HS); v copied. out may alias x."""
    def rope_backward(self, dx: Array, dout: Array, n_head: int,
                      n_kv_head: Optional[int] = None, theta: float = 10000.0,
                      pos0: int = 0) -> None:
        """dx = dout rotated back (the inverse rotation); v's gradient copied. May alias."""
    def swiglu_forward(self, out: Array, x: Array) -> None:
        """x (N,2H) = [gate | up] -> out (N,H) = silu(gate) * up."""
    def swiglu_backward(self, dx: Array, dout: Array, x: Array) -> None:
        """dx (N,2H) = the gradient of swiglu_forward given dout (N,H)."""

    # ------------------------------------------------------------------ elementwise
    def gelu_forward(self, out: Array, x: Array) -> None:
        """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), any shape."""
    def gelu_backward(self, dx: Array, dout: Array, x: Array) -> None:
        """dx = dout * gelu'(x)  (=)."""
    def add(self, out: Array, a: Array, b: Array) -> None:
        """out = a + b, any shape (out may alias a or b): the residual connections, and the
        gradient sums of the backward."""

    # ------------------------------------------------------------------ loss
    def crossentropy_forward(self, losses: Array, probs: Array, logits: Array,
                             targets: Array) -> None:
        """logits (N,V), targets (N,) int32 in [0,V) -> probs (N,V) = softmax(logits) (saved),
        losses (N,) = -log probs[n, targets[n]] (computed stably via log-sum-exp)."""
    def crossentropy_backward(self, dlogits: Array, probs: Array, targets: Array,
                              scale: float) -> None:
        """dlogits (N,V) = scale * (probs - onehot(targets))  (=); scale is d(loss)/d(loss_n),
        1/N for the mean loss."""
    def classifier_forward_backward(self, losses: Array, dx: Optional[Array],
                                    dwte: Optional[Array], x: Array, wte: Array, targets: Array,
                                    scale: float) -> None:
        """Fused lm_head + softmax + cross-entropy for training, never holding (N,V) logits
        whole (the native and CUDA backends work over blocks of rows). x (N,C) final-layernorm
        output, wte (V,C) the tied embedding, targets (N,). losses (N,) = ; when dx/dwte are
        given also the backward of ``sum(losses) * scale``: dx (N,C) = ; dwte (V,C) += ."""

    # ------------------------------------------------------------------ optimizer
    def global_norm_sq(self, g: Array) -> float:
        """Sum of squares of the flat float32 array g, accumulated in float64. Deterministic."""
    def scale_(self, g: Array, s: float) -> None:
        """g *= s in place."""
    def zero_(self, a: Array) -> None:
        """a[...] = 0 in place, any shape (the model's zero_grad; NaN and inf are cleared too)."""
    def adamw_update(self, params: Array, grads: Array, m: Array, v: Array, *, lr: float,
                     beta1: float, beta2: float, eps: float, weight_decay: float,
                     step: int) -> None:
        """One fused AdamW step over flat float32 arrays of equal length, in place:
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mhat = m/(1-b1^step); vhat = v/(1-b2^step);
        p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p).   step counts from 1.
        Decoupled weight decay applies to the whole slice given: the model calls this once
        for its decayed region (matrices) and once, with weight_decay=0, for the rest."""
