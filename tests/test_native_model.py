"""The whole GPT on the native backend against the NumPy reference: loss and every gradient tensor
agree with float64 NumPy (bound: max(1e-5, 2x float32-NumPy's own error + floor)) on XS and on a
non-power-of-two config, through both the fused classifier and the logits path; 50 AdamW steps on
real text (bytes of a stdlib module) track the NumPy run; same seed -> bit-identical native runs;
KV-cache greedy decoding picks the same tokens as NumPy."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from conftest import assert_close, rel_err

pytest.importorskip("kernelgpt._native")
from kernelgpt.model import GPT, GPTConfig  # noqa: E402
from kernelgpt.optim import AdamW, clip_grad_norm  # noqa: E402

ODD = GPTConfig(vocab_size=300, block_size=40, n_layer=3, n_head=3, n_embd=48)


def three_models(cfg, rng, seed=0):
    """native float32, numpy float64, numpy float32 models with identical (perturbed) weights."""
    ref = GPT(cfg, backend="numpy", seed=seed, dtype="float64")
    ref.params[:] += rng.standard_normal(ref.params.size) * 0.05  # non-trivial LN weights/biases
    host = ref.params.astype(np.float32)
    ref.params[:] = host
    nat = GPT(cfg, backend="native", seed=seed)
    r32 = GPT(cfg, backend="numpy", seed=seed, dtype="float32")
    nat.params[:] = host
    r32.params[:] = host
    return nat, ref, r32


@pytest.mark.parametrize("cfg,B,T", [(GPTConfig.preset("xs"), 2, 64), (ODD, 2, 37), (ODD, 1, 1)],
                         ids=["xs-B2-T64", "odd-B2-T37", "odd-B1-T1"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "logits"])
def test_loss_and_every_gradient_match_reference(rng, cfg, B, T, fused):
    nat, ref, r32 = three_models(cfg, rng)
    idx = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    tgt = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    losses, logits = [], []
    for m in (nat, ref, r32):
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
    for name in nat.grad_views:
        assert_close(nat.grad_views[name], ref.grad_views[name], name=name,
                     ref32=r32.grad_views[name])


def _text_tokens(n_bytes=6000):
    """Real text: the first bytes of a stdlib module's source, tokens = byte values."""
    src = inspect.getsource(json.decoder).encode("utf-8")[:n_bytes]
    return np.frombuffer(src, np.uint8).astype(np.int32)


def _train(backend, steps, data, cfg, B, T, seed=0):
    model = GPT(cfg, backend=backend, seed=seed)
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    r = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        starts = r.integers(0, len(data) - T - 1, B)
        x = np.stack([data[s:s + T] for s in starts])
        y = np.stack([data[s + 1:s + T + 1] for s in starts])
        model.zero_grad()
        _, loss = model.forward(x, y, return_logits=False)
        model.backward()
        clip_grad_norm(model, 1.0)
        opt.step()
        losses.append(loss)
    return np.array(losses), model


def test_fifty_steps_on_text_track_numpy():
    data = _text_tokens()
    cfg = GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=48)
    ln, mn = _train("native", 50, data, cfg, 4, 32)
    lr_, mr = _train("numpy", 50, data, cfg, 4, 32)
    assert ln[-1] < ln[0] - 1.0, f"native loss did not fall: {ln[0]:.3f} -> {ln[-1]:.3f}"
    # The first 20 steps agree to float32 rounding (measured <= 6e-8). Later, rounding gets
    # amplified by the training dynamics, unevenly: with this seed both float32 engines jump away
    # from a float64 run at step 45 (NumPy float32 by 2e-4, native by 2-4e-3 depending on the
    # kernels' rounding), while with seeds 1-4 both stay within 2e-5 of it. Each op on its own is
    # as accurate as NumPy's (the op tests), so the whole run gets a chaos-sized tolerance.
    np.testing.assert_allclose(ln[:20], lr_[:20], rtol=1e-6)
    np.testing.assert_allclose(ln, lr_, rtol=1e-2)
    assert rel_err(mn.params, mr.params) < 1e-3


def test_native_training_is_bit_reproducible():
    data = _text_tokens(3000)
    cfg = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=32)
    a, ma = _train("native", 5, data, cfg, 3, 16, seed=3)
    b, mb = _train("native", 5, data, cfg, 3, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma.params, mb.params)


def test_kv_cache_greedy_decoding_matches_numpy(rng):
    cfg = GPTConfig(vocab_size=64, block_size=24, n_layer=2, n_head=2, n_embd=32)
    nat, _, r32 = three_models(cfg, rng)
    prompt = rng.integers(0, cfg.vocab_size, (2, 5)).astype(np.int32)
    a = nat.generate(prompt, 30, temperature=0)  # crosses block_size: cache is rebuilt
    b = r32.generate(prompt, 30, temperature=0)
    c = nat.generate(prompt, 30, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
