"""The native backend's fused KV-cache decoder (_native.Decoder, csrc/cpu/decode.cpp): at batch 1
its step gives bitwise the logits and cache writes of the op-by-op step (same kernels, same
order), at batch 2 to 16 each row's are bitwise those of the row decoded alone (and close to the
op-by-op batch step's), rows may sit at their own positions, it is used for batch <= 16 and the
op path beyond, cached sampling still equals uncached, and bad
arrays or arguments raise clear exceptions (the decoder keeps raw pointers, so it must refuse
anything it would have to copy, and keep what it points to alive)."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from conftest import assert_close, native_ops_paths, set_native_ops_path

nat = pytest.importorskip("kernelgpt._native")
from kernelgpt import sample  # noqa: E402
from kernelgpt.backends import native_backend as nb  # noqa: E402
from kernelgpt.model import GPT, GPTConfig  # noqa: E402

SP = sample.SamplingParams

CFG = GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=3, n_embd=24)


def _perturbed(cfg, seed, noise_seed, scale):
    """A native model whose parameters are its init plus Gaussian noise (larger, less uniform
    values than an untrained model has)."""
    m = GPT(cfg, backend="native", seed=seed)
    noise = np.random.default_rng(noise_seed).standard_normal(m.params.size)
    m.params[:] += noise.astype(np.float32) * np.float32(scale)
    return m


@pytest.fixture(scope="module")
def model():
    return _perturbed(CFG, 4, 9, 0.3)


def _check_fused_equals_ops(model, rng, B):
    """Batch 1: the fused step bitwise equals the op-by-op step. Batch B > 1: each row of the
    fused step (logits and cache writes) bitwise equals that row decoded alone by the fused
    decoder (so by the op-by-op step at batch 1), and the whole batch is close to the op-by-op
    batch step (whose matrix products take the batch kernels)."""
    cfg = model.config
    prompt = rng.integers(0, cfg.vocab_size, (B, 3)).astype(np.int32)
    toks = rng.integers(0, cfg.vocab_size, (cfg.block_size, B)).astype(np.int32)
    fused, ops = model.kv_cache(B), model.kv_cache(B)
    assert fused.fused is not None
    ops.fused = None
    np.testing.assert_array_equal(model.prefill(fused, prompt), model.prefill(ops, prompt))
    alone = []  # each row alone, from the batch prefill's caches (a prefill's GEMMs depend on B)
    for b in range(B if B > 1 else 0):
        kv = model.kv_cache(1)
        kv.fused = None  # the op-by-op step at batch 1
        for (k1, v1), (k2, v2) in zip(fused.caches, kv.caches):
            k2[0], v2[0] = k1[b], v1[b]
        alone.append(kv)
    for pos in range(3, cfg.block_size):
        tok = toks[pos]
        fused.logits.fill(np.nan)
        a = np.array(model.decode_step(fused, tok, pos))
        b_ = np.array(model.decode_step(ops, tok, pos))
        if B == 1:
            np.testing.assert_array_equal(a, b_)
            for (k1, v1), (k2, v2) in zip(fused.caches, ops.caches):
                np.testing.assert_array_equal(k1[:, :, :pos + 1], k2[:, :, :pos + 1])
                np.testing.assert_array_equal(v1[:, :, :pos + 1], v2[:, :, :pos + 1])
            continue
        assert_close(a, b_, tol=1e-4)
        for b, kv in enumerate(alone):
            np.testing.assert_array_equal(a[b:b + 1], model.decode_step(kv, tok[b:b + 1], pos))
            for (k1, v1), (k2, v2) in zip(fused.caches, kv.caches):
                np.testing.assert_array_equal(k1[b, :, :pos + 1], k2[0, :, :pos + 1])
                np.testing.assert_array_equal(v1[b, :, :pos + 1], v2[0, :, :pos + 1])


@pytest.mark.parametrize("B", [1, 3, 4, 8, 16])
def test_fused_step_bitwise_equals_op_by_op(model, rng, B):
    _check_fused_equals_ops(model, rng, B)


# Wide enough (12 C^2 >= 2 x 65536 weights per layer) that the fused step runs on two threads:
# each thread's own heads (3 heads: 1 + 2; 5 heads: 2 + 3) and column ranges. C=120 has 4C a
# multiple of 16 (GELU by column range); C=110 does not (GELU over the whole row after a barrier).
@pytest.mark.parametrize("C,NH", [(120, 3), (110, 5)])
@pytest.mark.parametrize("B", [1, 2, 8])
def test_fused_step_two_threads_bitwise_equals_op_by_op(rng, C, NH, B):
    cfg = GPTConfig(vocab_size=53, block_size=9, n_layer=2, n_head=NH, n_embd=C)
    m = _perturbed(cfg, 5, 2, 0.1)
    before = nb.get_num_threads()
    nb.set_num_threads(2)
    try:
        _check_fused_equals_ops(m, rng, B)
    finally:
        nb.set_num_threads(before)


@pytest.mark.parametrize("B", [1, 5, 17])
def test_cached_equals_uncached_either_path(model, rng, B):
    assert (model.kv_cache(B).fused is None) == (B > 16)
    prompt = rng.integers(0, CFG.vocab_size, (B, 2)).astype(np.int32)
    n = 14  # runs past block_size: the cache is rebuilt as the window slides
    cached = list(sample._logit_steps(model, prompt, n, lambda lg: lg.argmax(1), True))
    plain = list(sample._logit_steps(model, prompt, n, lambda lg: lg.argmax(1), False))
    assert np.array_equal(np.stack([t for _, t in cached]), np.stack([t for _, t in plain]))
    assert_close(np.stack([lg for lg, _ in cached]), np.stack([lg for lg, _ in plain]), tol=1e-5)


def _parts(model, B=1):
    from kernelgpt.model import param_table
    p = model.param_views
    caches = [(np.zeros((B, CFG.n_head, CFG.block_size, CFG.n_embd // CFG.n_head), np.float32),
               np.zeros((B, CFG.n_head, CFG.block_size, CFG.n_embd // CFG.n_head), np.float32))
              for _ in range(CFG.n_layer)]
    names = [s.name for s in param_table(CFG).block]
    layers = [[(f"h.{l}.{n}", p[f"h.{l}.{n}"]) for n in names] for l in range(CFG.n_layer)]
    return dict(weights=[(n, p[n]) for n in ("wte", "wpe", "ln_f.w", "ln_f.b")], layers=layers,
                caches=caches, n_head=CFG.n_head, batch=B)


def _with(parts, **arrays):
    """parts with some of the top-level weights (wte, wpe, ln_f.w, ln_f.b) replaced."""
    w = [(n, arrays.get(n.replace(".", "_").replace("ln_f", "lnf"), a)) for n, a in
         parts["weights"]]
    return dict(parts, weights=w)


def test_decoder_refuses_bad_arrays(model):
    good = _parts(model)
    wte, wpe = good["weights"][0][1], good["weights"][1][1]
    cases = [
        (_with(good, wte=wte.astype(np.float64)), TypeError, "wte"),
        (_with(good, wte=np.asfortranarray(wte)), TypeError, "wte"),
        (_with(good, wpe=wpe[:, :5].copy()), ValueError, "wpe"),
        (_with(good, lnf_b=np.zeros(3, np.float32)), ValueError, "ln_f.b"),
        (dict(n_head=5), ValueError, "n_head"),
        (dict(batch=17), ValueError, "batch"),
        (dict(batch=0), ValueError, "batch"),
        (dict(caches=good["caches"][:1]), ValueError, "equal length"),
        (dict(layers=[good["layers"][0][:11], good["layers"][1]]), ValueError, "12 arrays"),
        (dict(layers=[good["layers"][0][:2] + [("h.0.attn.c_attn.w",
                                                good["layers"][0][2][1][:, :3].copy())]
                      + good["layers"][0][3:], good["layers"][1]]), ValueError, "c_attn.w"),
        (dict(caches=[(good["caches"][0][0][:, :, :5].copy(), good["caches"][0][1]),
                      good["caches"][1]]), ValueError, "k_cache"),
    ]
    ro = good["caches"][1][1].copy()
    ro.flags.writeable = False
    cases.append((dict(caches=[good["caches"][0], (good["caches"][1][0], ro)]), ValueError,
                  "writeable"))
    for change, exc, word in cases:
        with pytest.raises(exc, match=word):
            nat.Decoder(**dict(good, **change))


def test_decoder_step_bad_arguments_and_keeps_arrays_alive(model):
    parts = _parts(model, B=2)
    dec = nat.Decoder(**parts)
    del parts
    gc.collect()  # the decoder holds references: its pointers stay valid
    logits = np.full((2, CFG.vocab_size), np.nan, np.float32)
    dec.step(np.array([1, 2], np.int32), 0, logits)
    assert np.isfinite(logits).all()
    with pytest.raises(ValueError, match="tok"):
        dec.step(np.array([1], np.int32), 1, logits)
    with pytest.raises(ValueError, match="outside"):
        dec.step(np.array([1, CFG.vocab_size], np.int32), 1, logits)
    with pytest.raises(ValueError, match="pos"):
        dec.step(np.array([1, 2], np.int32), CFG.block_size, logits)
    with pytest.raises(ValueError, match="logits"):
        dec.step(np.array([1, 2], np.int32), 1, logits[:1].copy())
    with pytest.raises(TypeError):
        dec.step(np.array([1, 2], np.int64), 1, logits)
    with pytest.raises(TypeError):
        dec.step(np.array([1, 2], np.int32), 1, logits.astype(np.float64))


def test_backend_make_decoder_limits(model):
    caches = _parts(model, B=1)["caches"]
    assert nb.make_decoder(model, caches, 1) is not None
    assert nb.make_decoder(model, _parts(model, B=16)["caches"], 16) is not None
    assert nb.make_decoder(model, caches, 17) is None
    m64 = GPT(CFG, backend="numpy", dtype="float64")  # float64: not the fused decoder's
    assert nb.make_decoder(m64, caches, 1) is None


# ----------------------------------------------------------------------------- Decoder.sample
def _stream(model, prompt, n, **kw):
    """generate() as the general path computes it: generate_stream, token by token in Python."""
    steps = list(sample.generate_stream(model, prompt, n, **kw))
    new = np.stack(steps, axis=1) if steps else np.zeros((prompt.shape[0], 0), np.int32)
    return np.concatenate([prompt, new.astype(np.int32)], axis=1)


@pytest.mark.parametrize("opts", [dict(temperature=0.0), dict(temperature=1.0),
                                  dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                                  dict(temperature=1.0, top_k=9, top_p=0.6),
                                  dict(temperature=1.0, top_k=1)], ids=str)
@pytest.mark.parametrize("B", [1, 3])
def test_sampling_loop_in_cpp_equals_python_loop(model, rng, opts, B):
    """generate() runs the fused decoder's own loop (Decoder.sample): the same tokens as the
    token-by-token Python path, past block_size (the window slides and the cache is rebuilt),
    and the generator left in the same state (the unused draws of a chunk are given back)."""
    prompt = rng.integers(0, CFG.vocab_size, (B, 2)).astype(np.int32)
    n = 3 * CFG.block_size
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    fast = model.generate(prompt, n, seed=g1, **opts)
    slow = _stream(model, prompt, n, seed=g2, **opts)
    np.testing.assert_array_equal(fast, slow)
    assert g1.random() == g2.random()


@pytest.mark.parametrize("B", [1, 2, 4])
def test_sampling_loop_stop_tokens_equal_python_loop(model, B):
    """Stop ids: rows that stopped repeat their stop token, the loop ends once all have (possibly
    inside a C++ chunk, whose unused draws go back to the generator)."""
    for trial in range(12):
        r = np.random.default_rng(trial)
        prompt = r.integers(0, CFG.vocab_size, (B, 3)).astype(np.int32)
        stop = [int(s) for s in r.choice(CFG.vocab_size, 6, replace=False)]
        g1, g2 = np.random.default_rng(trial), np.random.default_rng(trial)
        fast = model.generate(prompt, 40, temperature=1.5, stop=stop, seed=g1)
        slow = _stream(model, prompt, 40, temperature=1.5, stop=stop, seed=g2)
        np.testing.assert_array_equal(fast, slow)
        assert g1.random() == g2.random()


def test_sampling_loop_nonfinite_logits_raise_like_python_loop():
    """NaN weights give NaN logits: the C++ loop stops before choosing and hands the step to
    pick_tokens, which raises a clear ValueError, as the Python loop does."""
    m = GPT(CFG, backend="native", seed=4)
    m.param_views["ln_f.w"][0] = np.nan
    prompt = np.array([[1, 2]], np.int32)
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="finite"):
            m.generate(prompt, 8, temperature=temperature, top_k=4, seed=3)
        with pytest.raises(ValueError, match="finite"):
            _stream(m, prompt, 8, temperature=temperature, top_k=4, seed=3)


def test_decoder_sample_bad_arguments(model):
    parts = _parts(model, B=2)
    dec = nat.Decoder(**parts)
    V = CFG.vocab_size
    logits = np.zeros((2, V), np.float32)
    ok = dict(out=np.zeros((3, 2), np.int32), tok=np.array([1, 2], np.int32), pos=0,
              u=np.full((3, 2), 0.5), params=SP(1.0, 0, 1.0),
              stop=np.zeros(0, np.int32), done=np.zeros(2, np.uint8), logits=logits)
    steps, bad = dec.sample(**ok)
    assert steps == 3 and not bad and ((ok["out"] >= 0) & (ok["out"] < V)).all()
    cases = [
        (dict(out=np.zeros((3, 1), np.int32)), ValueError, "out"),
        (dict(u=np.full((2, 2), 0.5)), ValueError, "u must have"),
        (dict(u=np.full((3, 2), 1.0)), ValueError, r"\[0, 1\)"),
        (dict(tok=np.array([1, V], np.int32)), ValueError, "outside"),
        (dict(pos=CFG.block_size - 2), ValueError, "positions"),
        (dict(params=SP(-1.0, 0, 1.0)), ValueError, "temperature"),
        (dict(params=SP(1.0, 0, 0.0)), ValueError, "top_p"),
        (dict(done=np.zeros(3, np.uint8)), ValueError, "done"),
        (dict(logits=logits[:1].copy()), ValueError, "logits"),
        (dict(u=np.full((3, 2), 0.5, np.float32)), TypeError, "incompatible"),
    ]
    for change, exc, word in cases:
        with pytest.raises(exc, match=word):
            dec.sample(**dict(ok, **change))


@pytest.mark.parametrize("V", [1, 7, 37, 130, 1000, 8192, 8195])
def test_pick_token_equals_pick_tokens(V):
    """_native.pick_token (Decoder.sample's per-row choice) picks what sample.pick_tokens picks,
    for every top_k route: the block-maximum bound (k up to V/8), the heap beyond it, and no
    filter; on logits with many ties at the k-th value (integers, quarters) and without."""
    rng = np.random.default_rng(V)
    ks = sorted({1, 2, 5, 50, 200, V // 8, V // 8 + 1, V - 1, V, V + 3} - {0})
    for trial in range(4):
        lg = rng.standard_normal(V).astype(np.float32) * 3
        if trial == 1:
            lg = np.round(lg)  # a handful of distinct values: ties everywhere
        elif trial == 2:
            lg = np.round(lg * 4) / 4
        for k in ks + [None]:
            for temperature, top_p in [(1.0, None), (0.7, 0.9), (2.0, 0.5), (0.0, None)]:
                seed = int(rng.integers(1 << 30))
                want = sample.pick_tokens(lg[None], SP(temperature, k, top_p),
                                          np.random.default_rng(seed))[0]
                u = np.random.default_rng(seed).random(1)[0]
                got = nat.pick_token(lg, SP(temperature, 0 if k is None else k,
                                            1.0 if top_p is None else top_p), u)
                assert got == want, (V, trial, k, temperature, top_p)


def test_pick_token_bad_arguments():
    lg = np.zeros(5, np.float32)
    assert nat.pick_token(lg, SP(1.0, 2, 1.0), 0.5) in range(5)
    assert nat.pick_token(lg, SP(1.0, None, None), 0.5) in range(5)
    cases = [
        (dict(logits=np.zeros(0, np.float32)), ValueError, "non-empty"),
        (dict(logits=np.zeros((1, 5), np.float32)), ValueError, "1-D"),
        (dict(logits=np.array([0, np.nan], np.float32)), ValueError, "finite"),
        (dict(logits=np.array([0, np.inf], np.float32)), ValueError, "finite"),
        (dict(logits=np.zeros(5)), TypeError, "incompatible"),
        (dict(params=SP(-1.0, 2, 1.0)), ValueError, "temperature"),
        (dict(params=SP(np.inf, 2, 1.0)), ValueError, "temperature"),
        (dict(params=SP(1.0, 2, 0.0)), ValueError, "top_p"),
        (dict(params=object()), AttributeError, "temperature"),
        (dict(u=1.0), ValueError, r"\[0, 1\)"),
        (dict(u=-0.1), ValueError, r"\[0, 1\)"),
    ]
    ok = dict(logits=lg, params=SP(1.0, 2, 1.0), u=0.5)
    for change, exc, word in cases:
        with pytest.raises(exc, match=word):
            nat.pick_token(**dict(ok, **change))


# ----------------------------------------------------------------------------- lm_head filter
@pytest.fixture(params=native_ops_paths())
def ops_path(request):
    """The filter's table and approximate logits on each code path this CPU has."""
    set_native_ops_path(request.param)
    yield request.param
    set_native_ops_path("avx512")


def _bf16(a):
    """float32 -> bfloat16 (round to nearest even) -> float32, as the filter's table."""
    b = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    h = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return h.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("V,C,scale", [(1, 1, 1.0), (97, 37, 0.02), (700, 384, 1.0),
                                       (50, 16, 1e-20), (64, 48, 1e15)])
def test_lm_filter_bound_holds_and_is_tight(ops_path, V, C, scale):
    """Every approximate logit (bfloat16 table) lies within the bound E of the exact fp32 logit
    that the lm_head kernel computes, for random rows x and for the worst case x along the
    largest rounding error d_j, where the error reaches most of E (the bound is not vacuous),
    down to weights so small that their products underflow."""
    r = np.random.default_rng(V * C)
    wte = (r.standard_normal((V, C)) * scale).astype(np.float32)
    d = wte.astype(np.float64) - _bf16(wte).astype(np.float64)
    j = int(np.argmax(np.linalg.norm(d, axis=1)))
    xs = [r.standard_normal(C).astype(np.float32), r.standard_normal(C).astype(np.float32) * 30]
    worst = None
    if np.linalg.norm(d[j]) > 0:
        worst = (d[j] / np.linalg.norm(d[j]) * 20).astype(np.float32)
        xs.append(worst)
    for x in xs:
        approx, E = nat._lm_filter_probe(wte, x)
        assert E >= 0
        exact = np.full((1, V), np.nan, np.float32)
        nat.matmul_forward(exact, x[None], wte, None)
        err = np.abs(exact[0].astype(np.float64) - approx.astype(np.float64))
        assert (err <= E).all(), (err.max(), E)
        if x is worst and scale >= 1e-3:  # (at 1e-20 the underflow allowance dominates E)
            assert err[j] >= 0.5 * E, (err[j], E)


def test_lm_filter_refuses_what_it_cannot_bound():
    r = np.random.default_rng(0)
    wte, x = r.standard_normal((40, 24)).astype(np.float32), r.standard_normal(24).astype(np.float32)
    assert nat._lm_filter_probe(wte, x)[1] >= 0
    bad_w = wte.copy()
    bad_w[3, 5] = np.nan
    assert nat._lm_filter_probe(bad_w, x)[1] < 0          # a table entry not finite
    bad_w[3, 5] = 3e38                                     # finite, but its bfloat16 rounding is inf
    assert nat._lm_filter_probe(bad_w, x)[1] < 0
    assert nat._lm_filter_probe(wte, np.full(24, np.inf, np.float32))[1] < 0
    assert nat._lm_filter_probe(wte, x * np.float32(1e36))[1] < 0  # a logit could overflow
    with pytest.raises(ValueError, match="x must have shape"):
        nat._lm_filter_probe(wte, x[:5].copy())


FCFG = GPTConfig(vocab_size=701, block_size=20, n_layer=2, n_head=2, n_embd=40)


@pytest.fixture(scope="module")
def fmodel():
    m = _perturbed(FCFG, 5, 11, 0.2)
    m.param_views["ln_f.w"][:] *= 4  # a wide spread of logits, as a trained model has
    return m


def _sample_both(m, B, temperature, top_k, top_p, stop=(), T0=3):
    """Decoder.sample from the same caches and draws with and without lm_filter."""
    cfg = m.config
    prompt = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, T0)).astype(np.int32)
    n = cfg.block_size - T0
    u = np.random.default_rng(7).random((n, B))
    got = []
    for filt in (False, True):
        dec = m.kv_cache(B)
        m.prefill(dec, prompt)
        out, tok, done = np.full((n, B), -1, np.int32), prompt[:, -1].copy(), np.zeros(B, np.uint8)
        steps, bad = dec.fused.sample(out, tok, T0, u, SP(temperature, top_k, top_p),
                                      np.asarray(stop, np.int32), done, dec.logits, lm_filter=filt)
        got.append((steps, bad, out, tok, done, dec.logits.copy()))
    (s0, b0, o0, t0, d0, l0), (s1, b1, o1, t1, d1, l1) = got
    assert (s0, b0) == (s1, b1)
    np.testing.assert_array_equal(o0, o1)
    np.testing.assert_array_equal(t0, t1)
    np.testing.assert_array_equal(d0, d1)
    return s0, b0, l0, l1


@pytest.mark.parametrize("B", [1, 2, 4])
@pytest.mark.parametrize("opts", [(0.0, 0, 1.0), (1.0, 1, 1.0), (0.7, 5, 1.0), (1.0, 50, 0.9),
                                  (1.3, 88, 1.0), (1.0, 89, 0.95), (2.0, 300, 1.0),
                                  (1.0, 700, 1.0)], ids=str)
def test_lm_filter_sampling_equals_exact(ops_path, fmodel, B, opts):
    """With lm_filter the loop picks exactly the tokens of the exact lm_head, for greedy and every
    top-k route (block bound, heap, k = V - 1), with top_p, on 1-4 rows; and for small k it did
    run filtered: the logits left behind are approximations away from the candidates (past V/4
    candidates it computes every exact logit in one pass)."""
    steps, bad, exact, filtered = _sample_both(fmodel, B, *opts)
    assert steps == FCFG.block_size - 3 and not bad
    if opts[1] < 100:
        assert not np.array_equal(exact, filtered)


def test_lm_filter_ignored_without_top_k(fmodel):
    """Plain sampling over every token needs every exact logit: the filter is not used."""
    _, _, exact, filtered = _sample_both(fmodel, 2, 1.0, 0, 0.9)
    np.testing.assert_array_equal(exact, filtered)


def test_lm_filter_ties_and_stops():
    """Rows of wte repeated make exactly tied logits, at the top (greedy takes the first) and
    across the k-th value (all kept); stop tokens end rows as in the exact loop."""
    m = _perturbed(FCFG, 6, 3, 0.2)
    wte = m.param_views["wte"]
    wte[100:140] = wte[7] * 3
    wte[300:320] = wte[9]
    for opts in [(0.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 30, 1.0), (0.9, 45, 0.8)]:
        _sample_both(m, 2, *opts)
    steps, _, _, _ = _sample_both(m, 3, 1.0, 20, 1.0, stop=(7, 100, 101, 102, 9))
    assert steps >= 1
    # ln_f's weight 0 and bias along wte[7]: every step's logits are b . wte[j], largest (and
    # tied) on rows 100-139, so greedy must take 100 and top-k below 40 keeps all 40.
    m.param_views["ln_f.w"][:] = 0
    m.param_views["ln_f.b"][:] = wte[7] * 5
    steps, _, exact, filtered = _sample_both(m, 1, 0.0, 0, 1.0)
    lg = exact[0]
    assert lg.argmax() == 100 and (lg[100:140] == lg.max()).all()
    np.testing.assert_array_equal(filtered[0, 100:140], lg[100:140])
    for k in (1, 30, 39, 40, 45):
        _sample_both(m, 1, 1.0, k, 1.0)


def test_lm_filter_nonfinite_and_overflow_fall_back():
    """Where the bound cannot be trusted (a NaN in the table, a non-finite or enormous layernorm
    output), the step takes the exact lm_head: a non-finite logit stops the loop as before, and
    logits near overflow are all computed exactly."""
    for poison in ("wte", "ln_f_inf", "ln_f_huge"):
        m = _perturbed(FCFG, 4, 1, 0.2)
        if poison == "wte":
            m.param_views["wte"][50, 3] = np.nan
        elif poison == "ln_f_inf":
            m.param_views["ln_f.w"][0] = np.inf
        else:
            m.param_views["ln_f.w"][:] = 1e37
            m.param_views["ln_f.b"][:] = 0
        steps, bad, exact, filtered = _sample_both(m, 1, 1.0, 10, 1.0)
        if poison == "ln_f_huge":
            np.testing.assert_array_equal(exact, filtered)
        else:
            assert steps == 0 and bad


# ----------------------------------------------------------------------------- issue 18's options
@pytest.mark.parametrize("V", [7, 37, 130, 1000, 8195])
def test_pick_token_equals_pick_tokens_new_options(V):
    """min_p and repetition_penalty in every combination with temperature (greedy too), top_k
    (each route) and top_p: _native.pick_token picks what sample.pick_tokens picks, on logits
    with and without ties; seen ids are given as a list with repeats (each counted once)."""
    rng = np.random.default_rng(V + 1)
    ks = sorted({1, 3, V // 8 + 1, V - 1} - {0}) + [None]
    for trial in range(2):
        lg = rng.standard_normal(V).astype(np.float32) * 3
        if trial == 1:
            lg = np.round(lg * 2) / 2  # ties everywhere, also after the penalty
        ids = rng.integers(0, V, max(1, V // 3))
        mask = np.zeros((1, V), bool)
        mask[0, ids] = True
        for k in ks:
            for temperature, top_p in [(1.0, None), (0.7, 0.9), (0.0, None)]:
                for min_p in (None, 0.05, 0.5, 1.0):
                    for rp in (None, 1.3, 0.6):
                        p = SP(temperature, k, top_p, min_p=min_p, repetition_penalty=rp)
                        seed = int(rng.integers(1 << 30))
                        want = sample.pick_tokens(lg[None], p, np.random.default_rng(seed),
                                                  mask)[0]
                        u = np.random.default_rng(seed).random(1)[0]
                        got = nat.pick_token(lg, p, u, seen=ids)
                        assert got == want, (V, trial, k, temperature, top_p, min_p, rp)


def test_pick_token_new_options_bad_values():
    lg = np.zeros(5, np.float32)
    for params, word in [(SP(1.0, min_p=1.5), "min_p"), (SP(1.0, min_p=-0.1), "min_p"),
                         (SP(1.0, repetition_penalty=0.0), "repetition_penalty"),
                         (SP(1.0, repetition_penalty=float("inf")), "repetition_penalty")]:
        with pytest.raises(ValueError, match=word):
            nat.pick_token(lg, params, 0.5)
    with pytest.raises(ValueError, match="seen holds id"):
        nat.pick_token(lg, SP(1.0, repetition_penalty=1.2), 0.5, seen=[1, 5])
    with pytest.raises(ValueError, match="seen"):   # as sample.pick_tokens
        nat.pick_token(lg, SP(1.0, repetition_penalty=1.2), 0.5)


@pytest.mark.parametrize("opts", [
    dict(temperature=0.0, repetition_penalty=1.5), dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.7, top_k=5, min_p=0.3), dict(temperature=1.3, top_p=0.8, min_p=0.05),
    dict(temperature=1.0, repetition_penalty=1.4),
    dict(temperature=0.9, top_k=9, top_p=0.9, min_p=0.02, repetition_penalty=0.7),
    dict(temperature=1.0, top_k=1, repetition_penalty=2.0)], ids=str)
@pytest.mark.parametrize("B", [1, 3])
def test_sampling_loop_in_cpp_equals_python_loop_new_options(model, rng, opts, B):
    """Decoder.sample (generate's fused loop) with min_p / repetition_penalty gives the tokens of
    the token-by-token Python path, past block_size, with eos ids, and leaves the generator in
    the same state."""
    prompt = rng.integers(0, CFG.vocab_size, (B, 3)).astype(np.int32)
    n = 3 * CFG.block_size
    for eos in (None, [int(s) for s in rng.choice(CFG.vocab_size, 3, replace=False)]):
        g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
        fast = model.generate(prompt, n, seed=g1, eos_token_id=eos, **opts)
        slow = _stream(model, prompt, n, seed=g2, eos_token_id=eos, **opts)
        np.testing.assert_array_equal(fast, slow)
        assert g1.random() == g2.random()


def test_num_return_sequences_fused_equals_python_loop(model):
    g1, g2 = np.random.default_rng(2), np.random.default_rng(2)
    fast = model.generate([1, 2, 3], 20, seed=g1, num_return_sequences=4, temperature=1.2,
                          repetition_penalty=1.3)
    slow = _stream(model, np.array([[1, 2, 3]] * 4, np.int32), 20, seed=g2, temperature=1.2,
                   repetition_penalty=1.3)
    np.testing.assert_array_equal(fast, slow)


def test_decoder_sample_seen_argument(model):
    dec = nat.Decoder(**_parts(model, B=2))
    V = CFG.vocab_size
    ok = dict(out=np.zeros((3, 2), np.int32), tok=np.array([1, 2], np.int32), pos=0,
              u=np.full((3, 2), 0.5), params=SP(1.0, repetition_penalty=1.5),
              stop=np.zeros(0, np.int32), done=np.zeros(2, np.uint8),
              logits=np.zeros((2, V), np.float32))
    seen = np.zeros((2, V), np.uint8)
    seen[:, [1, 2]] = 1
    steps, _ = dec.sample(**ok, seen=seen)
    assert steps == 3 and all(seen[b, ok["out"][:, b]].all() for b in range(2))  # marked
    with pytest.raises(ValueError, match="seen"):
        dec.sample(**ok)
    with pytest.raises(ValueError, match="seen"):
        dec.sample(**ok, seen=np.zeros((1, V), np.uint8))
    with pytest.raises(TypeError, match="seen"):
        dec.sample(**ok, seen=np.zeros((2, V), np.int32))


def _sample_both_seen(m, B, sp, T0=3):
    """Decoder.sample with and without lm_filter from the same caches, draws and seen ids:
    (tokens, exact-run logits, filter-run logits); the tokens must agree."""
    cfg = m.config
    prompt = np.random.default_rng(B).integers(0, cfg.vocab_size, (B, T0)).astype(np.int32)
    n = cfg.block_size - T0
    u = np.random.default_rng(7).random((n, B))
    got = []
    for filt in (False, True):
        dec = m.kv_cache(B)
        m.prefill(dec, prompt)
        seen = np.zeros((B, cfg.vocab_size), np.uint8)
        for b in range(B):
            seen[b, prompt[b]] = 1
        out, tok, done = np.full((n, B), -1, np.int32), prompt[:, -1].copy(), np.zeros(B, np.uint8)
        steps, bad = dec.fused.sample(out, tok, T0, u, sp, np.zeros(0, np.int32), done,
                                      dec.logits, lm_filter=filt, seen=seen)
        assert steps == n and not bad
        got.append((out, dec.logits.copy()))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    return got[0][0], got[0][1], got[1][1]


@pytest.mark.parametrize("B", [1, 2])
def test_lm_filter_with_min_p_is_used_and_exact(fmodel, B):
    """min_p reads only the top-k candidates' exact probabilities: the filter stays on (the
    logits left behind are approximations away from the candidates) and the tokens equal the
    exact path's."""
    for sp in (SP(1.0, 20, min_p=0.1), SP(0.8, 50, 0.9, min_p=0.3), SP(0.0, min_p=0.5)):
        _, exact, filtered = _sample_both_seen(fmodel, B, sp)
        assert not np.array_equal(exact, filtered)


@pytest.mark.parametrize("B", [1, 2])
def test_lm_filter_steps_aside_with_repetition_penalty(fmodel, B):
    """The penalty changes logits after the lm_head, outside the filter's bound: with it, greedy
    and top-k run on exact logits (every logit exact, as without the filter), same tokens; the
    same sampler without the penalty does use the filter."""
    for sp in (SP(0.0, repetition_penalty=1.5), SP(1.0, 20, repetition_penalty=1.3),
               SP(0.9, 5, min_p=0.1, repetition_penalty=0.8)):
        _, exact, filtered = _sample_both_seen(fmodel, B, sp)
        np.testing.assert_array_equal(exact, filtered)
        plain = SP(sp.temperature, sp.top_k, min_p=sp.min_p)
        _, exact, filtered = _sample_both_seen(fmodel, B, plain)
        assert not np.array_equal(exact, filtered)


@pytest.mark.parametrize("kernel", ["avx512", "avx2_fma", "portable"])
def test_fp32_batch_rows_equal_rows_alone_on_every_gemm_path(kernel):
    """The fused fp32 decoder's batched products (up to 8 rows per weight load with AVX-512, row
    by row otherwise) give each row bitwise its value alone, whichever matrix-vector kernel is
    active; K = 110 exercises the 8-wide and scalar tails, 12 rows two row groups."""
    cfg = GPTConfig(vocab_size=53, block_size=6, n_layer=1, n_head=5, n_embd=110)
    m = _perturbed(cfg, 5, 3, 0.1)
    try:
        try:
            nat._set_gemm_kernel(kernel)
        except (ValueError, RuntimeError):
            pytest.skip(f"no {kernel} kernel on this CPU")
        toks = np.random.default_rng(4).integers(0, cfg.vocab_size, (cfg.block_size, 12))
        kv12 = m.kv_cache(12)
        alone = [m.kv_cache(1) for _ in range(12)]
        for pos in range(cfg.block_size):
            t = toks[pos].astype(np.int32)
            lg = np.array(m.decode_step(kv12, t, pos))
            for b in (0, 7, 8, 11):
                np.testing.assert_array_equal(lg[b:b + 1], m.decode_step(alone[b], t[b:b + 1], pos))
    finally:
        nat._set_gemm_kernel("auto")


def test_decoder_steps_aside_to_one_thread_when_its_threads_share_a_core():
    """Two decoder threads pinned to one core (what a machine shared with other processes does
    to them): the step's threads sleep at its barriers waiting for each other, and the decoder
    then runs the next steps on one thread (same values) instead of paying that at every
    barrier. Run in a subprocess: the pinning must precede OpenMP's start."""
    import os
    import subprocess
    import sys
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity here")
    code = r'''
import os, sys, numpy as np
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
from kernelgpt import _native as nat
from kernelgpt.model import GPT, GPTConfig
nat.set_num_threads(2)
m = GPT(GPTConfig(vocab_size=53, block_size=40, n_layer=2, n_head=3, n_embd=120), backend="native")
kv = m.kv_cache(1)
ref = m.kv_cache(1); ref.fused = None
seen = 0
for pos in range(30):
    t = np.array([pos % 53], np.int32)
    a = np.array(m.decode_step(kv, t, pos))
    np.testing.assert_array_equal(a, m.decode_step(ref, t, pos))
    seen = max(seen, kv.fused.single_thread_steps)
print("MAX", seen)
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split("MAX")[1]) > 0, r.stdout


# The decoding attention's fast AVX2 kernel (head sizes a multiple of 8: eight keys' scores at a
# time, the output in registers) must give the reference kernel's bits: each score's lane sums
# and lane tree, the max, the softmax and the weighted sum of values in the same order.
@pytest.mark.parametrize("ops_path", [p for p in native_ops_paths() if p != "portable"])
@pytest.mark.parametrize("HS", [8, 24, 64, 72, 136])
def test_decode_attention_fast_kernel_bitwise_equals_reference(ops_path, HS):
    from kernelgpt import _native as nat
    rng = np.random.default_rng(HS)
    B, NH, NKV, maxT = 2, 4, 2, 40
    q = (rng.standard_normal((B, NH * HS)) * 2).astype(np.float32)
    k = rng.standard_normal((B, NKV, maxT, HS)).astype(np.float32)
    v = rng.standard_normal((B, NKV, maxT, HS)).astype(np.float32)
    k[0, 0, 5], k[0, 0, 6] = 0.0, -0.0  # scores +0 and -0 (a tie for the max of a zero row)
    q[1, :HS] = 0.0  # a head whose every score is 0
    q[1, HS:2 * HS] *= 60  # scores far apart: exps that flush to 0
    set_native_ops_path(ops_path)
    try:
        for n in (1, 7, 8, 9, 17, 33, 40):
            outs = []
            for ref in (True, False):
                nat._set_decode_attention_reference(ref)
                o = np.full((B, NH * HS), np.nan, np.float32)
                nat.attention_decode(o, q, k, v, n)
                outs.append(o)
            np.testing.assert_array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32),
                                          err_msg=f"n_valid={n}")
    finally:
        nat._set_decode_attention_reference(False)
        set_native_ops_path("avx512")


def test_fused_step_fast_attention_bitwise_equals_reference(model, rng):
    """The fused decoder's heads (attention_decode_head) take the same fast kernel."""
    from kernelgpt import _native as nat
    cfg = GPTConfig(vocab_size=41, block_size=24, n_layer=2, n_head=2, n_embd=32)  # HS 16
    m = _perturbed(cfg, 3, 1, 0.3)
    prompt = rng.integers(0, 41, (4, 5)).astype(np.int32)
    toks = rng.integers(0, 41, (24, 4)).astype(np.int32)
    logits = []
    try:
        for ref in (True, False):
            nat._set_decode_attention_reference(ref)
            kv = m.kv_cache(4)
            assert kv.fused is not None
            m.prefill(kv, prompt)
            logits.append([np.array(m.decode_step(kv, toks[p], p)) for p in range(5, 24)])
    finally:
        nat._set_decode_attention_reference(False)
    for a, b in zip(*logits):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
