"""Issue 18's sampling options, on the NumPy rule (sample.pick_tokens, the specification) and
through generate/generate_stream: min_p, repetition_penalty, eos_token_id (an alias of stop),
num_return_sequences, ragged batches (each row gives exactly its tokens alone), and the checks
of SamplingParams.checked. The native twin's equality with this rule is in
tests/test_native_decode.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernelgpt import sample
from kernelgpt.model import GPT, GPTConfig

SP = sample.SamplingParams
CFG = GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=16)


def _model(backend):
    m = GPT(CFG, backend=backend, seed=3)
    r = np.random.default_rng(5)
    m.params[:] += r.standard_normal(m.params.size).astype(np.float32) * 0.3
    return m


@pytest.fixture(scope="module")
def model():
    return _model("numpy")


def _backends():
    out = ["numpy"]
    try:
        import kernelgpt._native  # noqa: F401
        out.append("native")
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module", params=_backends())
def any_model(request):
    return _model(request.param)


class _Recorder:
    """A generator's random(B), keeping each step's draws."""
    def __init__(self, seed):
        self.g, self.draws = np.random.default_rng(seed), []

    def random(self, n):
        u = self.g.random(n)
        self.draws.append(np.array(u, ndmin=1))
        return u


class _Replay:
    """Hands out given draws, one per step (a row alone fed the draws it had in a batch)."""
    def __init__(self, values):
        self.values, self.i = list(values), 0

    def random(self, n):
        assert n == 1
        self.i += 1
        return np.array([self.values[self.i - 1]])


# ----------------------------------------------------------------------------- the rule: min_p
def test_min_p_keeps_tokens_at_least_min_p_times_the_top():
    probs = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = np.log(probs)[None]
    rng = np.random.default_rng(0)
    for min_p, want in [(0.0, {0, 1, 2, 3, 4}), (0.2, {0, 1, 2, 3}), (0.45, {0, 1, 2}),
                        (0.55, {0, 1}), (1.0, {0})]:
        got = {int(sample.pick_tokens(logits, SP(1.0, min_p=min_p), rng)[0]) for _ in range(400)}
        assert got == want, min_p
    # the kept tokens are drawn in proportion to their probabilities
    draws = np.array([sample.pick_tokens(logits, SP(1.0, min_p=0.45), rng)[0]
                      for _ in range(6000)])
    freq = np.bincount(draws, minlength=5) / draws.size
    assert np.allclose(freq[:3], probs[:3] / probs[:3].sum(), atol=0.03)
    # min_p applies after temperature (it reshapes the probabilities) and after top_k
    hot = {int(sample.pick_tokens(logits, SP(3.0, min_p=0.55), rng)[0]) for _ in range(400)}
    assert hot == {0, 1, 2, 3}   # at T=3, (0.1/0.4)^(1/3) = 0.63 >= 0.55 > (0.05/0.4)^(1/3)
    assert {int(sample.pick_tokens(logits, SP(1.0, 2, min_p=0.45), rng)[0])
            for _ in range(300)} == {0, 1}


def test_min_p_ties_at_the_top_and_zero_equals_none():
    logits = np.array([[1.0, 3.0, 3.0, 2.0]])
    rng = np.random.default_rng(1)
    assert {int(sample.pick_tokens(logits, SP(1.0, min_p=1.0), rng)[0])
            for _ in range(200)} == {1, 2}
    r = np.random.default_rng(2).standard_normal((3, 50))
    a = sample.pick_tokens(r, SP(0.8, None, 0.9, min_p=0.0), np.random.default_rng(4))
    b = sample.pick_tokens(r, SP(0.8, None, 0.9), np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- repetition penalty
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    # seen ids 0 (logit 3 -> 3/1.5 = 2) and 2 (logit -1 -> -1.5): greedy moves from 0 to 1
    logits = np.array([[3.0, 2.5, -1.0, -1.2]])
    seen = np.array([[True, False, True, False]])
    rng = np.random.default_rng(0)
    assert sample.pick_tokens(logits, SP(0.0, repetition_penalty=1.5), rng, seen)[0] == 1
    assert sample.pick_tokens(logits, SP(0.0), rng, seen)[0] == 0
    # among the negatives: -1 * 1.5 < -1.2, so with ids 0, 1 out of the way id 3 wins
    neg = np.array([[-5.0, -5.0, -1.0, -1.2]])
    assert sample.pick_tokens(neg, SP(0.0, repetition_penalty=1.5), rng, seen)[0] == 3
    assert sample.pick_tokens(neg, SP(0.0), rng, seen)[0] == 2
    # a penalty < 1 favours the seen ids; the sampled distribution is softmax of the new logits
    lg = np.log(np.array([[0.5, 0.5]]))      # both negative: id 0 seen, * 2 -> p = 1/3, 2/3
    draws = np.array([sample.pick_tokens(lg, SP(1.0, repetition_penalty=2.0), rng,
                                         [[True, False]])[0] for _ in range(6000)])
    assert abs(draws.mean() - 2 / 3) < 0.03
    with pytest.raises(ValueError, match="seen"):
        sample.pick_tokens(logits, SP(1.0, repetition_penalty=1.5), rng)


def _penalised_greedy_reference(model, prompt, n, penalty):
    """Greedy decoding written out: the full forward each step, the penalty on each distinct id
    of the sequence so far (prompt and generated), argmax."""
    seq = list(prompt)
    for _ in range(n):
        window = np.array(seq[-CFG.block_size:], np.int32)[None]
        lg = np.array(model.next_logits(window), np.float64)[0]
        for j in set(seq):
            lg[j] = lg[j] / penalty if lg[j] > 0 else lg[j] * penalty
        seq.append(int(lg.argmax()))
    return np.array(seq, np.int32)


def test_repetition_penalty_over_prompt_and_generated_ids_each_once(any_model):
    prompt = [4, 4, 4, 9, 4]          # a repeated id is penalised once, not per occurrence
    n = 18                            # past block_size: ids that left the window still count
    for penalty in (1.8, 0.6):
        got = any_model.generate(prompt, n, temperature=0, repetition_penalty=penalty)[0]
        np.testing.assert_array_equal(got, _penalised_greedy_reference(any_model, prompt, n,
                                                                       penalty))
    plain = any_model.generate(prompt, n, temperature=0)
    assert not np.array_equal(plain, any_model.generate(prompt, n, temperature=0,
                                                        repetition_penalty=1.8))
    np.testing.assert_array_equal(plain, any_model.generate(prompt, n, temperature=0,
                                                            repetition_penalty=1.0))


def test_repetition_penalty_cached_equals_uncached_and_stream(any_model):
    kw = dict(temperature=0.9, top_k=8, repetition_penalty=1.4, min_p=0.05)
    a = any_model.generate([[1, 2, 3], [3, 3, 5]], 20, seed=3, **kw)
    b = any_model.generate([[1, 2, 3], [3, 3, 5]], 20, seed=3, use_cache=False, **kw)
    np.testing.assert_array_equal(a, b)
    steps = list(any_model.generate_stream([[1, 2, 3], [3, 3, 5]], 20, seed=3, **kw))
    np.testing.assert_array_equal(a[:, 3:], np.stack(steps, 1))


# ----------------------------------------------------------------------------- eos_token_id
def test_eos_token_id_is_an_alias_of_stop(model):
    free = model.generate([1, 2], 10, temperature=0)[0]
    eos = int(free[5])
    np.testing.assert_array_equal(model.generate([1, 2], 10, temperature=0, eos_token_id=eos),
                                  model.generate([1, 2], 10, temperature=0, stop=eos))
    assert model.generate([1, 2], 10, temperature=0, eos_token_id=[eos])[0, -1] == eos
    # with both, a row ends on either
    both = model.generate([1, 2], 10, temperature=0, stop=36, eos_token_id=eos)
    np.testing.assert_array_equal(both, model.generate([1, 2], 10, temperature=0,
                                                       stop=[36, eos]))
    assert SP(stop=3, eos_token_id=[5, 3]).checked(10).stop == (3, 5)
    assert SP(eos_token_id=4).checked(10).stop == (4,)


# ----------------------------------------------------------------------------- num_return_sequences
def test_num_return_sequences_samples_each_row_with_its_own_draws(any_model):
    kw = dict(temperature=1.5, top_p=0.95)
    got = any_model.generate([3, 4, 5], 10, seed=8, num_return_sequences=3, **kw)
    assert got.shape == (3, 13) and got.dtype == np.int32
    assert (got[:, :3] == [3, 4, 5]).all()
    assert len({tuple(r) for r in got[:, 3:]}) > 1           # the rows differ
    # the same as three copies of the prompt in one batch (one rng.random(3) per step)
    np.testing.assert_array_equal(got, any_model.generate([[3, 4, 5]] * 3, 10, seed=8, **kw))
    np.testing.assert_array_equal(got, any_model.generate([[3, 4, 5]], 10, seed=8,
                                                          num_return_sequences=3, **kw))
    steps = list(any_model.generate_stream([3, 4, 5], 10, seed=8, num_return_sequences=3, **kw))
    assert all(s.shape == (3,) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), got[:, 3:])
    with pytest.raises(ValueError, match="num_return_sequences"):
        any_model.generate([[1, 2], [3, 4]], 3, num_return_sequences=2)


# ----------------------------------------------------------------------------- ragged batches
ROWS = [[5, 1, 7], [2], [9, 9, 3, 4, 8, 1, 2], [6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4]]


def test_ragged_greedy_rows_equal_rows_alone(any_model):
    n = 15   # every row's window slides (at its own step)
    got = any_model.generate(ROWS, n, temperature=0)
    assert isinstance(got, list) and len(got) == len(ROWS)
    for row, g in zip(ROWS, got):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, any_model.generate(row, n, temperature=0)[0])
    got = any_model.generate(ROWS, n, temperature=0, repetition_penalty=1.3, use_cache=False)
    for row, g in zip(ROWS, got):
        np.testing.assert_array_equal(g, any_model.generate(row, n, temperature=0,
                                                            repetition_penalty=1.3)[0])


@pytest.mark.parametrize("opts", [dict(temperature=1.0), dict(temperature=0.8, top_k=6),
                                  dict(temperature=1.2, top_p=0.9, min_p=0.05),
                                  dict(temperature=1.0, repetition_penalty=1.5, top_k=10)],
                         ids=str)
def test_ragged_seeded_rows_equal_rows_alone_with_their_draws(any_model, opts):
    """The documented draws: each step one rng.random(B), row b takes the b-th. Row b alone fed
    exactly those numbers gives exactly its tokens in the batch, stop ids included (a row of the
    batch ends at its own stop, as alone)."""
    n = 14
    for stop in (None, [int(s) for s in np.random.default_rng(3).choice(37, 5, replace=False)]):
        sp = SP(stop=stop, max_new_tokens=n, **opts).checked(CFG.vocab_size)
        got = any_model.generate(ROWS, n, seed=21, stop=stop, **opts)
        rec = _Recorder(21)
        steps = list(sample._stream(any_model, [np.array(r, np.int32) for r in ROWS], False, sp,
                                    rec, True))
        u = np.stack(rec.draws)                          # (steps, B)
        assert len(steps) == u.shape[0]
        for b, row in enumerate(ROWS):
            alone = list(sample._stream(any_model, np.array([row], np.int32), True, sp,
                                        _Replay(u[:, b]), True))
            np.testing.assert_array_equal(got[b], np.array(row + alone, np.int32))
        if stop is not None:  # some row stopped before n tokens, so the trimming was exercised
            assert min(len(g) - len(r) for g, r in zip(got, ROWS)) < n
    # one generator gives the same tokens whichever path runs them
    g = any_model.generate(ROWS, n, seed=21, use_cache=False, **opts)
    for a, b in zip(any_model.generate(ROWS, n, seed=21, **opts), g):
        np.testing.assert_array_equal(a, b)


def test_ragged_stream_and_equal_length_lists(model):
    steps = list(model.generate_stream(ROWS, 5, temperature=0))
    assert len(steps) == 5 and all(s.shape == (4,) and s.dtype == np.int32 for s in steps)
    got = model.generate(ROWS, 5, temperature=0)
    np.testing.assert_array_equal(np.stack(steps, 1), np.stack([g[-5:] for g in got]))
    # prompts of one length stay a 2-D batch, returned as one array (as before)
    same = model.generate([[1, 2], [3, 4]], 4, temperature=0)
    assert isinstance(same, np.ndarray) and same.shape == (2, 6)


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize("kw,field", [
    (dict(min_p=-0.1), "min_p"), (dict(min_p=1.5), "min_p"), (dict(min_p=float("nan")), "min_p"),
    (dict(min_p="x"), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(repetition_penalty=[1.0]), "repetition_penalty"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(num_return_sequences=2.0), "num_return_sequences"),
    (dict(num_return_sequences=True), "num_return_sequences"),
    (dict(eos_token_id=37), "eos_token_id"), (dict(eos_token_id=[]), "eos_token_id"),
    (dict(eos_token_id=-1), "eos_token_id"),
])
def test_bad_values_raise_naming_the_field(model, kw, field):
    with pytest.raises(ValueError, match=field):
        SP(**kw).checked(CFG.vocab_size)
    with pytest.raises(ValueError, match=field):
        model.generate([1, 2], 3, **kw)
    with pytest.raises(ValueError, match=field):   # at the call, not at the first next()
        model.generate_stream([1, 2], 3, **kw)


def test_bad_ragged_prompts_name_the_row(model):
    with pytest.raises(ValueError, match=r"prompt_ids\[1\] is empty"):
        model.generate([[1, 2], [], [3]], 3)
    with pytest.raises(ValueError, match=r"prompt_ids\[2\].*outside"):
        model.generate([[1, 2], [3], [4, 37]], 3)
    with pytest.raises(ValueError, match=r"prompt_ids\[0\].*block_size"):
        model.generate([list(range(13)), [3]], 3)
    with pytest.raises(ValueError, match=r"prompt_ids\[1\].*integer"):
        model.generate([[1, 2], [1.5]], 3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate([[1, 2], [3]], 3, num_return_sequences=2)


# ----------------------------------------------------------------------------- the CLI
def test_cli_sample_flags_parse_and_refuse_bad_values(capsys):
    from kernelgpt.cli import build_parser
    p = build_parser()
    a = p.parse_args(["sample", "--run", "r", "--min-p", "0.1", "--repetition-penalty", "1.3",
                      "--num-return-sequences", "3"])
    assert (a.min_p, a.repetition_penalty, a.num_return_sequences) == (0.1, 1.3, 3)
    a = p.parse_args(["sample", "--run", "r"])
    assert (a.min_p, a.repetition_penalty, a.num_return_sequences) == (None, None, 1)
    for bad in (["--min-p", "1.5"], ["--repetition-penalty", "0"],
                ["--num-return-sequences", "0"]):
        with pytest.raises(SystemExit):
            p.parse_args(["sample", "--run", "r"] + bad)
        assert bad[0] in capsys.readouterr().err


def test_cli_sample_stops_at_the_tokenizers_end_of_text(capsys):
    """`sample` ends at the tokenizer's <|endoftext|> (not printed), and prints
    --num-return-sequences continuations."""
    from kernelgpt import cli
    from kernelgpt.tokenizer import Tokenizer
    tok = Tokenizer([], special_tokens=["<|endoftext|>"])
    cfg = GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)
    m = GPT(cfg, backend="numpy", seed=1)
    m.params[:] += np.random.default_rng(0).standard_normal(m.params.size).astype(
        np.float32) * 0.5
    ids = tok.encode("ab")
    free = [int(t) for t in m.generate(ids, 8, temperature=0)[0, 2:]]

    class Tok:  # the tokenizer, with the 4th greedy token as its end of text
        special_tokens = {"<|endoftext|>": free[3]}
        encode, decode_bytes = tok.encode, tok.decode_bytes

    assert cli._eos_ids(m, Tok) == [free[3]] and cli._eos_ids(m, tok) == [256]
    cli._print_sample(m, Tok, "ab", 8, 0.0, None, None, None, eos_token_id=cli._eos_ids(m, Tok))
    cut = free.index(free[3])
    assert capsys.readouterr().out == "ab" + tok.decode_bytes(free[:cut]).decode(
        "utf-8", "replace") + "\n"
    cli._print_sample(m, tok, "ab", 5, 1.0, None, None, 3, min_p=0.05, repetition_penalty=1.2,
                      num_return_sequences=3)
    out = capsys.readouterr().out
    assert out.startswith("ab") and "--- sample 3 ---\nab" in out and "sample 4" not in out
