"""The NumPy reference ops: forwards against independent formulas, backwards against central finite
differences in float64, the `=` / `+=` rule, and argument validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import assert_close
from kernelgpt.backends import numpy_backend as nb

F64 = np.float64
SHAPES = [(2, 5, 12, 3), (1, 1, 8, 2), (3, 7, 10, 5), (1, 4, 6, 1)]  # (B, T, C, NH): odd ones too
SHAPE_IDS = [f"B{b}-T{t}-C{c}-NH{h}" for b, t, c, h in SHAPES]


def rand(rng, *shape, dtype=F64, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def poison(*shape, dtype=F64):
    return np.full(shape, np.nan, dtype=dtype)


def numgrad(f, x, h=1e-6, max_entries=None, rng=None):
    """Central differences of the scalar f() w.r.t. x (perturbed in place). Returns (idx, grads)
    for all entries, or for a random subset of ``max_entries`` of them."""
    flat = x.reshape(-1)
    idx = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        idx = rng.choice(flat.size, max_entries, replace=False)
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        out[j] = (fp - fm) / (2 * h)
    return idx, out


def check_grad(f, x, analytic, rng=None, max_entries=None, tol=1e-6):
    idx, num = numgrad(f, x, max_entries=max_entries, rng=rng)
    assert_close(analytic.reshape(-1)[idx], num, tol=tol, name="grad")


def causal_attention_ref(qkv, nh):
    """Explicit per-(b, h, t) loops: a masked softmax written independently of the backend."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // nh
    out = np.zeros((B, T, C))
    lse = np.zeros((B, nh, T))
    for b in range(B):
        for h in range(nh):
            q = qkv[b, :, h * hs:(h + 1) * hs]
            k = qkv[b, :, C + h * hs:C + (h + 1) * hs]
            v = qkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs]
            for t in range(T):
                s = np.array([q[t] @ k[u] / math.sqrt(hs) for u in range(t + 1)])
                lse[b, h, t] = math.log(np.sum(np.exp(s)))
                p = np.exp(s - lse[b, h, t])
                out[b, t, h * hs:(h + 1) * hs] = p @ v[:t + 1]
    return out, lse


# ------------------------------------------------------------------------------------ embedding
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_embedding(rng, shape):
    B, T, C, _ = shape
    V, maxT = 7, T + 2
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    idx[0, 0] = idx[-1, -1] = 3  # a repeated id exercises the scatter-add
    wte, wpe = rand(rng, V, C), rand(rng, maxT, C)
    out = poison(B, T, C)
    nb.embedding_forward(out, idx, wte, wpe)
    want = np.array([[wte[idx[b, t]] + wpe[t] for t in range(T)] for b in range(B)])
    assert_close(out, want, tol=1e-15)

    G = rand(rng, B, T, C)
    dwte0, dwpe0 = rand(rng, V, C), rand(rng, maxT, C)  # non-zero: param grads accumulate
    dwte, dwpe = dwte0.copy(), dwpe0.copy()
    nb.embedding_backward(dwte, dwpe, G, idx)

    def f():
        nb.embedding_forward(out, idx, wte, wpe)
        return float(np.sum(out * G))
    check_grad(f, wte, dwte - dwte0)
    check_grad(f, wpe, dwpe - dwpe0)
    assert np.array_equal(dwpe[T:], dwpe0[T:])


# ------------------------------------------------------------------------------------ layernorm
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_layernorm(rng, shape):
    B, T, C, _ = shape
    N = B * T
    x, w, b = rand(rng, N, C, scale=2.0) + 0.5, rand(rng, C), rand(rng, C)
    out, mean, rstd = poison(N, C), poison(N), poison(N)
    nb.layernorm_forward(out, mean, rstd, x, w, b)
    mu = np.array([sum(r) / C for r in x])
    var = np.array([sum((r - m) ** 2) / C for r, m in zip(x, mu)])
    assert_close(mean, mu, tol=1e-13)
    assert_close(rstd, 1 / np.sqrt(var + 1e-5), tol=1e-13)
    assert_close(out, (x - mu[:, None]) / np.sqrt(var[:, None] + 1e-5) * w + b, tol=1e-13)

    G = rand(rng, N, C)
    dx = poison(N, C)
    dw0, db0 = rand(rng, C), rand(rng, C)
    dw, db = dw0.copy(), db0.copy()
    nb.layernorm_backward(dx, dw, db, G, x, w, mean, rstd)
    tmp = [poison(N, C), poison(N), poison(N)]

    def f():
        nb.layernorm_forward(*tmp, x, w, b)
        return float(np.sum(tmp[0] * G))
    check_grad(f, x, dx)
    check_grad(f, w, dw - dw0)
    check_grad(f, b, db - db0)


# ------------------------------------------------------------------------------------ matmul
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("N,C,OC", [(6, 5, 7), (1, 8, 3), (13, 3, 1)])
def test_matmul(rng, N, C, OC, with_bias):
    x, w = rand(rng, N, C), rand(rng, OC, C)
    bias = rand(rng, OC) if with_bias else None
    out = poison(N, OC)
    nb.matmul_forward(out, x, w, bias)
    want = np.array([[sum(x[n, c] * w[o, c] for c in range(C)) + (bias[o] if with_bias else 0)
                      for o in range(OC)] for n in range(N)])
    assert_close(out, want, tol=1e-13)

    G = rand(rng, N, OC)
    dx = poison(N, C)
    dw0, db0 = rand(rng, OC, C), rand(rng, OC)
    dw, db = dw0.copy(), db0.copy()
    nb.matmul_backward(dx, dw, db if with_bias else None, G, x, w)

    def f():
        nb.matmul_forward(out, x, w, bias)
        return float(np.sum(out * G))
    check_grad(f, x, dx)
    check_grad(f, w, dw - dw0)
    if with_bias:
        check_grad(f, bias, db - db0)
    else:
        assert np.array_equal(db, db0)
    # dx=None skips the input gradient but still accumulates dw
    dw2 = dw0.copy()
    nb.matmul_backward(None, dw2, None, G, x, w)
    assert_close(dw2, dw, tol=1e-15)


# ------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_attention_forward_matches_explicit_masked_softmax(rng, shape):
    B, T, C, NH = shape
    qkv = rand(rng, B, T, 3 * C, scale=1.5)
    out, lse = poison(B, T, C), poison(B, NH, T)
    nb.attention_forward(out, lse, qkv, NH)
    want_out, want_lse = causal_attention_ref(qkv, NH)
    assert_close(out, want_out, tol=1e-13)
    assert_close(lse, want_lse, tol=1e-13)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_attention_backward(rng, shape):
    B, T, C, NH = shape
    qkv = rand(rng, B, T, 3 * C)
    out, lse = poison(B, T, C), poison(B, NH, T)
    nb.attention_forward(out, lse, qkv, NH)
    G = rand(rng, B, T, C)
    dqkv = poison(B, T, 3 * C)
    nb.attention_backward(dqkv, G, qkv, out, lse, NH)
    o2, l2 = poison(B, T, C), poison(B, NH, T)

    def f():
        nb.attention_forward(o2, l2, qkv, NH)
        return float(np.sum(o2 * G))
    check_grad(f, qkv, dqkv)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_attention_decode_is_last_row_of_forward(rng, shape):
    B, T, C, NH = shape
    hs, maxT = C // NH, T + 3
    qkv = rand(rng, B, T, 3 * C)
    out, lse = poison(B, T, C), poison(B, NH, T)
    nb.attention_forward(out, lse, qkv, NH)
    kc, vc = rand(rng, B, NH, maxT, hs), rand(rng, B, NH, maxT, hs)  # junk past n_valid
    kc[:, :, :T] = qkv[:, :, C:2 * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    vc[:, :, :T] = qkv[:, :, 2 * C:].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    q = np.ascontiguousarray(qkv[:, -1, :C])
    dec = poison(B, C)
    nb.attention_decode(dec, q, kc, vc, T)
    assert_close(dec, out[:, -1], tol=1e-13)


# ------------------------------------------------------------------------------------ elementwise
def test_gelu(rng):
    x = rand(rng, 3, 7, scale=2.0)
    out = poison(3, 7)
    nb.gelu_forward(out, x)
    want = np.vectorize(lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi)
                                                           * (v + 0.044715 * v ** 3))))(x)
    assert_close(out, want, tol=1e-14)
    G = rand(rng, 3, 7)
    dx = poison(3, 7)
    nb.gelu_backward(dx, G, x)
    o2 = poison(3, 7)

    def f():
        nb.gelu_forward(o2, x)
        return float(np.sum(o2 * G))
    check_grad(f, x, dx)


def test_add(rng):
    a, b = rand(rng, 2, 3, 5), rand(rng, 2, 3, 5)
    out = poison(2, 3, 5)
    nb.add(out, a, b)
    assert np.array_equal(out, a + b)
    a2 = a.copy()
    nb.add(a2, a2, b)  # out may alias an input
    assert np.array_equal(a2, a + b)


# ------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize("N,V", [(5, 7), (1, 3), (9, 1)])
def test_crossentropy(rng, N, V):
    logits = rand(rng, N, V, scale=3.0)
    targets = rng.integers(0, V, N).astype(np.int32)
    losses, probs = poison(N), poison(N, V)
    nb.crossentropy_forward(losses, probs, logits, targets)
    ex = np.exp(logits)
    assert_close(probs, ex / ex.sum(1, keepdims=True), tol=1e-13)
    assert_close(losses, -np.log(ex[np.arange(N), targets] / ex.sum(1)), tol=1e-12, floor=1e-12)

    scale = 0.37
    dlogits = poison(N, V)
    nb.crossentropy_backward(dlogits, probs, targets, scale)
    l2, p2 = poison(N), poison(N, V)

    def f():
        nb.crossentropy_forward(l2, p2, logits, targets)
        return float(l2.sum() * scale)
    if V > 1:
        check_grad(f, logits, dlogits)
    else:
        assert np.all(dlogits == 0) and np.all(losses == 0)
    # dlogits may alias probs
    nb.crossentropy_backward(probs, probs, targets, scale)
    assert np.array_equal(probs, dlogits)


def test_crossentropy_survives_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    losses, probs = poison(1, dtype=np.float32), poison(1, 3, dtype=np.float32)
    nb.crossentropy_forward(losses, probs, logits, np.array([1], np.int32))
    assert np.isfinite(losses).all() and abs(losses[0] - 1000.0) < 1e-3


@pytest.mark.parametrize("N", [1, 7, 300, 513])  # > 256 rows: several blocks, a ragged last one
def test_classifier_equals_matmul_plus_crossentropy(rng, N):
    C, V = 6, 11
    x, wte = rand(rng, N, C), rand(rng, V, C)
    targets = rng.integers(0, V, N).astype(np.int32)
    scale = 1.0 / N
    logits = poison(N, V)
    nb.matmul_forward(logits, x, wte, None)
    losses_ref, probs = poison(N), poison(N, V)
    nb.crossentropy_forward(losses_ref, probs, logits, targets)
    dlogits = poison(N, V)
    nb.crossentropy_backward(dlogits, probs, targets, scale)
    dx_ref = poison(N, C)
    dwte0 = rand(rng, V, C)
    dwte_ref = dwte0.copy()
    nb.matmul_backward(dx_ref, dwte_ref, None, dlogits, x, wte)

    losses, dx, dwte = poison(N), poison(N, C), dwte0.copy()
    nb.classifier_forward_backward(losses, dx, dwte, x, wte, targets, scale)
    assert_close(losses, losses_ref, tol=1e-13)
    assert_close(dx, dx_ref, tol=1e-12)
    assert_close(dwte, dwte_ref, tol=1e-12)
    # losses only
    losses2 = poison(N)
    nb.classifier_forward_backward(losses2, None, None, x, wte, targets, scale)
    assert_close(losses2, losses_ref, tol=1e-13)
    # and its gradient against finite differences
    if N <= 7:
        dx_fd, dwte_fd = poison(N, C), np.zeros((V, C))
        nb.classifier_forward_backward(losses2, dx_fd, dwte_fd, x, wte, targets, scale)
        l3 = poison(N)

        def f():
            nb.classifier_forward_backward(l3, None, None, x, wte, targets, scale)
            return float(l3.sum() * scale)
        check_grad(f, x, dx_fd)
        check_grad(f, wte, dwte_fd)


# ------------------------------------------------------------------------------------ optimizer
def test_adamw_two_steps_match_formula(rng):
    n = 37
    p, g1, g2 = rand(rng, n), rand(rng, n), rand(rng, n)
    m, v = np.zeros(n), np.zeros(n)
    kw = dict(lr=0.01, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    want, wm, wv = p.copy(), np.zeros(n), np.zeros(n)
    for step, g in ((1, g1), (2, g2)):
        nb.adamw_update(p, g, m, v, step=step, **kw)
        for i in range(n):
            wm[i] = 0.9 * wm[i] + 0.1 * g[i]
            wv[i] = 0.95 * wv[i] + 0.05 * g[i] ** 2
            mh, vh = wm[i] / (1 - 0.9 ** step), wv[i] / (1 - 0.95 ** step)
            want[i] -= 0.01 * (mh / (math.sqrt(vh) + 1e-8) + 0.1 * want[i])
    assert_close(p, want, tol=1e-14)
    assert_close(m, wm, tol=1e-14)
    assert_close(v, wv, tol=1e-14)


def test_global_norm_and_scale(rng):
    g = rand(rng, 1000, dtype=np.float32)
    assert math.isclose(nb.global_norm_sq(g), float(np.sum(g.astype(F64) ** 2)), rel_tol=1e-12)
    want = g * np.float32(0.5)
    nb.scale_(g, 0.5)
    assert np.array_equal(g, want)


# ------------------------------------------------------------------------------------ dtypes
def test_float32_forward_close_to_float64(rng):
    B, T, C, NH = 2, 6, 16, 4
    qkv = rand(rng, B, T, 3 * C)
    o64, l64 = poison(B, T, C), poison(B, NH, T)
    nb.attention_forward(o64, l64, qkv, NH)
    o32, l32 = poison(B, T, C, dtype=np.float32), poison(B, NH, T, dtype=np.float32)
    nb.attention_forward(o32, l32, qkv.astype(np.float32), NH)
    assert o32.dtype == np.float32
    assert_close(o32, o64, tol=1e-5)
    assert_close(l32, l64, tol=1e-5)


# ------------------------------------------------------------------------------------ validation
def test_bad_arguments_raise_naming_the_argument(rng):
    x = rand(rng, 4, 8)
    w = rand(rng, 3, 8)
    with pytest.raises(ValueError, match="out"):
        nb.matmul_forward(poison(4, 2), x, w, None)
    with pytest.raises(ValueError, match="w must"):
        nb.matmul_forward(poison(4, 3), x, rand(rng, 3, 7), None)
    with pytest.raises(TypeError, match="x"):
        nb.matmul_forward(poison(4, 3), x.astype(np.float32), w, None)
    with pytest.raises(TypeError, match="x must be C-contiguous"):
        nb.matmul_forward(poison(8, 3), np.asfortranarray(rand(rng, 8, 8)), w, None)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        nb.gelu_forward(poison(3), np.arange(3))
    with pytest.raises(ValueError, match="bias"):
        nb.matmul_forward(poison(4, 3), x, w, rand(rng, 4))
    idx = np.array([[0, 9]], np.int32)
    with pytest.raises(ValueError, match="idx"):
        nb.embedding_forward(poison(1, 2, 8), idx, rand(rng, 5, 8), rand(rng, 4, 8))
    with pytest.raises(TypeError, match="idx must be int32"):
        nb.embedding_forward(poison(1, 2, 8), idx.astype(np.int64), rand(rng, 10, 8),
                             rand(rng, 4, 8))
    with pytest.raises(ValueError, match="wpe"):
        nb.embedding_forward(poison(1, 2, 8), np.zeros((1, 2), np.int32), rand(rng, 5, 8),
                             rand(rng, 1, 8))
    with pytest.raises(ValueError, match="n_head"):
        nb.attention_forward(poison(1, 2, 8), poison(1, 3, 2), rand(rng, 1, 2, 24), 3)
    with pytest.raises(ValueError, match="lse"):
        nb.attention_forward(poison(1, 2, 8), poison(1, 2, 3), rand(rng, 1, 2, 24), 2)
    with pytest.raises(ValueError, match="targets"):
        nb.crossentropy_forward(poison(2), poison(2, 3), rand(rng, 2, 3), np.array([0, 3], np.int32))
    with pytest.raises(ValueError, match="n_valid"):
        nb.attention_decode(poison(1, 4), rand(rng, 1, 4), rand(rng, 1, 2, 3, 2),
                            rand(rng, 1, 2, 3, 2), 4)
    with pytest.raises(ValueError, match="grads"):
        nb.adamw_update(rand(rng, 4), rand(rng, 3), rand(rng, 4), rand(rng, 4), lr=1e-3,
                        beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, step=1)
    with pytest.raises(TypeError, match="must be a numpy.ndarray"):
        nb.gelu_forward(poison(3), [1.0, 2.0, 3.0])
