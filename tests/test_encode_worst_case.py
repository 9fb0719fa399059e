"""The encoder on its worst inputs: chunks far longer than the short-chunk scan (64 bytes) and the
per-call cache limit (256 bytes) go through the long-chunk merge (pending pairs bucketed by rank,
all pairs of one rank merged left to right). Its ids must be the Python reference's (lowest rank
first, leftmost among equals) on runs of one character, repeated short patterns (ties between
overlapping pairs) and random letters, at lengths around and well past those limits, with a
vocabulary trained to hold many merges of such runs; and tiktoken's with the same ranks when it is
installed. Speed stays in benchmarks/compare_tokenizers.py; this file checks results only."""
from __future__ import annotations

import functools
import random
import string

import pytest

from kernelgpt import _bpe_reference as ref
from kernelgpt.tokenizer import Tokenizer


def _training_texts():
    r = random.Random(1)
    texts = []
    for c in "ab xZ1.":
        for k in (2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 64):
            texts.append(c * k)
    for pat in ("ab", "aab", "abb", "abc", "xZ"):
        texts.extend(pat * k for k in (2, 3, 5, 8, 13))
    texts.append("".join(r.choice(string.ascii_letters) for _ in range(20000)))
    texts.append(" ".join("".join(r.choice("abcde") for _ in range(r.randint(1, 9))) for _ in range(3000)))
    return texts


@functools.lru_cache(maxsize=None)
def _tok(pattern: str) -> Tokenizer:
    return Tokenizer.train(_training_texts(), 700, pattern=pattern)


def _cases():
    r = random.Random(7)
    out = []
    for n in (63, 64, 65, 255, 256, 257, 1000, 4097):
        out.append(("run-a", "a" * n))
    out += [("run-space", " " * 3001), ("run-Z", "Z" * 2049), ("run-dot", "." * 777),
            ("pattern-ab", "ab" * 1500), ("pattern-aab", "aab" * 700), ("pattern-abb", "abb" * 701),
            ("pattern-abc", "abc" * 333 + "ab"), ("mixed-runs", "".join(c * r.randint(1, 40) for c in "ab" * 60))]
    for seed in range(3):
        rs = random.Random(seed)
        out.append((f"letters-{seed}", "".join(rs.choice(string.ascii_letters) for _ in range(2500))))
        out.append((f"lower-{seed}", "".join(rs.choice("abcde") for _ in range(3000))))
    return out


CASES = _cases()


@pytest.mark.parametrize("pattern", ["gpt4", "o200k"])
@pytest.mark.parametrize("name,text", CASES, ids=[c[0] + f"-{len(c[1])}" for c in CASES])
def test_long_chunks_equal_reference(pattern, name, text):
    tok = _tok(pattern)
    want = ref.encode_ordinary(text, tok.merges, pattern)
    assert tok.encode(text, "none") == want
    assert tok.encode_to_numpy(text, "none").tolist() == want


def test_long_chunks_inside_text_and_batch_equal_reference():
    """Long chunks between ordinary ones (the cache of one call holds both), single and batched."""
    tok = _tok("gpt4")
    texts = [f"x {t} y{t[:50]}\n{t}" for _, t in CASES[::3]]
    want = [ref.encode_ordinary(t, tok.merges) for t in texts]
    assert [tok.encode(t, "none") for t in texts] == want
    got = tok.encode_batch(texts, allowed_special="none", num_threads=2)
    assert [list(g) for g in got] == want


def test_same_text_twice_gives_same_ids():
    """The chunk caches the encoder keeps across calls never change a later call's ids."""
    tok = _tok("gpt4")
    a = "ab" * 200 + " aab aab " + "a" * 300
    first = tok.encode(a, "none")
    other = tok.encode("aab" * 100 + " " + "ab" * 100, "none")
    assert tok.encode(a, "none") == first
    assert other == ref.encode_ordinary("aab" * 100 + " " + "ab" * 100, tok.merges)


def test_long_chunks_equal_tiktoken(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    tok = _tok("gpt4")
    path = tmp_path / "ranks.tiktoken"
    tok.export_tiktoken(path)
    # through the rank file: ids remapped, whole-chunk lookup on (tiktoken's rule)
    loaded = Tokenizer.from_tiktoken(path, pattern="gpt4")
    enc = tiktoken.Encoding(name="worst", pat_str=ref.PATTERNS["gpt4"],
                            mergeable_ranks=loaded.mergeable_ranks(), special_tokens={})
    for name, text in CASES:
        assert loaded.encode(text, "none") == enc.encode_ordinary(text), name
