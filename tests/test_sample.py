"""Sampling: the KV cache gives the same logits and greedy tokens as full recomputation (including
past block_size), seeded determinism, the temperature / top-k / top-p limits, stop tokens,
streaming, batching and argument validation."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from kernelgpt import sample
from kernelgpt.model import GPT, GPTConfig

SP = sample.SamplingParams


@pytest.fixture(scope="module")
def model():
    m = GPT(GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=16),
            backend="numpy", seed=3)
    # larger weights than the init so the logits are far from uniform and depend on the context
    r = np.random.default_rng(5)
    m.params[:] += r.standard_normal(m.params.size).astype(np.float32) * 0.3
    return m


def greedy_logits(model, prompt, n, use_cache):
    steps = list(sample._logit_steps(model, prompt, n, lambda lg: lg.argmax(1), use_cache))
    return np.stack([lg for lg, _ in steps], 1), np.stack([t for _, t in steps], 1)


@pytest.mark.parametrize("B,T0,n", [(1, 3, 6), (3, 5, 14), (2, 12, 4), (1, 1, 20)],
                         ids=["short", "crosses-block", "full-prompt", "one-token-prompt"])
def test_cached_equals_uncached(model, rng, B, T0, n):
    prompt = rng.integers(0, 37, (B, T0)).astype(np.int32)
    lc, tc = greedy_logits(model, prompt, n, True)
    lu, tu = greedy_logits(model, prompt, n, False)
    assert np.array_equal(tc, tu)
    assert_close(lc, lu, tol=1e-5)
    assert np.array_equal(model.generate(prompt, n, temperature=0),
                          np.concatenate([prompt, tc], 1))
    assert np.array_equal(model.generate(prompt, n, temperature=0, use_cache=False),
                          model.generate(prompt, n, temperature=0))


def test_decode_logits_match_full_forward(model, rng):
    prompt = rng.integers(0, 37, (2, 4)).astype(np.int32)
    lc, tc = greedy_logits(model, prompt, 5, True)
    full = np.concatenate([prompt, tc], 1)
    logits, _ = model.forward(full[:, :-1])           # position t predicts token t+1
    assert_close(lc, logits[:, 3:].astype(np.float64), tol=1e-5)


def test_same_seed_same_samples(model):
    kw = dict(temperature=1.3, top_k=20, top_p=0.95)
    a = model.generate([1, 2, 3], 15, seed=11, **kw)
    b = model.generate([1, 2, 3], 15, seed=11, **kw)
    c = model.generate([1, 2, 3], 15, seed=12, **kw)
    assert a.dtype == np.int32 and a.shape == (1, 18)  # (B, T + n), B = 1 for a 1-D prompt
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # seed=None draws fresh entropy; a Generator is used as is
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    assert np.array_equal(model.generate([1], 8, seed=g1), model.generate([1], 8, seed=g2))


def test_greedy_limits(model, rng):
    prompt = rng.integers(0, 37, (2, 3)).astype(np.int32)
    greedy = model.generate(prompt, 10, temperature=0)
    assert np.array_equal(model.generate(prompt, 10, top_k=1, seed=1), greedy)
    assert np.array_equal(model.generate(prompt, 10, top_p=1e-9, seed=2), greedy)
    sampled = model.generate(prompt, 10, temperature=5.0, seed=3)
    assert not np.array_equal(sampled, greedy)


def test_pick_tokens_distribution_and_filters():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = np.array([sample.pick_tokens(logits, SP(1.0, None, None), rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    draws = {int(sample.pick_tokens(logits, SP(1.0, 2, None), rng)[0]) for _ in range(300)}
    assert draws == {0, 1}
    draws = {int(sample.pick_tokens(logits, SP(1.0, None, 0.79), rng)[0]) for _ in range(300)}
    assert draws == {0, 1}   # 0.5 + 0.3 reaches 0.79
    draws = {int(sample.pick_tokens(logits, SP(1.0, None, 0.81), rng)[0]) for _ in range(300)}
    assert draws == {0, 1, 2}


@pytest.mark.parametrize("temperature", [1e-30, 0.37, 1.0, 7.5, 1e30])
@pytest.mark.parametrize("top_k,top_p", [(1, None), (5, None), (50, 0.9), (199, None)])
def test_pick_tokens_float32_shortcut_equals_float64(temperature, top_k, top_p):
    """float32 logits with top_k take their candidates straight from the float32 values; the
    tokens must be exactly those of the float64 route for the same draws (ties at the k-th value
    included: the logits are drawn from a few levels, so many values repeat)."""
    r = np.random.default_rng(11)
    for trial in range(40):
        B, V = 1 + trial % 3, 200
        levels = r.standard_normal(12).astype(np.float32) * np.float32(4)
        lg32 = levels[r.integers(0, 12, (B, V))] + (trial % 2) * r.standard_normal(
            (B, V)).astype(np.float32)
        g1, g2 = np.random.default_rng(trial), np.random.default_rng(trial)
        a = sample.pick_tokens(lg32, SP(temperature, top_k, top_p), g1)
        b = sample.pick_tokens(lg32.astype(np.float64), SP(temperature, top_k, top_p), g2)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.int64


def test_stream_yields_ints_and_arrays(model):
    out = list(model.generate_stream([5, 6], 4, temperature=0))
    assert all(isinstance(t, int) for t in out) and len(out) == 4
    assert out == model.generate([5, 6], 4, temperature=0)[0, 2:].tolist()
    rows = list(model.generate_stream([[5, 6], [7, 8]], 3, seed=0))
    assert all(r.shape == (2,) and r.dtype == np.int32 for r in rows)
    # batched rows equal the rows generated one at a time (greedy)
    both = model.generate([[5, 6], [7, 8]], 5, temperature=0)
    assert np.array_equal(both[1:], model.generate([7, 8], 5, temperature=0))


def test_stop_tokens(model):
    free = model.generate([1, 2], 10, temperature=0)[0]
    first = int(free[2 + 3])                  # stop at the 4th generated token
    k = int(np.argmax(free[2:] == first))     # (or earlier, if it occurs before)
    got = model.generate([1, 2], 10, temperature=0, stop=first)[0]
    assert np.array_equal(got, free[:2 + k + 1])
    got = model.generate([1, 2], 10, temperature=0, stop=[36, first])[0]
    assert got[-1] in (36, first) and len(got) <= 2 + k + 1
    assert model.generate([1, 2], 0).tolist() == [[1, 2]]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 3, temperature=-0.5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([1], 3, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate([1], 3, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        model.generate([1], 3, top_k=0)
    with pytest.raises(ValueError, match="empty"):
        model.generate([], 3)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(list(range(13)), 3)
    with pytest.raises(ValueError, match="outside"):
        model.generate([1, 37], 3)
    with pytest.raises(ValueError, match="outside"):
        model.generate([-1], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([1], -1)
    with pytest.raises(ValueError, match="stop"):
        model.generate([1], 3, stop=99)
    with pytest.raises(ValueError, match="integer"):
        model.generate(np.array([1.0]), 3)
    with pytest.raises(ValueError, match="temperature"):   # raised at the call, not at next()
        model.generate_stream([1], 3, temperature=-1)


def test_stop_in_a_batch_pads_finished_rows(model):
    prompt = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    n = 10
    free = model.generate(prompt, n, temperature=0)[:, 2:]
    stop = int(free[0, 1])
    got = model.generate(prompt, n, temperature=0, stop=stop)[:, 2:]
    ends = [int(np.argmax(r == stop)) + 1 if (r == stop).any() else n for r in free]
    assert got.shape == (3, max(ends))
    for r in range(3):
        assert np.array_equal(got[r, :ends[r]], free[r, :ends[r]])
        assert np.all(got[r, ends[r]:] == stop)


def test_generate_reuses_its_decoder_and_follows_the_weights(rng):
    """generate() keeps its KV-cache decoder on the model between calls: repeated calls give the
    same tokens, a different batch size gets its own decoder, and weights changed in place (as
    training does) are used by the next call, as by a fresh model holding the same weights."""
    pytest.importorskip("kernelgpt._native")
    cfg = GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=16)
    m = GPT(cfg, backend="native", seed=3)
    m.params[:] += rng.standard_normal(m.params.size).astype(np.float32) * 0.3
    prompt = rng.integers(0, 37, (1, 4)).astype(np.int32)
    a = m.generate(prompt, 20, temperature=0.9, top_k=10, seed=1)
    assert getattr(m, "generate_cache", None) is not None and m.generate_cache.B == 1
    assert np.array_equal(m.generate(prompt, 20, temperature=0.9, top_k=10, seed=1), a)
    greedy = m.generate(prompt, 20, temperature=0)
    two = m.generate(np.concatenate([prompt, prompt]), 20, temperature=0)  # rows independent
    assert m.generate_cache.B == 2 and np.array_equal(two, np.concatenate([greedy, greedy]))
    assert np.array_equal(m.generate(prompt, 20, temperature=0.9, top_k=10, seed=1), a)
    m.params[:] *= 1.5  # in place, as the optimizer updates them
    fresh = GPT(cfg, backend="native", seed=0)
    fresh.load_state_dict(m.state_dict())
    got = m.generate(prompt, 20, temperature=0, seed=1)
    assert np.array_equal(got, fresh.generate(prompt, 20, temperature=0, seed=1))
    assert not np.array_equal(got, a)


# ----------------------------------------------------------------------------- ragged, batched
RAGGED_CFGS = {
    "gpt2": GPTConfig(vocab_size=41, block_size=10, n_layer=2, n_head=2, n_embd=32),
    "llama": GPTConfig(vocab_size=41, block_size=10, n_layer=2, n_head=4, n_embd=64,
                       norm="rmsnorm", pos_emb="rope", mlp="swiglu", n_kv_head=2, bias=False,
                       tie_embeddings=False),
}
RAGGED_ROWS = [[5, 1, 7], [2], [9, 9, 3, 4, 8, 1, 2], [6, 5, 4, 3, 2, 1, 0, 1, 2, 3]]


@pytest.mark.parametrize("weights", ["fp32", "int8"])
@pytest.mark.parametrize("arch", list(RAGGED_CFGS))
def test_ragged_batch_decodes_batched_and_exact(monkeypatch, arch, weights):
    """A ragged batch on the native backend decodes its rows together through one fused decoder
    (the row-by-row path is never taken), each row at its own positions (learned or rotary), and
    every row gives exactly its tokens alone (greedy), and the same tokens as the row-by-row
    path for seeded sampling with a stop id, windows sliding past block_size at each row's own
    step."""
    pytest.importorskip("kernelgpt._native")
    m = GPT(RAGGED_CFGS[arch], backend="native", seed=2)
    r = np.random.default_rng(6)
    m.params[:] += r.standard_normal(m.params.size).astype(np.float32) * 0.2
    n = 13
    alone = [m.generate(row, n, temperature=0.0, weights=weights)[0] for row in RAGGED_ROWS]
    opts = dict(temperature=0.9, top_k=8, seed=4, stop=[3, 17], weights=weights)
    rowwise = sample._ragged_rowwise_steps
    with monkeypatch.context() as mp:  # the reference: the row-by-row path
        mp.setattr(sample, "_ragged_logit_steps",
                   lambda model, rows, n_, choose, uc, done, w="fp32":
                   rowwise(model, rows, n_, choose, uc, done, w))
        ref = m.generate(RAGGED_ROWS, n, **opts)

    def refuse(*a, **k):
        raise AssertionError("the ragged batch went row by row")
    monkeypatch.setattr(sample, "_ragged_rowwise_steps", refuse)
    got = m.generate(RAGGED_ROWS, n, temperature=0.0, weights=weights)
    for g, a in zip(got, alone):
        np.testing.assert_array_equal(g, a)
    for g, a in zip(m.generate(RAGGED_ROWS, n, **opts), ref):
        np.testing.assert_array_equal(g, a)
    streamed = np.stack(list(m.generate_stream(RAGGED_ROWS, n, temperature=0.0,
                                               weights=weights)), 1)
    for row, s, a in zip(RAGGED_ROWS, streamed, alone):
        np.testing.assert_array_equal(s, a[len(row):])


def test_decoder_rows_at_their_own_positions_equal_rows_alone():
    """Decoder.step with pos (B,): row b's logits and cache writes are bitwise those of row b
    alone at its position; bad positions raise."""
    nat = pytest.importorskip("kernelgpt._native")
    for cfg in RAGGED_CFGS.values():
        m = GPT(cfg, backend="native", seed=5)
        B, r = 3, np.random.default_rng(8)
        kv = m.kv_cache(B)
        ones = [m.kv_cache(1) for _ in range(B)]
        pos = np.array([0, 4, 2], np.int64)
        for step in range(5):
            tok = r.integers(0, cfg.vocab_size, B).astype(np.int32)
            lg = np.array(m.decode_step(kv, tok, pos))
            for b in range(B):
                np.testing.assert_array_equal(lg[b:b + 1],
                                              m.decode_step(ones[b], tok[b:b + 1], int(pos[b])))
            pos += 1
        for (k, v), *alone in zip(kv.caches, *[o.caches for o in ones]):
            for b, (k1, v1) in enumerate(alone):
                np.testing.assert_array_equal(k[b, :, :pos[b]], k1[0, :, :pos[b]])
                np.testing.assert_array_equal(v[b, :, :pos[b]], v1[0, :, :pos[b]])
        tok = np.zeros(B, np.int32)
        with pytest.raises(ValueError, match="pos"):
            kv.fused.step(tok, np.array([0, 1, cfg.block_size], np.int64), kv.logits)
        with pytest.raises(ValueError, match="pos"):
            kv.fused.step(tok, np.array([0, -1, 0], np.int64), kv.logits)
        with pytest.raises(ValueError, match="shape"):
            kv.fused.step(tok, np.zeros(2, np.int64), kv.logits)
        with pytest.raises(TypeError):
            kv.fused.step(tok, np.zeros(B, np.int32), kv.logits)
        with pytest.raises(TypeError):
            kv.fused.step(tok, 1.5, kv.logits)
        kv.fused = None
        with pytest.raises(ValueError, match="fused"):
            m.decode_step(kv, tok, np.zeros(B, np.int64))
    assert nat is not None
