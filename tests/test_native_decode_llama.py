"""The native fused KV-cache decoder on the llama-style architectures (RMSNorm, rotary positions,
SwiGLU, grouped-query attention, no biases, untied lm_head, and each field alone): its step gives
bitwise the logits and cache writes of the op-by-op step, on one and on two threads (each thread
its own key/value heads and their query heads, SwiGLU by column range); Decoder.sample's tokens
equal the Python loop's, with and without the bfloat16 lm_head filter (built from the untied
lm_head); and the decoder refuses arrays its architecture needs but lacks."""
from __future__ import annotations

import numpy as np
import pytest

from test_native_decode import _check_fused_equals_ops, _perturbed, _stream

nat = pytest.importorskip("kernelgpt._native")
from kernelgpt import sample  # noqa: E402
from kernelgpt.backends import native_backend as nb  # noqa: E402
from kernelgpt.model import GPTConfig  # noqa: E402

LLAMA = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False)
BASE = dict(vocab_size=37, block_size=12, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "llama-gqa": dict(LLAMA, n_kv_head=2, mlp_hidden=40),
    "llama-mqa": dict(LLAMA, n_kv_head=1, mlp_hidden=21),
    "llama-mha": dict(LLAMA),
    "rmsnorm": dict(norm="rmsnorm"),
    "rope": dict(pos_emb="rope"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=24),
    "gqa": dict(n_kv_head=2),
    "nobias-untied": dict(bias=False, tie_embeddings=False),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def vmodel(request):
    return _perturbed(GPTConfig(**BASE, **VARIANTS[request.param]), 4, 9, 0.3)


@pytest.mark.parametrize("B", [1, 3, 4])
def test_fused_step_bitwise_equals_op_by_op(vmodel, rng, B):
    assert nb.decoder_supports(vmodel, B)
    _check_fused_equals_ops(vmodel, rng, B)


# Wide enough (C QW + C^2 + C FW + H C >= 2 x 65536 weights per layer) for two threads: kv heads
# split 1 + 1 (NKV 2), 0 + 1 (NKV 1: one thread attends, both compute columns) or 2 + 3 (MHA 5);
# SwiGLU hidden widths a multiple of 16 and not.
@pytest.mark.parametrize("C,NH,NKV,H", [(120, 4, 2, 320), (120, 4, 1, 300), (120, 5, 5, 301)])
@pytest.mark.parametrize("B", [1, 2])
def test_fused_step_two_threads_bitwise_equals_op_by_op(rng, C, NH, NKV, H, B):
    cfg = GPTConfig(vocab_size=53, block_size=9, n_layer=2, n_head=NH, n_embd=C, n_kv_head=NKV,
                    mlp_hidden=H, **LLAMA)
    m = _perturbed(cfg, 5, 2, 0.1)
    before = nb.get_num_threads()
    nb.set_num_threads(2)
    try:
        _check_fused_equals_ops(m, rng, B)
    finally:
        nb.set_num_threads(before)


@pytest.mark.parametrize("opts", [dict(temperature=0.0), dict(temperature=1.0),
                                  dict(temperature=0.7, top_k=5), dict(temperature=1.0, top_p=0.8)],
                         ids=str)
@pytest.mark.parametrize("B", [1, 3])
def test_sampling_loop_in_cpp_equals_python_loop(vmodel, rng, opts, B):
    cfg = vmodel.config
    prompt = rng.integers(0, cfg.vocab_size, (B, 2)).astype(np.int32)
    n = 2 * cfg.block_size  # the window slides and the cache is rebuilt
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    fast = vmodel.generate(prompt, n, seed=g1, **opts)
    slow = _stream(vmodel, prompt, n, seed=g2, **opts)
    np.testing.assert_array_equal(fast, slow)
    plain = vmodel.generate(prompt, n, seed=np.random.default_rng(7), use_cache=False, **opts)
    np.testing.assert_array_equal(fast, plain)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("opts", [(0.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 50, 0.9)], ids=str)
def test_lm_filter_from_the_untied_head_equals_exact(B, opts):
    cfg = GPTConfig(vocab_size=301, block_size=16, n_layer=2, n_head=4, n_embd=32, n_kv_head=2,
                    **LLAMA)
    m = _perturbed(cfg, 5, 11, 0.2)
    m.param_views["ln_f.w"][:] *= 4
    m.param_views["wte"][:] *= 0.01   # a tied head would choose differently: the filter must
    T0 = 3                            # read lm_head.w
    prompt = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, T0)).astype(np.int32)
    n = cfg.block_size - T0
    u = np.random.default_rng(7).random((n, B))
    got = []
    for filt in (False, True):
        dec = m.kv_cache(B)
        m.prefill(dec, prompt)
        out, tok, done = np.full((n, B), -1, np.int32), prompt[:, -1].copy(), np.zeros(B, np.uint8)
        steps, bad = dec.fused.sample(out, tok, T0, u, sample.SamplingParams(*opts),
                                      np.zeros(0, np.int32), done, dec.logits, lm_filter=filt)
        got.append((steps, bad, out.copy()))
    assert got[0][0] == got[1][0] == n and not got[0][1] and not got[1][1]
    np.testing.assert_array_equal(got[0][2], got[1][2])
    # and the op-by-op Python loop picks the same tokens from the same draws (step i feeds tok at
    # position T0 + i, as Decoder.sample does)
    dec = m.kv_cache(B)
    dec.fused = None
    m.prefill(dec, prompt)
    sp = sample.SamplingParams(*opts)

    class Draws:  # pick_tokens' one rng.random(B) per step: the loop's draws
        i = 0

        def random(self, size):
            assert size == B
            self.i += 1
            return u[self.i - 1]
    draws, tok = Draws(), prompt[:, -1].copy()
    for i in range(n):
        lg = np.array(m.decode_step(dec, tok, T0 + i))
        tok = np.asarray(sample.pick_tokens(lg, sp, draws), np.int32)
        np.testing.assert_array_equal(tok, got[0][2][i])


def test_decoder_refuses_missing_arrays():
    cfg = GPTConfig(**BASE, **VARIANTS["llama-gqa"])
    m = _perturbed(cfg, 4, 9, 0.3)
    caches = m.kv_cache(1).caches
    p = m.param_views
    top = [(n, p.get(n)) for n in nb._DECODER_TOP]
    layers = [[(f"h.{l}.{n}", w.get(n)) for n in nb._DECODER_BLOCK]
              for l, w in enumerate(m.layer_params)]
    kw = dict(n_kv_head=2, rmsnorm=True, rope=True, swiglu=True)
    nat.Decoder(top, layers, [tuple(kv) for kv in caches], 4, 1, 1e-5, **kw)
    with pytest.raises(ValueError, match="ln_f.b is required"):  # layernorm needs the bias
        nat.Decoder(top, layers, [tuple(kv) for kv in caches], 4, 1, 1e-5,
                    **dict(kw, rmsnorm=False))
    with pytest.raises(ValueError, match="wpe is required"):
        nat.Decoder(top, layers, [tuple(kv) for kv in caches], 4, 1, 1e-5, **dict(kw, rope=False))
    with pytest.raises(ValueError, match="c_attn.w must have shape"):  # told NKV 4: wider qkv
        nat.Decoder(top, layers, [tuple(kv) for kv in caches], 4, 1, 1e-5,
                    **dict(kw, n_kv_head=4))
    with pytest.raises(ValueError, match="n_kv_head"):
        nat.Decoder(top, layers, [tuple(kv) for kv in caches], 4, 1, 1e-5,
                    **dict(kw, n_kv_head=3))
    bad = [list(l) for l in layers]
    bad[1][2] = (bad[1][2][0], None)  # a missing matrix
    with pytest.raises(TypeError, match="c_attn"):
        nat.Decoder(top, bad, [tuple(kv) for kv in caches], 4, 1, 1e-5, **kw)


# Key/value head groups that do not split evenly over the threads (NKV % T != 0: llama-S has 3
# on 2 threads): the step then splits whole heads' q/k/v columns and the (row, query head)
# attention units evenly instead. Wide enough (C QW + C^2 + C FW + H C >= 4 x 65536 weights per
# layer) for four threads; int8 needs C and H multiples of 32.
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("C,NH,NKV,H", [(192, 6, 3, 288), (160, 10, 5, 416)])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_uneven_kv_groups_bitwise_equal_one_thread(C, NH, NKV, H, B, weights):
    cfg = GPTConfig(vocab_size=41, block_size=6, n_layer=2, n_head=NH, n_embd=C, n_kv_head=NKV,
                    mlp_hidden=H, **LLAMA)
    m = _perturbed(cfg, 6, 3, 0.1)
    tokens = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, cfg.block_size))
    before = nb.get_num_threads()
    got = {}
    try:
        for T in (1, 2, 4):
            nb.set_num_threads(T)
            kv = m.kv_cache(B, weights)
            assert kv.fused is not None
            logits = [np.array(m.decode_step(kv, tokens[:, p].astype(np.int32), p))
                      for p in range(cfg.block_size)]
            got[T] = (np.stack(logits), [(k.copy(), v.copy()) for k, v in kv.caches])
    finally:
        nb.set_num_threads(before)
    assert np.isfinite(got[1][0]).all()
    for T in (2, 4):
        np.testing.assert_array_equal(got[T][0], got[1][0])
        for (k1, v1), (kt, vt) in zip(got[1][1], got[T][1]):
            np.testing.assert_array_equal(kt, k1)
            np.testing.assert_array_equal(vt, v1)
