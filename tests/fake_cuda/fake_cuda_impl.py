"""FAKE kernelgpt._cuda: same function names/params as the real binding, implemented in numpy on
raw pointers (host memory from the fake cupy)."""
import ctypes
import math
import numpy as np
from kernelgpt.backends import numpy_backend as R

_CT = {np.float32: ctypes.c_float, np.float64: ctypes.c_double, np.int32: ctypes.c_int32}


def A(ptr, n, dt=np.float32, shape=None):
    assert ptr != 0 and n > 0
    a = np.ctypeslib.as_array((_CT[dt] * int(n)).from_address(ptr))
    return a.reshape(shape) if shape is not None else a


def device_count(): return 1
def layernorm_partial_blocks(N): return (N + 31) // 32
def colsum_partial_blocks(N): return (N + 63) // 64
def norm_partial_blocks(n): return max(1, min(1024, (n + 2047) // 2048))


def embedding_forward(out, idx, wte, wpe, B, T, C, stream):
    ix = A(idx, B * T, np.int32, (B, T))
    V = int(ix.max()) + 1
    R.embedding_forward(A(out, B * T * C, shape=(B, T, C)), ix.copy(), A(wte, V * C, shape=(V, C)), A(wpe, T * C, shape=(T, C)))


def embedding_backward(dwte, dwpe, dout, sorted_rows, sorted_tok, B, T, C, stream):
    N = B * T
    rows, tok = A(sorted_rows, N, np.int32), A(sorted_tok, N, np.int32)
    assert np.all(np.diff(tok) >= 0) and sorted(rows.tolist()) == list(range(N))
    V = int(tok.max()) + 1
    dw = A(dwte, V * C, shape=(V, C))
    d = A(dout, N * C, shape=(N, C))
    np.add.at(dw, tok, d[rows])
    A(dwpe, T * C, shape=(T, C))[...] += d.reshape(B, T, C).sum(0)


def layernorm_forward(out, mean, rstd, x, w, b, N, C, eps, stream):
    R.layernorm_forward(A(out, N * C, shape=(N, C)), A(mean, N), A(rstd, N), A(x, N * C, shape=(N, C)), A(w, C), A(b, C), eps)


def layernorm_backward(dx, dw, db, partials, n_partials, dout, x, w, mean, rstd, N, C, stream):
    assert n_partials >= layernorm_partial_blocks(N) * 2 * C
    A(partials, n_partials)[:] = 0
    R.layernorm_backward(A(dx, N * C, shape=(N, C)), A(dw, C), A(db, C), A(dout, N * C, shape=(N, C)).copy(), A(x, N * C, shape=(N, C)), A(w, C), A(mean, N), A(rstd, N))


def gelu_forward(out, x, n, stream): R.gelu_forward(A(out, n), A(x, n))
def gelu_backward(dx, dout, x, n, stream): R.gelu_backward(A(dx, n), A(dout, n).copy(), A(x, n))
def add(out, a, b, n, stream): R.add(A(out, n), A(a, n).copy(), A(b, n).copy())
def add_bias(out, bias, N, OC, stream): A(out, N * OC, shape=(N, OC))[...] += A(bias, OC)


def bias_backward(dbias, partials, n_partials, dout, N, OC, stream):
    assert n_partials >= colsum_partial_blocks(N) * OC
    A(dbias, OC)[...] += A(dout, N * OC, shape=(N, OC)).sum(0)


def scale_(g, s, n, stream): A(g, n)[...] *= np.float32(s)


def attention_forward(out, lse, qkv, B, T, NH, HS, stream):
    C = NH * HS
    assert HS <= 128
    R.attention_forward(A(out, B * T * C, shape=(B, T, C)), A(lse, B * NH * T, shape=(B, NH, T)), A(qkv, B * T * 3 * C, shape=(B, T, 3 * C)), NH)


def attention_backward(dqkv, scratch, dout, qkv, out, lse, B, T, NH, HS, stream):
    C = NH * HS
    A(scratch, B * NH * T)[:] = 0
    R.attention_backward(A(dqkv, B * T * 3 * C, shape=(B, T, 3 * C)), A(dout, B * T * C, shape=(B, T, C)), A(qkv, B * T * 3 * C, shape=(B, T, 3 * C)), A(out, B * T * C, shape=(B, T, C)), A(lse, B * NH * T, shape=(B, NH, T)), NH)


def attention_decode(out, q, k_cache, v_cache, B, NH, maxT, HS, n_valid, stream):
    C = NH * HS
    sh = (B, NH, maxT, HS)
    R.attention_decode(A(out, B * C, shape=(B, C)), A(q, B * C, shape=(B, C)), A(k_cache, B * C * maxT, shape=sh), A(v_cache, B * C * maxT, shape=sh), n_valid)


def crossentropy_forward(losses, probs, logits, targets, N, V, stream):
    R.crossentropy_forward(A(losses, N), A(probs, N * V, shape=(N, V)), A(logits, N * V, shape=(N, V)), A(targets, N, np.int32).copy())


def crossentropy_backward(dlogits, probs, targets, N, V, scale, stream):
    R.crossentropy_backward(A(dlogits, N * V, shape=(N, V)), A(probs, N * V, shape=(N, V)).copy(), A(targets, N, np.int32).copy(), scale)


def softmax_ce_fused(losses, logits, targets, N, V, scale, write_grad, stream):
    lg = A(logits, N * V, shape=(N, V))
    t = A(targets, N, np.int32).copy()
    p = np.empty_like(lg)
    R.crossentropy_forward(A(losses, N), p, lg.copy(), t)
    if write_grad:
        R.crossentropy_backward(lg, p, t, scale)


def global_norm_sq(out, partials, n_partials, g, n, stream):
    x = A(g, n).astype(np.float64)
    A(out, 1, np.float64)[0] = float(np.dot(x, x))


def adamw_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, stream):
    p, g, mm, vv = A(params, n), A(grads, n), A(m, n), A(v, n)
    f = np.float32
    mm[...] = f(beta1) * mm + f(1 - beta1) * g
    vv[...] = f(beta2) * vv + f(1 - beta2) * g * g
    p[...] -= f(lr) * ((mm / f(bc1)) / (np.sqrt(vv / f(bc2)) + f(eps)) + f(weight_decay) * p)
