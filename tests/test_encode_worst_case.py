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


# ---- The encoder's own chunk loop (the bitmask windows of pretokenize_simd.h, fused with the
# lookups; an SSE2 ASCII word fast path before them) and its piece cache kept across calls.

def _pair_tokenizer(pattern: str, alphabet: bytes) -> Tokenizer:
    """Merges of every ordered pair of the alphabet's bytes, in a scrambled order: two-byte tokens
    that also span chunk boundaries, so a chunk cut one byte off shifts the pairing and the ids."""
    pairs = [(a, b) for a in alphabet for b in alphabet]
    random.Random(3).shuffle(pairs)
    return Tokenizer(pairs, pattern)


def _word_texts():
    r = random.Random(11)
    words = ["a", "ab", "the", "Foo", "fooBar", "ABC", "ABCdef", "aB", "HTTPServer", "x" * 15,
             "y" * 16, "Z" * 17, "Ab" * 8, "q" * 31, "don't", "IT'S", "we'll", "x'", "a'b", "'s",
             "na\u00efve", "abc\u00e9", "\u00e9t\u00e9", "ABC\u00c9d", "k\u0301x", "word\u4e2d"]
    prefixes = ["", " ", "(", "  ", ".", "'", "\n", "\r\n", "1", "_", "\t", "$", "\u00a0"]
    suffixes = ["", " ", "(", "'", "'s", "'LL", "\n", "1", "\u00e9", "\u0301", "'\u017f"]
    parts = []
    for w in words:
        for p in prefixes:
            for s in suffixes:
                parts.append(p + w + s)
    texts = ["".join(parts), " ".join(parts)]
    for _ in range(4):  # random mixtures, and every word again at the very end of a text
        r.shuffle(parts)
        texts.append("".join(parts[:400]))
    texts += [p + w for w in words for p in ("", " ", "(")]
    return texts


@pytest.mark.parametrize("pattern", ["gpt4", "cl100k", "o200k", "gpt2"])
def test_ascii_word_fast_path_equals_reference(pattern):
    """Chunks of ASCII letters after an optional prefix, at 15-17 letters (the old 16-byte SIMD window),
    before non-ASCII letters and marks, apostrophes (contractions: o200k's suffix, gpt4's prefix),
    case changes (o200k), and ending the text: the same ids as the reference's regex split."""
    texts = _word_texts()
    tok = _pair_tokenizer(pattern, bytes(sorted(set("".join(texts).encode("utf-8")))))
    for t in texts:
        assert tok.encode(t, "none") == ref.encode_ordinary(t, tok.merges, pattern), repr(t[:80])


def test_piece_cache_bounded_and_never_changes_ids():
    """More distinct chunks than the piece cache has slots and more cached ids than its arena holds
    (so entries are evicted and the whole cache is dropped and refilled): every later call's ids
    are those of an encoder that never saw the earlier texts."""
    tok = _tok("gpt4")
    r = random.Random(5)
    # ~100k distinct chunks of 9-16 letters (several ids each): past 32768 slots and 2^18 ids
    big = " ".join("".join(r.choice("abcdeXYZ") for _ in range(r.randint(9, 16))) for _ in range(100_000))
    probe = " ".join(big.split(" ")[:2000]) + " aab ab" + " abcde" * 50
    fresh = Tokenizer(tok.merges, "gpt4")
    want_probe = fresh.encode(probe, "none")
    assert want_probe == ref.encode_ordinary(probe, tok.merges)
    first = tok.encode_to_numpy(big, "none")
    assert tok.encode(probe, "none") == want_probe
    assert tok.encode_to_numpy(big, "none").tolist() == first.tolist()
    assert tok.encode(probe, "none") == want_probe
    assert Tokenizer(tok.merges, "gpt4").encode_to_numpy(big, "none").tolist() == first.tolist()


def test_batch_two_threads_equals_single_calls():
    """encode_batch lends one cache set per thread for the whole batch: every document's ids are
    the single call's, in order, with more documents than threads and empty ones among them."""
    tok = _tok("o200k")
    r = random.Random(9)
    docs = ["".join(r.choice("ab xZ1.\n'") for _ in range(r.randint(0, 3000))) for _ in range(41)]
    docs[7] = ""
    want = [Tokenizer(tok.merges, "o200k").encode(d, "none") for d in docs]
    for threads in (1, 2, 3):
        got = tok.encode_batch(docs, allowed_special="none", num_threads=threads)
        assert got == want
