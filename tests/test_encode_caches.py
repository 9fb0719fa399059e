"""The encoder's chunk caches never change an id: the encode loop looks chunks of up to 8 bytes up
in WordCache (4-way sets, 1-2 ids inline), 9..16 bytes in PieceCache (2-way sets), and resolves
misses in batches of 32 whose ids are spliced into the output. These tests drive each path (hits,
misses, batches of more than 32 misses, chunks encoding to 1, 2 and 3+ ids, sets holding more
chunks than ways, caches reused across calls and threads) and compare with the Python reference.
The colliding chunks are found with the caches' own hash functions (mirrored here): if those
change, the texts still test correctness, only less pointedly. Every test runs once per way of
merging a batch of misses this CPU has (the portable loop, and 16-lane AVX-512 vectors where
present; hook _native._bpe_merge_set_isa), each time on a new tokenizer, so its misses are misses."""
from __future__ import annotations

import base64
import functools
import random
import string

import pytest
from conftest import hook_isas

from kernelgpt import _bpe_reference as ref
from kernelgpt import _native
from kernelgpt.tokenizer import Tokenizer

MERGE_ISAS = hook_isas(_native._bpe_merge_set_isa, ("avx512",))

M64 = (1 << 64) - 1


def _word_set(chunk: bytes) -> int:  # WordCache: one multiply, 2**13 sets
    k = int.from_bytes(chunk.ljust(8, b"\0"), "little")
    return ((k * 0x9E3779B97F4A7C15) & M64) >> 51


def _piece_set(chunk: bytes) -> int:  # PieceCache: 16-byte key and length, 2**13 sets
    b = chunk.ljust(16, b"\0")
    k0, k1, n = int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little"), len(chunk)
    h = ((k0 ^ (n << 56)) * 0x9E3779B97F4A7C15) & M64
    h ^= ((k1 + (h >> 31)) * 0xBF58476D1CE4E5B9) & M64
    h ^= h >> 29
    return h >> 51


@pytest.fixture(autouse=True, params=MERGE_ISAS)
def merge_isa(request):
    """Each test with each way of merging a batch of misses, on a new tokenizer (empty caches)."""
    assert _native._bpe_merge_set_isa(request.param) == request.param
    _tok.cache_clear()
    yield request.param
    _native._bpe_merge_set_isa("auto")


@functools.lru_cache(maxsize=None)
def _tok() -> Tokenizer:
    r = random.Random(3)
    words = ["".join(r.choice("abcdefgh") for _ in range(r.randint(1, 12))) for _ in range(400)]
    text = " ".join(r.choice(words) for _ in range(6000))
    return Tokenizer.train([text, "x = foo(bar, 12) + baz[3]\n" * 50], 600)


def _check(tok: Tokenizer, texts):
    want = [ref.encode_ordinary(t, tok.merges) for t in texts]
    got = [tok.encode(t, "none") for t in texts]
    assert got == want
    assert [tok.encode_to_numpy(t, "none").tolist() for t in texts] == want
    assert tok.encode_batch(texts, allowed_special="none", num_threads=2) == want


def _colliding(set_of, length: int, want: int, seed: int):
    """`want` distinct chunks " xxxx" of `length` bytes that fall in one cache set."""
    r = random.Random(seed)
    groups = {}
    for _ in range(2_000_000):
        w = " " + "".join(r.choice(string.ascii_lowercase) for _ in range(length - 1))
        g = groups.setdefault(set_of(w.encode()), set())
        g.add(w)
        if len(g) >= want:
            return sorted(g)
    raise AssertionError("no colliding chunks found")


def test_short_chunks_of_every_length_and_id_count():
    tok = _tok()
    r = random.Random(5)
    # Words from the training alphabet (mostly 1-2 ids) and from outside it (3+ ids), every length
    # 1..20 with and without the leading space, digits and punctuation runs too.
    words = []
    for n in range(1, 21):
        for alpha in ("abcdefgh", "abcdefghijklmnopqrstuvwxyz", "ABCXYZ"):
            words += ["".join(r.choice(alpha) for _ in range(n)) for _ in range(6)]
    text = " ".join(words) + " 1 12 123 1234 ... !! ?? \n\n  \t x"
    counts = {len(tok.encode(" " + w, "none")) for w in words}
    assert {1, 2, 3} <= counts | {min(counts)} and max(counts) >= 3
    # First call: everything misses (batches of 32); the next calls hit what the first stored.
    _check(tok, [text, text, text[::-1], text])


def test_more_misses_than_one_batch_and_hits_between_them():
    tok = _tok()
    r = random.Random(9)
    fresh = ["".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(2, 15))) for _ in range(300)]
    # hit, miss, hit, miss...: the spliced ids must land between the right neighbours.
    text = " ".join(f"ab {w} x" for w in fresh)
    _check(tok, [text, text[: len(text) // 3], text])


def test_word_cache_set_holding_more_chunks_than_ways():
    tok = _tok()
    for length in (5, 8):
        group = _colliding(_word_set, length, 7, seed=length)  # 7 chunks, 4 ways
        # Cycled: each lookup may evict another of the group; results stay the reference's.
        text = "".join(group * 6) + "".join(reversed(group * 3))
        _check(tok, [text, text])


def test_piece_cache_set_holding_more_chunks_than_ways():
    tok = _tok()
    for length in (9, 12, 16):
        group = _colliding(_piece_set, length, 4, seed=length)  # 4 chunks, 2 ways
        text = "".join(group * 6)
        _check(tok, [text, text])


def test_chunks_at_the_end_of_the_text_and_empty_text():
    tok = _tok()
    # The last chunk's key cannot be read with one 8- or 16-byte load past the text's end.
    texts = ["", "a", " ab", "abcdefgh", " abcdefghijklmno", "x" * 17, "q" * 9, "foo bar baz"]
    _check(tok, texts + texts)


def test_chunks_that_differ_only_by_trailing_zero_bytes():
    # "!" and "!\0" (and "!!!!!!!" / "!!!!!!!\0") pad to the same 8-byte word: WordCache decides a
    # hit on that word alone, so a chunk holding a zero byte must never be found there in place of
    # the shorter one (or the other way round), whichever of them was stored first.
    tok = _tok()
    pairs = [("!", "!\0"), ("!\0", "!\0\0"), ("!!!!!!!", "!!!!!!!\0"), ("\0", "\0\0"), ("?x", "?\0")]
    for a, b in pairs:
        for first, second in ((a, b), (b, a)):
            text = "\t".join([first] * 3 + [second] * 3 + [first, second])
            _check(tok, [first, second, text, text])
    assert tok.encode("!\0", "none") != tok.encode("!", "none")


def test_zero_free_and_zero_holding_texts_share_the_caches():
    # A text without a zero byte is encoded by a loop that takes a chunk's 8 bytes as its WordCache
    # word without the zero-byte test; a text with one keeps the test. Each chunk here has 8+ bytes
    # after it (the one-load key path), and the zero-free text runs first so that "!" (or "!!!!!!!")
    # is in WordCache when "!\0" (resp. "!!!!!!!\0") is looked up, and the other way round.
    tok = _tok()
    tail = " and some more words after it"
    pairs = [("!", "!\0"), ("!!!!!!!", "!!!!!!!\0"), ("?x", "?\0"), (" ab", " a\0"), ("\t", "\0")]
    for a, b in pairs:
        for first, second in ((a, b), (b, a)):
            _check(tok, [first + tail, second + tail, "x" + first + tail, "x" + second + tail])


def test_batched_merges_on_random_vocabularies_with_ties_and_remapped_ids(tmp_path):
    # Chunks of 2..16 bytes merged in batches (every chunk misses on a new tokenizer): random
    # vocabularies where one chunk holds the same pair many times (equal ranks: the leftmost
    # merges first), merges at either end and in the middle, and the ids of a tiktoken-style
    # vocabulary whose bytes are not ids 0-255 (the batch maps internal ids to the file's).
    r = random.Random(17)
    for trial in range(4):
        alpha = "abcd"[: 2 + trial % 3]
        corpus = ["".join(r.choice(alpha) for _ in range(r.randint(1, 16))) for _ in range(3000)]
        tok = Tokenizer.train([" ".join(corpus)], 256 + 60 + 40 * trial)
        words = ["".join(r.choice(alpha + "e") for _ in range(r.randint(2, 16))) for _ in range(400)]
        words += [c * n for c in alpha for n in range(2, 17)]  # one pair repeated: all ranks tie
        text = " ".join(words) + "".join(words[:50])
        want = ref.encode_ordinary(text, tok.merges)
        assert Tokenizer(tok.merges).encode(text, "none") == want
        # The same vocabulary with GPT-2's byte order and gaps between the merges' ranks.
        order = list(range(33, 127)) + [b for b in range(256) if not 33 <= b < 127]
        ranks = {bytes([b]): k for k, b in enumerate(order)}
        for i in range(256, 256 + len(tok.merges)):
            ranks[tok.token_bytes(i)] = 256 + 2 * (i - 256)
        path = tmp_path / f"v{trial}.tiktoken"
        path.write_bytes(b"".join(base64.b64encode(t) + b" " + str(k).encode() + b"\n"
                                  for t, k in sorted(ranks.items(), key=lambda kv: kv[1])))
        remapped = Tokenizer.from_tiktoken(path, pattern="gpt4")
        inv = {k: t for t, k in ranks.items()}
        ids = remapped.encode(text, "none")
        assert b"".join(inv[i] for i in ids) == text.encode()
        assert [ranks[tok.token_bytes(i)] for i in want] == ids


def test_long_chunks_between_misses_keep_their_place():
    # Chunks of 17+ bytes go through the same buffer as the short ones (a long chunk no longer
    # resolves the misses pending before it): long chunks of a few ids and of more than 64 ids
    # (a run of letters no merge joins) between short misses, on new and on warm caches.
    tok = _tok()
    r = random.Random(23)
    parts = []
    for i in range(200):
        parts.append("".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(2, 15))))
        if i % 5 == 0:
            parts.append(" " * r.randint(17, 40))
        if i % 7 == 0:
            parts.append(" " + "".join(r.choice("abcdefgh") for _ in range(r.randint(17, 60))))
        if i % 31 == 0:
            parts.append(" " + "".join(r.choice("XYZQW") for _ in range(r.randint(65, 200))))
    text = " ".join(parts)
    assert max(len(tok.encode(" " + p, "none")) for p in parts) > 64
    _check(tok, [text, text, text[5:], text])
