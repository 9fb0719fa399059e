"""Our GEMM (matmul_forward/backward, general gemm) and the fused classifier against float64 NumPy,
on every micro-kernel this CPU has, odd and model shapes, outputs poisoned with NaN (the +=
buffers start from random values), 1 vs 2 threads bitwise equal, and bad input -> clear errors.

Error bound (flash-attention's rule): ||got - ref64|| / ||ref64|| <= max(1e-5, 2 * err32 + 1e-6),
where err32 is the same computation done by float32 NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close

nat = pytest.importorskip("kernelgpt._native")


def _kernels():
    ks = ["portable"]
    for k in ("avx2_fma", "avx512"):
        try:
            nat._set_gemm_kernel(k)
            ks.append(k)
        except ValueError:
            pass
    nat._set_gemm_kernel("auto")
    return ks


KERNELS = _kernels()


@pytest.fixture(params=KERNELS)
def kernel(request):
    nat._set_gemm_kernel(request.param)
    yield request.param
    nat._set_gemm_kernel("auto")


@pytest.fixture
def threads():
    """Set the thread count for one test and put the previous one back."""
    before = nat.max_threads()
    yield nat.set_num_threads
    nat.set_num_threads(before)


def f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def nan(*shape):
    return np.full(shape, np.nan, np.float32)


def close(got, want64, want32, name):
    assert_close(got, want64, name=name, tol=1e-5, ref32=want32, floor=1e-6)


# ----------------------------------------------------------------------------- matmul
ODD = [(1, 12, 5), (3, 20, 37), (4, 33, 100), (17, 33, 37), (67, 12, 100), (67, 20, 5)]
MODEL = [(512, 128, 384), (512, 128, 512)]
MODEL_S = [(2048, 384, 1152), (2048, 384, 384)]  # S shapes: best kernel only, to stay fast


def _matmul_case(rng, N, C, OC, with_bias):
    x, w, dout = f32(rng, N, C), f32(rng, OC, C), f32(rng, N, OC)
    b = f32(rng, OC) if with_bias else None

    out = nan(N, OC)
    nat.matmul_forward(out, x, w, b)
    ref64 = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b.astype(np.float64))
    ref32 = x @ w.T + (0 if b is None else b)
    close(out, ref64, ref32, "out")

    dx = nan(N, C)
    dw, db = f32(rng, OC, C), f32(rng, OC)
    dw0, db0 = dw.astype(np.float64), db.astype(np.float64)
    nat.matmul_backward(dx, dw, db if with_bias else None, dout, x, w)
    d64, x64, w64 = dout.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    close(dx, d64 @ w64, dout @ w, "dx")
    close(dw, dw0 + d64.T @ x64, dw0.astype(np.float32) + dout.T @ x, "dw")
    if with_bias:
        close(db, db0 + d64.sum(0), db0.astype(np.float32) + dout.sum(0), "dbias")
    else:
        assert np.array_equal(db, db0.astype(np.float32))


@pytest.mark.parametrize("shape", ODD + MODEL, ids=lambda s: "N=%d,C=%d,OC=%d" % s)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_matmul_matches_float64(kernel, rng, shape, with_bias):
    _matmul_case(rng, *shape, with_bias)


@pytest.mark.parametrize("shape", MODEL_S, ids=lambda s: "N=%d,C=%d,OC=%d" % s)
def test_matmul_model_s_shapes(rng, shape):
    _matmul_case(rng, *shape, True)


def test_matmul_backward_without_dx(rng):
    N, C, OC = 17, 20, 37
    x, w, dout = f32(rng, N, C), f32(rng, OC, C), f32(rng, N, OC)
    dw = np.zeros((OC, C), np.float32)
    nat.matmul_backward(None, dw, None, dout, x, w)
    close(dw, dout.astype(np.float64).T @ x.astype(np.float64), dout.T @ x, "dw")


# ----------------------------------------------------------------------------- general gemm
@pytest.mark.parametrize("ta", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("tb", [False, True], ids=["B", "Bt"])
@pytest.mark.parametrize("mnk", [(1, 5, 12), (3, 37, 33), (37, 100, 7), (130, 70, 300),
                                 (250, 90, 900), (400, 67, 1000)],  # several K and M blocks
                         ids=lambda s: "M=%d,N=%d,K=%d" % s)
def test_gemm_all_transposes(kernel, rng, ta, tb, mnk):
    M, N, K = mnk
    a = f32(rng, K, M) if ta else f32(rng, M, K)
    b = f32(rng, N, K) if tb else f32(rng, K, N)
    bias, c = f32(rng, N), f32(rng, M, N)
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    want64 = 0.5 * opa.astype(np.float64) @ opb.astype(np.float64) - 2.0 * c.astype(np.float64) + bias
    want32 = np.float32(0.5) * (opa @ opb) - np.float32(2.0) * c + bias
    nat.gemm(c, a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=-2.0, bias=bias)
    close(c, want64, want32, "c")


def test_gemm_beta_zero_never_reads_c_and_k_zero(rng):
    a, b = f32(rng, 9, 0), f32(rng, 0, 11)
    bias = f32(rng, 11)
    c = nan(9, 11)
    nat.gemm(c, a, b, bias=bias)  # K = 0: c = bias
    assert np.array_equal(c, np.broadcast_to(bias, (9, 11)))
    c = nan(9, 11)
    nat.gemm(c, f32(rng, 9, 5), f32(rng, 5, 11), beta=0.0)
    assert np.all(np.isfinite(c))


# ----------------------------------------------------------------------------- classifier
def _classifier_ref(x, wte, targets, scale, dtype):
    x, wte = x.astype(dtype), wte.astype(dtype)
    logits = x @ wte.T
    m = logits.max(1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(1, keepdims=True)
    rows = np.arange(len(targets))
    losses = np.log(s[:, 0]) + m[:, 0] - logits[rows, targets]
    dlogits = e / s
    dlogits[rows, targets] -= 1
    dlogits *= dtype(scale)
    return losses, dlogits @ wte, dlogits.T @ x


def _classifier_case(rng, N, C, V, scale=0.37):
    x, wte = f32(rng, N, C), f32(rng, V, C) * np.float32(0.5)
    targets = rng.integers(0, V, N).astype(np.int32)
    losses, dx = nan(N), nan(N, C)
    dwte = f32(rng, V, C)
    dwte0 = dwte.copy()
    nat.classifier_forward_backward(losses, dx, dwte, x, wte, targets, scale)
    l64, dx64, dw64 = _classifier_ref(x, wte, targets, scale, np.float64)
    l32, dx32, dw32 = _classifier_ref(x, wte, targets, scale, np.float32)
    close(losses, l64, l32, "losses")
    close(dx, dx64, dx32, "dx")
    close(dwte, dwte0.astype(np.float64) + dw64, dwte0 + dw32, "dwte")

    only = nan(N)  # the forward alone gives the same losses, bit for bit
    nat.classifier_forward_backward(only, None, None, x, wte, targets, scale)
    assert np.array_equal(only, losses)


@pytest.mark.parametrize("shape", [(1, 12, 5), (3, 20, 37), (17, 33, 300), (67, 20, 517),
                                   (300, 33, 1000),
                                   (1100, 20, 700), (600, 16, 9000)],  # several row blocks
                         ids=lambda s: "N=%d,C=%d,V=%d" % s)
def test_classifier_matches_float64(kernel, rng, shape):
    _classifier_case(rng, *shape)


def test_classifier_model_shape(rng):
    _classifier_case(rng, 256, 128, 8192, scale=1 / 256)


def test_classifier_dx_only_and_dwte_only(rng):
    N, C, V = 70, 20, 300
    x, wte = f32(rng, N, C), f32(rng, V, C)
    t = rng.integers(0, V, N).astype(np.int32)
    l1, dx1, dw1 = nan(N), nan(N, C), np.zeros((V, C), np.float32)
    nat.classifier_forward_backward(l1, dx1, dw1, x, wte, t, 1.0)
    l2, dx2 = nan(N), nan(N, C)
    nat.classifier_forward_backward(l2, dx2, None, x, wte, t, 1.0)
    l3, dw3 = nan(N), np.zeros((V, C), np.float32)
    nat.classifier_forward_backward(l3, None, dw3, x, wte, t, 1.0)
    assert np.array_equal(dx1, dx2) and np.array_equal(dw1, dw3)
    assert np.array_equal(l1, l2) and np.array_equal(l1, l3)


@pytest.mark.skipif(nat.gemm_kernel_name() != "avx512", reason="needs the AVX-512 path")
@pytest.mark.parametrize("shape", [(67, 20, 517), (512, 128, 512), (5, 7, 3)],
                         ids=lambda s: "N=%d,C=%d,V=%d" % s)
def test_classifier_avx512_equals_avx2_bitwise(rng, shape):
    """The AVX-512 softmax rows keep the AVX2 rows' 16 partial sums and exp lane for lane, and the
    two GEMM micro-kernels share the k order: losses and gradients are the same bits."""
    N, C, V = shape
    x, wte = f32(rng, N, C), f32(rng, V, C) * np.float32(0.5)
    t = rng.integers(0, V, N).astype(np.int32)
    got = []
    try:
        for k in ("avx512", "avx2_fma"):
            nat._set_gemm_kernel(k)
            out = (nan(N), nan(N, C), np.zeros((V, C), np.float32))
            nat.classifier_forward_backward(out[0], out[1], out[2], x, wte, t, 0.3)
            got.append(out)
    finally:
        nat._set_gemm_kernel("auto")
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(nat.gemm_kernel_name() != "avx512", reason="needs the AVX-512 path")
@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_matrix_vector_avx512_equals_avx2_bitwise(rng, M):
    """Rows M <= 4 (decoding, prefill) take the matrix-vector kernel; its AVX-512 form keeps the
    AVX2 form's 8-lane sums two to a register, so both give the same bits, at every K tail (the
    16/32-wide loop, the 8-wide tail, the scalar tail), with and without a bias."""
    got = {}
    try:
        for k in ("avx512", "avx2_fma"):
            nat._set_gemm_kernel(k)
            r = np.random.default_rng(M)
            for K in (5, 8, 16, 24, 37, 100, 384, 1543):
                x, w, b = f32(r, M, K), f32(r, 67, K), f32(r, 67)
                for bias in (b, None):
                    out = nan(M, 67)
                    nat.matmul_forward(out, x, w, bias)
                    got.setdefault(k, []).append(out)
    finally:
        nat._set_gemm_kernel("auto")
    for a, b in zip(got["avx512"], got["avx2_fma"]):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- threads
def test_one_and_two_threads_bitwise_equal(kernel, rng, threads):
    """Threads own disjoint output tiles aligned to the micro-kernel, so every element is summed in
    the same order whatever the thread count: results are bitwise identical."""
    N, C, OC, V = 389, 128, 515, 2053
    x, w, b, dout = f32(rng, N, C), f32(rng, OC, C), f32(rng, OC), f32(rng, N, OC)
    xs = f32(rng, 3, 384)                  # matrix-vector path (N <= 4)
    ws = f32(rng, 4099, 384)
    wte, t = f32(rng, V, C), rng.integers(0, V, N).astype(np.int32)
    results = []
    for n in (1, 2):
        threads(n)
        out, dx, dw, db = nan(N, OC), nan(N, C), np.ones((OC, C), np.float32), np.ones(OC, np.float32)
        nat.matmul_forward(out, x, w, b)
        nat.matmul_backward(dx, dw, db, dout, x, w)
        outs = nan(3, 4099)
        nat.matmul_forward(outs, xs, ws, None)
        losses, cdx, cdw = nan(N), nan(N, C), np.ones((V, C), np.float32)
        nat.classifier_forward_backward(losses, cdx, cdw, x, wte, t, 0.01)
        results.append([out, dx, dw, db, outs, losses, cdx, cdw])
    for a, b2 in zip(*results):
        assert np.array_equal(a, b2)


# ----------------------------------------------------------------------------- bad input
def test_kernel_name():
    assert nat.gemm_kernel_name() in ("avx512", "avx2_fma", "portable")
    nat._set_gemm_force_portable(True)
    try:
        assert nat.gemm_kernel_name() == "portable"
    finally:
        nat._set_gemm_force_portable(False)
    with pytest.raises(ValueError, match="gemm kernel"):
        nat._set_gemm_kernel("sse9")


def test_matmul_bad_shapes_name_the_argument(rng):
    x, w, b = f32(rng, 8, 32), f32(rng, 64, 32), f32(rng, 64)
    with pytest.raises(ValueError, match=r"w must have shape \(OC, C\)=\(64, 32\), got \(64, 31\)"):
        nat.matmul_forward(nan(8, 64), x, f32(rng, 64, 31), b)
    with pytest.raises(ValueError, match=r"out must have shape \(N, OC\)=\(8, 64\)"):
        nat.matmul_forward(nan(8, 63), x, w, b)
    with pytest.raises(ValueError, match=r"bias must have shape \(OC,\)=\(64,\)"):
        nat.matmul_forward(nan(8, 64), x, w, f32(rng, 65))
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        nat.matmul_forward(nan(8, 64), f32(rng, 2, 4, 32), w, b)
    with pytest.raises(ValueError, match=r"dw must have shape"):
        nat.matmul_backward(nan(8, 32), nan(64, 33), None, f32(rng, 8, 64), x, w)
    with pytest.raises(ValueError, match=r"dout must have shape"):
        nat.matmul_backward(None, nan(64, 32), None, f32(rng, 9, 64), x, w)
    with pytest.raises(ValueError, match=r"dx must have shape"):
        nat.matmul_backward(nan(8, 31), nan(64, 32), None, f32(rng, 8, 64), x, w)
    sq = f32(rng, 32, 32)
    with pytest.raises(ValueError, match=r"out must not overlap x"):
        nat.matmul_forward(sq, sq, f32(rng, 32, 32), None)


def test_matmul_bad_dtype_or_layout_is_type_error(rng):
    x, w = f32(rng, 8, 32), f32(rng, 64, 32)
    with pytest.raises(TypeError):
        nat.matmul_forward(nan(8, 64), x.astype(np.float64), w, None)
    with pytest.raises(TypeError):
        nat.matmul_forward(nan(8, 64).astype(np.float64), x, w, None)  # would lose the writes
    with pytest.raises(TypeError):
        nat.matmul_forward(nan(8, 64), f32(rng, 8, 64)[:, ::2], w, None)  # not contiguous
    with pytest.raises(TypeError):
        nat.matmul_forward(nan(8, 64), x, f32(rng, 32, 64).T, None)  # Fortran order


def test_classifier_bad_input(rng):
    N, C, V = 6, 8, 10
    x, wte = f32(rng, N, C), f32(rng, V, C)
    t = np.array([0, 1, 2, 3, 4, 9], np.int32)
    nat.classifier_forward_backward(nan(N), None, None, x, wte, t, 1.0)
    bad = t.copy()
    bad[3] = V
    with pytest.raises(ValueError, match=r"targets must be in \[0, V\)=\[0, 10\), got 10 at index 3"):
        nat.classifier_forward_backward(nan(N), None, None, x, wte, bad, 1.0)
    bad[3] = -1
    with pytest.raises(ValueError, match="targets"):
        nat.classifier_forward_backward(nan(N), None, None, x, wte, bad, 1.0)
    with pytest.raises(TypeError):
        nat.classifier_forward_backward(nan(N), None, None, x, wte, t.astype(np.int64), 1.0)
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\)=\(6,\)"):
        nat.classifier_forward_backward(nan(N), None, None, x, wte, t[:5].copy(), 1.0)
    with pytest.raises(ValueError, match=r"dwte must have shape \(V, C\)=\(10, 8\)"):
        nat.classifier_forward_backward(nan(N), None, nan(V, C + 1), x, wte, t, 1.0)
    with pytest.raises(ValueError, match=r"wte must have shape \(V, C\)=\(10, 8\), got \(10, 7\)"):
        nat.classifier_forward_backward(nan(N), None, None, x, f32(rng, V, C - 1), t, 1.0)
    with pytest.raises(ValueError, match=r"losses must have shape"):
        nat.classifier_forward_backward(nan(N + 1), None, None, x, wte, t, 1.0)


def test_gemm_bad_shapes(rng):
    with pytest.raises(ValueError, match=r"b must have shape \(K, N\)"):
        nat.gemm(nan(3, 4), f32(rng, 3, 5), f32(rng, 6, 4))
    with pytest.raises(ValueError, match=r"b must have shape \(N, K\)"):
        nat.gemm(nan(3, 4), f32(rng, 3, 5), f32(rng, 4, 6), trans_b=True)
    with pytest.raises(ValueError, match=r"c must have shape \(M, N\)=\(5, 4\)"):
        nat.gemm(nan(3, 4), f32(rng, 3, 5), f32(rng, 3, 4), trans_a=True)


def test_fma_peak_measure_and_bad_arguments():
    """The peak probe benchmarks report against: a positive rate for an ISA this CPU has, a
    ValueError naming the problem otherwise."""
    if nat.gemm_kernel_name() == "portable":
        pytest.skip("no AVX2/FMA on this CPU")
    isa = "avx512" if nat.gemm_kernel_name() == "avx512" else "avx2_fma"
    one = nat.fma_peak_gflops(isa, 1, 0.02)
    assert np.isfinite(one) and one > 1.0
    with pytest.raises(ValueError, match="isa"):
        nat.fma_peak_gflops("sse9", 1, 0.02)
    with pytest.raises(ValueError, match="threads"):
        nat.fma_peak_gflops(isa, 0, 0.02)
    with pytest.raises(ValueError, match="seconds"):
        nat.fma_peak_gflops(isa, 1, -1.0)


@pytest.mark.parametrize("shape", [(512, 128, 384), (67, 20, 37), (2, 33, 100), (600, 400, 500)],
                         ids=lambda s: "N=%d,C=%d,OC=%d" % s)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_backward_pair_equals_two_gemms_bitwise(rng, shape, threads):
    """matmul_backward runs dx (then dbias) and dw side by side for small products (the team
    split in two) and one after the other for large ones (N=600,C=400,OC=500 is over the pair
    limit); each result must still be bitwise what a lone gemm, and the lone column sum of the
    dx=None path, give (same tile grid, same k order, every column summed row by row)."""
    N, C, OC = shape
    x, w, dout = f32(rng, N, C), f32(rng, OC, C), f32(rng, N, OC)
    dw0, db0 = f32(rng, OC, C), f32(rng, OC)
    prev = nat.max_threads()
    nat.set_num_threads(threads)
    try:
        dx, dw, db = nan(N, C), dw0.copy(), db0.copy()
        nat.matmul_backward(dx, dw, db, dout, x, w)
        dx_ref, dw_ref, db_ref = nan(N, C), dw0.copy(), db0.copy()
        nat.gemm(dx_ref, dout, w)
        nat.gemm(dw_ref, dout, x, trans_a=True, beta=1.0)
        nat.matmul_backward(None, dw0.copy(), db_ref, dout, x, w)
    finally:
        nat.set_num_threads(prev)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    np.testing.assert_array_equal(db, db_ref)
    ref = db0.astype(np.float64) + dout.astype(np.float64).sum(0)
    np.testing.assert_allclose(db, ref, rtol=1e-5, atol=1e-4)


def test_read_bandwidth_probe_and_bad_arguments():
    """The bandwidth probe the sampling benchmark quotes: a positive rate; ValueError otherwise."""
    gbs = nat.read_bandwidth_gbs(1.0, 1, 0.02)
    assert np.isfinite(gbs) and gbs > 0.1
    with pytest.raises(ValueError, match="megabytes"):
        nat.read_bandwidth_gbs(0.0, 1, 0.02)
    with pytest.raises(ValueError, match="threads"):
        nat.read_bandwidth_gbs(1.0, 0, 0.02)
    with pytest.raises(ValueError, match="seconds"):
        nat.read_bandwidth_gbs(1.0, 1, 100.0)
