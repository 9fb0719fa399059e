"""Evaluation over a whole token stream (kernelgpt.evaluation): every token after the first is
predicted exactly once, with the context the documented windows give it; bits per byte against
a hand computation; the progress bar; bad arguments."""
from __future__ import annotations

import math

import numpy as np
import pytest

import kernelgpt
from kernelgpt import GPT, GPTConfig
from kernelgpt.evaluation import evaluate_tokens, token_byte_lengths

T = 8


@pytest.fixture(scope="module")
def model():
    cfg = GPTConfig(vocab_size=300, block_size=T, n_layer=1, n_head=2, n_embd=16)
    return GPT(cfg, backend="numpy", seed=3)


def _nll_last(model, context, target):
    """-log p(target | context) from the model's logits at the context's last position."""
    logits, _ = model.forward(np.asarray(context, np.int32)[None, :])
    lg = np.asarray(logits, np.float64)[0, -1]
    m = lg.max()
    return float(m + np.log(np.exp(lg - m).sum()) - lg[target])


def _reference(model, tokens, stride):
    """Brute force, one forward per target, from the module docstring's rule."""
    N = len(tokens)
    total = 0.0
    if stride == T:  # consecutive windows [kT, kT + T)
        for t in range(1, N):
            start = ((t - 1) // T) * T
            total += _nll_last(model, tokens[start:t], tokens[t])
        return total
    ends = [min(T, N - 1)]
    while ends[-1] < N - 1:
        ends.append(min(ends[-1] + stride, N - 1))
    prev = 0
    for e in ends:
        for t in range(prev + 1, e + 1):   # the targets this window scores
            total += _nll_last(model, tokens[max(0, e - T):t], tokens[t])
        prev = e
    return total


class _Recording:
    """A model wrapper that records the targets of every scored forward."""

    def __init__(self, model):
        self.model, self.config, self.backend = model, model.config, model.backend
        self.targets = []

    def forward(self, x, y=None, return_logits=True):
        if y is not None:
            self.targets.append(np.asarray(y).copy())
        return self.model.forward(x, y, return_logits=return_logits)


@pytest.mark.parametrize("n", [2, 9, 17, 37])
@pytest.mark.parametrize("stride", [T, 5, 3, 1])
def test_every_token_after_the_first_is_predicted_once(model, n, stride):
    tokens = np.random.default_rng(n).integers(0, 300, n)
    r = evaluate_tokens(model, tokens, batch_size=3, stride=stride)
    assert r["n_tokens"] == n - 1
    ref = _reference(model, tokens, stride)
    assert r["total_nats"] == pytest.approx(ref, rel=1e-5)
    assert r["loss"] == pytest.approx(ref / (n - 1), rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(ref / (n - 1)), rel=1e-5)


def test_consecutive_windows_score_the_targets_in_order(model):
    tokens = np.arange(1, 30) % 300
    rec = _Recording(model)
    evaluate_tokens(rec, tokens, batch_size=2)
    seen = np.concatenate([y.ravel() for y in rec.targets])
    assert seen.tolist() == tokens[1:].tolist()      # each once, in order


def test_bits_per_byte_by_hand(model):
    tok = kernelgpt.Tokenizer.train(["생성형 모델 abc abc abc", "def f(x): return x"], 290,
                                    special_tokens=("<|endoftext|>",))
    text = "생성형 abc"                             # multi-byte UTF-8: bytes != characters
    r = kernelgpt.evaluate(model, tok, text)
    ids = [tok.special_tokens["<|endoftext|>"]] + tok.encode(text)
    assert len(ids) <= T
    logits, _ = model.forward(np.asarray(ids[:-1], np.int32)[None, :])
    lg = np.asarray(logits, np.float64)[0]
    lse = lg.max(1) + np.log(np.exp(lg - lg.max(1)[:, None]).sum(1))
    nats = float(sum(lse[i] - lg[i, ids[i + 1]] for i in range(len(ids) - 1)))
    n_bytes = len(text.encode("utf-8"))
    assert n_bytes == 13 and r["n_bytes"] == n_bytes
    assert r["n_tokens"] == len(ids) - 1
    assert r["bits_per_byte"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-6)
    assert r["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-6)


def test_special_tokens_count_no_bytes():
    tok = kernelgpt.Tokenizer.train(["ab ab ab"], 258, special_tokens=("<|endoftext|>",))
    nb = token_byte_lengths(tok, 260)
    assert nb.shape == (260,)
    assert nb[ord("a")] == 1 and nb[256] == len(tok.token_bytes(256))
    assert nb[tok.special_tokens["<|endoftext|>"]] == 0 and nb[259] == 0


def test_progress_bar(model, capsys):
    evaluate_tokens(model, np.arange(20), progress=True)
    err = capsys.readouterr().err
    assert "eval" in err and "19/19" in err


def test_gpt_evaluate_delegates(model):
    tokens = np.arange(25) % 300
    assert model.evaluate(tokens, stride=4) == evaluate_tokens(model, tokens, stride=4)


@pytest.mark.parametrize("kw,msg", [
    (dict(tokens=[5]), "at least 2"),
    (dict(tokens=[[1, 2]]), "1-D"),
    (dict(stride=T + 1), "stride"),
    (dict(stride=0), "stride"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments(model, kw, msg):
    args = dict(tokens=np.arange(10))
    args.update(kw)
    tokens = args.pop("tokens")
    with pytest.raises(ValueError, match=msg):
        evaluate_tokens(model, tokens, **args)


def test_set_num_threads():
    nb = pytest.importorskip("kernelgpt.backends.native_backend")
    if not nb.is_available():
        pytest.skip("native module not built")
    before = nb.get_num_threads()
    try:
        kernelgpt.set_num_threads(1)
        assert nb.get_num_threads() == 1
        kernelgpt.set_num_threads(2)
        assert nb.get_num_threads() == 2
    finally:
        kernelgpt.set_num_threads(before)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            kernelgpt.set_num_threads(bad)


def test_evaluate_stays_a_function_after_the_module_is_imported():
    import kernelgpt.evaluation  # noqa: F401
    assert callable(kernelgpt.evaluate) and kernelgpt.evaluate.__name__ == "evaluate"
