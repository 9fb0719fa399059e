"""Weights in fewer bytes, for decoding: the specification of the formats (NumPy) and the quantized
copies a model keeps for ``generate(..., weights=...)``.

Batch-1 decoding reads every weight once per token, so bytes per weight set its speed. Formats:

- ``"fp32"``: the model's own float32 weights (the default; exact).
- ``"bf16"``: each weight rounded to bfloat16, to nearest, ties to even (NaN stays NaN, quiet;
  a finite value past the largest bfloat16 rounds to infinity). Activations stay float32: a
  product is sum_k x_k * bf16(w_jk) in float32. 2 bytes per weight.
- ``"int8"`` (GGUF's Q8_0): a matrix (N, K) in blocks of 32 along the input dimension K (K must
  be a multiple of 32), each block one float32 scale d = max|w| / 127 and 32 int8 codes
  q = rint(w * (1/d)) (round to nearest, ties to even; d = 0 gives q = 0; all in float32), so
  w ~ q * d. The activation rows are quantized by the same rule when the product runs (as
  llama.cpp's Q8_0 x Q8_0), and out[b, j] = sum over blocks of (d_w * d_x) * (exact int32 sum of
  the 32 products q_w q_x), the scale product in float32. A block holding a non-finite value
  gets a NaN scale and zero codes (its outputs are NaN). 1.125 bytes per weight.

What is quantized: the matrices of the blocks (qkv, attention projection, MLP up and down) and
the lm_head (with tied embeddings, ``wte`` read as the lm_head). The token and position tables
(an embedding lookup reads one row per token), the norms and the biases stay float32, and so
does the KV cache. The prompt's prefill (and each rebuild of the window when the sequence
passes block_size) runs the float32 forward; each decoded token reads the chosen format.

The quantized copies are made once and kept on the model (:func:`quantized`); each use checks a
fingerprint of the float32 weights (every byte of ``model.params``, about one float32 decoding
step's worth of reading), so any change to them (an optimizer step, ``load_state_dict``, a
direct write) makes a fresh copy.

The native fused decoder (csrc/cpu/quant.cpp) computes the products in float32 in a fixed order
(quant.h); :func:`matmul_q8_ref` and :func:`matmul_bf16_ref` are the float64 references it is
tested against, and :func:`matmul` the NumPy path (numpy backend, and native configs the fused
decoder does not take).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

FORMATS = ("fp32", "bf16", "int8")
QK = 32  # int8 block length along the input dimension

# the block's matrices the formats apply to, in the fused decoder's order
MATRICES = ("attn.c_attn.w", "attn.c_proj.w", "mlp.c_fc.w", "mlp.c_proj.w")


def check_format(weights: Any) -> str:
    """``weights`` if it names a format, else ValueError naming the choices."""
    if not isinstance(weights, str) or weights not in FORMATS:
        raise ValueError(f"weights must be one of {', '.join(repr(f) for f in FORMATS)}, "
                         f"got {weights!r}")
    return weights


# ---------------------------------------------------------------------------------- int8 (Q8_0)
def quantize_q8_0(w: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8 (..., K), d float32 (..., K/32)) of float32 rows w (..., K), K a multiple of 32
    (else ValueError). The rule of the module docstring, in float32."""
    w = np.asarray(w, dtype=np.float32)
    K = w.shape[-1]
    if w.ndim < 1 or K % QK != 0 or K == 0:
        raise ValueError(f"int8 weights need an input dimension that is a positive multiple of "
                         f"{QK}, got {K}")
    blocks = w.reshape(w.shape[:-1] + (K // QK, QK))
    finite = np.isfinite(blocks).all(axis=-1)
    amax = np.where(finite, np.abs(np.where(np.isfinite(blocks), blocks, 0)).max(axis=-1), 0)
    amax = amax.astype(np.float32)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = np.where(finite[..., None], blocks, 0).astype(np.float32) * inv[..., None]
    q = np.clip(np.rint(v), -127, 127).astype(np.int8)
    d = np.where(finite, d, np.float32(np.nan)).astype(np.float32)
    return q.reshape(w.shape), d


def dequantize_q8_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """float32 (..., K): each code times its block's scale."""
    q = np.asarray(q)
    K = q.shape[-1]
    blocks = q.reshape(q.shape[:-1] + (K // QK, QK)).astype(np.float32)
    return (blocks * np.asarray(d, np.float32)[..., None]).reshape(q.shape)


def matmul_q8_ref(x: Any, q: np.ndarray, d: np.ndarray, bias: Any = None) -> np.ndarray:
    """float64 (B, N): x (B, K) quantized per block by :func:`quantize_q8_0`, times the int8
    matrix (q (N, K), d (N, K/32)) transposed, each block's exact integer sum times the float32
    product of the two scales, summed in float64, plus bias: what the native kernel computes up
    to its float32 rounding."""
    xq, xd = quantize_q8_0(np.asarray(x, np.float32))
    B, K = xq.shape
    N = q.shape[0]
    nb = K // QK
    isum = np.einsum("bkc,nkc->bnk", xq.reshape(B, nb, QK).astype(np.int64),
                     np.asarray(q).reshape(N, nb, QK).astype(np.int64))
    scale = (np.asarray(d, np.float32)[None, :, :] * xd[:, None, :]).astype(np.float32)
    out: np.ndarray = (scale.astype(np.float64) * isum).sum(axis=-1)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


# ---------------------------------------------------------------------------------- bfloat16
def to_bf16(w: Any) -> np.ndarray:
    """uint16 bfloat16 bits of float32 w, rounded to nearest, ties to even; NaN stays a (quiet)
    NaN with its sign."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), r)
    return r.astype(np.uint16)


def from_bf16(h: Any) -> np.ndarray:
    """float32 values of uint16 bfloat16 bits (exact)."""
    bits: np.ndarray = np.asarray(h, np.uint16).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32)


def matmul_bf16_ref(x: Any, h: np.ndarray, bias: Any = None) -> np.ndarray:
    """float64 (B, N) = x (B, K) @ from_bf16(h (N, K)).T + bias."""
    out = np.asarray(x, np.float64) @ from_bf16(h).astype(np.float64).T
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


# ---------------------------------------------------------------------------------- a model's copies
@dataclass
class QMatrix:
    """One matrix (N, K) in a format: ``data`` int8 (int8) or uint16 (bf16), ``scales`` float32
    (N, K/32) for int8, else None."""
    name: str
    fmt: str
    data: np.ndarray
    scales: Optional[np.ndarray] = None

    @classmethod
    def make(cls, name: str, fmt: str, w: Any) -> "QMatrix":
        w = np.asarray(w, dtype=np.float32)
        if fmt == "int8":
            try:
                q, d = quantize_q8_0(w)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
            return cls(name, fmt, np.ascontiguousarray(q), np.ascontiguousarray(d))
        return cls(name, fmt, np.ascontiguousarray(to_bf16(w)))

    def triple(self) -> Tuple[str, np.ndarray, Optional[np.ndarray]]:
        return (self.name, self.data, self.scales)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (0 if self.scales is None else self.scales.nbytes))


@dataclass
class QuantizedWeights:
    """A model's matrices in one format: ``layers[l][name]`` for the names of MATRICES, and
    ``head`` (the lm_head); ``fingerprint`` identifies the float32 weights they were made from."""
    fmt: str
    fingerprint: Any
    layers: List[Dict[str, QMatrix]] = field(default_factory=list)
    head: Optional[QMatrix] = None

    def decoder_args(self) -> Dict[str, Any]:
        """The fused decoder's keyword arguments (weights_format, qlayers, qhead)."""
        assert self.head is not None
        return dict(weights_format=self.fmt,
                    qlayers=[[L[n].triple() for n in MATRICES] for L in self.layers],
                    qhead=self.head.triple())


def fingerprint(a: Any) -> Any:
    """An identity of the bytes of a host array: the native module's 64-bit fingerprint, or a
    blake2b digest without it."""
    a = np.ascontiguousarray(a)
    try:
        from kernelgpt import _native
        return int(_native.weights_fingerprint(a))
    except ImportError:
        return hashlib.blake2b(memoryview(a).cast("B"), digest_size=16).digest()


def quantized(model: Any, fmt: str) -> QuantizedWeights:
    """The model's matrices in ``fmt`` ("bf16" or "int8"), made once and kept on the model until
    its float32 weights change (checked by fingerprint on each call). Host (NumPy and native)
    models only: ValueError for a backend whose arrays are not host arrays."""
    check_format(fmt)
    if fmt == "fp32":
        raise ValueError("fp32 weights are the model's own: nothing to quantize")
    if getattr(model.backend, "name", None) not in ("numpy", "native"):
        raise ValueError(f"weights={fmt!r} runs on the numpy and native backends, not "
                         f"{model.backend.name!r}; use weights='fp32'")
    with model.lock:
        cache: Dict[str, QuantizedWeights] = model.__dict__.setdefault("_quantized", {})
        params = np.asarray(model.params)
        if params.dtype != np.float32:
            params = params.astype(np.float32)
        fp = fingerprint(params)
        hit = cache.get(fmt)
        if hit is not None and hit.fingerprint == fp:
            return hit
        for k in [k for k, v in cache.items() if v.fingerprint != fp]:
            del cache[k]  # copies of older weights
        q = QuantizedWeights(fmt, fp)
        for l, w in enumerate(model.layer_params):
            q.layers.append({n: QMatrix.make(f"h.{l}.{n}", fmt, w[n]) for n in MATRICES})
        head = "wte" if model.config.tie_embeddings else "lm_head.w"
        q.head = QMatrix.make(head, fmt, model.lm_head)
        cache[fmt] = q
        return q


def matmul(out: np.ndarray, x: Any, m: QMatrix, bias: Any = None) -> None:
    """out (B, N) = x (B, K) @ m.T + bias by the format's rule (the float64 reference, stored in
    out's dtype): the NumPy path of a quantized decoding step."""
    if m.fmt == "int8":
        assert m.scales is not None
        r = matmul_q8_ref(x, m.data, m.scales, bias)
    else:
        r = matmul_bf16_ref(x, m.data, bias)
    out[...] = r.astype(out.dtype)
