"""Every CUDA op against the float64 NumPy reference (tolerance: assert_close with the float32
reference's own error, flash-attention's rule), outputs poisoned with NaN first, odd shapes
included; += semantics of parameter gradients, determinism, and bad input -> clear exceptions.
Skipped (with the reason) where CuPy, kernelgpt._cuda or a GPU is missing."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def cb():
    from kernelgpt.backends import cuda_backend
    reason = cuda_backend.unavailable_reason()
    if reason:
        pytest.skip(f"cuda backend not available: {reason}")
    return cuda_backend


def rand(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def nan_dev(cb, shape):
    return cb.asarray(np.full(shape, np.nan, np.float32))


def dev(cb, a):
    return cb.asarray(np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else a)


def run_ref(ref, fn, arrays, *extra, **kw):
    """Run ref.<fn> on float64 and float32 copies of arrays (dict, outputs may be pre-filled):
    returns (dict64, dict32)."""
    out = []
    for dt in (np.float64, np.float32):
        a = {k: (v.astype(dt) if v.dtype.kind == "f" else v.copy()) for k, v in arrays.items()}
        getattr(ref, fn)(*a.values(), *extra, **kw)
        out.append(a)
    return out


def run_dev(cb, fn, arrays, poison, *extra, **kw):
    """Device copies of arrays (NaN-filled for names in poison), run cb.<fn>, back to numpy."""
    d = {k: (nan_dev(cb, v.shape) if k in poison else dev(cb, v)) for k, v in arrays.items()}
    getattr(cb, fn)(*d.values(), *extra, **kw)
    return {k: cb.to_numpy(v) for k, v in d.items()}


def check(got, want64, want32, names):
    for n in names:
        assert_close(got[n], want64[n], ref32=want32[n], name=n)


# ------------------------------------------------------------------ embedding
@pytest.mark.parametrize("B,T,C,V,maxT", [(1, 1, 12, 5, 4), (2, 7, 36, 11, 16),
                                          (3, 65, 36, 50, 80), (2, 129, 64, 300, 129)], ids=str)
def test_embedding(cb, ref, rng, B, T, C, V, maxT):
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    fwd = dict(out=np.zeros((B, T, C)), idx=idx, wte=rand(rng, (V, C)), wpe=rand(rng, (maxT, C)))
    w64, w32 = run_ref(ref, "embedding_forward", fwd)
    got = run_dev(cb, "embedding_forward", fwd, {"out"})
    check(got, w64, w32, ["out"])
    bwd = dict(dwte=rand(rng, (V, C)), dwpe=rand(rng, (maxT, C)), dout=rand(rng, (B, T, C)), idx=idx)
    w64, w32 = run_ref(ref, "embedding_backward", bwd)
    got = run_dev(cb, "embedding_backward", bwd, set())  # += onto random values
    check(got, w64, w32, ["dwte", "dwpe"])
    again = run_dev(cb, "embedding_backward", bwd, set())
    assert np.array_equal(got["dwte"], again["dwte"]), "embedding_backward is not deterministic"


# ------------------------------------------------------------------ layernorm
@pytest.mark.parametrize("N,C", [(1, 12), (7, 36), (65, 64), (257, 768)], ids=str)
def test_layernorm(cb, ref, rng, N, C):
    fwd = dict(out=np.zeros((N, C)), mean=np.zeros(N), rstd=np.zeros(N),
               x=rand(rng, (N, C), 2.0) + 0.5, w=rand(rng, C), b=rand(rng, C))
    w64, w32 = run_ref(ref, "layernorm_forward", fwd)
    got = run_dev(cb, "layernorm_forward", fwd, {"out", "mean", "rstd"})
    check(got, w64, w32, ["out", "mean", "rstd"])
    bwd = dict(dx=np.zeros((N, C)), dw=rand(rng, C), db=rand(rng, C), dout=rand(rng, (N, C)),
               x=fwd["x"], w=fwd["w"], mean=w64["mean"], rstd=w64["rstd"])
    w64, w32 = run_ref(ref, "layernorm_backward", bwd)
    got = run_dev(cb, "layernorm_backward", bwd, {"dx"})
    check(got, w64, w32, ["dx", "dw", "db"])


# ------------------------------------------------------------------ matmul
@pytest.mark.parametrize("N,C,OC", [(1, 12, 36), (7, 36, 12), (65, 64, 192), (130, 96, 7)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_matmul(cb, ref, rng, N, C, OC, with_bias):
    x, w = rand(rng, (N, C)), rand(rng, (OC, C))
    bias = rand(rng, OC) if with_bias else None
    want64 = x @ w.T + (bias if with_bias else 0)
    want32 = np.zeros((N, OC), np.float32)
    ref.matmul_forward(want32, x.astype(np.float32), w.astype(np.float32),
                       None if bias is None else bias.astype(np.float32))
    out = nan_dev(cb, (N, OC))
    cb.matmul_forward(out, dev(cb, x), dev(cb, w), None if bias is None else dev(cb, bias))
    assert_close(cb.to_numpy(out), want64, ref32=want32, name="out")

    arrays = dict(dx=np.zeros((N, C)), dw=rand(rng, (OC, C)), dbias=rand(rng, OC),
                  dout=rand(rng, (N, OC)), x=x, w=w)
    if not with_bias:
        arrays["dbias"] = None
    res = []
    for dt in (np.float64, np.float32):
        a = {k: (None if v is None else v.astype(dt)) for k, v in arrays.items()}
        ref.matmul_backward(*a.values())
        res.append(a)
    d = {k: (None if v is None else (nan_dev(cb, v.shape) if k == "dx" else dev(cb, v)))
         for k, v in arrays.items()}
    cb.matmul_backward(*d.values())
    for n in ("dx", "dw") + (("dbias",) if with_bias else ()):
        assert_close(cb.to_numpy(d[n]), res[0][n], ref32=res[1][n], name=n)
    # dx=None skips the input gradient and still accumulates dw
    dw = dev(cb, arrays["dw"])
    cb.matmul_backward(None, dw, None, dev(cb, arrays["dout"]), dev(cb, x), dev(cb, w))
    assert_close(cb.to_numpy(dw), res[0]["dw"], ref32=res[1]["dw"], name="dw (dx=None)")


# ------------------------------------------------------------------ attention
ATT_SHAPES = [(1, 1, 12, 4), (2, 7, 36, 6), (1, 65, 36, 3), (2, 129, 64, 2), (1, 130, 128, 2),
              (2, 33, 256, 2), (1, 64, 48, 1)]


@pytest.mark.parametrize("B,T,C,NH", ATT_SHAPES, ids=str)
def test_attention(cb, ref, rng, B, T, C, NH):
    qkv = rand(rng, (B, T, 3 * C))
    fwd = dict(out=np.zeros((B, T, C)), lse=np.zeros((B, NH, T)), qkv=qkv)
    w64, w32 = run_ref(ref, "attention_forward", fwd, NH)
    got = run_dev(cb, "attention_forward", fwd, {"out", "lse"}, NH)
    check(got, w64, w32, ["out", "lse"])
    bwd = dict(dqkv=np.zeros((B, T, 3 * C)), dout=rand(rng, (B, T, C)), qkv=qkv, out=w64["out"],
               lse=w64["lse"])
    b64, b32 = run_ref(ref, "attention_backward", bwd, NH)
    got = run_dev(cb, "attention_backward", bwd, {"dqkv"}, NH)
    hs3 = got["dqkv"].reshape(B, T, 3, C)
    for i, part in enumerate(("dq", "dk", "dv")):
        assert_close(hs3[:, :, i], b64["dqkv"].reshape(B, T, 3, C)[:, :, i],
                     ref32=b32["dqkv"].reshape(B, T, 3, C)[:, :, i], name=part)
    again = run_dev(cb, "attention_backward", bwd, {"dqkv"}, NH)
    assert np.array_equal(got["dqkv"], again["dqkv"]), "attention_backward is not deterministic"


@pytest.mark.parametrize("B,NH,maxT,HS,n_valid", [(2, 3, 16, 4, 1), (1, 2, 65, 32, 65),
                                                   (2, 4, 129, 64, 100), (1, 1, 7, 128, 5)],
                         ids=str)
def test_attention_decode(cb, ref, rng, B, NH, maxT, HS, n_valid):
    arrays = dict(out=np.zeros((B, NH * HS)), q=rand(rng, (B, NH * HS)),
                  k_cache=rand(rng, (B, NH, maxT, HS)), v_cache=rand(rng, (B, NH, maxT, HS)))
    w64, w32 = run_ref(ref, "attention_decode", arrays, n_valid)
    got = run_dev(cb, "attention_decode", arrays, {"out"}, n_valid)
    check(got, w64, w32, ["out"])


# ------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 65, 48)], ids=str)
def test_gelu_residual(cb, ref, rng, shape):
    x = rand(rng, shape, 3.0)
    w64, w32 = run_ref(ref, "gelu_forward", dict(out=np.zeros(shape), x=x))
    got = run_dev(cb, "gelu_forward", dict(out=np.zeros(shape), x=x), {"out"})
    check(got, w64, w32, ["out"])
    arr = dict(dx=np.zeros(shape), dout=rand(rng, shape), x=x)
    w64, w32 = run_ref(ref, "gelu_backward", arr)
    got = run_dev(cb, "gelu_backward", arr, {"dx"})
    check(got, w64, w32, ["dx"])
    arr = dict(out=np.zeros(shape), a=rand(rng, shape), b=rand(rng, shape))
    w64, w32 = run_ref(ref, "add", arr)
    got = run_dev(cb, "add", arr, {"out"})
    check(got, w64, w32, ["out"])
    a, b = dev(cb, arr["a"]), dev(cb, arr["b"])
    cb.add(a, a, b)  # out aliasing a
    assert_close(cb.to_numpy(a), w64["out"], ref32=w32["out"], name="out (aliased)")


# ------------------------------------------------------------------ loss
@pytest.mark.parametrize("N,V", [(1, 5), (7, 65), (33, 1000), (4, 50304)], ids=str)
def test_crossentropy(cb, ref, rng, N, V):
    tgt = rng.integers(0, V, N).astype(np.int32)
    fwd = dict(losses=np.zeros(N), probs=np.zeros((N, V)), logits=rand(rng, (N, V), 3.0),
               targets=tgt)
    w64, w32 = run_ref(ref, "crossentropy_forward", fwd)
    got = run_dev(cb, "crossentropy_forward", fwd, {"losses", "probs"})
    check(got, w64, w32, ["losses", "probs"])
    bwd = dict(dlogits=np.zeros((N, V)), probs=w64["probs"], targets=tgt)
    b64, b32 = run_ref(ref, "crossentropy_backward", bwd, 1.0 / N)
    got = run_dev(cb, "crossentropy_backward", bwd, {"dlogits"}, 1.0 / N)
    check(got, b64, b32, ["dlogits"])


@pytest.mark.parametrize("N,C,V", [(1, 12, 5), (7, 36, 50), (65, 64, 1000)], ids=str)
@pytest.mark.parametrize("block_elems", [None, 3000], ids=["oneblock", "manyblocks"])
def test_classifier(cb, ref, rng, monkeypatch, N, C, V, block_elems):
    if block_elems is not None:
        monkeypatch.setattr(cb, "_CLASSIFIER_ELEMS", block_elems)
    tgt = rng.integers(0, V, N).astype(np.int32)
    arrays = dict(losses=np.zeros(N), dx=np.zeros((N, C)), dwte=rand(rng, (V, C)),
                  x=rand(rng, (N, C)), wte=rand(rng, (V, C)), targets=tgt)
    w64, w32 = run_ref(ref, "classifier_forward_backward", arrays, 1.0 / N)
    got = run_dev(cb, "classifier_forward_backward", arrays, {"losses", "dx"}, 1.0 / N)
    check(got, w64, w32, ["losses", "dx", "dwte"])
    losses = nan_dev(cb, (N,))
    cb.classifier_forward_backward(losses, None, None, dev(cb, arrays["x"]), dev(cb, arrays["wte"]),
                          dev(cb, tgt), 1.0 / N)
    assert_close(cb.to_numpy(losses), w64["losses"], ref32=w32["losses"], name="losses (no grad)")


# ------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("n", [1, 1000, 3_000_001], ids=str)
def test_global_norm_and_scale(cb, rng, n):
    g = rand(rng, n).astype(np.float32)
    want = float(np.dot(g.astype(np.float64), g.astype(np.float64)))
    gd = dev(cb, g)
    got = cb.global_norm_sq(gd)
    assert isinstance(got, float)
    assert abs(got - want) <= 1e-10 * want
    assert cb.global_norm_sq(gd) == got, "global_norm_sq is not deterministic"
    cb.scale_(gd, 0.37)
    assert_close(cb.to_numpy(gd), g.astype(np.float64) * 0.37, ref32=g * np.float32(0.37))


@pytest.mark.parametrize("n,step,wd", [(1, 1, 0.0), (1000, 3, 0.1), (100_003, 50, 0.1)], ids=str)
def test_adamw(cb, ref, rng, n, step, wd):
    arrays = dict(params=rand(rng, n), grads=rand(rng, n), m=rand(rng, n) * 0.1,
                  v=np.abs(rand(rng, n)) * 0.01)
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=wd, step=step)
    w64, w32 = run_ref(ref, "adamw_update", arrays, **kw)
    got = run_dev(cb, "adamw_update", arrays, set(), **kw)
    check(got, w64, w32, ["params", "m", "v"])


# ------------------------------------------------------------------ bad input
def test_bad_input_raises(cb, rng):
    x = dev(cb, rand(rng, (4, 8)))
    w, b = dev(cb, np.ones(8)), dev(cb, np.zeros(8))
    out, mean, rstd = cb.empty((4, 8)), cb.empty(4), cb.empty(4)
    with pytest.raises(TypeError, match="x"):
        cb.layernorm_forward(out, mean, rstd, np.zeros((4, 8), np.float32), w, b)
    with pytest.raises(TypeError, match="x"):
        cb.layernorm_forward(out, mean, rstd, x.astype("float64"), w, b)
    with pytest.raises(TypeError, match="x"):
        cb.layernorm_forward(out, mean, rstd, cb.asarray(np.zeros((8, 4))).T, w, b)
    with pytest.raises(ValueError, match="w"):
        cb.layernorm_forward(out, mean, rstd, x, cb.empty(7), b)
    idx = cb.asarray(np.array([[0, 9]], np.int32))
    with pytest.raises(ValueError, match="idx"):
        cb.embedding_forward(cb.empty((1, 2, 8)), idx, dev(cb, rand(rng, (5, 8))),
                             dev(cb, rand(rng, (4, 8))))
    with pytest.raises(ValueError, match="n_head"):
        cb.attention_forward(cb.empty((1, 2, 8)), cb.empty((1, 3, 2)), cb.empty((1, 2, 24)), 3)
    with pytest.raises(ValueError, match="head size"):
        cb.attention_forward(cb.empty((1, 2, 256)), cb.empty((1, 1, 2)), cb.empty((1, 2, 768)), 1)
    with pytest.raises(ValueError, match="n_valid"):
        cb.attention_decode(cb.empty((1, 8)), cb.empty((1, 8)), cb.empty((1, 2, 4, 4)),
                            cb.empty((1, 2, 4, 4)), 5)
