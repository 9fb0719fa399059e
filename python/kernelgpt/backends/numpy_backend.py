"""The NumPy reference backend: every op of :mod:`kernelgpt.backends.base`, readable and unoptimised.

This module is the specification and the test oracle for the native and CUDA backends. It runs in
float32 or float64 (the dtype follows the float inputs; all float arrays of one call must share it).
Rule (as in base.py): outputs first; activation outputs / activation grads are written with ``=``,
parameter grads (dw, db, dwte, dwpe) are accumulated with ``+=``. Temporaries are allocated freely
here (it is the reference); what a forward saves for its backward is written into caller buffers.
Attention materialises (B,NH,T,T) scores, but saves only the per-row log-sum-exp, as the fast
backends do, and its backward recomputes the probabilities from it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy
import numpy as np

from kernelgpt.backends.base import (check_heads, check_id_range, check_n_valid, check_norm_eps,
                                     check_shape, linear_dims, qkv_dims)

name = "numpy"
xp = numpy

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CLASSIFIER_ROWS = 256  # rows per block in classifier_forward_backward: never holds (N,V) logits whole


# ---------------------------------------------------------------------------------- array helpers
def is_available() -> bool:
    return True


def asarray(a: Any, dtype: Any = None) -> np.ndarray:
    """Host array -> backend array: a C-contiguous numpy array (no copy when already one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a: Any) -> np.ndarray:
    return np.asarray(a)


_ALIGN = 64  # bytes: a cache line, and one AVX-512 vector


def empty(shape: tuple, dtype: Any = "float32") -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (NumPy's own
    allocations are only 16-byte aligned, so every 64-byte vector access of a kernel would
    straddle two cache lines)."""
    dt = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed, got shape {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    off = -buf.ctypes.data % _ALIGN
    return buf[off:off + nbytes].view(dt).reshape(shape)


def zeros(shape: tuple, dtype: Any = "float32") -> np.ndarray:
    """Like :func:`empty`, filled with zeros."""
    a = empty(shape, dtype)
    a.fill(0)
    return a


# ---------------------------------------------------------------------------------- validation
def _arr(a: Any, argname: str, ndim: Optional[int] = None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{argname} must be a numpy.ndarray, got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise TypeError(f"{argname} must be C-contiguous")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{argname} must be {ndim}-D, got shape {a.shape}")
    return a


def _floats(*pairs: tuple) -> np.dtype:
    """Check (array, name) pairs are C-contiguous float32/float64 arrays of one dtype; return it."""
    dtype = None
    for a, argname in pairs:
        _arr(a, argname)
        if a.dtype not in _FLOATS:
            raise TypeError(f"{argname} must be float32 or float64, got {a.dtype}")
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            raise TypeError(f"{argname} has dtype {a.dtype} but {pairs[0][1]} has {dtype}")
    return dtype


_shape = check_shape


def _ids(a: Any, argname: str, ndim: int, upper: int) -> np.ndarray:
    _arr(a, argname, ndim)
    if a.dtype != np.int32:
        raise TypeError(f"{argname} must be int32, got {a.dtype}")
    if a.size:
        check_id_range(argname, int(a.min()), int(a.max()), upper)
    return a


# ---------------------------------------------------------------------------------- embedding
def embedding_forward(out, idx, wte, wpe) -> None:
    """out (B,T,C) = wte[idx] + wpe[:T].  idx (B,T) int32 in [0,V); wte (V,C); wpe (maxT,C), T <= maxT.
    Saves nothing (the backward needs idx only)."""
    _floats((out, "out"), (wte, "wte"), (wpe, "wpe"))
    _arr(idx, "idx", 2)
    B, T = idx.shape
    _arr(wte, "wte", 2)
    V, C = wte.shape
    _arr(wpe, "wpe", 2)
    if wpe.shape[1] != C or wpe.shape[0] < T:
        raise ValueError(f"wpe must have shape (maxT>={T}, C={C}), got {wpe.shape}")
    _ids(idx, "idx", 2, V)
    _shape(out, "out", (B, T, C))
    np.take(wte, idx, axis=0, out=out)
    out += wpe[:T]


def embedding_backward(dwte, dwpe, dout, idx) -> None:
    """dwte (V,C) += scatter-add of dout (B,T,C) rows by idx (B,T); dwpe (maxT,C)[:T] += dout.sum(0).
    Deterministic: rows are added in index order."""
    _floats((dwte, "dwte"), (dwpe, "dwpe"), (dout, "dout"))
    _arr(dout, "dout", 3)
    B, T, C = dout.shape
    _arr(dwte, "dwte", 2)
    if dwte.shape[1] != C:
        raise ValueError(f"dwte must have shape (V, C={C}), got {dwte.shape}")
    _arr(dwpe, "dwpe", 2)
    if dwpe.shape[1] != C or dwpe.shape[0] < T:
        raise ValueError(f"dwpe must have shape (maxT>={T}, C={C}), got {dwpe.shape}")
    _ids(idx, "idx", 2, dwte.shape[0])
    _shape(idx, "idx", (B, T))
    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))
    dwpe[:T] += dout.sum(axis=0)


# ---------------------------------------------------------------------------------- layernorm
def layernorm_forward(out, mean, rstd, x, w, b, eps: float = 1e-5) -> None:
    """x (N,C); w, b (C,) -> out (N,C) = (x - mean) * rstd * w + b.
    Saves mean (N,) and rstd (N,) = 1/sqrt(var + eps), var the biased variance over C."""
    _floats((out, "out"), (mean, "mean"), (rstd, "rstd"), (x, "x"), (w, "w"), (b, "b"))
    _arr(x, "x", 2)
    N, C = x.shape
    _shape(out, "out", (N, C))
    _shape(mean, "mean", (N,))
    _shape(rstd, "rstd", (N,))
    _shape(w, "w", (C,))
    _shape(b, "b", (C,))
    eps = check_norm_eps(eps)
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    var = (xc * xc).mean(axis=1)
    r = 1.0 / np.sqrt(var + eps)
    mean[...] = mu
    rstd[...] = r
    out[...] = xc * r[:, None] * w + b


def layernorm_backward(dx, dw, db, dout, x, w, mean, rstd) -> None:
    """dx (N,C) = ; dw (C,) += sum_n dout * xhat; db (C,) += sum_n dout.
    With xhat = (x - mean) * rstd and g = dout * w:
    dx = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat))."""
    _floats((dx, "dx"), (dw, "dw"), (db, "db"), (dout, "dout"), (x, "x"), (w, "w"),
            (mean, "mean"), (rstd, "rstd"))
    _arr(x, "x", 2)
    N, C = x.shape
    for a, n_, s in ((dx, "dx", (N, C)), (dout, "dout", (N, C)), (dw, "dw", (C,)),
                     (db, "db", (C,)), (w, "w", (C,)), (mean, "mean", (N,)), (rstd, "rstd", (N,))):
        _shape(a, n_, s)
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dout * w
    dw += (dout * xhat).sum(axis=0)
    db += dout.sum(axis=0)
    dx[...] = rstd[:, None] * (g - g.mean(axis=1, keepdims=True)
                               - xhat * (g * xhat).mean(axis=1, keepdims=True))


# ---------------------------------------------------------------------------------- matmul
def matmul_forward(out, x, w, bias) -> None:
    """out (N,OC) = x (N,C) @ w (OC,C).T + bias (OC,); bias may be None. Saves nothing."""
    pairs = [(out, "out"), (x, "x"), (w, "w")] + ([(bias, "bias")] if bias is not None else [])
    _floats(*pairs)
    N, C, OC = linear_dims(x, w)
    _shape(out, "out", (N, OC))
    if bias is not None:
        _shape(bias, "bias", (OC,))
    np.matmul(x, w.T, out=out)
    if bias is not None:
        out += bias


def matmul_backward(dx, dw, dbias, dout, x, w) -> None:
    """dx (N,C) = dout (N,OC) @ w (OC,C) (skipped when dx is None); dw (OC,C) += dout.T @ x;
    dbias (OC,) += dout.sum(0) (skipped when None)."""
    pairs = [(dw, "dw"), (dout, "dout"), (x, "x"), (w, "w")]
    pairs += [(dx, "dx")] if dx is not None else []
    pairs += [(dbias, "dbias")] if dbias is not None else []
    _floats(*pairs)
    N, C, OC = linear_dims(x, w)
    _shape(dout, "dout", (N, OC))
    _shape(dw, "dw", (OC, C))
    if dx is not None:
        _shape(dx, "dx", (N, C))
        np.matmul(dout, w, out=dx)
    if dbias is not None:
        _shape(dbias, "dbias", (OC,))
        dbias += dout.sum(axis=0)
    dw += dout.T @ x


# ---------------------------------------------------------------------------------- attention
def _split_heads(qkv: np.ndarray, n_head: int):
    """qkv (B,T,3C) -> q, k, v each (B,NH,T,HS) (views)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    parts = qkv.reshape(B, T, 3, n_head, hs)
    return (parts[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _causal_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Scaled scores (B,NH,T,T) with -inf above the diagonal."""
    T, hs = q.shape[2], q.shape[3]
    s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))
    s += np.triu(np.full((T, T), -np.inf, dtype=s.dtype), k=1)  # 0 on/below the diagonal
    return s


def attention_forward(out, lse, qkv, n_head: int) -> None:
    """Causal multi-head self-attention.
    qkv (B,T,3C): q, k, v side by side on the last axis; head h uses columns h*HS:(h+1)*HS of each.
    out (B,T,C) = softmax(q k^T / sqrt(HS), causal) v with heads concatenated.
    Saves lse (B,NH,T): natural-log log-sum-exp of each row of scaled (masked) scores."""
    _floats((out, "out"), (lse, "lse"), (qkv, "qkv"))
    B, T, C, nh, _ = qkv_dims(qkv, n_head)
    _shape(out, "out", (B, T, C))
    _shape(lse, "lse", (B, nh, T))
    q, k, v = _split_heads(qkv, nh)
    s = _causal_scores(q, k)                            # (B,NH,T,T)
    m = s.max(axis=-1, keepdims=True)                   # finite: the diagonal is never masked
    e = np.exp(s - m)
    z = e.sum(axis=-1, keepdims=True)
    lse[...] = (m + np.log(z))[..., 0]
    y = (e / z) @ v                                     # (B,NH,T,HS)
    out[...] = y.transpose(0, 2, 1, 3).reshape(B, T, C)


def attention_backward(dqkv, dout, qkv, out, lse, n_head: int) -> None:
    """dqkv (B,T,3C) = d(out)/d(qkv) applied to dout (B,T,C), given the forward's out (B,T,C) and
    lse (B,NH,T). Probabilities are recomputed as P = exp(S - lse); with D = rowsum(dout * out):
    dS = P * (dout v^T - D), dq = dS k / sqrt(HS), dk = dS^T q / sqrt(HS), dv = P^T dout."""
    _floats((dqkv, "dqkv"), (dout, "dout"), (qkv, "qkv"), (out, "out"), (lse, "lse"))
    B, T, C, nh, _ = qkv_dims(qkv, n_head)
    hs = C // nh
    _shape(dqkv, "dqkv", (B, T, 3 * C))
    _shape(dout, "dout", (B, T, C))
    _shape(out, "out", (B, T, C))
    _shape(lse, "lse", (B, nh, T))
    q, k, v = _split_heads(qkv, nh)
    p = np.exp(_causal_scores(q, k) - lse[..., None])  # (B,NH,T,T), 0 above the diagonal
    dy = dout.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    y = out.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    dv = p.transpose(0, 1, 3, 2) @ dy
    dp = dy @ v.transpose(0, 1, 3, 2)
    D = (dy * y).sum(axis=-1, keepdims=True)            # = rowsum(P * dP)
    ds = p * (dp - D) * (1.0 / math.sqrt(hs))
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    grads = dqkv.reshape(B, T, 3, nh, hs)
    for i, g in enumerate((dq, dk, dv)):
        grads[:, :, i] = g.transpose(0, 2, 1, 3)


def attention_decode(out, q, k_cache, v_cache, n_valid: int) -> None:
    """One decoding step with a KV cache. q (B,C) for the newest position; k_cache, v_cache
    (B,NH,maxT,HS), positions [0, n_valid) filled (the newest included), 1 <= n_valid <= maxT.
    out (B,C) = softmax(q k^T / sqrt(HS)) v over those positions (heads concatenated)."""
    _floats((out, "out"), (q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache"))
    _arr(k_cache, "k_cache", 4)
    B, nh, maxT, hs = k_cache.shape
    _shape(v_cache, "v_cache", (B, nh, maxT, hs))
    _shape(q, "q", (B, nh * hs))
    _shape(out, "out", (B, nh * hs))
    check_heads(nh * hs, nh)
    n_valid = check_n_valid(n_valid, maxT)
    qh = q.reshape(B, nh, 1, hs)
    k = k_cache[:, :, :n_valid]
    v = v_cache[:, :, :n_valid]
    s = (qh @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))   # (B,NH,1,n_valid)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    y = (e / e.sum(axis=-1, keepdims=True)) @ v                 # (B,NH,1,HS)
    out[...] = y.reshape(B, nh * hs)


# ---------------------------------------------------------------------------------- elementwise
_GELU_K = math.sqrt(2.0 / math.pi)


def gelu_forward(out, x) -> None:
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), any shape. Saves nothing (backward
    takes x)."""
    _floats((out, "out"), (x, "x"))
    _shape(out, "out", x.shape)
    out[...] = 0.5 * x * (1.0 + np.tanh(_GELU_K * x * (1.0 + 0.044715 * x * x)))


def gelu_backward(dx, dout, x) -> None:
    """dx = dout * gelu'(x)  (=), any shape."""
    _floats((dx, "dx"), (dout, "dout"), (x, "x"))
    _shape(dout, "dout", x.shape)
    _shape(dx, "dx", x.shape)
    th = np.tanh(_GELU_K * x * (1.0 + 0.044715 * x * x))  # x*x*x, not x**3: pow is slow
    dudx = _GELU_K * (1.0 + 3.0 * 0.044715 * x * x)
    dx[...] = dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dudx)


def add(out, a, b) -> None:
    """out = a + b, any shape (out may alias a or b)."""
    _floats((out, "out"), (a, "a"), (b, "b"))
    _shape(b, "b", a.shape)
    _shape(out, "out", a.shape)
    np.add(a, b, out=out)


# ---------------------------------------------------------------------------------- loss
def _softmax_ce(logits: np.ndarray, targets: np.ndarray):
    """Row-wise (probs, losses) of logits (n,V) and targets (n,), via log-sum-exp."""
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    z = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(z))[:, 0]
    losses = lse - logits[np.arange(len(targets)), targets]
    return e / z, losses


def crossentropy_forward(losses, probs, logits, targets) -> None:
    """logits (N,V), targets (N,) int32 in [0,V) -> probs (N,V) = softmax(logits) (saved for the
    backward), losses (N,) = logsumexp(logits[n]) - logits[n, targets[n]]."""
    _floats((losses, "losses"), (probs, "probs"), (logits, "logits"))
    _arr(logits, "logits", 2)
    N, V = logits.shape
    _shape(probs, "probs", (N, V))
    _shape(losses, "losses", (N,))
    _ids(targets, "targets", 1, V)
    _shape(targets, "targets", (N,))
    p, l_ = _softmax_ce(logits, targets)
    probs[...] = p
    losses[...] = l_


def crossentropy_backward(dlogits, probs, targets, scale: float) -> None:
    """dlogits (N,V) = scale * (probs - onehot(targets))  (=; dlogits may alias probs)."""
    _floats((dlogits, "dlogits"), (probs, "probs"))
    _arr(probs, "probs", 2)
    N, V = probs.shape
    _shape(dlogits, "dlogits", (N, V))
    _ids(targets, "targets", 1, V)
    _shape(targets, "targets", (N,))
    np.multiply(probs, scale, out=dlogits)
    dlogits[np.arange(N), targets] -= scale


def classifier_forward_backward(losses, dx, dwte, x, wte, targets, scale: float) -> None:
    """Fused lm_head + softmax + cross-entropy, over blocks of rows (never (N,V) logits whole).
    x (N,C) final-layernorm output, wte (V,C) tied embedding, targets (N,) int32 -> losses (N,) = .
    When given, the backward of sum(losses) * scale: dx (N,C) = ; dwte (V,C) += . Saves nothing."""
    pairs = [(losses, "losses"), (x, "x"), (wte, "wte")]
    pairs += [(dx, "dx")] if dx is not None else []
    pairs += [(dwte, "dwte")] if dwte is not None else []
    _floats(*pairs)
    N, C, V = linear_dims(x, wte, "wte", "V")
    _shape(losses, "losses", (N,))
    _ids(targets, "targets", 1, V)
    _shape(targets, "targets", (N,))
    if dx is not None:
        _shape(dx, "dx", (N, C))
    if dwte is not None:
        _shape(dwte, "dwte", (V, C))
    for r0 in range(0, N, _CLASSIFIER_ROWS):
        r1 = min(N, r0 + _CLASSIFIER_ROWS)
        logits = x[r0:r1] @ wte.T                      # (rows, V)
        p, l_ = _softmax_ce(logits, targets[r0:r1])
        losses[r0:r1] = l_
        if dx is None and dwte is None:
            continue
        p[np.arange(r1 - r0), targets[r0:r1]] -= 1.0
        p *= scale                                     # now dlogits of this block
        if dx is not None:
            np.matmul(p, wte, out=dx[r0:r1])
        if dwte is not None:
            dwte += p.T @ x[r0:r1]


# ---------------------------------------------------------------------------------- optimizer
def _flat(g: Any, argname: str) -> np.ndarray:
    _arr(g, argname, 1)
    if g.dtype not in _FLOATS:
        raise TypeError(f"{argname} must be float32 or float64, got {g.dtype}")
    return g


def global_norm_sq(g) -> float:
    """Sum of squares of the flat array g, accumulated in float64 (blockwise, fixed order)."""
    _flat(g, "g")
    total = 0.0
    step = 1 << 20
    for i in range(0, g.size, step):
        blk = g[i:i + step].astype(np.float64)
        total += float(np.dot(blk, blk))
    return total


def scale_(g, s: float) -> None:
    """g *= s in place (flat array)."""
    _flat(g, "g")
    g *= g.dtype.type(s)


def zero_(a) -> None:
    """a[...] = 0 in place, any shape."""
    _floats((a, "a"))
    a.fill(0)


def adamw_update(params, grads, m, v, *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, step: int) -> None:
    """One AdamW step over flat arrays of equal length, in place (step counts from 1):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  mhat = m/(1-b1^step);  vhat = v/(1-b2^step);
    p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p)."""
    _floats((params, "params"), (grads, "grads"), (m, "m"), (v, "v"))
    _flat(params, "params")
    for a, n_ in ((grads, "grads"), (m, "m"), (v, "v")):
        _shape(a, n_, params.shape)
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    m *= beta1
    m += (1.0 - beta1) * grads
    v *= beta2
    v += (1.0 - beta2) * (grads * grads)
    mhat = m / (1.0 - beta1 ** step)
    vhat = v / (1.0 - beta2 ** step)
    params -= lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * params)
