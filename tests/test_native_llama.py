"""The llama-style architecture (RMSNorm, rotary positions, SwiGLU, grouped-query attention, no
biases, untied lm_head) on the native backend against the NumPy reference: loss and every gradient
tensor agree with float64 NumPy (conftest.assert_close's bound) for grouped-query, multi-query and
multi-head configs, through the fused classifier and the logits path; 50 AdamW steps on real text
track the NumPy float32 run; cached == uncached sampling and native == NumPy greedy tokens
(through the fused decoder, batch <= 4); and the native ops' own properties: in-place rope,
refusal of partially overlapping buffers, thread-count determinism, AVX-512 == AVX2 bits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close, rel_err

pytest.importorskip("kernelgpt._native")
from kernelgpt import _native as nat  # noqa: E402
from kernelgpt.backends import native_backend, numpy_backend as R  # noqa: E402
from kernelgpt.model import GPT, GPTConfig  # noqa: E402
from test_native_model import _text_tokens, _train  # noqa: E402

LLAMA = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False)


def cfg_of(n_kv_head=2, **kw):
    base = dict(vocab_size=300, block_size=40, n_layer=2, n_head=4, n_embd=48, mlp_hidden=72,
                n_kv_head=n_kv_head)
    return GPTConfig(**{**base, **LLAMA, **kw})


def three_models(cfg, rng, seed=0):
    """native float32, numpy float64, numpy float32 models with identical (perturbed) weights."""
    ref = GPT(cfg, backend="numpy", seed=seed, dtype="float64")
    ref.params[:] += rng.standard_normal(ref.params.size) * 0.05
    host = ref.params.astype(np.float32)
    ref.params[:] = host
    nat_m = GPT(cfg, backend="native", seed=seed)
    r32 = GPT(cfg, backend="numpy", seed=seed, dtype="float32")
    nat_m.params[:] = host
    r32.params[:] = host
    return nat_m, ref, r32


def test_native_accepts_llama_configs_and_its_fused_decoder_runs_them():
    cfg = cfg_of()
    assert native_backend.unsupported(cfg) is None
    m = GPT(cfg, backend="native")
    assert m.backend is native_backend
    assert native_backend.decoder_supports(m, 1)  # tests/test_native_decode_llama.py
    assert m.kv_cache(1).fused is not None
    assert not native_backend.decoder_supports(m, 17)  # the fused decoder takes up to 16 rows


@pytest.mark.parametrize("cfg,B,T", [
    (cfg_of(2), 2, 37), (cfg_of(1), 1, 40), (cfg_of(None), 2, 9),
    (cfg_of(3, n_head=6, n_embd=96, mlp_hidden=100), 2, 33), (cfg_of(2), 1, 1)],
    ids=["gqa-B2-T37", "mqa-B1-T40", "mha-B2-T9", "gqa6-3-hs16-B2-T33", "gqa-B1-T1"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "logits"])
def test_loss_and_every_gradient_match_reference(rng, cfg, B, T, fused):
    nat_m, ref, r32 = three_models(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    tgt = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    losses, logits = [], []
    for m in (nat_m, ref, r32):
        m.zero_grad()
        m.grads[:] = np.nan  # poison: zero_grad must be what makes += start from 0
        m.zero_grad()
        lg, loss = m.forward(idx, tgt, return_logits=not fused)
        m.backward(loss_scale=0.5)
        losses.append(loss)
        logits.append(None if lg is None else np.array(lg, np.float64))
    bound = max(1e-5, 2 * abs(losses[2] - losses[1]) / abs(losses[1]) + 1e-6)
    assert abs(losses[0] - losses[1]) / abs(losses[1]) <= bound
    if not fused:
        assert_close(logits[0], logits[1], name="logits", ref32=logits[2])
    assert set(nat_m.grad_views) == set(ref.grad_views)
    for name in nat_m.grad_views:
        assert_close(nat_m.grad_views[name], ref.grad_views[name], name=name,
                     ref32=r32.grad_views[name])


def test_fifty_llama_steps_on_text_track_numpy():
    data = _text_tokens()
    cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=48, n_kv_head=2,
                    mlp_hidden=128, **LLAMA)
    ln, mn = _train("native", 50, data, cfg, 4, 32)
    lr_, mr = _train("numpy", 50, data, cfg, 4, 32)
    assert ln[-1] < ln[0] - 1.0, f"native loss did not fall: {ln[0]:.3f} -> {ln[-1]:.3f}"
    # as for GPT-2 (test_native_model.py): float32 rounding at first, a chaos-sized bound later
    np.testing.assert_allclose(ln[:20], lr_[:20], rtol=1e-5)
    np.testing.assert_allclose(ln, lr_, rtol=1e-2)
    assert rel_err(mn.params, mr.params) < 1e-3


def test_native_llama_training_is_bit_reproducible():
    data = _text_tokens(3000)
    cfg = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=4, n_embd=32, n_kv_head=1,
                    **LLAMA)
    a, ma = _train("native", 4, data, cfg, 3, 16, seed=3)
    b, mb = _train("native", 4, data, cfg, 3, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma.params, mb.params)


@pytest.mark.parametrize("n_kv_head", [2, 1, None])
def test_cached_equals_uncached_sampling_and_numpy_greedy(rng, n_kv_head):
    cfg = cfg_of(n_kv_head, vocab_size=64, block_size=12)
    nat_m, _, r32 = three_models(cfg, rng)
    nat_m.params[:] += rng.standard_normal(nat_m.params.size).astype(np.float32) * 0.2
    r32.params[:] = nat_m.params
    prompt = rng.integers(0, cfg.vocab_size, (2, 4)).astype(np.int32)
    n = 14  # past block_size (12): the window slides and the cache is rebuilt
    a = nat_m.generate(prompt, n, temperature=0.9, top_k=8, seed=4)
    b = nat_m.generate(prompt, n, temperature=0.9, top_k=8, seed=4, use_cache=False)
    np.testing.assert_array_equal(a, b)
    g1 = nat_m.generate(prompt, n, temperature=0)
    g2 = r32.generate(prompt, n, temperature=0)
    np.testing.assert_array_equal(g1, g2)
    # one cached step's logits equal the uncached forward's last row
    kv = nat_m.kv_cache(2)
    nat_m.prefill(kv, prompt)
    tok = np.array([1, 2], np.int32)
    step = np.array(nat_m.decode_step(kv, tok, prompt.shape[1]))
    ext = np.concatenate([prompt, tok[:, None]], axis=1)
    assert_close(step, np.array(nat_m.forward(ext)[0])[:, -1], tol=1e-5)


# ------------------------------------------------------------------------------- op properties
def test_rope_in_place_equals_out_of_place_and_refuses_partial_overlap(rng):
    B, T, NH, NKV, HS = 2, 9, 4, 2, 16
    x = rng.standard_normal((B, T, (NH + 2 * NKV) * HS)).astype(np.float32)
    for f in (nat.rope_forward, nat.rope_backward):
        out = np.full_like(x, np.nan)
        f(out, x, NH, NKV, 500.0, 7)
        y = x.copy()
        f(y, y, NH, NKV, 500.0, 7)
        np.testing.assert_array_equal(y, out)
    y = x.copy()
    nat.rope_forward(y, y, NH, NKV, 500.0, 7)
    nat.rope_backward(y, y, NH, NKV, 500.0, 7)
    assert_close(y, x, tol=1e-6)
    buf = np.zeros(x.size + 8, np.float32)
    a, b = buf[:x.size].reshape(x.shape), buf[8:].reshape(x.shape)
    with pytest.raises(ValueError, match="overlap"):
        nat.rope_forward(b, a, NH, NKV)
    with pytest.raises(ValueError, match="overlap"):  # out (3, 2) on top of x (3, 4)
        nat.swiglu_forward(buf[:6].reshape(3, 2), buf[:12].reshape(3, 4))


@pytest.mark.parametrize("bad,exc,word", [
    (dict(n_kv_head=3), ValueError, "n_kv_head"), (dict(n_kv_head=0), ValueError, "n_kv_head"),
    (dict(n_kv_head=True), TypeError, "n_kv_head"), (dict(theta=0.0), ValueError, "rope_theta"),
    (dict(theta=float("nan")), ValueError, "rope_theta"), (dict(theta="1"), ValueError, "rope_theta"),
    (dict(pos0=-1), ValueError, "pos0"), (dict(n_head=4, n_kv_head=2, odd=True), ValueError, "even"),
])
def test_rope_bad_arguments_fail_like_numpy(bad, exc, word):
    bad = dict(bad)
    hs = 3 if bad.pop("odd", False) else 4
    NH = bad.pop("n_head", 4)
    kw = dict(n_kv_head=2, theta=10000.0, pos0=0)
    kw.update(bad)
    nkv = kw["n_kv_head"] if isinstance(kw["n_kv_head"], int) and not isinstance(
        kw["n_kv_head"], bool) and kw["n_kv_head"] > 0 else 2
    x = np.zeros((1, 3, (NH + 2 * nkv) * hs), np.float32)
    with pytest.raises(exc, match=word):
        nat.rope_forward(np.zeros_like(x), x, NH, **kw)
    if exc is ValueError:  # the reference refuses the same call
        with pytest.raises(ValueError):
            R.rope_forward(np.zeros_like(x), x, NH, **kw)


def test_llama_ops_are_thread_count_independent():
    """Grouped-query attention's backward adds a kv group's query heads into shared dk, dv on
    one thread, in order; rmsnorm's dw sums fixed chunks in order; rope and swiglu are row-wise:
    the same bits for 1 and 3 threads (run in a fresh process: the thread count is global)."""
    code = r"""
import numpy as np
from kernelgpt import _native as nat
rng = np.random.default_rng(0)
B, T, NH, NKV, HS = 2, 70, 6, 3, 32
qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * HS)).astype(np.float32)
dout = rng.standard_normal((B, T, NH * HS)).astype(np.float32)
res = []
for n in (1, 3):
    nat.set_num_threads(n)
    out = np.empty((B, T, NH * HS), np.float32); lse = np.empty((B, NH, T), np.float32)
    nat.attention_forward(out, lse, qkv, NH, NKV)
    d = np.empty_like(qkv)
    nat.attention_backward(d, dout, qkv, out, lse, NH, NKV)
    x = qkv.reshape(-1, 96)
    o, r, dx, dw = np.empty_like(x), np.empty(len(x), np.float32), np.empty_like(x), np.zeros(96, np.float32)
    nat.rmsnorm_forward(o, r, x, x[0])
    nat.rmsnorm_backward(dx, dw, x * 0.5, x, x[0], r)
    so, sd = np.empty((len(x), 48), np.float32), np.empty_like(x)
    nat.swiglu_forward(so, x)
    nat.swiglu_backward(sd, so, x)
    ro = np.empty_like(qkv)
    nat.rope_backward(ro, qkv, NH, NKV, 100.0, 3)
    res.append((out, lse, d, o, r, dx, dw, so, sd, ro))
for a, b in zip(*res):
    assert np.array_equal(a, b)
print("ok")
"""
    import kernelgpt
    python_dir = str(Path(kernelgpt.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [python_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_gqa_decode_matches_last_row_of_forward(rng):
    B, T, NH, NKV, HS = 2, 19, 6, 2, 24
    C = NH * HS
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * HS)).astype(np.float32)
    out, lse = np.full((B, T, C), np.nan, np.float32), np.full((B, NH, T), np.nan, np.float32)
    nat.attention_forward(out, lse, qkv, NH, NKV)
    kv = qkv[:, :, C:].reshape(B, T, 2, NKV, HS)
    k = np.ascontiguousarray(kv[:, :, 0].transpose(0, 2, 1, 3))
    v = np.ascontiguousarray(kv[:, :, 1].transpose(0, 2, 1, 3))
    o = np.full((B, C), np.nan, np.float32)
    nat.attention_decode(o, np.ascontiguousarray(qkv[:, -1, :C]), k, v, T)
    assert_close(o, out[:, -1], name="decode")
    with pytest.raises(ValueError, match="multiple of the cache's 2 heads"):
        nat.attention_decode(np.zeros((B, 3 * HS), np.float32), np.zeros((B, 3 * HS), np.float32),
                             k, v, T)


def test_llama_ops_avx512_equal_avx2_bitwise(rng):
    """rmsnorm, rope, swiglu and grouped-query attention: the AVX-512 path gives the AVX2 bits."""
    from conftest import native_ops_paths, set_native_ops_path
    if "avx512" not in native_ops_paths():
        pytest.skip("needs the AVX-512 path")
    N, C, H = 67, 100, 16 * 20 + 5
    B, T, NH, NKV, HS = 2, 67, 4, 2, 40
    x, w = rng.standard_normal((N, C)).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    d = rng.standard_normal((N, C)).astype(np.float32)
    s = (rng.standard_normal((N, 2 * H)) * 4).astype(np.float32)
    ds = rng.standard_normal((N, H)).astype(np.float32)
    qkv = rng.standard_normal((B, T, (NH + 2 * NKV) * HS)).astype(np.float32)
    dout = rng.standard_normal((B, T, NH * HS)).astype(np.float32)
    res = []
    for path in ("avx512", "avx2"):
        set_native_ops_path(path)
        o, r, dx, dw = np.empty_like(x), np.empty(N, np.float32), np.empty_like(x), np.zeros_like(w)
        nat.rmsnorm_forward(o, r, x, w)
        nat.rmsnorm_backward(dx, dw, d, x, w, r)
        so, sd = np.empty_like(ds), np.empty_like(s)
        nat.swiglu_forward(so, s)
        nat.swiglu_backward(sd, ds, s)
        ro = np.empty_like(qkv)
        nat.rope_forward(ro, qkv, NH, NKV)
        ao, al, ad = np.empty_like(dout), np.empty((B, NH, T), np.float32), np.empty_like(qkv)
        nat.attention_forward(ao, al, ro, NH, NKV)
        nat.attention_backward(ad, dout, ro, ao, al, NH, NKV)
        res.append((o, r, dx, dw, so, sd, ro, ao, al, ad))
    set_native_ops_path("avx512")
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)
