"""The GPT model on the NumPy backend: whole-model gradients against finite differences (float64,
every parameter tensor), fused == unfused classifier, overfitting one batch, input validation,
parameter layout, state-dict round trip, seeded init."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import assert_close
from kernelgpt.model import GPT, GPTConfig, param_shapes, train_flops_per_step

TINY = dict(vocab_size=11, block_size=5, n_layer=2, n_head=2, n_embd=6)


def tiny(dtype="float64", seed=0, **kw):
    cfg = GPTConfig(**{**TINY, **kw})
    return GPT(cfg, backend="numpy", seed=seed, dtype=dtype)


def batch(rng, B=2, T=4, V=11):
    return (rng.integers(0, V, (B, T)).astype(np.int32),
            rng.integers(0, V, (B, T)).astype(np.int32))


def perturb_params(model, rng):
    """Non-trivial LN weights/biases and biases (init sets them to 1/0, hiding some bugs)."""
    model.params[:] += rng.standard_normal(model.params.size) * 0.3


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_gradients_match_finite_differences_every_tensor(rng, fused):
    model = tiny()
    perturb_params(model, rng)
    idx, tgt = batch(rng)
    model.zero_grad()
    _, loss = model.forward(idx, tgt, return_logits=not fused)
    model.backward()
    h = 1e-5
    for name, view in model.param_views.items():
        flat = view.reshape(-1)
        assert np.shares_memory(flat, model.params)
        picks = rng.choice(flat.size, min(flat.size, 5), replace=False)
        num = np.empty(len(picks))
        for j, i in enumerate(picks):
            old = flat[i]
            flat[i] = old + h
            lp = model.forward(idx, tgt, return_logits=False)[1]
            flat[i] = old - h
            lm = model.forward(idx, tgt, return_logits=False)[1]
            flat[i] = old
            num[j] = (lp - lm) / (2 * h)
        got = model.grad_views[name].reshape(-1)[picks]
        assert_close(got, num, name=name, tol=1e-6, floor=1e-9)
        assert np.abs(num).max() > 0 or name == "wpe", f"{name}: zero gradient"


def test_fused_classifier_equals_unfused(rng):
    model = tiny()
    perturb_params(model, rng)
    idx, tgt = batch(rng, B=3, T=5)
    model.zero_grad()
    logits, loss_u = model.forward(idx, tgt, return_logits=True)
    model.backward()
    g_u = model.grads.copy()
    model.zero_grad()
    none, loss_f = model.forward(idx, tgt, return_logits=False)
    model.backward()
    assert none is None
    assert math.isclose(loss_u, loss_f, rel_tol=1e-12)
    assert_close(model.grads, g_u, tol=1e-12)
    # the returned logits give the same loss
    lg = logits.reshape(-1, 11)
    lse = np.log(np.exp(lg).sum(1))
    assert math.isclose(float(np.mean(lse - lg[np.arange(15), tgt.reshape(-1)])), loss_u,
                        rel_tol=1e-12)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_backward_accumulates_and_scales(rng, fused):
    model = tiny()
    idx, tgt = batch(rng)
    model.zero_grad()
    model.forward(idx, tgt, return_logits=not fused)
    model.backward()
    g1 = model.grads.copy()
    model.zero_grad()
    for _ in range(2):  # gradient accumulation: two micro-batches at loss_scale 1/2
        model.forward(idx, tgt, return_logits=not fused)
        model.backward(0.5)
    assert_close(model.grads, g1, tol=1e-12)
    with pytest.raises(RuntimeError, match="backward"):
        model.backward()
    model.forward(idx)  # no targets: nothing to backpropagate
    with pytest.raises(RuntimeError, match="backward"):
        model.backward()


def test_tiny_model_overfits_one_batch(rng):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16),
                backend="numpy", seed=0)
    be = model.backend
    idx = rng.integers(0, 11, (2, 8)).astype(np.int32)
    tgt = np.roll(idx, -1, axis=1)
    m, v = be.zeros(model.params.shape), be.zeros(model.params.shape)
    nd = model.n_decay
    losses = []
    for step in range(1, 301):
        model.zero_grad()
        _, loss = model.forward(idx, tgt, return_logits=False)
        model.backward()
        losses.append(loss)
        for sl, wd in ((slice(0, nd), 0.0), (slice(nd, None), 0.0)):
            be.adamw_update(model.params[sl], model.grads[sl], m[sl], v[sl], lr=1e-2, beta1=0.9,
                            beta2=0.95, eps=1e-8, weight_decay=wd, step=step)
    assert losses[0] > 2.0  # ~ln(11) at init
    assert losses[-1] < 0.05, losses[-10:]


def test_forward_validates_idx_and_targets():
    model = tiny("float32")
    ok = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="idx"):
        model.forward(np.array([[0, 11]], np.int32))
    with pytest.raises(ValueError, match="idx"):
        model.forward(np.array([[-1, 0]], np.int32))
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.zeros((1, 6), np.int32))
    with pytest.raises(TypeError, match="idx"):
        model.forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.forward(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="targets"):
        model.forward(ok, np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="targets"):
        model.forward(ok, np.full((2, 4), 11, np.int32))
    logits, loss = model.forward(ok.astype(np.int64))  # other integer dtypes are accepted
    assert logits.shape == (2, 4, 11) and logits.dtype == np.float32 and loss is None


def test_logits_are_a_fresh_copy(rng):
    model = tiny("float32")
    a, _ = batch(rng)
    b, _ = batch(rng)
    la, _ = model.forward(a)
    la_copy = la.copy()
    model.forward(b)
    assert np.array_equal(la, la_copy)


def test_layout_and_views():
    model = tiny("float32")
    cfg = model.config
    shapes = dict(param_shapes(cfg))
    assert set(model.param_views) == set(shapes) == set(model.grad_views)
    assert model.params.ndim == 1 and model.grads.shape == model.params.shape
    assert model.num_params() == sum(int(np.prod(s)) for s in shapes.values())
    off = 0
    for name, shape in param_shapes(cfg):  # matrices first, then vectors, no gaps
        view = model.param_views[name]
        assert view.shape == shape
        assert view.__array_interface__["data"][0] == \
            model.params.__array_interface__["data"][0] + 4 * off
        off += view.size
        assert (len(shape) == 2) == (off <= model.n_decay)
    assert model.param_views["h.1.attn.c_attn.w"].shape == (18, 6)
    assert model.param_views["h.0.mlp.c_proj.w"].shape == (6, 24)


@pytest.mark.parametrize("shape,dtype", [((3, 5), "float32"), ((0,), "float32"), (7, "int32"),
                                         ((2, 3, 4), "float64"), ((1000,), "float32")])
def test_cpu_buffers_start_on_a_cache_line(shape, dtype):
    """The CPU backends' empty/zeros start on 64-byte boundaries (NumPy's own allocations are
    16-byte aligned: a 64-byte vector access would then straddle two cache lines)."""
    from kernelgpt.backends import numpy_backend as rb
    for fn in (rb.empty, rb.zeros):
        a = fn(shape, dtype)
        want = (shape,) if isinstance(shape, int) else shape
        assert a.shape == want and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
        assert a.flags.writeable and (a.size == 0 or a.ctypes.data % 64 == 0)
    assert not np.any(rb.zeros(shape, dtype))
    with pytest.raises(ValueError, match="negative"):
        rb.empty((2, -1))
    model = tiny("float32")
    model.forward(np.zeros((2, 5), np.int32))
    for arr in (model.params, model.grads, model._acts.layers[0].qkv, model._acts.layers[0].fch):
        assert arr.ctypes.data % 64 == 0


def test_init_statistics_and_seed():
    cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=4, n_head=4, n_embd=64)
    a, b, c = (GPT(cfg, backend="numpy", seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    p = a.param_views
    assert abs(p["wte"].std() - 0.02) < 0.002
    assert abs(p["h.0.mlp.c_fc.w"].std() - 0.02) < 0.002
    assert abs(p["h.3.mlp.c_proj.w"].std() - 0.02 / math.sqrt(8)) < 0.001
    assert abs(p["h.2.attn.c_proj.w"].std() - 0.02 / math.sqrt(8)) < 0.001
    assert np.all(p["h.1.ln_1.w"] == 1) and np.all(p["ln_f.b"] == 0)
    assert np.all(p["h.1.attn.c_attn.b"] == 0)
    # float64 models start from the same (float32-drawn) weights
    d = GPT(cfg, backend="numpy", seed=7, dtype="float64")
    assert d.params.dtype == np.float64 and np.array_equal(d.params, a.params.astype(np.float64))


def test_state_dict_round_trip(rng):
    a = tiny("float32", seed=1)
    b = tiny("float32", seed=2)
    sd = a.state_dict()
    assert all(v.dtype == np.float32 for v in sd.values())
    assert not any(np.shares_memory(v, a.params) for v in sd.values())  # copies, not views
    b.load_state_dict(sd)
    assert np.array_equal(a.params, b.params)
    idx, _ = batch(rng)
    assert np.array_equal(a.forward(idx)[0], b.forward(idx)[0])
    bad = dict(sd)
    bad["ln_f.w"] = np.ones(7, np.float32)
    with pytest.raises(ValueError, match="ln_f.w"):
        b.load_state_dict(bad)
    bad = dict(sd)
    del bad["wpe"]
    with pytest.raises(ValueError, match="wpe"):
        b.load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected"):
        b.load_state_dict({**sd, "lm_head.w": sd["wte"]})


def test_config_validation_presets_and_dict():
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(11, 5, 2, 4, 6)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(11, 5, 0, 2, 6)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(11.5, 5, 1, 2, 6)
    cfg = GPTConfig.preset("s")
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == \
        (8192, 6, 6, 384, 256)
    assert GPTConfig.preset("xs", vocab_size=300).vocab_size == 300
    assert GPTConfig.preset("m").block_size == 512
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model preset"):
        GPTConfig.preset("xl")
    with pytest.raises(ValueError, match="missing"):
        GPTConfig.from_dict({"vocab_size": 3})
    with pytest.raises(ValueError, match="dtype"):
        GPT(GPTConfig(**TINY), backend="numpy", dtype="float16")


def test_train_flops_formula():
    cfg = GPTConfig(**TINY)
    C, L, V, T, B = 6, 2, 11, 4, 2
    nonemb = L * (12 * C * C + 13 * C) + 2 * C
    want = 6 * (nonemb + V * C) * B * T + 12 * L * T * C * B * T
    assert train_flops_per_step(cfg, B, T) == want


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_zero_grad_clears_non_finite_gradients(backend):
    """zero_grad (the backend's zero_) leaves exact zeros even after a diverged step's NaN/inf."""
    if backend == "native":
        pytest.importorskip("kernelgpt._native")
    model = GPT(GPTConfig(**TINY), backend=backend, seed=0)
    model.grads[::2] = np.nan
    model.grads[1::2] = -np.inf
    model.zero_grad()
    assert np.array_equal(model.grads, np.zeros_like(model.grads))


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_decode_step_refuses_bad_position_and_ids_alike(backend):
    """decode_step refuses a position outside [0, block_size) and an id outside [0, vocab) with
    the same ValueError on the op-by-op path (numpy) as on the fused decoder (native); numpy
    indexing alone would read wpe[-1] / wte[-1] instead."""
    from kernelgpt.backends import available_backends
    if backend not in available_backends():
        pytest.skip(f"{backend} backend not available")
    m = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16),
            backend=backend, seed=0)
    for pos in (-1, 8, 100):
        with pytest.raises(ValueError, match=r"pos must be in \[0, 8\), got"):
            m.decode_step(m.kv_cache(1), np.array([1]), pos)
    for tok in (-1, 32):
        with pytest.raises(ValueError, match=rf"tok holds id {tok} outside \[0, 32\)"):
            m.decode_step(m.kv_cache(1), np.array([tok]), 0)
    kv = m.kv_cache(1)
    logits = np.array(m.decode_step(kv, np.array([3]), 0))
    assert logits.shape == (1, 32) and np.isfinite(logits).all()
