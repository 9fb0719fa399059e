"""Weights in fewer bytes (kernelgpt.quant, csrc/cpu/quant.*): the NumPy specification of the
formats, the native quantized matrix products against its float64 reference on every ISA path
(bitwise equal across paths), and generate(..., weights=...) end to end."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import native_ops_paths, set_native_ops_path
from kernelgpt import quant as Q

nat = pytest.importorskip("kernelgpt._native")


# ----------------------------------------------------------------------------- the specification
def test_bf16_rounds_to_nearest_even_and_keeps_nan():
    bits = np.array([0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF,
                     0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFF800001, 0x80000000],
                    np.uint32)
    h = Q.to_bf16(bits.view(np.float32))
    # tie to even (down, up), above / below the tie, overflow to inf, infs, NaNs stay NaN
    assert list(h[:8]) == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0x7F80, 0xFF80]
    assert np.isnan(Q.from_bf16(h[8:11])).all()
    assert h[11] == 0x8000
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    r = Q.from_bf16(Q.to_bf16(x))
    assert np.all(np.abs(r - x) <= np.abs(x) * 2.0 ** -8)  # half a unit of 8 significant bits


def test_q8_0_rule():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 96)).astype(np.float32)
    w[1, :32] = 0.0                                     # an all-zero block: d = 0, q = 0
    w[2, 40] = np.nan                                   # a non-finite block: NaN scale, zero codes
    q, d = Q.quantize_q8_0(w)
    assert q.dtype == np.int8 and d.dtype == np.float32 and d.shape == (5, 3)
    assert np.abs(q.astype(int)).max() <= 127
    assert d[1, 0] == 0 and not q[1, :32].any()
    assert np.isnan(d[2, 1]) and not q[2, 32:64].any() and np.isfinite(d[2, [0, 2]]).all()
    ok = np.isfinite(Q.dequantize_q8_0(q, d))
    err = np.abs(Q.dequantize_q8_0(q, d) - w)[ok]
    assert np.all(err <= (np.repeat(d, 32, axis=1)[ok] * 0.5001))
    # the largest element of each block is +-127 exactly
    assert np.abs(q[0].reshape(3, 32)).max(axis=1).tolist() == [127, 127, 127]
    # ties go to even: 2.5 -> 2 when the scale is exactly 1
    t = np.zeros((1, 32), np.float32)
    t[0, :3] = [127.0, 2.5, -3.5]
    assert Q.quantize_q8_0(t)[0][0, :3].tolist() == [127, 2, -4]
    with pytest.raises(ValueError, match="multiple of 32"):
        Q.quantize_q8_0(np.zeros((2, 48), np.float32))


def test_check_format():
    for f in ("fp32", "bf16", "int8"):
        assert Q.check_format(f) == f
    for bad in ("int4", "FP32", None, 8):
        with pytest.raises(ValueError, match="'fp32', 'bf16', 'int8'"):
            Q.check_format(bad)


# ----------------------------------------------------------------------------- native kernels
SHAPES = [(1, 1, 32), (1, 7, 64), (3, 33, 96), (4, 20, 160), (8, 64, 384), (5, 17, 224),
          (16, 9, 32), (2, 130, 1536)]


def _q8_native(x, q, d, b):
    out = np.full((x.shape[0], q.shape[0]), np.nan, np.float32)   # poisoned
    nat._q8_matmul(out, x, q, d, b)
    return out


def _bf16_native(x, h, b):
    out = np.full((x.shape[0], h.shape[0]), np.nan, np.float32)
    nat._bf16_matmul(out, x, h, b)
    return out


def _bound(x_abs, w_abs, K):
    """float32 evaluation error bound of a K-term dot product (per output), generous."""
    return (K + 32) * 2.0 ** -23 * (x_abs @ w_abs.T) + 1e-30


@pytest.mark.parametrize("path", native_ops_paths())
def test_q8_matmul_matches_reference_every_path(path):
    rng = np.random.default_rng(2)
    set_native_ops_path(path)
    try:
        want_path = {"avx512": "avx512_vnni", "avx2": "avx2", "portable": "portable"}[path]
        if path == "avx512" and nat.quant_paths()[0] != "avx512_vnni":
            want_path = "avx2"  # AVX-512 without VNNI takes the AVX2 int8 kernel
        assert nat.quant_paths()[0] == want_path
        for B, N, K in SHAPES:
            x = (rng.standard_normal((B, K)) * rng.uniform(0.1, 10)).astype(np.float32)
            w = rng.standard_normal((N, K)).astype(np.float32)
            b = rng.standard_normal(N).astype(np.float32) if N % 2 else None
            q, d = Q.quantize_q8_0(w)
            got = _q8_native(x, q, d, b)
            ref = Q.matmul_q8_ref(x, q, d, b)
            xq, xd = Q.quantize_q8_0(x)
            bound = _bound(np.abs(Q.dequantize_q8_0(xq, xd)), np.abs(Q.dequantize_q8_0(q, d)), K)
            assert np.all(np.abs(got - ref) <= bound + (0 if b is None else 2.0 ** -23 * np.abs(ref))), (B, N, K)
    finally:
        set_native_ops_path("avx512")


@pytest.mark.parametrize("path", native_ops_paths())
def test_bf16_matmul_matches_reference_every_path(path):
    rng = np.random.default_rng(3)
    set_native_ops_path(path)
    try:
        assert nat.quant_paths()[1] == path
        for B, N, K in SHAPES + [(3, 5, 1), (2, 11, 17), (9, 4, 45)]:
            x = rng.standard_normal((B, K)).astype(np.float32)
            w = rng.standard_normal((N, K)).astype(np.float32)
            b = rng.standard_normal(N).astype(np.float32) if N % 2 else None
            h = Q.to_bf16(w)
            got = _bf16_native(x, h, b)
            ref = Q.matmul_bf16_ref(x, h, b)
            bound = _bound(np.abs(x), np.abs(Q.from_bf16(h)), K)
            assert np.all(np.abs(got - ref) <= bound + (0 if b is None else 2.0 ** -23 * np.abs(ref))), (B, N, K)
    finally:
        set_native_ops_path("avx512")


def test_quantized_products_bitwise_equal_across_paths_and_rows():
    """Every ISA path sums in the same order (quant.h): the same bits; and a row's result does
    not depend on the rows beside it."""
    rng = np.random.default_rng(4)
    B, N, K = 11, 37, 480
    x = rng.standard_normal((B, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    q, d = Q.quantize_q8_0(w)
    h = Q.to_bf16(w)
    res = {}
    try:
        for path in native_ops_paths():
            set_native_ops_path(path)
            res[path] = (_q8_native(x, q, d, b), _bf16_native(x, h, b),
                         np.concatenate([_q8_native(x[i:i + 1], q, d, b) for i in range(B)]),
                         np.concatenate([_bf16_native(x[i:i + 1], h, b) for i in range(B)]))
    finally:
        set_native_ops_path("avx512")
    first = next(iter(res.values()))
    for path, r in res.items():
        for a, e in zip(r, first):
            np.testing.assert_array_equal(a, e, err_msg=path)
        np.testing.assert_array_equal(r[0], r[2])
        np.testing.assert_array_equal(r[1], r[3])


def test_q8_matmul_nonfinite_activation_gives_nan():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x[1, 3] = np.inf
    q, d = Q.quantize_q8_0(rng.standard_normal((4, 64)).astype(np.float32))
    out = _q8_native(x, q, d, None)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


def test_quantized_products_bad_arguments():
    x = np.zeros((2, 48), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        nat._q8_matmul(np.zeros((2, 3), np.float32), x, np.zeros((3, 48), np.int8),
                       np.zeros((3, 1), np.float32))
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="wd"):
        nat._q8_matmul(np.zeros((2, 3), np.float32), x, np.zeros((3, 64), np.int8),
                       np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match="out"):
        nat._bf16_matmul(np.zeros((2, 4), np.float32), x, np.zeros((3, 64), np.uint16))
    with pytest.raises(TypeError):
        nat._bf16_matmul(np.zeros((2, 3), np.float32), x, np.zeros((3, 64), np.int16))


def test_fingerprint_sees_every_byte_and_ignores_threads():
    a = np.random.default_rng(6).standard_normal(3 * (1 << 18) + 5).astype(np.float32)
    f0 = nat.weights_fingerprint(a)
    old = nat.max_threads()
    try:
        nat.set_num_threads(1)
        assert nat.weights_fingerprint(a) == f0
    finally:
        nat.set_num_threads(old)
    for i in (0, 1 << 18, a.size - 1):
        b = a.copy()
        b[i] = np.nextafter(b[i], np.inf)
        assert nat.weights_fingerprint(b) != f0
    b = a.copy()
    b[[10, 11]] = b[[11, 10]]
    assert nat.weights_fingerprint(b) != f0
