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

from typing import Any, Optional, Protocol

Array = Any  # numpy.ndarray or cupy.ndarray


class Backend(Protocol):
    name: str        # "numpy" | "native" | "cuda"
    xp: Any          # the array module: numpy or cupy

    # ------------------------------------------------------------------ array helpers
    def is_available(self) -> bool: ...
    def asarray(self, a: Any, dtype: Any = None) -> Array:
        """Host array -> backend array (identity on the CPU, a device copy on CUDA)."""
    def to_numpy(self, a: Array) -> Any:
        """Backend array -> numpy.ndarray (identity on the CPU, a host copy on CUDA)."""
    def empty(self, shape: tuple, dtype: Any = "float32") -> Array: ...
    def zeros(self, shape: tuple, dtype: Any = "float32") -> Array: ...

    # ------------------------------------------------------------------ embedding
    def embedding_forward(self, out: Array, idx: Array, wte: Array, wpe: Array) -> None:
        """out (B,T,C) = wte[idx] + wpe[:T].  idx (B,T) int32 in [0,V); wte (V,C); wpe (maxT,C)."""
    def embedding_backward(self, dwte: Array, dwpe: Array, dout: Array, idx: Array) -> None:
        """dwte (V,C) += scatter-add of dout (B,T,C) by idx; dwpe (maxT,C)[:T] += dout summed
        over B. Deterministic: the same result for any thread count / launch order."""

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
    def attention_forward(self, out: Array, lse: Array, qkv: Array, n_head: int) -> None:
        """Causal multi-head self-attention. qkv (B,T,3C) holds q, k, v side by side along the
        last axis (each (B,T,C), head h in columns h*HS:(h+1)*HS). out (B,T,C) = softmax(q k^T /
        sqrt(HS), causal) v, heads concatenated. Saves lse (B,NH,T): the natural-log
        log-sum-exp of each row of scaled scores, which lets the backward recompute the
        probabilities without storing any (T,T) matrix."""
    def attention_backward(self, dqkv: Array, dout: Array, qkv: Array, out: Array, lse: Array,
                           n_head: int) -> None:
        """dqkv (B,T,3C) = gradient of the forward w.r.t. qkv, given dout (B,T,C) and the
        forward's out and lse."""
    def attention_decode(self, out: Array, q: Array, k_cache: Array, v_cache: Array,
                         n_valid: int) -> None:
        """One decoding step with a KV cache. q (B,C) for the newest position; k_cache,
        v_cache (B,NH,maxT,HS) of which positions [0, n_valid) are filled (the newest one's
        k and v included). out (B,C) = softmax(q k^T/sqrt(HS)) v over those positions."""

    # ------------------------------------------------------------------ elementwise
    def gelu_forward(self, out: Array, x: Array) -> None:
        """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), any shape."""
    def gelu_backward(self, dx: Array, dout: Array, x: Array) -> None:
        """dx = dout * gelu'(x)  (=)."""
    def residual_forward(self, out: Array, a: Array, b: Array) -> None:
        """out = a + b (out may alias a or b)."""
    def residual_backward(self, da: Array, db: Array, dout: Array) -> None:
        """da += dout; db += dout (the residual stream's gradient flows to both branches)."""

    # ------------------------------------------------------------------ loss
    def crossentropy_forward(self, losses: Array, probs: Array, logits: Array,
                             targets: Array) -> None:
        """logits (N,V), targets (N,) int32 in [0,V) -> probs (N,V) = softmax(logits) (saved),
        losses (N,) = -log probs[n, targets[n]] (computed stably via log-sum-exp)."""
    def crossentropy_backward(self, dlogits: Array, probs: Array, targets: Array,
                              scale: float) -> None:
        """dlogits (N,V) = scale * (probs - onehot(targets))  (=); scale is d(loss)/d(loss_n),
        1/N for the mean loss."""
    def classifier_forward(self, losses: Array, dx: Optional[Array], dwte: Optional[Array],
                           x: Array, wte: Array, targets: Array, scale: float) -> None:
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
