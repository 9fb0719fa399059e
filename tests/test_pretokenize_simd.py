"""The pre-tokenizer's block classifier (csrc/tokenizer/pretokenize_simd.*): every ISA path
(AVX-512BW, AVX2, and "scalar" = no classifier, the exact matcher alone; forced with the
_pretokenize_set_isa hook) gives the chunks of the reference regex split (kernelgpt._bpe_reference) on seeded random text mixing ASCII classes,
contractions, CR/LF, Hangul (classified as letters by the blocks), other scripts and invalid UTF-8,
with pieces placed across the 64-byte window edges, for text lengths 0..200; and the encoder's ids
(which use the same blocks) do not depend on the path."""
from __future__ import annotations

import random

import pytest
from conftest import hook_isas

pytest.importorskip("regex")
_native = pytest.importorskip("kernelgpt._native")

from kernelgpt import _bpe_reference as ref  # noqa: E402

PATTERNS = ["gpt4", "cl100k", "o200k", "gpt2"]

# Pieces chosen for the bitmask rules: runs of each class, a lone prefix byte before letters,
# punctuation after U+0020, CR/LF after punctuation (taken by " ?[^\s..]+[\r\n]*"), whitespace runs
# ending in CR/LF or not, contractions (and look-alikes), digit runs of 1..7, Hangul syllables (the
# bytes the blocks treat as letters; edge code points U+AC00, U+D79F, U+D7A3, and U+ABFF / U+D7B0
# just outside), other scripts, marks, non-ASCII spaces, invalid and truncated UTF-8 (bytes only).
PIECES = [
    "a", "Z", "hello", "World", "HTTPServer", "camelCase", "x", " ", "  ", "   ", "\t", "\n", "\r\n",
    "\r", "\n\n", " \n", "\n ", "\x0b", "\x1c", "!", "?!", ".", "(", ")", "/", "//", "'", "''", "'s",
    "'S", "'ll", "'LL", "'ve", "'re", "'t", "'d", "'m", "'x", "'l", "don't", "it's", " 's", "!'s",
    "0", "12", "123", "1234", "1234567", " 1", "$", "__", "-", "!\n", "!\n\n  ", ".\r\n", "/\n/",
    "\uac00", "\ud79f", "\ud7a3", "\uabff", "\ud7b0", "\ud55c\uad6d\uc5b4", " \ud55c", "\u3131",
    "\u00e9", "\u0301", "\u017f", "\u00a0", "\u3000", "\u2014", "\u65e5\u672c", "\U0001f44d",
    "\u0661\u0662", "\u0416\u0438",
]
BAD_BYTES = [b"\xff", b"\x80", b"\xea\xb0", b"\xec\x80", b"\xed\xa0\x80", b"\xeb", b"\xc5"]


def _texts(as_bytes: bool, count: int = 160):
    r = random.Random(15 if as_bytes else 4)
    out = []
    for length in range(0, 201):  # every length 0..200 once...
        out.append(length)
    out += [r.randrange(60, 201) for _ in range(count)]  # ...then more around the window edges
    texts = []
    for length in out:
        parts: list = []
        size = 0
        # Filler up to a 64-byte edge minus a few bytes, so the next piece straddles it.
        if r.random() < 0.5 and length > 4:
            edge = r.choice([60, 61, 62, 63, 64, 65, 124, 126, 127, 128])
            fill = r.choice(["a", " ", ".", "1", "\n", "ab "])
            k = max(0, min(length, edge - r.randrange(0, 4))) // len(fill)
            parts.append(fill.encode() * k if as_bytes else fill * k)
            size = k * len(fill)
        while size < length:
            if as_bytes and r.random() < 0.08:
                p = r.choice(BAD_BYTES)
            else:
                p = r.choice(PIECES)
                if r.random() < 0.15:
                    p = p * r.randrange(2, 40)
                p = p.encode("utf-8") if as_bytes else p
            parts.append(p)
            size += len(p)
        t = (b"" if as_bytes else "").join(parts)
        texts.append(t)
    return texts


PATHS = hook_isas(_native._pretokenize_set_isa, ("avx2", "avx512"))


@pytest.fixture(params=PATHS)
def isa(request):
    assert _native._pretokenize_set_isa(request.param) == request.param
    yield request.param
    _native._pretokenize_set_isa("auto")


def _ref_bytes(data: bytes, pattern: str) -> list:
    # Each invalid byte is one "other" code point: decode it as a private-use stand-in (not in the
    # text otherwise), split, and map back.
    text = data.decode("utf-8", "surrogateescape")
    mapped = "".join(chr(0xF0000 + ord(c) - 0xDC00) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    out = []
    for chunk in ref.split_text(mapped, pattern):
        out.append("".join(chr(ord(c) - 0xF0000 + 0xDC00) if 0xF0080 <= ord(c) <= 0xF00FF else c
                           for c in chunk).encode("utf-8", "surrogateescape"))
    return out


def test_isa_hook_reports_and_rejects():
    assert _native._pretokenize_isa() in ("avx512", "avx2", "scalar")
    assert _native._pretokenize_set_isa("scalar") == "scalar"
    assert _native._pretokenize_isa() == "scalar"
    assert _native._pretokenize_set_isa("auto") == PATHS[-1]
    with pytest.raises(ValueError, match="isa"):
        _native._pretokenize_set_isa("sse9")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_path_splits_str_like_the_reference(isa, pattern):
    for t in _texts(False):
        assert _native.pretokenize(t, pattern) == ref.split_text(t, pattern), (isa, pattern, t)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_path_splits_bytes_like_the_reference(isa, pattern):
    for t in _texts(True, count=60):
        assert _native.pretokenize(t, pattern) == _ref_bytes(t, pattern), (isa, pattern, t)


def test_reference_split_of_bytes_helper_is_sound():
    # The helper above must itself agree with the str path on valid UTF-8, and keep a bad byte alone.
    assert _ref_bytes("a b'sx".encode(), "gpt4") == [b"a", b" b", b"'s", b"x"]
    assert _ref_bytes(b"ab\xff\xffcd", "gpt4") == [b"ab", b"\xff\xff", b"cd"]
    assert _ref_bytes(b"ab\xffcd", "gpt4") == [b"ab", b"\xffcd"]  # a prefix, like any "other"


@pytest.mark.parametrize("pattern", ["gpt4", "cl100k", "o200k"])
def test_encoder_ids_do_not_depend_on_the_path(pattern):
    from kernelgpt.tokenizer import Tokenizer
    texts = _texts(False, count=40)
    tok = Tokenizer.train(texts, 300, pattern=pattern)
    want = [ref.encode_ordinary(t, tok.merges, pattern) for t in texts]
    try:
        for isa in PATHS:
            _native._pretokenize_set_isa(isa)
            got = [tok.encode(t, "none") for t in texts]
            assert got == want, isa
    finally:
        _native._pretokenize_set_isa("auto")
