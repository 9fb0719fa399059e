"""The CUDA backend: every op of :mod:`kernelgpt.backends.base` on CuPy arrays.

GEMMs go through cuBLAS (``cupy.cublas.gemm``, which also accumulates with beta=1 for the ``+=``
weight gradients); every other op is a kernel of ``kernelgpt._cuda`` (csrc/cuda/), launched on
CuPy's current stream so it is ordered with the cuBLAS calls. This module validates each CuPy
array here (type, device, dtype, C-contiguity -> TypeError; shapes -> ValueError naming the
argument) and passes raw device pointers plus sizes; the binding re-checks the sizes.
Rule (as in base.py): activation outputs and activation gradients ``=``, parameter gradients ``+=``.
CuPy is optional: without it (or without a GPU) ``is_available()`` is False and importing this
module still works. TF32 for the GEMMs is off by default (``set_tf32(True)`` turns it on).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from kernelgpt.backends.base import (Array, check_heads, check_id_range, check_n_valid,
                                     check_norm_eps, linear_dims, qkv_dims)

try:  # optional dependency: pip install kernelgpt[cuda]
    import cupy
except Exception:  # ImportError, or a broken CUDA install that fails at import
    cupy = None
_cublas: Any = None
if cupy is not None:
    try:  # cuBLAS gemm with beta (accumulating weight gradients without a temporary)
        import cupy.cublas
        _cublas = cupy.cublas
    except Exception:  # older/newer CuPy without it: fall back to cupy.matmul below
        _cublas = None

try:
    from kernelgpt import _cuda  # built by CMake when nvcc is found
except ImportError:  # the ops are only called once is_available() said _cuda is there
    _cuda = None  # type: ignore[assignment]

name = "cuda"
xp = cupy

_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)
_CLASSIFIER_ELEMS = 1 << 28   # logits block of the fused classifier: at most 1 GiB of fp32
_TF32 = False                 # see set_tf32
_MATH_MODE_TOUCHED = False    # the cuBLAS math mode is only ever set once TF32 was asked for


# ---------------------------------------------------------------------------------- availability
def unavailable_reason() -> Optional[str]:
    """Why this backend cannot run here (None when it can)."""
    if cupy is None:
        return "CuPy is not installed (pip install kernelgpt[cuda])"
    if _cuda is None:
        return "kernelgpt._cuda was not built (no nvcc when the package was built)"
    try:
        if _cuda.device_count() < 1:
            return "no CUDA device is visible"
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except Exception as e:  # driver missing or too old
        return f"CUDA runtime error: {e}"
    return None


def unsupported(config: Any) -> Optional[str]:
    """Why this backend cannot run a model of ``config``, or None: the CUDA kernels cover GPT-2's
    architecture only (RMSNorm, rotary positions, SwiGLU and grouped-query attention have no CUDA
    kernels yet)."""
    if getattr(config, "is_gpt2", True):
        return None
    return ("the llama-style architecture fields (norm, pos_emb, mlp, n_kv_head, mlp_hidden, "
            "bias, tie_embeddings) are not available on cuda yet: use backend='native' or 'numpy'")


def is_available() -> bool:
    return unavailable_reason() is None


def set_tf32(enabled: bool) -> None:
    """Let cuBLAS use TF32 tensor cores for the float32 GEMMs (faster, ~1e-3 relative error).
    Off by default so parity tests compare exact fp32."""
    global _TF32, _MATH_MODE_TOUCHED
    _TF32 = bool(enabled)
    _MATH_MODE_TOUCHED = _MATH_MODE_TOUCHED or _TF32


def _apply_math_mode() -> None:
    if not _MATH_MODE_TOUCHED:
        return  # cuBLAS default math: exact fp32 sgemm
    from cupy_backends.cuda.libs import cublas as libcublas
    handle = cupy.cuda.device.get_cublas_handle()
    mode = libcublas.CUBLAS_TF32_TENSOR_OP_MATH if _TF32 else libcublas.CUBLAS_DEFAULT_MATH
    libcublas.setMathMode(handle, mode)


def _gemm(transa: str, transb: str, a: Array, b: Array, out: Array, beta: float = 0.0) -> None:
    """out = op(a) @ op(b) + beta * out (cuBLAS sgemm on the current stream)."""
    _apply_math_mode()
    if _cublas is not None:
        _cublas.gemm(transa, transb, a, b, out=out, alpha=1.0, beta=beta)
        return
    A = a.T if transa == "T" else a
    B = b.T if transb == "T" else b
    if beta == 0.0:
        cupy.matmul(A, B, out=out)
    else:
        out += cupy.matmul(A, B)


# ---------------------------------------------------------------------------------- array helpers
def _need_cupy() -> None:
    if cupy is None:
        raise RuntimeError(f"cuda backend unavailable: {unavailable_reason()}")


def asarray(a: Any, dtype: Any = None) -> Array:
    """Host (or device) array -> C-contiguous CuPy array; float data defaults to float32 and
    integer data to int32."""
    _need_cupy()
    if dtype is None:
        kind = np.asarray(a).dtype.kind if not isinstance(a, cupy.ndarray) else a.dtype.kind
        dtype = np.float32 if kind == "f" else (np.int32 if kind in "iu" else None)
    return cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype))


def to_numpy(a: Any) -> np.ndarray:
    if cupy is not None and isinstance(a, cupy.ndarray):
        host: np.ndarray = cupy.asnumpy(a)
        return host
    return np.asarray(a)


def empty(shape: Tuple[int, ...], dtype: Any = "float32") -> Array:
    _need_cupy()
    return cupy.empty(shape, dtype=dtype)


def zeros(shape: Tuple[int, ...], dtype: Any = "float32") -> Array:
    _need_cupy()
    return cupy.zeros(shape, dtype=dtype)


def _stream() -> int:
    ptr: int = cupy.cuda.get_current_stream().ptr
    return ptr


# ---------------------------------------------------------------------------------- validation
def _dev(a: Any, argname: str, dtype: np.dtype[Any] = _F32,
         shape: Optional[Tuple[int, ...]] = None, ndim: Optional[int] = None) -> Array:
    """Check a is a C-contiguous CuPy array of dtype on the current device (TypeError), with the
    given ndim/shape (ValueError)."""
    if cupy is None or not isinstance(a, cupy.ndarray):
        raise TypeError(f"{argname} must be a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{argname} must be {dtype}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise TypeError(f"{argname} must be C-contiguous")
    cur = cupy.cuda.runtime.getDevice()
    if a.device.id != cur:
        raise ValueError(f"{argname} lives on device {a.device.id}, the current device is {cur}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{argname} must be {ndim}-D, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{argname} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return a


def _ids(a: Any, argname: str, ndim: int, upper: int) -> Array:
    _dev(a, argname, _I32, ndim=ndim)
    if a.size and int(cupy.count_nonzero((a < 0) | (a >= upper))):
        check_id_range(argname, int(a.min()), int(a.max()), upper)
    return a




def _p(a: Array) -> int:
    ptr: int = a.data.ptr
    return ptr


# ---------------------------------------------------------------------------------- embedding
def embedding_forward(out: Array, idx: Array, wte: Array, wpe: Array) -> None:
    """out (B,T,C) = wte[idx] + wpe[:T]  (=)."""
    _dev(idx, "idx", _I32, ndim=2)
    B, T = idx.shape
    _dev(wte, "wte", ndim=2)
    V, C = wte.shape
    _dev(wpe, "wpe", ndim=2)
    if wpe.shape[1] != C or wpe.shape[0] < T:
        raise ValueError(f"wpe must have shape (maxT>={T}, C={C}), got {wpe.shape}")
    _dev(out, "out", shape=(B, T, C))
    _ids(idx, "idx", 2, V)
    _cuda.embedding_forward(_p(out), _p(idx), _p(wte), _p(wpe), B, T, C, _stream())


def embedding_backward(dwte: Array, dwpe: Array, dout: Array, idx: Array) -> None:
    """dwte (V,C) += rows of dout (B,T,C) by token; dwpe[:T] += dout.sum(0)  (+=). Deterministic:
    (token, row) pairs are sorted on the device and each token's rows are added in row order."""
    _dev(dout, "dout", ndim=3)
    B, T, C = dout.shape
    _dev(dwte, "dwte", ndim=2)
    if dwte.shape[1] != C:
        raise ValueError(f"dwte must have shape (V, C={C}), got {dwte.shape}")
    _dev(dwpe, "dwpe", ndim=2)
    if dwpe.shape[1] != C or dwpe.shape[0] < T:
        raise ValueError(f"dwpe must have shape (maxT>={T}, C={C}), got {dwpe.shape}")
    _dev(idx, "idx", _I32, shape=(B, T))
    _ids(idx, "idx", 2, dwte.shape[0])
    N = B * T
    keys = idx.reshape(-1).astype(cupy.int64) * N + cupy.arange(N, dtype=cupy.int64)
    keys = cupy.sort(keys)  # unique keys: the order is fully determined
    rows = cupy.ascontiguousarray((keys % N).astype(cupy.int32))
    tok = cupy.ascontiguousarray((keys // N).astype(cupy.int32))
    _cuda.embedding_backward(_p(dwte), _p(dwpe), _p(dout), _p(rows), _p(tok), B, T, C, _stream())


# ---------------------------------------------------------------------------------- layernorm
def layernorm_forward(out: Array, mean: Array, rstd: Array, x: Array, w: Array, b: Array,
                      eps: float = 1e-5) -> None:
    _dev(x, "x", ndim=2)
    N, C = x.shape
    _dev(out, "out", shape=(N, C))
    _dev(mean, "mean", shape=(N,))
    _dev(rstd, "rstd", shape=(N,))
    _dev(w, "w", shape=(C,))
    _dev(b, "b", shape=(C,))
    eps = check_norm_eps(eps)
    _cuda.layernorm_forward(_p(out), _p(mean), _p(rstd), _p(x), _p(w), _p(b), N, C, eps,
                            _stream())


def layernorm_backward(dx: Array, dw: Array, db: Array, dout: Array, x: Array, w: Array,
                       mean: Array, rstd: Array) -> None:
    """dx (N,C) = ; dw (C,) += ; db (C,) += ."""
    _dev(x, "x", ndim=2)
    N, C = x.shape
    for a, n_, s in ((dx, "dx", (N, C)), (dout, "dout", (N, C)), (dw, "dw", (C,)),
                     (db, "db", (C,)), (w, "w", (C,)), (mean, "mean", (N,)), (rstd, "rstd", (N,))):
        _dev(a, n_, shape=s)
    n_part = _cuda.layernorm_partial_blocks(N) * 2 * C
    partials = cupy.empty(n_part, dtype=cupy.float32)
    _cuda.layernorm_backward(_p(dx), _p(dw), _p(db), _p(partials), n_part, _p(dout), _p(x), _p(w),
                             _p(mean), _p(rstd), N, C, _stream())


# ---------------------------------------------------------------------------------- matmul
def matmul_forward(out: Array, x: Array, w: Array, bias: Optional[Array]) -> None:
    """out (N,OC) = x (N,C) @ w (OC,C).T + bias (OC,) (bias may be None)."""
    _dev(x, "x", ndim=2)
    _dev(w, "w", ndim=2)
    N, C, OC = linear_dims(x, w)
    _dev(out, "out", shape=(N, OC))
    if bias is not None:
        _dev(bias, "bias", shape=(OC,))
    _gemm("N", "T", x, w, out)
    if bias is not None:
        _cuda.add_bias(_p(out), _p(bias), N, OC, _stream())


def matmul_backward(dx: Optional[Array], dw: Array, dbias: Optional[Array], dout: Array,
                    x: Array, w: Array) -> None:
    """dx (N,C) = dout @ w (skipped when None); dw (OC,C) += dout.T @ x; dbias += dout.sum(0)."""
    _dev(x, "x", ndim=2)
    _dev(w, "w", ndim=2)
    N, C, OC = linear_dims(x, w)
    _dev(dout, "dout", shape=(N, OC))
    _dev(dw, "dw", shape=(OC, C))
    if dx is not None:
        _dev(dx, "dx", shape=(N, C))
    if dbias is not None:
        _dev(dbias, "dbias", shape=(OC,))
        n_part = _cuda.colsum_partial_blocks(N) * OC
        partials = cupy.empty(n_part, dtype=cupy.float32)
        _cuda.bias_backward(_p(dbias), _p(partials), n_part, _p(dout), N, OC, _stream())
    if dx is not None:
        _gemm("N", "N", dout, w, dx)
    _gemm("T", "N", dout, x, dw, beta=1.0)


# ---------------------------------------------------------------------------------- attention
def _qkv_dims(qkv: Array, n_head: int) -> Tuple[int, int, int, int, int]:
    _dev(qkv, "qkv", ndim=3)
    return qkv_dims(qkv, n_head, name)


def attention_forward(out: Array, lse: Array, qkv: Array, n_head: int) -> None:
    """Causal self-attention, flash-style: out (B,T,C) = ; saves lse (B,NH,T) = ."""
    B, T, C, nh, hs = _qkv_dims(qkv, n_head)
    _dev(out, "out", shape=(B, T, C))
    _dev(lse, "lse", shape=(B, nh, T))
    _cuda.attention_forward(_p(out), _p(lse), _p(qkv), B, T, nh, hs, _stream())


def attention_backward(dqkv: Array, dout: Array, qkv: Array, out: Array, lse: Array,
                       n_head: int) -> None:
    """dqkv (B,T,3C) = ; probabilities recomputed from lse, no atomics."""
    B, T, C, nh, hs = _qkv_dims(qkv, n_head)
    _dev(dqkv, "dqkv", shape=(B, T, 3 * C))
    _dev(dout, "dout", shape=(B, T, C))
    _dev(out, "out", shape=(B, T, C))
    _dev(lse, "lse", shape=(B, nh, T))
    scratch = cupy.empty((B, nh, T), dtype=cupy.float32)
    _cuda.attention_backward(_p(dqkv), _p(scratch), _p(dout), _p(qkv), _p(out), _p(lse), B, T,
                             nh, hs, _stream())


def attention_decode(out: Array, q: Array, k_cache: Array, v_cache: Array, n_valid: int) -> None:
    """out (B,C) = softmax(q k^T/sqrt(HS)) v over cache positions [0, n_valid)  (=)."""
    _dev(k_cache, "k_cache", ndim=4)
    B, nh, maxT, hs = k_cache.shape
    _dev(v_cache, "v_cache", shape=(B, nh, maxT, hs))
    _dev(q, "q", shape=(B, nh * hs))
    _dev(out, "out", shape=(B, nh * hs))
    check_heads(nh * hs, nh, name)
    n_valid = check_n_valid(n_valid, maxT)
    _cuda.attention_decode(_p(out), _p(q), _p(k_cache), _p(v_cache), B, nh, maxT, hs,
                           int(n_valid), _stream())


# ---------------------------------------------------------------------------------- elementwise
def _same(a: Array, argname: str, shape: Tuple[int, ...]) -> Array:
    return _dev(a, argname, shape=shape)


def gelu_forward(out: Array, x: Array) -> None:
    _dev(x, "x")
    _same(out, "out", x.shape)
    if x.size:
        _cuda.gelu_forward(_p(out), _p(x), x.size, _stream())


def gelu_backward(dx: Array, dout: Array, x: Array) -> None:
    _dev(x, "x")
    _same(dout, "dout", x.shape)
    _same(dx, "dx", x.shape)
    if x.size:
        _cuda.gelu_backward(_p(dx), _p(dout), _p(x), x.size, _stream())


def add(out: Array, a: Array, b: Array) -> None:
    """out = a + b (out may alias a or b)."""
    _dev(a, "a")
    _same(b, "b", a.shape)
    _same(out, "out", a.shape)
    if a.size:
        _cuda.add(_p(out), _p(a), _p(b), a.size, _stream())


# ---------------------------------------------------------------------------------- loss
def crossentropy_forward(losses: Array, probs: Array, logits: Array, targets: Array) -> None:
    _dev(logits, "logits", ndim=2)
    N, V = logits.shape
    _dev(probs, "probs", shape=(N, V))
    _dev(losses, "losses", shape=(N,))
    _dev(targets, "targets", _I32, shape=(N,))
    _ids(targets, "targets", 1, V)
    _cuda.crossentropy_forward(_p(losses), _p(probs), _p(logits), _p(targets), N, V, _stream())


def crossentropy_backward(dlogits: Array, probs: Array, targets: Array, scale: float) -> None:
    """dlogits (N,V) = scale * (probs - onehot(targets))  (=; may alias probs)."""
    _dev(probs, "probs", ndim=2)
    N, V = probs.shape
    _dev(dlogits, "dlogits", shape=(N, V))
    _dev(targets, "targets", _I32, shape=(N,))
    _ids(targets, "targets", 1, V)
    _cuda.crossentropy_backward(_p(dlogits), _p(probs), _p(targets), N, V, float(scale),
                                _stream())


def classifier_forward_backward(losses: Array, dx: Optional[Array], dwte: Optional[Array],
                                x: Array, wte: Array, targets: Array, scale: float) -> None:
    """Fused lm_head + softmax + cross-entropy over blocks of rows (up to 1 GiB of logits at a
    time): per block one cuBLAS GEMM, ONE kernel pass that writes the losses and turns the logits
    into their gradient in place, then the two backward GEMMs. losses (N,) = ; dx (N,C) = ;
    dwte (V,C) += (each optional)."""
    _dev(x, "x", ndim=2)
    _dev(wte, "wte", ndim=2)
    N, C, V = linear_dims(x, wte, "wte", "V")
    _dev(losses, "losses", shape=(N,))
    _dev(targets, "targets", _I32, shape=(N,))
    if dx is not None:
        _dev(dx, "dx", shape=(N, C))
    if dwte is not None:
        _dev(dwte, "dwte", shape=(V, C))
    _ids(targets, "targets", 1, V)
    want_grad = dx is not None or dwte is not None
    rows = max(1, min(N, _CLASSIFIER_ELEMS // V))
    buf = cupy.empty((rows, V), dtype=cupy.float32)
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        n = r1 - r0
        logits = buf[:n]
        xs = x[r0:r1]
        _gemm("N", "T", xs, wte, logits)
        _cuda.softmax_ce_fused(_p(losses[r0:r1]), _p(logits), _p(targets[r0:r1]), n, V,
                               float(scale), want_grad, _stream())
        if dx is not None:
            _gemm("N", "N", logits, wte, dx[r0:r1])
        if dwte is not None:
            _gemm("T", "N", logits, xs, dwte, beta=1.0)


# ---------------------------------------------------------------------------------- optimizer
def global_norm_sq(g: Array) -> float:
    """Sum of squares of the flat float32 array g, accumulated in float64, deterministic."""
    _dev(g, "g", ndim=1)
    if g.size == 0:
        return 0.0
    n_part = _cuda.norm_partial_blocks(g.size)
    partials = cupy.empty(n_part, dtype=cupy.float64)
    out = cupy.empty(1, dtype=cupy.float64)
    _cuda.global_norm_sq(_p(out), _p(partials), n_part, _p(g), g.size, _stream())
    return float(out.get()[0])


def scale_(g: Array, s: float) -> None:
    """g *= s in place."""
    _dev(g, "g")
    if g.size:
        _cuda.scale_(_p(g), float(s), g.size, _stream())


def zero_(a: Array) -> None:
    """a[...] = 0 in place, any shape (CuPy's fill kernel)."""
    _dev(a, "a")
    a.fill(0)


def adamw_update(params: Array, grads: Array, m: Array, v: Array, *, lr: float, beta1: float,
                 beta2: float, eps: float, weight_decay: float, step: int) -> None:
    """One fused AdamW step over flat float32 arrays (p, m, v updated in place)."""
    _dev(params, "params", ndim=1)
    for a, n_ in ((grads, "grads"), (m, "m"), (v, "v")):
        _dev(a, n_, shape=params.shape)
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    if params.size == 0:
        return
    bc1 = 1.0 - float(beta1) ** int(step)
    bc2 = 1.0 - float(beta2) ** int(step)
    _cuda.adamw_update(_p(params), _p(grads), _p(m), _p(v), params.size, float(lr), float(beta1),
                       float(beta2), float(eps), float(weight_decay), bc1, bc2, _stream())


