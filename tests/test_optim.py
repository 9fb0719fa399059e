"""AdamW against a float64 NumPy transcription of the update rule, decay on matrices only, the
learning-rate schedule, gradient clipping, optimizer state round trip."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kernelgpt.model import GPT, GPTConfig
from kernelgpt.optim import AdamW, clip_grad_norm, lr_schedule


def tiny_model(backend="numpy", seed=0):
    return GPT(GPTConfig(vocab_size=37, block_size=8, n_layer=1, n_head=2, n_embd=8),
               backend=backend, seed=seed)


def adamw_ref(p, g, m, v, lr, b1, b2, eps, wd, t):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return p - lr * (mhat / (np.sqrt(vhat) + eps) + wd * p), m, v


def test_adamw_matches_reference_and_decays_matrices_only(backend, rng):
    model = tiny_model(backend.name)
    be = model.backend
    k = model.n_decay
    assert 0 < k < model.params.size
    opt = AdamW(model, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.5)
    p = be.to_numpy(model.params).astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, 4):
        g = rng.standard_normal(p.size).astype(np.float32)
        model.grads[...] = be.asarray(g)
        opt.step(lr=0.01 * t)
        pd, md, vd = adamw_ref(p[:k], g[:k], m[:k], v[:k], 0.01 * t, 0.8, 0.9, 1e-6, 0.5, t)
        pv, mv, vv = adamw_ref(p[k:], g[k:], m[k:], v[k:], 0.01 * t, 0.8, 0.9, 1e-6, 0.0, t)
        p, m, v = np.concatenate([pd, pv]), np.concatenate([md, mv]), np.concatenate([vd, vv])
        np.testing.assert_allclose(be.to_numpy(model.params), p, rtol=1e-5, atol=1e-6)
    assert opt.step_count == 3


def test_zero_gradient_only_decays_matrices():
    model = tiny_model()
    before = model.params.copy()
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    model.zero_grad()
    opt.step()
    k = model.n_decay
    np.testing.assert_allclose(model.params[:k], before[:k] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(model.params[k:], before[k:])


def test_lr_schedule_shape():
    lrs = [lr_schedule(s, 1.0, 0.1, 10, 110) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))           # warmup rises linearly
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))     # cosine falls
    assert lrs[60] == pytest.approx(0.55)                            # midpoint of the cosine
    assert lrs[110] == lrs[129] == pytest.approx(0.1)                # min_lr afterwards
    assert lr_schedule(0, 1.0, 0.1, 0, 10) == pytest.approx(1.0)     # no warmup


def test_clip_grad_norm(rng):
    model = tiny_model()
    g = rng.standard_normal(model.grads.size).astype(np.float32)
    model.grads[...] = g
    norm = clip_grad_norm(model, 1.0)
    assert norm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-6)
    assert np.linalg.norm(model.grads.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(model.grads * norm, g, rtol=1e-4, atol=1e-6)  # direction kept
    model.grads[...] = g * 1e-3
    small = model.grads.copy()
    clip_grad_norm(model, 1.0)
    np.testing.assert_array_equal(model.grads, small)  # below the threshold: untouched
    model.grads[0] = np.nan
    assert math.isnan(clip_grad_norm(model, 1.0))


def test_state_round_trip(rng):
    a = tiny_model()
    opt = AdamW(a, lr=0.01)
    for _ in range(2):
        a.grads[...] = rng.standard_normal(a.grads.size).astype(np.float32)
        opt.step()
    st = opt.state_dict()
    b = tiny_model()
    b.load_state_dict(a.state_dict())
    opt2 = AdamW(b, lr=0.5)
    opt2.load_state_dict(st)
    assert opt2.step_count == 2 and opt2.lr == 0.01
    g = rng.standard_normal(a.grads.size).astype(np.float32)
    a.grads[...] = g
    b.grads[...] = g
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(dict(st, m=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="step"):
        opt2.load_state_dict(dict(st, step=-1))


def test_bad_hyperparameters():
    with pytest.raises(ValueError):
        AdamW(tiny_model(), lr=-1)
    with pytest.raises(ValueError):
        AdamW(tiny_model(), betas=(1.0, 0.9))
