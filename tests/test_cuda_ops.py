"""Properties of the CUDA ops beyond parity with the reference (that lives in test_op_matrix.py):
the classifier's multi-block path, determinism, and bad input -> clear exceptions. Skipped (with
the reason) where CuPy, kernelgpt._cuda or a GPU is missing."""
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


# ------------------------------------------------------------------ classifier
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
