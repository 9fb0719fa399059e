"""The llama-style architecture fields of GPTConfig (RMSNorm, rotary positions, SwiGLU,
grouped-query attention, no biases, untied lm_head) on the NumPy reference: the new ops against
finite differences and against straightforward float64 formulas, whole-model gradients against
finite differences for every parameter tensor, cached == uncached sampling (past block_size too),
configs that cannot work refused with the field named, and configs from before the fields
existed loading as GPT-2."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import assert_close
from kernelgpt.backends import numpy_backend as nb
from kernelgpt.model import GPT, GPTConfig, param_shapes, train_flops_per_step

LLAMA = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False)
TINY = dict(vocab_size=13, block_size=6, n_layer=2, n_head=4, n_embd=8)

# every field alone, then all of them together (with and without grouped-query attention)
VARIANTS = {
    "rmsnorm": dict(norm="rmsnorm"),
    "rope": dict(pos_emb="rope"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=12),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "llama": dict(LLAMA, n_kv_head=2),
    "llama-mha": dict(LLAMA),
}


def fd_check(f, x, grad, rng, n=6, h=1e-6, tol=1e-6):
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, min(n, flat.size), replace=False)
    num = []
    for i in picks:
        old = flat[i]
        flat[i] = old + h
        lp = f()
        flat[i] = old - h
        lm = f()
        flat[i] = old
        num.append((lp - lm) / (2 * h))
    assert_close(grad.reshape(-1)[picks], np.array(num), tol=tol, floor=1e-9)


# ------------------------------------------------------------------------------- the new ops
def test_rmsnorm_formula_and_gradients(rng):
    N, C = 5, 7
    x, w, G = rng.standard_normal((N, C)) * 2, rng.standard_normal(C), rng.standard_normal((N, C))
    out, rstd = np.full((N, C), np.nan), np.full(N, np.nan)
    nb.rmsnorm_forward(out, rstd, x, w, 1e-5)
    want = x / np.sqrt((x ** 2).mean(1, keepdims=True) + 1e-5) * w
    assert_close(out, want, tol=1e-12)
    dx, dw = np.full((N, C), np.nan), np.zeros(C)
    nb.rmsnorm_backward(dx, dw, G, x, w, rstd)

    def loss():
        o, r = np.empty((N, C)), np.empty(N)
        nb.rmsnorm_forward(o, r, x, w, 1e-5)
        return float((o * G).sum())
    fd_check(loss, x, dx, rng)
    fd_check(loss, w, dw, rng)


@pytest.mark.parametrize("nh,nkv", [(4, 4), (4, 2), (4, 1)])
def test_rope_rotates_q_and_k_only_and_is_orthogonal(rng, nh, nkv):
    B, T, HS = 2, 5, 6
    W = (nh + 2 * nkv) * HS
    x = rng.standard_normal((B, T, W))
    out = np.full_like(x, np.nan)
    nb.rope_forward(out, x, nh, nkv, 10000.0, 3)
    # v untouched, norms of each rotated pair kept, position 0 with pos0=0 unrotated
    np.testing.assert_array_equal(out[:, :, (nh + nkv) * HS:], x[:, :, (nh + nkv) * HS:])
    d = HS // 2
    q, qo = x[:, :, :HS], out[:, :, :HS]
    assert_close(q[..., :d] ** 2 + q[..., d:] ** 2, qo[..., :d] ** 2 + qo[..., d:] ** 2, tol=1e-12)
    z = np.empty_like(x)
    nb.rope_forward(z, x, nh, nkv, 10000.0, 0)
    np.testing.assert_allclose(z[:, 0], x[:, 0], rtol=0, atol=1e-15)
    # the angle of pair i at position p is p * theta^(-2i/HS) (rotate-half convention)
    p, i = 3 + 2, 1
    ang = p * 10000.0 ** (-2 * i / HS)
    a, b = x[0, 2, i], x[0, 2, i + d]
    assert out[0, 2, i] == pytest.approx(a * math.cos(ang) - b * math.sin(ang), rel=1e-12)
    assert out[0, 2, i + d] == pytest.approx(b * math.cos(ang) + a * math.sin(ang), rel=1e-12)
    # backward = the inverse rotation; in place allowed
    back = out.copy()
    nb.rope_backward(back, back, nh, nkv, 10000.0, 3)
    assert_close(back, x, tol=1e-12)
    G = rng.standard_normal(x.shape)
    dx = np.empty_like(x)
    nb.rope_backward(dx, G, nh, nkv, 10000.0, 3)

    def loss():
        o = np.empty_like(x)
        nb.rope_forward(o, x, nh, nkv, 10000.0, 3)
        return float((o * G).sum())
    fd_check(loss, x, dx, rng)


def test_swiglu_formula_and_gradients(rng):
    N, H = 4, 5
    x, G = rng.standard_normal((N, 2 * H)) * 2, rng.standard_normal((N, H))
    out = np.full((N, H), np.nan)
    nb.swiglu_forward(out, x)
    a, b = x[:, :H], x[:, H:]
    assert_close(out, a / (1 + np.exp(-a)) * b, tol=1e-12)
    dx = np.full_like(x, np.nan)
    nb.swiglu_backward(dx, G, x)

    def loss():
        o = np.empty((N, H))
        nb.swiglu_forward(o, x)
        return float((o * G).sum())
    fd_check(loss, x, dx, rng, n=10)


@pytest.mark.parametrize("nh,nkv", [(4, 2), (4, 1), (6, 3)])
def test_grouped_query_attention_equals_repeated_heads(rng, nh, nkv):
    """GQA equals multi-head attention with each key/value head repeated for its group; its
    backward sums the group's gradients; decode over an NKV-head cache equals the last row."""
    B, T, HS = 2, 7, 4
    C, g = nh * HS, nh // nkv
    qkv = rng.standard_normal((B, T, (nh + 2 * nkv) * HS))
    q = qkv[:, :, :C]
    k = qkv[:, :, C:C + nkv * HS].reshape(B, T, nkv, HS)
    v = qkv[:, :, C + nkv * HS:].reshape(B, T, nkv, HS)
    full = np.concatenate([q, np.repeat(k, g, axis=2).reshape(B, T, C),
                           np.repeat(v, g, axis=2).reshape(B, T, C)], axis=2)
    out, lse = np.full((B, T, C), np.nan), np.full((B, nh, T), np.nan)
    nb.attention_forward(out, lse, qkv, nh, n_kv_head=nkv)
    out2, lse2 = np.empty((B, T, C)), np.empty((B, nh, T))
    nb.attention_forward(out2, lse2, full, nh)
    assert_close(out, out2, tol=1e-12)
    assert_close(lse, lse2, tol=1e-12)
    G = rng.standard_normal((B, T, C))
    dq = np.full_like(qkv, np.nan)
    nb.attention_backward(dq, G, qkv, out, lse, nh, n_kv_head=nkv)
    dfull = np.empty_like(full)
    nb.attention_backward(dfull, G, full, out2, lse2, nh)
    assert_close(dq[:, :, :C], dfull[:, :, :C], tol=1e-12)
    assert_close(dq[:, :, C:C + nkv * HS],
                 dfull[:, :, C:2 * C].reshape(B, T, nkv, g, HS).sum(3).reshape(B, T, -1), tol=1e-12)
    assert_close(dq[:, :, C + nkv * HS:],
                 dfull[:, :, 2 * C:].reshape(B, T, nkv, g, HS).sum(3).reshape(B, T, -1), tol=1e-12)
    # decode: cache (B,NKV,maxT,HS), the last position's row
    maxT = T + 2
    kc, vc = np.full((B, nkv, maxT, HS), np.nan), np.full((B, nkv, maxT, HS), np.nan)
    kc[:, :, :T] = k.transpose(0, 2, 1, 3)
    vc[:, :, :T] = v.transpose(0, 2, 1, 3)
    o = np.full((B, C), np.nan)
    nb.attention_decode(o, np.ascontiguousarray(q[:, -1]), kc, vc, T)
    assert_close(o, out[:, -1], tol=1e-12)


def test_new_ops_refuse_bad_arguments():
    x = np.zeros((2, 3, 5 * 4))
    with pytest.raises(ValueError, match="n_kv_head"):
        nb.attention_forward(np.zeros((2, 3, 8)), np.zeros((2, 2, 3)), np.zeros((2, 3, 16)), 2,
                             n_kv_head=3)
    with pytest.raises(ValueError, match="even head size"):
        nb.rope_forward(np.zeros((1, 2, 15)), np.zeros((1, 2, 15)), 1, 1)
    with pytest.raises(ValueError, match="rope_theta"):
        nb.rope_forward(x, x.copy(), 3, 1, 0.0)
    with pytest.raises(ValueError, match="even last dimension"):
        nb.swiglu_forward(np.zeros((2, 2)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="eps"):
        nb.rmsnorm_forward(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)), np.ones(3), 0.0)


# ------------------------------------------------------------------------------- the model
def _model(variant, dtype="float64", seed=0, **kw):
    return GPT(GPTConfig(**{**TINY, **VARIANTS[variant], **kw}), backend="numpy", seed=seed,
               dtype=dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_variant_gradients_match_finite_differences(rng, variant, fused):
    model = _model(variant)
    model.params[:] += rng.standard_normal(model.params.size) * 0.3
    idx = rng.integers(0, TINY["vocab_size"], (2, 5)).astype(np.int32)
    tgt = rng.integers(0, TINY["vocab_size"], (2, 5)).astype(np.int32)
    model.zero_grad()
    model.forward(idx, tgt, return_logits=not fused)
    model.backward()
    h = 1e-5
    for name, view in model.param_views.items():
        flat = view.reshape(-1)
        picks = rng.choice(flat.size, min(flat.size, 4), replace=False)
        num = np.empty(len(picks))
        for j, i in enumerate(picks):
            old = flat[i]
            flat[i] = old + h
            lp = model.forward(idx, tgt, return_logits=False)[1]
            flat[i] = old - h
            lm = model.forward(idx, tgt, return_logits=False)[1]
            flat[i] = old
            num[j] = (lp - lm) / (2 * h)
        assert_close(model.grad_views[name].reshape(-1)[picks], num, name=name, tol=1e-6,
                     floor=1e-9)


def test_llama_layout():
    cfg = GPTConfig(**TINY, **LLAMA, n_kv_head=2, mlp_hidden=12)
    names = [n for n, _ in param_shapes(cfg)]
    assert "wpe" not in names and "lm_head.w" in names
    assert not any(n.endswith(".b") for n in names)
    shapes = dict(param_shapes(cfg))
    assert shapes["h.0.attn.c_attn.w"] == ((4 + 2 * 2) * 2, 8)   # q: 4 heads, k and v: 2 each
    assert shapes["h.0.mlp.c_fc.w"] == (2 * 12, 8)               # gate | up
    assert shapes["h.0.mlp.c_proj.w"] == (8, 12)
    m = GPT(cfg, backend="numpy")
    assert m.num_params() == sum(int(np.prod(s)) for s in shapes.values())
    assert m.lm_head is m.param_views["lm_head.w"]


@pytest.mark.parametrize("variant", ["llama", "rope", "gqa"])
def test_variant_cached_equals_uncached_sampling(rng, variant):
    model = _model(variant, dtype="float32", seed=3)
    model.params[:] += rng.standard_normal(model.params.size).astype(np.float32) * 0.3
    prompt = rng.integers(0, TINY["vocab_size"], (2, 3)).astype(np.int32)
    n = 10  # past block_size (6): the window slides and the cache is rebuilt
    a = model.generate(prompt, n, temperature=0.9, top_k=5, seed=4)
    b = model.generate(prompt, n, temperature=0.9, top_k=5, seed=4, use_cache=False)
    np.testing.assert_array_equal(a, b)
    kv = model.kv_cache(2)
    assert kv.caches[0][0].shape == (2, model.config.kv_heads, 6, 2)
    # the cached step's logits equal the forward's last row
    lg = np.array(model.prefill(kv, prompt))
    full = np.array(model.forward(prompt)[0])[:, -1]
    assert_close(lg, full, tol=1e-5)
    tok = np.array([1, 2], np.int32)
    step = np.array(model.decode_step(kv, tok, 3))
    ext = np.concatenate([prompt, tok[:, None]], axis=1)
    assert_close(step, np.array(model.forward(ext)[0])[:, -1], tol=1e-5)


def test_llama_presets_and_bad_configs():
    for name, base in (("llama-xs", "xs"), ("llama-s", "s"), ("llama-m", "m")):
        c, b = GPTConfig.preset(name), GPTConfig.preset(base)
        assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (b.n_layer, b.n_head, b.n_embd,
                                                                  b.block_size)
        assert c.kv_heads == c.n_head // 2 and c.norm == "rmsnorm" and c.pos_emb == "rope"
        assert c.mlp == "swiglu" and not c.bias and not c.tie_embeddings
        assert c.hidden % 64 == 0 and c.hidden >= 8 * c.n_embd / 3
    assert GPTConfig.preset("llama-m").hidden == 2048
    bad = [(dict(n_kv_head=3), "n_kv_head"), (dict(n_kv_head=0), "n_kv_head"),
           (dict(norm="batchnorm"), "norm"), (dict(mlp="relu"), "mlp"),
           (dict(pos_emb="alibi"), "pos_emb"), (dict(rope_theta=0.0), "rope_theta"),
           (dict(rope_theta=float("inf")), "rope_theta"), (dict(mlp_hidden=0), "mlp_hidden"),
           (dict(bias="yes"), "bias"), (dict(tie_embeddings=None), "tie_embeddings"),
           (dict(n_embd=12, n_head=4, pos_emb="rope"), "even head size")]
    for change, word in bad:
        with pytest.raises(ValueError, match=word):
            GPTConfig(**{**TINY, **change})
    # a config saved before the architecture fields existed is GPT-2
    old = GPTConfig.from_dict(dict(TINY))
    assert old.is_gpt2 and old == GPTConfig(**TINY)
    assert GPTConfig.from_dict(old.to_dict()) == old


def test_flops_count_swiglu_and_gqa():
    cfg = GPTConfig.preset("llama-s")
    B, T = 8, cfg.block_size
    C, L, H, V = cfg.n_embd, cfg.n_layer, cfg.hidden, cfg.vocab_size
    per_layer = C * cfg.qkv_width + C * C + C * 2 * H + H * C + 2 * C
    n = L * per_layer + C + V * C               # ln_f and the untied lm_head
    want = 6.0 * n * B * T + 12.0 * L * T * C * B * T
    assert train_flops_per_step(cfg, B, T) == want


def test_backends_without_the_kernels_refuse_llama_configs_in_one_line():
    from kernelgpt.backends import cuda_backend, native_backend
    cfg = GPTConfig(**TINY, **LLAMA)
    for be in (cuda_backend,):
        why = be.unsupported(cfg)
        assert why is not None and f"not available on {be.name} yet" in why and "\n" not in why
        assert be.unsupported(GPTConfig(**TINY)) is None
    # native has the kernels (tests/test_native_llama.py)
    assert native_backend.unsupported(cfg) is None


def test_cli_trains_a_llama_preset_with_flags(tmp_path):
    """`kernelgpt train --model llama-xs` plus the individual flags: the checkpoint records the
    fields, "auto" picks a backend that runs them, and the run resumes and samples."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import kernelgpt
    env = dict(os.environ, PYTHONPATH=str(Path(kernelgpt.__file__).resolve().parents[1]))
    data = tmp_path / "data.txt"
    data.write_text("def f(x):\n    return x * 2 + 1\n" * 300)
    base = [sys.executable, "-m", "kernelgpt", "train", "--data", str(data), "--max-steps", "3",
            "--batch-size", "2", "--block-size", "16", "--n-layer", "1", "--vocab-size", "270",
            "--eval-every", "0"]
    r = subprocess.run(base + ["--model", "llama-xs", "--out", str(tmp_path / "a")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "a" / "ckpt-00000003" / "config.json").read_text())["model"]
    assert (cfg["norm"], cfg["pos_emb"], cfg["mlp"], cfg["n_kv_head"], cfg["bias"],
            cfg["tie_embeddings"]) == ("rmsnorm", "rope", "swiglu", 2, False, False)
    r = subprocess.run(base + ["--model", "xs", "--norm", "rmsnorm", "--pos-emb", "rope",
                               "--mlp", "swiglu", "--n-kv-head", "1", "--no-bias", "--untie",
                               "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "b" / "ckpt-00000003" / "config.json").read_text())["model"]
    assert (cfg["norm"], cfg["pos_emb"], cfg["mlp"], cfg["n_kv_head"], cfg["bias"],
            cfg["tie_embeddings"]) == ("rmsnorm", "rope", "swiglu", 1, False, False)
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "train", "--out", str(tmp_path / "b"),
                        "--resume", "--max-steps", "4"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "sample", "--run", str(tmp_path / "b"),
                        "--prompt", "def ", "--max-new-tokens", "8", "--seed", "1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("def "), r.stderr
    r = subprocess.run(base + ["--model", "xs", "--n-kv-head", "3", "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "n_kv_head" in r.stderr and "Traceback" not in r.stderr
