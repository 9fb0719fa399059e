import numpy as _np


def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    A = a.T if transa == "T" else a
    B = b.T if transb == "T" else b
    r = alpha * (_np.asarray(A, _np.float64) @ _np.asarray(B, _np.float64))
    if beta:
        r = r + beta * _np.asarray(out, _np.float64)
    assert out.shape == r.shape, (out.shape, r.shape)
    out[...] = r
    return out
