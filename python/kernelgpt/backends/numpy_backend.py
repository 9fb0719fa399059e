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
from typing import Any, Optional, Tuple, cast

import numpy
import numpy as np
from numpy.typing import NDArray

from kernelgpt.backends.base import (Array, check_heads, check_id_range, check_n_valid,
                                     check_norm_eps, check_shape, linear_dims, qkv_dims)

name = "numpy"
xp = numpy

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CLASSIFIER_ROWS = 256  # rows per block in classifier_forward_backward: never holds (N,V) logits whole


# ---------------------------------------------------------------------------------- array helpers
def is_available() -> bool:
    return True


def unsupported(config: Any) -> Optional[str]:
    """The reference runs every architecture the config can describe."""
    return None


def asarray(a: Any, dtype: Any = None) -> NDArray[Any]:
    """Host array -> backend array: a C-contiguous numpy array (no copy when already one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a: Any) -> NDArray[Any]:
    return np.asarray(a)


_ALIGN = 64  # bytes: a cache line, and one AVX-512 vector


def empty(shape: Tuple[int, ...], dtype: Any = "float32") -> NDArray[Any]:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (NumPy's own
    allocations are only 16-byte aligned, so every 64-byte vector access of a kernel would
    straddle two cache lines)."""
    dt: np.dtype[Any] = np.dtype(dtype)
    # a scalar shape (an int, as np.isscalar checks) is taken as (shape,), as numpy does
    shape = (int(cast(int, shape)),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed, got shape {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    off = -buf.ctypes.data % _ALIGN
    return buf[off:off + nbytes].view(dt).reshape(shape)


def zeros(shape: Tuple[int, ...], dtype: Any = "float32") -> NDArray[Any]:
    """Like :func:`empty`, filled with zeros."""
    a = empty(shape, dtype)
    a.fill(0)
    return a


# ---------------------------------------------------------------------------------- validation
def _arr(a: Any, argname: str, ndim: Optional[int] = None) -> NDArray[Any]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{argname} must be a numpy.ndarray, got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise TypeError(f"{argname} must be C-contiguous")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{argname} must be {ndim}-D, got shape {a.shape}")
    return a


def _floats(*pairs: Tuple[Any, str]) -> Optional[np.dtype[Any]]:
    """Check (array, name) pairs are C-contiguous float32/float64 arrays of one dtype; return it
    (None when no pair is given)."""
    dtype: Optional[np.dtype[Any]] = None
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


def _ids(a: Any, argname: str, ndim: int, upper: int) -> NDArray[Any]:
    arr = _arr(a, argname, ndim)  # a itself, checked
    if arr.dtype != np.int32:
        raise TypeError(f"{argname} must be int32, got {arr.dtype}")
    if arr.size:
        check_id_range(argname, int(arr.min()), int(arr.max()), upper)
    return arr


# ---------------------------------------------------------------------------------- embedding
def embedding_forward(out: Array, idx: Array, wte: Array, wpe: Optional[Array]) -> None:
    """out (B,T,C) = wte[idx] + wpe[:T].  idx (B,T) int32 in [0,V); wte (V,C); wpe (maxT,C), T <= maxT,
    or None (no position table: rotary positions act inside attention). Saves nothing (the
    backward needs idx only)."""
    _floats((out, "out"), (wte, "wte"), *([(wpe, "wpe")] if wpe is not None else []))
    _arr(idx, "idx", 2)
    B, T = idx.shape
    _arr(wte, "wte", 2)
    V, C = wte.shape
    if wpe is not None:
        _arr(wpe, "wpe", 2)
        if wpe.shape[1] != C or wpe.shape[0] < T:
            raise ValueError(f"wpe must have shape (maxT>={T}, C={C}), got {wpe.shape}")
    _ids(idx, "idx", 2, V)
    _shape(out, "out", (B, T, C))
    np.take(wte, idx, axis=0, out=out)
    if wpe is not None:
        out += wpe[:T]


def embedding_backward(dwte: Array, dwpe: Optional[Array], dout: Array, idx: Array) -> None:
    """dwte (V,C) += scatter-add of dout (B,T,C) rows by idx (B,T); dwpe (maxT,C)[:T] += dout.sum(0)
    (dwpe None: no position table). Deterministic: rows are added in index order."""
    _floats((dwte, "dwte"), (dout, "dout"), *([(dwpe, "dwpe")] if dwpe is not None else []))
    _arr(dout, "dout", 3)
    B, T, C = dout.shape
    _arr(dwte, "dwte", 2)
    if dwte.shape[1] != C:
        raise ValueError(f"dwte must have shape (V, C={C}), got {dwte.shape}")
    if dwpe is not None:
        _arr(dwpe, "dwpe", 2)
        if dwpe.shape[1] != C or dwpe.shape[0] < T:
            raise ValueError(f"dwpe must have shape (maxT>={T}, C={C}), got {dwpe.shape}")
    _ids(idx, "idx", 2, dwte.shape[0])
    _shape(idx, "idx", (B, T))
    np.add.at(dwte, idx.reshape(-1), dout.reshape(B * T, C))
    if dwpe is not None:
        dwpe[:T] += dout.sum(axis=0)


# ---------------------------------------------------------------------------------- layernorm
def layernorm_forward(out: Array, mean: Array, rstd: Array, x: Array, w: Array, b: Array,
                      eps: float = 1e-5) -> None:
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


def layernorm_backward(dx: Array, dw: Array, db: Array, dout: Array, x: Array, w: Array,
                       mean: Array, rstd: Array) -> None:
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
def matmul_forward(out: Array, x: Array, w: Array, bias: Optional[Array]) -> None:
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


def matmul_backward(dx: Optional[Array], dw: Array, dbias: Optional[Array], dout: Array, x: Array,
                    w: Array) -> None:
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
def _split_heads(qkv: NDArray[Any], n_head: int, n_kv: int,
                 hs: int) -> Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """qkv (B,T,(NH+2NKV)*HS) -> q (B,NH,T,HS), k, v (B,NKV,T,HS) (views)."""
    B, T, _ = qkv.shape
    q = qkv[:, :, :n_head * hs].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
    k = qkv[:, :, n_head * hs:(n_head + n_kv) * hs].reshape(B, T, n_kv, hs).transpose(0, 2, 1, 3)
    v = qkv[:, :, (n_head + n_kv) * hs:].reshape(B, T, n_kv, hs).transpose(0, 2, 1, 3)
    return q, k, v


def _causal_scores(q: NDArray[Any], k: NDArray[Any]) -> NDArray[Any]:
    """Scaled scores (B,NH,T,T) with -inf above the diagonal."""
    T, hs = q.shape[2], q.shape[3]
    s: NDArray[Any] = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))
    s += np.triu(np.full((T, T), -np.inf, dtype=s.dtype), k=1)  # 0 on/below the diagonal
    return s


def _att_dims(qkv: Array, n_head: int,
              n_kv_head: Optional[int]) -> Tuple[int, int, int, int, int, int]:
    B, T, C, nh, hs = qkv_dims(qkv, n_head, n_kv_head=n_kv_head)
    return B, T, C, nh, hs, (nh if n_kv_head is None else int(n_kv_head))


def attention_forward(out: Array, lse: Array, qkv: Array, n_head: int,
                      n_kv_head: Optional[int] = None) -> None:
    """Causal multi-head self-attention, grouped-query when n_kv_head < n_head.
    qkv (B,T,(NH+2NKV)*HS): q (NH heads), k and v (NKV heads each) side by side on the last axis
    (NKV = n_kv_head, None: NH, so (B,T,3C)); query head h reads key/value head h // (NH/NKV).
    out (B,T,C) = softmax(q k^T / sqrt(HS), causal) v with heads concatenated.
    Saves lse (B,NH,T): natural-log log-sum-exp of each row of scaled (masked) scores."""
    _floats((out, "out"), (lse, "lse"), (qkv, "qkv"))
    B, T, C, nh, hs, nkv = _att_dims(qkv, n_head, n_kv_head)
    _shape(out, "out", (B, T, C))
    _shape(lse, "lse", (B, nh, T))
    q, k, v = _split_heads(qkv, nh, nkv, hs)
    g = nh // nkv
    if g > 1:
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)   # the reference may copy
    s = _causal_scores(q, k)                            # (B,NH,T,T)
    m = s.max(axis=-1, keepdims=True)                   # finite: the diagonal is never masked
    e = np.exp(s - m)
    z = e.sum(axis=-1, keepdims=True)
    lse[...] = (m + np.log(z))[..., 0]
    y = (e / z) @ v                                     # (B,NH,T,HS)
    out[...] = y.transpose(0, 2, 1, 3).reshape(B, T, C)


def attention_backward(dqkv: Array, dout: Array, qkv: Array, out: Array, lse: Array, n_head: int,
                       n_kv_head: Optional[int] = None) -> None:
    """dqkv (B,T,(NH+2NKV)*HS) = d(out)/d(qkv) applied to dout (B,T,C), given the forward's out
    (B,T,C) and lse (B,NH,T). Probabilities are recomputed as P = exp(S - lse); with
    D = rowsum(dout * out): dS = P * (dout v^T - D), dq = dS k / sqrt(HS), dk = dS^T q / sqrt(HS),
    dv = P^T dout; a key/value head's gradient sums over the query heads of its group."""
    _floats((dqkv, "dqkv"), (dout, "dout"), (qkv, "qkv"), (out, "out"), (lse, "lse"))
    B, T, C, nh, hs, nkv = _att_dims(qkv, n_head, n_kv_head)
    _shape(dqkv, "dqkv", qkv.shape)
    _shape(dout, "dout", (B, T, C))
    _shape(out, "out", (B, T, C))
    _shape(lse, "lse", (B, nh, T))
    q, k, v = _split_heads(qkv, nh, nkv, hs)
    g = nh // nkv
    if g > 1:
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    p = np.exp(_causal_scores(q, k) - lse[..., None])  # (B,NH,T,T), 0 above the diagonal
    dy = dout.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    y = out.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    dv = p.transpose(0, 1, 3, 2) @ dy
    dp = dy @ v.transpose(0, 1, 3, 2)
    D = (dy * y).sum(axis=-1, keepdims=True)            # = rowsum(P * dP)
    ds = p * (dp - D) * (1.0 / math.sqrt(hs))
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    dk = dk.reshape(B, nkv, g, T, hs).sum(axis=2)       # sum over each group's query heads
    dv = dv.reshape(B, nkv, g, T, hs).sum(axis=2)
    dq_, dk_, dv_ = _split_heads(dqkv, nh, nkv, hs)
    dq_[...] = dq
    dk_[...] = dk
    dv_[...] = dv


def attention_decode(out: Array, q: Array, k_cache: Array, v_cache: Array, n_valid: int) -> None:
    """One decoding step with a KV cache. q (B,C) for the newest position, C = NH*HS; k_cache,
    v_cache (B,NKV,maxT,HS) with NKV dividing NH (grouped-query: query head h reads cache head
    h // (NH/NKV)), positions [0, n_valid) filled (the newest included), 1 <= n_valid <= maxT.
    out (B,C) = softmax(q k^T / sqrt(HS)) v over those positions (heads concatenated)."""
    _floats((out, "out"), (q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache"))
    _arr(k_cache, "k_cache", 4)
    B, nkv, maxT, hs = k_cache.shape
    _shape(v_cache, "v_cache", (B, nkv, maxT, hs))
    _arr(q, "q", 2)
    if q.shape[0] != B or hs < 1 or q.shape[1] % hs or (q.shape[1] // hs) % nkv:
        raise ValueError(f"q must have shape (B={B}, NH*HS) with NH a multiple of the cache's "
                         f"{nkv} heads of size {hs}, got {q.shape}")
    nh = q.shape[1] // hs
    _shape(out, "out", (B, nh * hs))
    check_heads(nh * hs, nh)
    n_valid = check_n_valid(n_valid, maxT)
    g = nh // nkv
    qh = q.reshape(B, nkv, g, hs)
    k = k_cache[:, :, :n_valid]                                  # (B,NKV,n,HS)
    v = v_cache[:, :, :n_valid]
    s = (qh @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))   # (B,NKV,G,n)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    y = (e / e.sum(axis=-1, keepdims=True)) @ v                 # (B,NKV,G,HS)
    out[...] = y.reshape(B, nh * hs)


# ---------------------------------------------------------------------------------- elementwise
_GELU_K = math.sqrt(2.0 / math.pi)


def gelu_forward(out: Array, x: Array) -> None:
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), any shape. Saves nothing (backward
    takes x)."""
    _floats((out, "out"), (x, "x"))
    _shape(out, "out", x.shape)
    out[...] = 0.5 * x * (1.0 + np.tanh(_GELU_K * x * (1.0 + 0.044715 * x * x)))


def gelu_backward(dx: Array, dout: Array, x: Array) -> None:
    """dx = dout * gelu'(x)  (=), any shape."""
    _floats((dx, "dx"), (dout, "dout"), (x, "x"))
    _shape(dout, "dout", x.shape)
    _shape(dx, "dx", x.shape)
    th = np.tanh(_GELU_K * x * (1.0 + 0.044715 * x * x))  # x*x*x, not x**3: pow is slow
    dudx = _GELU_K * (1.0 + 3.0 * 0.044715 * x * x)
    dx[...] = dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dudx)


def add(out: Array, a: Array, b: Array) -> None:
    """out = a + b, any shape (out may alias a or b)."""
    _floats((out, "out"), (a, "a"), (b, "b"))
    _shape(b, "b", a.shape)
    _shape(out, "out", a.shape)
    np.add(a, b, out=out)


# ---------------------------------------------------------------------------------- llama-style ops
def rmsnorm_forward(out: Array, rstd: Array, x: Array, w: Array, eps: float = 1e-5) -> None:
    """x (N,C); w (C,) -> out (N,C) = x * rstd * w with rstd (N,) = 1/sqrt(mean_C(x^2) + eps),
    saved for the backward."""
    _floats((out, "out"), (rstd, "rstd"), (x, "x"), (w, "w"))
    _arr(x, "x", 2)
    N, C = x.shape
    _shape(out, "out", (N, C))
    _shape(rstd, "rstd", (N,))
    _shape(w, "w", (C,))
    eps = check_norm_eps(eps)
    r = 1.0 / np.sqrt((x * x).mean(axis=1) + eps)
    rstd[...] = r
    out[...] = x * r[:, None] * w


def rmsnorm_backward(dx: Array, dw: Array, dout: Array, x: Array, w: Array, rstd: Array) -> None:
    """dx (N,C) = ; dw (C,) += sum_n dout * x * rstd. With xhat = x * rstd and g = dout * w:
    dx = rstd * (g - xhat * mean_C(g * xhat))."""
    _floats((dx, "dx"), (dw, "dw"), (dout, "dout"), (x, "x"), (w, "w"), (rstd, "rstd"))
    _arr(x, "x", 2)
    N, C = x.shape
    _shape(dx, "dx", (N, C))
    _shape(dw, "dw", (C,))
    _shape(dout, "dout", (N, C))
    _shape(w, "w", (C,))
    _shape(rstd, "rstd", (N,))
    xhat = x * rstd[:, None]
    g = dout * w
    dw += (dout * xhat).sum(axis=0)
    dx[...] = rstd[:, None] * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))


def _rope_tables(T: int, hs: int, theta: float, pos0: int,
                 dtype: Any) -> Tuple[NDArray[Any], NDArray[Any]]:
    inv = theta ** (-np.arange(0, hs // 2, dtype=np.float64) * 2.0 / hs)        # (HS/2,)
    ang = (pos0 + np.arange(T, dtype=np.float64))[:, None] * inv[None, :]        # (T, HS/2)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def _check_rope(out: Array, x: Array, n_head: int, n_kv_head: Optional[int], theta: float,
                pos0: int) -> Tuple[int, int, int, int, int]:
    _floats((out, "out"), (x, "x"))
    B, T, C, nh, hs = qkv_dims(x, n_head, n_kv_head=n_kv_head)
    _shape(out, "out", x.shape)
    if hs % 2:
        raise ValueError(f"rotary positions need an even head size, got {hs}")
    if not (isinstance(theta, (int, float, np.floating)) and math.isfinite(theta) and theta > 0):
        raise ValueError(f"rope_theta must be a finite number > 0, got {theta!r}")
    if isinstance(pos0, bool) or not isinstance(pos0, (int, np.integer)) or pos0 < 0:
        raise ValueError(f"pos0 must be an int >= 0, got {pos0!r}")
    nkv = nh if n_kv_head is None else int(n_kv_head)
    return B, T, nh, nkv, hs


def _rotate(out: Array, x: Array, nh: int, nkv: int, hs: int, cos: NDArray[Any],
            sin: NDArray[Any], sign: float) -> None:
    """q and k heads of x rotated by the angles (sign -1: the inverse rotation); v copied."""
    B, T, _ = x.shape
    d = hs // 2
    n_rot = (nh + nkv) * hs
    xr = x[:, :, :n_rot].reshape(B, T, nh + nkv, hs)
    x1, x2 = xr[..., :d], xr[..., d:]
    c, s = cos[None, :, None, :], sign * sin[None, :, None, :]
    o = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    out[:, :, :n_rot] = o.reshape(B, T, n_rot)
    out[:, :, n_rot:] = x[:, :, n_rot:]


def rope_forward(out: Array, x: Array, n_head: int, n_kv_head: Optional[int] = None,
                 theta: float = 10000.0, pos0: int = 0) -> None:
    """Rotary position embedding of a qkv array x (B,T,(NH+2NKV)*HS) (the layout of
    attention_forward): each q and k head's pairs (i, i + HS/2) rotated by the angle
    (pos0 + t) * theta^(-2i/HS) of its position t (the "rotate half" convention of GPT-NeoX and
    Hugging Face's Llama); v is copied. out may alias x."""
    B, T, nh, nkv, hs = _check_rope(out, x, n_head, n_kv_head, theta, pos0)
    cos, sin = _rope_tables(T, hs, float(theta), int(pos0), x.dtype)
    _rotate(out, x.copy(), nh, nkv, hs, cos, sin, 1.0)


def rope_backward(dx: Array, dout: Array, n_head: int, n_kv_head: Optional[int] = None,
                  theta: float = 10000.0, pos0: int = 0) -> None:
    """dx (=) = the gradient through rope_forward: dout's q and k heads rotated back (the
    transpose of a rotation is its inverse); v's gradient copied. dx may alias dout."""
    B, T, nh, nkv, hs = _check_rope(dx, dout, n_head, n_kv_head, theta, pos0)
    cos, sin = _rope_tables(T, hs, float(theta), int(pos0), dout.dtype)
    _rotate(dx, dout.copy(), nh, nkv, hs, cos, sin, -1.0)


def _silu_parts(x: Array) -> Tuple[Array, Array, Array]:
    H = x.shape[-1] // 2
    a, b = x[..., :H], x[..., H:]
    sig = 1.0 / (1.0 + np.exp(-a))
    return a, b, sig


def swiglu_forward(out: Array, x: Array) -> None:
    """x (N, 2H) holds a (gate) and b (up) side by side; out (N, H) = silu(a) * b,
    silu(a) = a * sigmoid(a)."""
    _floats((out, "out"), (x, "x"))
    _arr(x, "x", 2)
    N, H2 = x.shape
    if H2 % 2:
        raise ValueError(f"x must have an even last dimension (gate and up halves), got {x.shape}")
    _shape(out, "out", (N, H2 // 2))
    a, b, sig = _silu_parts(x)
    out[...] = a * sig * b


def swiglu_backward(dx: Array, dout: Array, x: Array) -> None:
    """dx (N, 2H) (=): da = dout * b * sigmoid(a) (1 + a (1 - sigmoid(a))), db = dout * silu(a)."""
    _floats((dx, "dx"), (dout, "dout"), (x, "x"))
    _arr(x, "x", 2)
    N, H2 = x.shape
    if H2 % 2:
        raise ValueError(f"x must have an even last dimension (gate and up halves), got {x.shape}")
    _shape(dx, "dx", (N, H2))
    _shape(dout, "dout", (N, H2 // 2))
    a, b, sig = _silu_parts(x)
    H = H2 // 2
    da = dout * b * sig * (1.0 + a * (1.0 - sig))
    db = dout * a * sig
    dx[:, :H] = da
    dx[:, H:] = db


# ---------------------------------------------------------------------------------- loss
def _softmax_ce(logits: Array, targets: Array) -> Tuple[Array, Array]:
    """Row-wise (probs, losses) of logits (n,V) and targets (n,), via log-sum-exp."""
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    z = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(z))[:, 0]
    losses = lse - logits[np.arange(len(targets)), targets]
    return e / z, losses


def crossentropy_forward(losses: Array, probs: Array, logits: Array, targets: Array) -> None:
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


def crossentropy_backward(dlogits: Array, probs: Array, targets: Array, scale: float) -> None:
    """dlogits (N,V) = scale * (probs - onehot(targets))  (=; dlogits may alias probs)."""
    _floats((dlogits, "dlogits"), (probs, "probs"))
    _arr(probs, "probs", 2)
    N, V = probs.shape
    _shape(dlogits, "dlogits", (N, V))
    _ids(targets, "targets", 1, V)
    _shape(targets, "targets", (N,))
    np.multiply(probs, scale, out=dlogits)
    dlogits[np.arange(N), targets] -= scale


def classifier_forward_backward(losses: Array, dx: Optional[Array], dwte: Optional[Array], x: Array,
                                wte: Array, targets: Array, scale: float) -> None:
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
def _flat(g: Any, argname: str) -> NDArray[Any]:
    arr = _arr(g, argname, 1)  # g itself, checked
    if arr.dtype not in _FLOATS:
        raise TypeError(f"{argname} must be float32 or float64, got {arr.dtype}")
    return arr


def global_norm_sq(g: Array) -> float:
    """Sum of squares of the flat array g, accumulated in float64 (blockwise, fixed order)."""
    _flat(g, "g")
    total = 0.0
    step = 1 << 20
    for i in range(0, g.size, step):
        blk = g[i:i + step].astype(np.float64)
        total += float(np.dot(blk, blk))
    return total


def scale_(g: Array, s: float) -> None:
    """g *= s in place (flat array)."""
    _flat(g, "g")
    g *= g.dtype.type(s)


def zero_(a: Array) -> None:
    """a[...] = 0 in place, any shape."""
    _floats((a, "a"))
    a.fill(0)


def adamw_update(params: Array, grads: Array, m: Array, v: Array, *, lr: float, beta1: float,
                 beta2: float, eps: float, weight_decay: float, step: int) -> None:
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
