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


def test_bf16_single_row_products_bitwise_equal_across_paths():
    """Batch 1 (the AVX-512 kernel reads a row's columns one after another): every shape's
    columns (runs of 16, blocks of 4, single columns) and K tails (K mod 16 != 0) give the
    portable path's bits, which follow quant.h's order."""
    rng = np.random.default_rng(12)
    for N, K in [(1, 16), (5, 17), (16, 384), (37, 389), (70, 1536), (21, 45)]:
        x = rng.standard_normal((1, K)).astype(np.float32)
        h = Q.to_bf16(rng.standard_normal((N, K)).astype(np.float32) * 3)
        b = rng.standard_normal(N).astype(np.float32) if N % 2 else None
        res = {}
        try:
            for path in native_ops_paths():
                set_native_ops_path(path)
                res[path] = _bf16_native(x, h, b)
        finally:
            set_native_ops_path("avx512")
        ref = Q.matmul_bf16_ref(x, h, b)
        bound = _bound(np.abs(x), np.abs(Q.from_bf16(h)), K)
        for path, r in res.items():
            np.testing.assert_array_equal(r, res["portable"], err_msg=f"{path} {N}x{K}")
            assert np.all(np.abs(r - ref) <= bound + (0 if b is None else 2.0 ** -23 * np.abs(ref)))


def test_bf16_every_reader_takes_weight_k_for_input_k():
    """Each path (batch-1 and batch>1 kernels, K tails past multiples of 16 and 32, column
    runs, blocks and single columns) reads weight (j, k) of the stored copy for input k: with
    one-hot input rows (row i: 1 at k = k0 + i) out[i, j] is exactly bf16(w[j, k0 + i]); distinct
    weights, so a weight read from another position shows."""
    rng = np.random.default_rng(21)
    for N, K in [(37, 45), (19, 80), (5, 127), (18, 20), (33, 96)]:
        codes = np.concatenate([np.arange(0x3800, 0x4800), np.arange(0xB800, 0xC800)])
        h = rng.choice(codes, N * K, replace=False).astype(np.uint16).reshape(N, K)
        wf = Q.from_bf16(h)
        assert len(np.unique(wf)) == N * K  # distinct values
        eye = np.eye(K, dtype=np.float32)
        try:
            for path in native_ops_paths():
                set_native_ops_path(path)
                for B in (1, 2, 8, 9):
                    for k0 in list(range(0, K - B + 1, B)) + [K - B]:
                        got = _bf16_native(np.ascontiguousarray(eye[k0:k0 + B]), h, None)
                        np.testing.assert_array_equal(got, wf[:, k0:k0 + B].T,
                                                      err_msg=f"{path} B={B} {N}x{K} k0={k0}")
        finally:
            set_native_ops_path("avx512")


def test_q8_activation_quantization_same_on_every_path():
    """The activations' on-the-fly quantization (vector on AVX2/AVX-512, scalar portable) gives
    the same codes: ties of x / d at .5 round to even, a zero block, tiny scales, values that
    clamp; each path's products equal the float64 reference's up to rounding and each other's
    bitwise."""
    rng = np.random.default_rng(11)
    K = 128
    x = rng.standard_normal((3, K)).astype(np.float32)
    x[0, :32] = np.arange(32) - 15.5        # amax 15.5: d = 15.5 / 127, many .5-ish ties
    x[0, 31] = 127.0                         # then amax = 127, d = 1: exact .5 ties
    x[0, 32:64] = 0.0                        # a zero block
    x[1, :32] = np.float32(1e-30) * np.arange(32)  # tiny scales
    x[2, 64:96] = np.linspace(-3.5, 3.5, 32) * 40.0
    q, d = Q.quantize_q8_0(rng.standard_normal((9, K)).astype(np.float32))
    ref = Q.matmul_q8_ref(x, q, d)
    res = {}
    try:
        for path in native_ops_paths():
            set_native_ops_path(path)
            res[path] = _q8_native(x, q, d, None)
    finally:
        set_native_ops_path("avx512")
    first = next(iter(res.values()))
    for path, r in res.items():
        np.testing.assert_array_equal(r, first, err_msg=path)
        assert np.abs(r - ref).max() <= 1e-5 * (np.abs(ref).max() + 1)


def test_products_same_bits_for_any_row_alignment():
    """The kernels copy unaligned input rows to aligned ones (bf16) or repack them (int8): rows
    at any address give the same bits (here 4 bytes past a 64-byte boundary vs aligned)."""
    rng = np.random.default_rng(23)
    for B, N, K in [(8, 40, 384), (3, 17, 96), (5, 33, 1536)]:
        w = rng.standard_normal((N, K)).astype(np.float32)
        h, (q, d) = Q.to_bf16(w), Q.quantize_q8_0(w)
        buf = np.zeros(B * K + 64, np.float32)
        base = (-buf.ctypes.data % 64) // 4          # first 64-byte aligned element
        aligned = buf[base:base + B * K].reshape(B, K)
        shifted = buf[base + 1:base + 1 + B * K].reshape(B, K)
        x = rng.standard_normal((B, K)).astype(np.float32)
        aligned[...] = x
        got_a = (_bf16_native(aligned, h, None), _q8_native(aligned, q, d, None))
        shifted[...] = x
        got_s = (_bf16_native(shifted, h, None), _q8_native(shifted, q, d, None))
        for a, b in zip(got_a, got_s):
            np.testing.assert_array_equal(a, b)


def _f32_lane_tree(acc):
    """quant.h's fixed lane tree over (..., 16) float32 lanes: l + 8, l + 4, l + 2, l + 1."""
    a = acc.astype(np.float32)
    for h in (8, 4, 2, 1):
        a = (a[..., :h] + a[..., h:2 * h]).astype(np.float32)
    return a[..., 0]


def _q8_order_f32(x, q, d, bias):
    """The int8 product in quant.h's float32 order, emulated in NumPy: each block's exact int32
    sum, lane blk mod 16 = fma(float(isum), float32(d_w * d_x), lane) in block order, then the
    lane tree and the bias. (The fma as float64 product, exact for 24-bit by 24-bit mantissas,
    plus the lane, rounded to float64 then float32: that double rounding can differ from the
    fma's single one only on rare exact ties; the fixed inputs below have none.)"""
    xq, xd = Q.quantize_q8_0(x)
    B, K = xq.shape
    N, nb = q.shape[0], K // Q.QK
    isum = np.einsum("bkc,nkc->bnk", xq.reshape(B, nb, Q.QK).astype(np.int64),
                     q.reshape(N, nb, Q.QK).astype(np.int64))
    scale = (d[None, :, :] * xd[:, None, :]).astype(np.float32)
    acc = np.zeros((B, N, 16), np.float32)
    for blk in range(nb):
        l = blk % 16
        prod = (isum[:, :, blk].astype(np.float32).astype(np.float64)
                * scale[:, :, blk].astype(np.float64))
        acc[:, :, l] = (prod + acc[:, :, l].astype(np.float64)).astype(np.float32)
    out = _f32_lane_tree(acc)
    if bias is not None:
        out = (out + np.asarray(bias, np.float32)).astype(np.float32)
    return out


def test_q8_matmul_sums_in_the_documented_order():
    """The int8 product follows quant.h's order bit for bit (each block's exact integer sum,
    one fma per block into lane blk mod 16, the lane tree, the bias) on every path: the blocks
    are not split into partial sums of 4 products (which rounds differently)."""
    rng = np.random.default_rng(21)
    shapes = [(1, 5, 32), (3, 7, 160), (8, 9, 384), (2, 6, 480), (5, 4, 1536), (16, 3, 96)]
    try:
        for path in native_ops_paths():
            set_native_ops_path(path)
            for B, N, K in shapes:
                x = rng.standard_normal((B, K)).astype(np.float32)
                w = rng.standard_normal((N, K)).astype(np.float32)
                b = rng.standard_normal(N).astype(np.float32) if N % 2 else None
                q, d = Q.quantize_q8_0(w)
                np.testing.assert_array_equal(_q8_native(x, q, d, b), _q8_order_f32(x, q, d, b),
                                              err_msg=f"{path} {(B, N, K)}")
    finally:
        set_native_ops_path("avx512")


def _amx_available():
    nat._set_ops_allow_amx(True)
    return nat.ops_use_amx()


needs_amx = pytest.mark.skipif(not _amx_available(),
                               reason="no AMX-INT8 (CPU, OS permission or build)")

# (B, N, K): B from 4 up (the AMX path's rows, kQ8AmxMinRows; 2 and 3 take VNNI), 16-column
# runs with column tails, K / 32 odd (a lone last block of 32) and even, partial groups of 8
# rows and several groups (B > 8)
AMX_SHAPES = [(4, 16, 64), (4, 33, 96), (5, 48, 160), (8, 40, 384), (8, 17, 32), (9, 64, 480),
              (16, 35, 1536), (11, 50, 224), (16, 16, 32), (5, 96, 768), (2, 33, 96),
              (3, 48, 160)]


def test_amx_hook():
    """_set_ops_allow_amx forbids AMX; forbidding AVX-512 forbids it too (it runs inside the
    VNNI path)."""
    try:
        nat._set_ops_allow_amx(False)
        assert not nat.ops_use_amx()
        nat._set_ops_allow_amx(True)
        set_native_ops_path("avx2")
        assert not nat.ops_use_amx()
    finally:
        set_native_ops_path("avx512")
        nat._set_ops_allow_amx(True)


@needs_amx
def test_q8_amx_sums_in_the_documented_order_and_equals_vnni():
    """The AMX int8 products (several rows) follow quant.h's order bit for bit and equal the
    VNNI path's (AMX forbidden) bitwise, with column tails, an odd block count and rows past
    8; and each row equals the row alone (batch 1 takes VNNI)."""
    rng = np.random.default_rng(31)
    try:
        for B, N, K in AMX_SHAPES:
            x = (rng.standard_normal((B, K)) * rng.uniform(0.1, 10)).astype(np.float32)
            w = rng.standard_normal((N, K)).astype(np.float32)
            b = rng.standard_normal(N).astype(np.float32) if N % 2 else None
            q, d = Q.quantize_q8_0(w)
            nat._set_ops_allow_amx(True)
            amx = _q8_native(x, q, d, b)
            np.testing.assert_array_equal(amx, _q8_order_f32(x, q, d, b), err_msg=str((B, N, K)))
            alone = np.concatenate([_q8_native(x[i:i + 1], q, d, b) for i in range(B)])
            nat._set_ops_allow_amx(False)
            np.testing.assert_array_equal(amx, _q8_native(x, q, d, b), err_msg=str((B, N, K)))
            np.testing.assert_array_equal(amx, alone, err_msg=str((B, N, K)))
    finally:
        nat._set_ops_allow_amx(True)


@needs_amx
def test_q8_amx_nonfinite_and_zero_rows():
    """A non-finite activation block gives NaN in its row only; zero rows give zeros (the
    padded rows and blocks of the AMX tiles never leak into real ones)."""
    rng = np.random.default_rng(32)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    x[2, 40] = np.inf
    x[4] = 0.0
    q, d = Q.quantize_q8_0(rng.standard_normal((48, 96)).astype(np.float32))
    out = _q8_native(x, q, d, None)
    assert np.isnan(out[2]).all()
    assert np.isfinite(out[[0, 1, 3, 4]]).all() and (out[4] == 0).all()
    nat._set_ops_allow_amx(False)
    try:
        np.testing.assert_array_equal(out, _q8_native(x, q, d, None))
    finally:
        nat._set_ops_allow_amx(True)


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
    with pytest.raises(TypeError):
        nat._q8_matmul(np.zeros((2, 3), np.float32), x, np.zeros((3, 64), np.uint8),
                       np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError):
        nat._q8_matmul(np.zeros((2, 3), np.float32), np.zeros((2, 128), np.float32)[:, ::2],
                       np.zeros((3, 64), np.int8), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="bias"):
        nat._q8_matmul(np.zeros((2, 3), np.float32), x, np.zeros((3, 64), np.int8),
                       np.zeros((3, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        nat.weights_fingerprint(np.zeros((4, 4), np.float32)[:, ::2])


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


# ----------------------------------------------------------------------------- the decoder
from kernelgpt import sample  # noqa: E402
from kernelgpt.model import GPT, GPTConfig  # noqa: E402
from kernelgpt.optim import AdamW  # noqa: E402

CONFIGS = {
    "gpt2": GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=64),
    "llama": GPTConfig(vocab_size=101, block_size=24, n_layer=2, n_head=4, n_embd=64,
                       norm="rmsnorm", pos_emb="rope", mlp="swiglu", n_kv_head=2, mlp_hidden=96,
                       bias=False, tie_embeddings=False),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def qmodel(request):
    return GPT(CONFIGS[request.param], backend="native", seed=3)


def _decode_logits(model, weights, prompts, n, fused=True):
    """Logits (n, B, V) of n cached decoding steps fed prompts' tokens (teacher forcing) from
    position 0: every logit from the decoding step, none from the prefill."""
    B = prompts.shape[0]
    kv = model.kv_cache(B, weights)
    if not fused:
        kv.fused = None  # the op-by-op step (kernelgpt.quant.matmul: the NumPy spec)
    out = []
    for pos in range(n):
        out.append(np.array(model.decode_step(kv, prompts[:, pos], pos)))
    return np.stack(out)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_fused_quantized_step_matches_numpy_spec(qmodel, weights):
    prompts = np.random.default_rng(7).integers(0, qmodel.config.vocab_size, (3, 10))
    fused = _decode_logits(qmodel, weights, prompts, 10)
    spec = _decode_logits(qmodel, weights, prompts, 10, fused=False)
    scale = np.abs(spec).max()
    assert np.abs(fused - spec).max() <= 2e-4 * scale
    assert np.isfinite(fused).all()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_fused_quantized_step_on_every_path(qmodel, weights):
    """The AVX-512 and AVX2 paths give the same bits (the quantized products and the other
    decoder kernels alike); the portable path's other kernels agree within the parity bound."""
    prompts = np.random.default_rng(8).integers(0, qmodel.config.vocab_size, (2, 6))
    got = {}
    try:
        for path in native_ops_paths():
            set_native_ops_path(path)
            got[path] = _decode_logits(qmodel, weights, prompts, 6)
    finally:
        set_native_ops_path("avx512")
    if "avx512" in got and "avx2" in got:
        np.testing.assert_array_equal(got["avx512"], got["avx2"])
    first = next(iter(got.values()))
    assert np.abs(got["portable"] - first).max() <= 1e-4 * np.abs(first).max()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_batch8_rows_equal_rows_alone(qmodel, weights):
    """The batched decoder reads each weight once for all rows; each row's logits are bitwise
    those of the row decoded alone, and seeded sampling gives each row its tokens alone."""
    V = qmodel.config.vocab_size
    prompts = np.random.default_rng(9).integers(0, V, (8, 7))
    kv8 = qmodel.kv_cache(8, weights)
    assert kv8.fused is not None
    batch = _decode_logits(qmodel, weights, prompts, 7)
    for b in (0, 3, 7):
        np.testing.assert_array_equal(batch[:, b:b + 1], _decode_logits(qmodel, weights,
                                                                       prompts[b:b + 1], 7))
    p = prompts[:, :4].astype(np.int32)
    many = qmodel.generate(p, 12, temperature=0.9, top_k=20, seed=5, weights=weights)

    class Draws:  # row b's draws of the batch-8 run, one at a time
        def __init__(self, u, b):
            self.u, self.b, self.i = u, b, 0

        def random(self, n):
            self.i += 1
            return self.u[self.i - 1, self.b:self.b + n]

    u = np.random.default_rng(5).random((12, 8))
    for b in (0, 5):
        sp = sample.SamplingParams(temperature=0.9, top_k=20, max_new_tokens=12).checked(V)
        alone = list(sample._stream(qmodel, p[b:b + 1], False, sp, Draws(u, b), True, weights))
        np.testing.assert_array_equal(many[b, 4:], np.concatenate(alone))


@needs_amx
@pytest.mark.parametrize("B", [2, 3, 5, 8, 16])
def test_fused_int8_step_amx_equals_vnni(qmodel, B):
    """The fused int8 decoding step at batch B gives the same logits with AMX on and off."""
    prompts = np.random.default_rng(40 + B).integers(0, qmodel.config.vocab_size, (B, 5))
    try:
        nat._set_ops_allow_amx(True)
        on = _decode_logits(qmodel, "int8", prompts, 5)
        nat._set_ops_allow_amx(False)
        off = _decode_logits(qmodel, "int8", prompts, 5)
    finally:
        nat._set_ops_allow_amx(True)
    np.testing.assert_array_equal(on, off)
    assert np.isfinite(on).all()


def test_batch_limits_per_format(qmodel):
    from kernelgpt.backends import native_backend as nb
    for w in ("fp32", "bf16", "int8"):
        assert nb.decoder_supports(qmodel, 16, w) and not nb.decoder_supports(qmodel, 17, w)
    kv = qmodel.kv_cache(17, "int8")  # beyond the fused decoder: the NumPy spec path
    assert kv.fused is None
    lg = np.array(qmodel.decode_step(kv, np.zeros(17, np.int32), 0))
    assert np.isfinite(lg).all()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_quantized_logits_close_to_fp32_and_greedy_agrees(qmodel, weights):
    """Tiny random model: the quantized logits stay within a stated distance of fp32's
    (bf16: 2% of the logits' spread, int8: 3%) and greedy picks mostly agree."""
    V = qmodel.config.vocab_size
    prompts = np.random.default_rng(10).integers(0, V, (4, 16))
    ref = _decode_logits(qmodel, "fp32", prompts, 16)
    got = _decode_logits(qmodel, weights, prompts, 16)
    spread = ref.std()
    tol = {"bf16": 0.02, "int8": 0.03}[weights]
    assert np.abs(got - ref).max() <= tol * spread * 10
    assert np.sqrt(np.mean((got - ref) ** 2)) <= tol * spread
    agree = np.mean(got.argmax(-1) == ref.argmax(-1))
    assert agree >= 0.9, agree
    assert not np.array_equal(got, ref)  # it did read other weights


def test_generate_fused_equals_stream_and_numpy_backend():
    """generate (the C++ sampling loop, lm_filter asked for) == generate_stream (logits in
    Python) == the numpy backend's spec path, greedy, with quantized weights: the lm_head
    filter steps aside (it bounds the float32 lm_head only)."""
    cfg = CONFIGS["gpt2"]
    m = GPT(cfg, backend="native", seed=11)
    mn = GPT(cfg, backend="numpy", seed=11)
    p = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    for w in ("bf16", "int8"):
        fused = m.generate(p, 15, temperature=0.0, weights=w)
        stream = np.stack(list(m.generate_stream(p, 15, temperature=0.0, weights=w)), axis=1)
        np.testing.assert_array_equal(fused[:, 3:], stream)
        np.testing.assert_array_equal(fused, mn.generate(p, 15, temperature=0.0, weights=w))
        ragged = m.generate([[1, 2, 3], [4, 5]], 6, temperature=0.0, weights=w)
        np.testing.assert_array_equal(ragged[0], fused[0, :9])


def test_decoder_sample_lm_filter_ignored_with_quantized_weights():
    cfg = CONFIGS["gpt2"]
    m = GPT(cfg, backend="native", seed=12)
    sp = sample.SamplingParams(temperature=0.0, max_new_tokens=10).checked(cfg.vocab_size)
    res = []
    for flt in (False, True):
        kv = m.kv_cache(2, "int8")
        m.prefill(kv, np.array([[1, 2], [3, 4]], np.int32))
        out = np.empty((10, 2), np.int32)
        tok = np.array([5, 6], np.int32)
        logits = np.full((2, cfg.vocab_size), np.nan, np.float32)
        kv.fused.sample(out, tok, 2, np.zeros((10, 2)), sp, np.zeros(0, np.int32),
                        np.zeros(2, np.uint8), logits, lm_filter=flt)
        res.append((out, logits))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])  # every logit exact: no filter ran


def test_quantized_copy_follows_the_weights():
    """Kept on the model while the weights stay; a train step, load_state_dict or a direct
    write gives a fresh quantization, and generate uses it."""
    from kernelgpt.quant import quantized
    cfg = CONFIGS["gpt2"]
    m = GPT(cfg, backend="native", seed=13)
    p = np.array([1, 2, 3])
    m.generate(p, 4, temperature=0.0, weights="int8")
    q1 = quantized(m, "int8")
    assert quantized(m, "int8") is q1 and m.generate_cache.qweights is q1
    # a training step
    opt = AdamW(m, lr=1e-2)
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8))
    m.zero_grad()
    m.forward(x, x, return_logits=False)
    m.backward()
    opt.step()
    got = m.generate(p, 6, temperature=0.0, weights="int8")
    q2 = quantized(m, "int8")
    assert q2 is not q1 and m.generate_cache.qweights is q2
    assert not np.array_equal(q2.layers[0]["attn.c_attn.w"].data, q1.layers[0]["attn.c_attn.w"].data)
    fresh = GPT(cfg, backend="native", seed=99)
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(fresh.generate(p, 6, temperature=0.0, weights="int8"), got)
    # a direct write to one weight
    m.param_views["h.1.mlp.c_proj.w"][0, 0] += 1.0
    q3 = quantized(m, "int8")
    assert q3 is not q2 and q3.layers[1]["mlp.c_proj.w"].data[0, 0] != \
        q2.layers[1]["mlp.c_proj.w"].data[0, 0] or q3.layers[1]["mlp.c_proj.w"].scales[0, 0] != \
        q2.layers[1]["mlp.c_proj.w"].scales[0, 0]
    # load_state_dict of other weights
    m.load_state_dict(GPT(cfg, backend="native", seed=5).state_dict())
    assert quantized(m, "int8") is not q3


def test_weights_argument_errors():
    cfg = CONFIGS["gpt2"]
    m = GPT(cfg, backend="native", seed=1)
    for bad in ("int4", "float32", None):
        with pytest.raises(ValueError, match="'fp32', 'bf16', 'int8'"):
            m.generate([1, 2], 3, weights=bad)
        with pytest.raises(ValueError, match="'fp32', 'bf16', 'int8'"):
            m.generate_stream([1, 2], 3, weights=bad)
    with pytest.raises(ValueError, match="use_cache"):
        m.generate([1, 2], 3, weights="int8", use_cache=False)
    odd = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=48),
              backend="native")
    with pytest.raises(ValueError, match="multiple of 32"):
        odd.generate([1, 2], 3, weights="int8")
    # bf16 takes any width, fused and spec paths alike
    a = odd.generate([1, 2], 3, temperature=0.0, weights="bf16")
    b = GPT(odd.config, backend="numpy").generate([1, 2], 3, temperature=0.0, weights="bf16")
    np.testing.assert_array_equal(a, b)


def test_fp32_default_unchanged():
    cfg = CONFIGS["llama"]
    m = GPT(cfg, backend="native", seed=2)
    p = np.array([[3, 4, 5]], np.int32)
    np.testing.assert_array_equal(m.generate(p, 8, seed=1),
                                  m.generate(p, 8, seed=1, weights="fp32"))
    assert m.kv_cache(1).qweights is None


def test_cli_sample_weights(tmp_path, capsys):
    """kernelgpt sample --weights: passed to generate (greedy int8 text == generate's), and a
    bad value is refused by the parser."""
    from kernelgpt import cli
    from kernelgpt.tokenizer import Tokenizer
    tok = Tokenizer([])  # bytes only: vocab 256
    cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=64)
    m = GPT(cfg, backend="native", seed=4)
    m.save(tmp_path / "w.safetensors")
    tok.save(str(tmp_path / "tok.json"))
    args = ["sample", "--model", str(tmp_path / "w.safetensors"), "--tokenizer",
            str(tmp_path / "tok.json"), "--prompt", "ab", "--max-new-tokens", "5",
            "--temperature", "0", "--backend", "native"]
    assert cli.main(args + ["--weights", "int8"]) == 0
    text = capsys.readouterr().out
    ids = m.generate(np.frombuffer(b"ab", np.uint8).astype(np.int32), 5, temperature=0.0,
                     weights="int8")[0]
    assert text.encode("utf-8", "surrogateescape")[:2] == b"ab"
    assert text == "".join(cli._stream_text(tok, [int(t) for t in ids])) + "\n"
    seen = []
    real = GPT.generate_stream

    def spy(self, *a, **kw):
        seen.append(kw.get("weights"))
        return real(self, *a, **kw)
    GPT.generate_stream = spy
    try:
        for w in ("bf16", None):
            assert cli.main(args + (["--weights", w] if w else [])) == 0
    finally:
        GPT.generate_stream = real
    assert seen == ["bf16", "fp32"]
    with pytest.raises(SystemExit):
        cli.main(args + ["--weights", "int4"])
