"""The whole GPT on the CUDA backend against the NumPy path: loss and every gradient tensor vs the
float64 reference (bound: 2x the float32 NumPy error + floor) on XS and S (small batch), fused and
unfused classifier; 50 AdamW steps tracking NumPy on a tiny config; KV-cache sampling equal to
uncached sampling. Skipped (with the reason) without CuPy, kernelgpt._cuda or a GPU."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.optim import AdamW, clip_grad_norm

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def cb():
    from kernelgpt.backends import cuda_backend
    reason = cuda_backend.unavailable_reason()
    if reason:
        pytest.skip(f"cuda backend not available: {reason}")
    return cuda_backend


def grads_of(model, idx, tgt, fused):
    model.zero_grad()
    _, loss = model.forward(idx, tgt, return_logits=not fused)
    model.backward()
    return loss, {n: np.asarray(model.backend.to_numpy(g), np.float64)
                  for n, g in model.grad_views.items()}


def perturb(model, rng, scale=0.02):
    """Non-trivial layernorm weights/biases and linear biases (init hides some bugs)."""
    host = np.asarray(model.backend.to_numpy(model.params), np.float64)
    host += rng.standard_normal(host.size) * scale
    model.params[...] = model.backend.asarray(host.astype(model.dtype))


@pytest.mark.parametrize("preset,B,T", [("xs", 4, 64), ("s", 2, 48)], ids=["xs", "s"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_loss_and_every_gradient_match_numpy(cb, rng, preset, B, T, fused):
    cfg = GPTConfig.preset(preset)
    models = {k: GPT(cfg, backend=be, seed=0, dtype=dt) for k, be, dt in
              (("ref", "numpy", "float64"), ("ref32", "numpy", "float32"), ("cuda", "cuda", "float32"))}
    r = np.random.default_rng(7)
    for m in models.values():
        perturb(m, np.random.default_rng(7))
    idx = r.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    tgt = r.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    res = {k: grads_of(m, idx, tgt, fused) for k, m in models.items()}
    l64, l32, lc = res["ref"][0], res["ref32"][0], res["cuda"][0]
    assert abs(lc - l64) <= max(1e-5 * abs(l64), 2 * abs(l32 - l64) + 1e-6), (lc, l64, l32)
    for name in models["ref"].grad_views:
        assert_close(res["cuda"][1][name], res["ref"][1][name], ref32=res["ref32"][1][name],
                     name=name)


def test_logits_match_numpy(cb, rng):
    cfg = GPTConfig(vocab_size=97, block_size=33, n_layer=2, n_head=3, n_embd=36)
    ref, ref32, mc = (GPT(cfg, backend=b, seed=3, dtype=d) for b, d in
                      (("numpy", "float64"), ("numpy", "float32"), ("cuda", "float32")))
    idx = rng.integers(0, 97, (3, 33)).astype(np.int32)
    want = ref.forward(idx)[0]
    w32 = ref32.forward(idx)[0]
    got = mc.backend.to_numpy(mc.forward(idx)[0])
    assert_close(got, want, ref32=w32, name="logits")


def test_50_training_steps_track_numpy(cb):
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 64, (4, 17)).astype(np.int32)
    data = np.broadcast_to(batch, (50, 4, 17))  # one batch again and again: the loss must fall
    losses = {}
    finals = {}
    for be in ("numpy", "cuda"):
        m = GPT(cfg, backend=be, seed=1)
        opt = AdamW(m, lr=3e-3, weight_decay=0.1)
        ls = []
        for step in range(50):
            x = np.ascontiguousarray(data[step, :, :-1])
            y = np.ascontiguousarray(data[step, :, 1:])
            m.zero_grad()
            _, loss = m.forward(x, y, return_logits=False)
            m.backward()
            clip_grad_norm(m, 1.0)
            opt.step()
            ls.append(loss)
        losses[be] = np.array(ls)
        finals[be] = np.asarray(m.backend.to_numpy(m.params), np.float64)
    assert losses["cuda"][-1] < losses["cuda"][0] - 0.1, losses["cuda"]
    np.testing.assert_allclose(losses["cuda"], losses["numpy"], rtol=2e-3, atol=2e-3)
    err = np.linalg.norm(finals["cuda"] - finals["numpy"]) / np.linalg.norm(finals["numpy"])
    assert err < 1e-2, err


def test_training_is_deterministic_on_cuda(cb):
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    data = np.random.default_rng(1).integers(0, 64, (5, 4, 17)).astype(np.int32)
    runs = []
    for _ in range(2):
        m = GPT(cfg, backend="cuda", seed=2)
        opt = AdamW(m, lr=3e-3)
        ls = []
        for step in range(5):
            m.zero_grad()
            ls.append(m.forward(np.ascontiguousarray(data[step, :, :-1]),
                                np.ascontiguousarray(data[step, :, 1:]), return_logits=False)[1])
            m.backward()
            opt.step()
        runs.append(ls)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("B", [1, 2], ids=["B1", "B2"])
def test_kv_cache_sampling_equals_uncached(cb, B):
    cfg = GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32)
    m = GPT(cfg, backend="cuda", seed=4)
    prompt = np.random.default_rng(B).integers(0, 50, (B, 5)).astype(np.int32)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, seed=11, top_k=10)):
        # 30 new tokens run past block_size, so the cropped-window path is exercised too
        a = m.generate(prompt, 30, use_cache=True, **kw)
        b = m.generate(prompt, 30, use_cache=False, **kw)
        assert a.shape == (B, 35)
        np.testing.assert_array_equal(a, b)
