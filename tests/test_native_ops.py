"""Properties of the native CPU ops beyond parity with the reference (that lives in
test_op_matrix.py, on every ISA path): the AVX-512 and AVX2 paths give the same bits where they
promise to, 1 vs 2 threads give bitwise-identical results, in-place use, and bad shapes / dtypes /
layouts / ids raise ValueError / TypeError naming the argument. Each test runs on every code path
this CPU has."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close, native_ops_paths, set_native_ops_path

nat = pytest.importorskip("kernelgpt._native")
from kernelgpt.backends import native_backend as nb  # noqa: E402
from kernelgpt.backends import numpy_backend as rb  # noqa: E402


@pytest.fixture(autouse=True, params=native_ops_paths())
def isa(request):
    """Every test runs on each code path this CPU has: the AVX-512 variants (where an op has
    them), the AVX2/FMA clones and the portable ones."""
    set_native_ops_path(request.param)
    assert nat.ops_use_avx2() == (request.param != "portable")
    assert nat.ops_use_avx512() == (request.param == "avx512")
    yield request.param
    set_native_ops_path("avx512")


def nan(shape):
    return np.full(shape, np.nan, np.float32)


def f32(a):
    return np.ascontiguousarray(a, np.float32)


# ------------------------------------------------------------------------------- embedding
@pytest.mark.parametrize("offset", [0, 1, 5, 15])
@pytest.mark.parametrize("C", [432, 100])
def test_embedding_backward_table_off_the_line_grid(rng, threads, offset, C):
    """The backward splits channels on dwte's cache-line grid: a table starting `offset` floats
    past a 64-byte boundary (block 0 then covers part of a line), on a size that takes two
    threads, still gets every element right (against the float64 reference)."""
    threads(2)
    B, T, V = 8, 80, 50
    idx = rng.integers(0, V, (B, T)).astype(np.int32)
    dout = f32(rng.standard_normal((B, T, C)))
    buf = np.empty(V * C + 32, np.float32)
    start = (-(buf.ctypes.data // 4) % 16 + offset) % 16  # floats to the grid, then offset
    dwte = buf[start:start + V * C].reshape(V, C)
    dwte[...] = rng.standard_normal((V, C))
    dwpe = f32(rng.standard_normal((T, C)))
    want_te, want_pe = dwte.astype(np.float64), dwpe.astype(np.float64)
    rb.embedding_backward(want_te, want_pe, dout.astype(np.float64), idx)
    nb.embedding_backward(dwte, dwpe, dout, idx)
    assert_close(dwte, want_te, name="dwte")
    assert_close(dwpe, want_pe, name="dwpe")


# ------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("B,T,C,NH", [(2, 67, 128, 2), (1, 45, 80, 2), (1, 20, 72, 3)])
def test_attention_avx512_equals_avx2_bitwise(rng, isa, B, T, C, NH):
    """The AVX-512 tiles keep every element's operation order: both paths give the same bits."""
    if isa != "avx512":
        pytest.skip("needs the AVX-512 path")
    qkv, dout = f32(rng.standard_normal((B, T, 3 * C))), f32(rng.standard_normal((B, T, C)))
    res = []
    for path in ("avx512", "avx2"):
        set_native_ops_path(path)
        out, lse, dqkv = nan((B, T, C)), nan((B, NH, T)), nan((B, T, 3 * C))
        nb.attention_forward(out, lse, qkv, NH)
        nb.attention_backward(dqkv, dout, qkv, out, lse, NH)
        res.append((out, lse, dqkv))
    set_native_ops_path("avx512")
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_gelu_avx512_equals_avx2_bitwise(rng, isa):
    """The AVX-512 GELU runs the AVX2 code's operations on 16 lanes: the same bits, extreme
    inputs (exp clamping) and odd lengths (vector tails) included."""
    if isa != "avx512":
        pytest.skip("needs the AVX-512 path")
    n = 16 * 300 + 11
    x = f32(rng.standard_normal(n) * 4)
    x[:6] = [-60.0, -12.0, 0.0, -0.0, 12.0, 60.0]
    dout = f32(rng.standard_normal(n))
    res = []
    for path in ("avx512", "avx2"):
        set_native_ops_path(path)
        out, dx = nan(n), nan(n)
        nb.gelu_forward(out, x)
        nb.gelu_backward(dx, dout, x)
        res.append((out, dx))
    set_native_ops_path("avx512")
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_adamw_same_bits_on_every_path(rng, isa):
    """AdamW runs the same fused operations lane by lane on every path (the scalar one through
    std::fma), so AVX-512, AVX2 and portable agree bitwise, odd lengths (vector tails) included."""
    if isa != native_ops_paths()[0]:
        pytest.skip("compared once, from the best path")
    n = 16 * 1000 + 13
    start = [f32(rng.standard_normal(n)) for _ in range(4)]
    start[3] = np.abs(start[3])
    res = []
    for path in native_ops_paths():
        set_native_ops_path(path)
        p, g, m, v = (a.copy() for a in start)
        nb.adamw_update(p, g, m, v, lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                        step=7)
        res.append((p, m, v))
    set_native_ops_path("avx512")
    for other in res[1:]:
        for a, b in zip(res[0], other):
            np.testing.assert_array_equal(a, b)


def test_decode_matches_last_row_of_forward(rng):
    B, T, C, NH = 2, 19, 24, 3
    HS = C // NH
    qkv = f32(rng.standard_normal((B, T, 3 * C)))
    out, lse = nan((B, T, C)), nan((B, NH, T))
    nb.attention_forward(out, lse, qkv, NH)
    k = np.ascontiguousarray(qkv[:, :, C:2 * C].reshape(B, T, NH, HS).transpose(0, 2, 1, 3))
    v = np.ascontiguousarray(qkv[:, :, 2 * C:].reshape(B, T, NH, HS).transpose(0, 2, 1, 3))
    o = nan((B, C))
    nb.attention_decode(o, np.ascontiguousarray(qkv[:, -1, :C]), k, v, T)
    assert_close(o, out[:, -1], name="decode")


# ------------------------------------------------------------------------------- elementwise
def test_add_in_place(rng):
    a, b = f32(rng.standard_normal((3, 7, 12))), f32(rng.standard_normal((3, 7, 12)))
    want = a + b
    nb.add(a, a, b)
    np.testing.assert_array_equal(a, want)


# ------------------------------------------------------------------------------- loss
def test_crossentropy_backward_in_place(rng):
    N, V = 5, 11
    probs = f32(rng.random((N, V)))
    tg = rng.integers(0, V, N).astype(np.int32)
    want = probs * 0.5
    want[np.arange(N), tg] -= 0.5
    nb.crossentropy_backward(probs, probs, tg, 0.5)
    np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------- optimizer
@pytest.mark.parametrize("n", [1, 13, 65536 * 3 + 7])
def test_global_norm_sq_and_scale(rng, n):
    g = rng.standard_normal(n).astype(np.float32)
    want = float(np.dot(g.astype(np.float64), g.astype(np.float64)))
    assert abs(nb.global_norm_sq(g) - want) <= 1e-12 * max(want, 1.0)
    h = g.copy()
    nb.scale_(h, 0.37)
    np.testing.assert_array_equal(h, g * np.float32(0.37))


# ------------------------------------------------------------------------------- threads
@pytest.fixture
def threads():
    old = nat.max_threads()
    yield lambda n: nat.set_num_threads(n)
    nat.set_num_threads(old)


def _all_ops(rng):
    """Run every op on one fixed set of inputs big enough to cross the parallel thresholds."""
    B, T, C, NH, V = 4, 67, 96, 3, 300
    N = B * T
    r = np.random.default_rng(7)
    g = lambda *s: f32(r.standard_normal(s))  # noqa: E731
    idx = r.integers(0, V, (B, T)).astype(np.int32)
    out = {}
    out["emb"] = nan((B, T, C)); nb.embedding_forward(out["emb"], idx, g(V, C), g(T, C))
    dwte, dwpe = g(V, C), g(T, C); nb.embedding_backward(dwte, dwpe, g(B, T, C), idx)
    out["dwte"], out["dwpe"] = dwte, dwpe
    Tb, Cb = 80, 436  # above the backward's two-thread size, on a table off the line grid
    dwte_b, dwpe_b = g(V * Cb + 3)[3:].reshape(V, Cb), g(Tb, Cb)
    nb.embedding_backward(dwte_b, dwpe_b, g(8, Tb, Cb), r.integers(0, V, (8, Tb)).astype(np.int32))
    out["dwte_big"], out["dwpe_big"] = dwte_b, dwpe_b
    x, w, b = g(N, C), g(C), g(C)
    o, m, s = nan((N, C)), nan(N), nan(N); nb.layernorm_forward(o, m, s, x, w, b)
    dx, dw, db = nan((N, C)), g(C), g(C); nb.layernorm_backward(dx, dw, db, g(N, C), x, w, m, s)
    out.update(ln=o, ln_dx=dx, ln_dw=dw, ln_db=db)
    qkv = g(B, T, 3 * C)
    ao, lse = nan((B, T, C)), nan((B, NH, T)); nb.attention_forward(ao, lse, qkv, NH)
    dq = nan((B, T, 3 * C)); nb.attention_backward(dq, g(B, T, C), qkv, ao, lse, NH)
    out.update(att=ao, lse=lse, dqkv=dq)
    HS = C // NH
    dec = nan((B, C)); nb.attention_decode(dec, g(B, C), g(B, NH, T, HS), g(B, NH, T, HS), T)
    out["dec"] = dec
    big = g(100003)
    ge = nan(big.shape); nb.gelu_forward(ge, big); gd = nan(big.shape); nb.gelu_backward(gd, g(100003), big)
    out.update(gelu=ge, gelu_d=gd)
    ra = nan(big.shape); nb.add(ra, big, g(100003)); out["res"] = ra
    lg = g(N, V); tg = r.integers(0, V, N).astype(np.int32)
    ls, pr = nan(N), nan((N, V)); nb.crossentropy_forward(ls, pr, lg, tg)
    dl = nan((N, V)); nb.crossentropy_backward(dl, pr, tg, 0.01)
    out.update(ce=ls, probs=pr, dlogits=dl)
    gg = g(300007)
    out["norm"] = np.array([nb.global_norm_sq(gg)])
    p, mm, vv = g(300007), g(300007), np.abs(g(300007))
    nb.adamw_update(p, gg, mm, vv, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=5)
    out.update(p=p, m=mm, v=vv)
    return out


def test_one_and_two_threads_bitwise_equal(rng, threads):
    threads(1)
    a = _all_ops(rng)
    threads(2)
    b = _all_ops(rng)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------- bad input
def test_bad_shapes_name_the_argument(rng):
    N, C = 12, 8
    x, w, b = nan((N, C)) * 0, nan(C) * 0, nan(C) * 0
    with pytest.raises(ValueError, match=r"rstd must have shape \(N,\)=\(12,\), got \(11,\)"):
        nb.layernorm_forward(nan((N, C)), nan(N), nan(N - 1), x, w, b)
    with pytest.raises(ValueError, match="w must have shape"):
        nb.layernorm_forward(nan((N, C)), nan(N), nan(N), x, nan(C + 1), b)
    with pytest.raises(ValueError, match="n_head"):
        nb.attention_forward(nan((1, 4, 9)), nan((1, 2, 4)), nan((1, 4, 27)), 2)
    with pytest.raises(ValueError, match="lse must have shape"):
        nb.attention_forward(nan((1, 4, 8)), nan((1, 2, 5)), nan((1, 4, 24)), 2)
    with pytest.raises(ValueError, match="dqkv must have shape"):
        nb.attention_backward(nan((1, 4, 23)), nan((1, 4, 8)), nan((1, 4, 24)), nan((1, 4, 8)),
                              nan((1, 2, 4)), 2)
    with pytest.raises(ValueError, match="n_valid"):
        nb.attention_decode(nan((1, 8)), nan((1, 8)), nan((1, 2, 5, 4)), nan((1, 2, 5, 4)), 6)
    with pytest.raises(ValueError, match="v_cache must have shape"):
        nb.attention_decode(nan((1, 8)), nan((1, 8)), nan((1, 2, 5, 4)), nan((1, 2, 6, 4)), 2)
    with pytest.raises(ValueError, match="out must have the shape of x"):
        nb.gelu_forward(nan((3, 4)), nan((4, 3)))
    with pytest.raises(ValueError, match="b must have the shape of a"):
        nb.add(nan(5), nan(5), nan(6))
    with pytest.raises(ValueError, match="wpe must have shape"):
        nb.embedding_forward(nan((1, 9, 4)), np.zeros((1, 9), np.int32), nan((5, 4)), nan((8, 4)))
    with pytest.raises(ValueError, match="m must have shape"):
        nb.adamw_update(nan(5), nan(5), nan(4), nan(5), lr=1.0, beta1=0.9, beta2=0.9, eps=1e-8,
                        weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="step"):
        nb.adamw_update(nan(5), nan(5), nan(5), nan(5), lr=1.0, beta1=0.9, beta2=0.9, eps=1e-8,
                        weight_decay=0.0, step=0)
    with pytest.raises(ValueError, match="g must be 1-D"):
        nb.global_norm_sq(nan((2, 3)))


def test_ids_out_of_range():
    wte, wpe = np.zeros((5, 4), np.float32), np.zeros((3, 4), np.float32)
    for bad in (5, -1):
        idx = np.array([[0, bad]], np.int32)
        with pytest.raises(ValueError, match=r"idx values must lie in \[0, 5\)"):
            nb.embedding_forward(nan((1, 2, 4)), idx, wte, wpe)
        with pytest.raises(ValueError, match="idx values"):
            nb.embedding_backward(wte.copy(), wpe.copy(), np.zeros((1, 2, 4), np.float32), idx)
    tg = np.array([0, 7], np.int32)
    with pytest.raises(ValueError, match="targets values"):
        nb.crossentropy_forward(nan(2), nan((2, 7)), np.zeros((2, 7), np.float32), tg)
    with pytest.raises(ValueError, match="targets values"):
        nb.crossentropy_backward(nan((2, 7)), np.zeros((2, 7), np.float32), tg, 1.0)


def test_bad_dtype_and_layout_raise_type_error():
    x64 = np.zeros((4, 8))
    with pytest.raises(TypeError):
        nb.gelu_forward(nan((4, 8)), x64)
    with pytest.raises(TypeError):  # float64 output would be silently copied without noconvert
        nb.gelu_forward(x64, nan((4, 8)))
    with pytest.raises(TypeError):
        nb.gelu_forward(nan((8, 4)).T, nan((4, 8)))
    with pytest.raises(TypeError):
        nb.embedding_forward(nan((1, 2, 4)), np.zeros((1, 2), np.int64), nan((5, 4)), nan((3, 4)))
    with pytest.raises(TypeError):
        nb.layernorm_forward(nan((4, 8)), nan(4), nan(4), nan((4, 16))[:, ::2], nan(8), nan(8))
    with pytest.raises(TypeError):
        nb.scale_(np.zeros(4), 2.0)


def test_backend_module_surface():
    from kernelgpt.backends import base, get_backend
    assert get_backend("native") is nb and nb.name == "native" and nb.xp is np
    for fn in [k for k in vars(base.Backend) if not k.startswith("_") and k not in ("name", "xp")]:
        assert callable(getattr(nb, fn)), fn
    a = nb.asarray([[1, 2], [3, 4.5]])
    assert a.dtype == np.float32 and a.flags.c_contiguous and nb.to_numpy(a) is a
    assert nb.asarray(np.array([1, 2], np.int32)).dtype == np.int32
    assert nb.zeros((2, 3)).dtype == np.float32 and nb.empty((2,), "int32").dtype == np.int32
    n = nb.get_num_threads()
    assert n >= 1


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8192 * 5 + 3,), (300, 77)])
def test_zero_clears_everything(shape, threads):
    """zero_ writes 0 to every element (NaN and inf included), on one thread and on two (sizes
    above the threaded threshold), any shape; like the NumPy backend's."""
    for n in (1, 2):
        threads(n)
        a = np.full(shape, np.nan, np.float32)
        if a.size:
            a.flat[::3] = np.inf
        nb.zero_(a)
        b = np.full(shape, np.nan, np.float32)
        rb.zero_(b)
        assert np.array_equal(a, np.zeros(shape, np.float32)) and np.array_equal(a, b)
    with pytest.raises(TypeError):
        nb.zero_(np.zeros(4, np.float64))
    with pytest.raises(TypeError):
        nb.zero_(np.zeros((4, 4), np.float32)[:, ::2])
