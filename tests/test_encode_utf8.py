"""encode() turns a str that is not ASCII into UTF-8 itself (into a buffer its thread reuses, not
a new bytes object per call). The ids must be those of the same text given as UTF-8 bytes and the
Python reference's, for every str storage kind (Latin-1, UCS-2, UCS-4), long ASCII runs between
non-ASCII characters, and strings that end on any of them; a lone surrogate still becomes U+FFFD
(tiktoken's rule); and Python code run by the `allowed` argument (which may encode on the same
thread) cannot disturb the buffer of the call that runs it. A str that caches its UTF-8 (after
PyUnicode_AsUTF8, called here through ctypes) is read from that cache: the same ids."""
from __future__ import annotations

import ctypes
import functools
import random

import pytest
from conftest import hook_isas

from kernelgpt import _bpe_reference as ref
from kernelgpt import _native
from kernelgpt.tokenizer import Tokenizer


ISAS = hook_isas(_native._encode_utf8_set_isa, ("avx512",))


@pytest.fixture(params=ISAS)
def utf8_isa(request):
    """Runs the test with each str -> UTF-8 conversion this CPU has (the portable one always)."""
    assert _native._encode_utf8_set_isa(request.param) == request.param
    yield request.param
    _native._encode_utf8_set_isa("auto")


@functools.lru_cache(maxsize=None)
def _tok() -> Tokenizer:
    base = Tokenizer.train(["héllo wörld café naïve 한국어 텍스트 😀 emoji " * 40, "plain ascii text " * 40], 400)
    return Tokenizer(base.merges, special_tokens=["<|s|>"])


def _texts():
    r = random.Random(11)
    pools = {
        "latin1": "abc éèçà ÿ\u00a0 xyz",
        "ucs2": "abc 한국어 텍스트 ΩЖ … \u3000 x",
        "ucs4": "abc 😀🙂 𝔘𝔫𝔦 한 é x",
    }
    out = []
    for pool in pools.values():
        for n in (1, 2, 3, 4, 5, 7, 8, 9, 31, 200):
            out.append("".join(r.choice(pool) for _ in range(n)))
        out.append("a" * 37 + pool[-3] + "b" * 5 + pool[5])  # long ASCII runs, then the end
    return out


def test_str_kinds_match_their_utf8_bytes_and_the_reference(utf8_isa):
    tok = _tok()
    for t in _texts():
        want = ref.encode_ordinary(t, tok.merges)
        assert tok.encode(t, "none") == want, repr(t)
        assert tok._enc.encode(t.encode("utf-8"), [], True) == want, repr(t)
        assert tok.encode_to_numpy(t, "none").tolist() == want, repr(t)


def test_str_with_cached_utf8():
    f = ctypes.pythonapi.PyUnicode_AsUTF8AndSize
    f.restype = ctypes.c_char_p
    f.argtypes = [ctypes.py_object, ctypes.c_void_p]
    tok = _tok()
    for t in _texts():
        want = tok.encode(t, "none")
        c = (t + "!")[:-1]  # a new str object, then its UTF-8 cached in it
        assert f(c, None) == t.encode("utf-8")
        assert tok.encode(c, "none") == want == ref.encode_ordinary(t, tok.merges), repr(t)


def test_lone_surrogate_becomes_replacement_character(utf8_isa):
    tok = _tok()
    for t in ("a\ud800b", "한\udfff", "😀\ud83d", "é\udc00é"):
        clean = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in t)
        assert clean == ref.clean_text(t)
        assert tok.encode(t, "none") == tok.encode(clean, "none") == ref.encode_ordinary(clean, tok.merges)


def test_allowed_index_that_encodes_on_the_same_thread():
    tok = _tok()
    text = "한국어 텍스트 <|s|> café 😀 " * 20
    want = tok._enc.encode(text, [0], True)

    class Index:
        def __index__(self):
            tok.encode("다른 텍스트 ÿ 😀 " * 50, "none")  # reuses this thread's buffer
            return 0

    assert tok._enc.encode(text, [Index()], True) == want


def test_one_non_ascii_code_point_at_every_offset_of_an_ascii_run(utf8_isa):
    # The str -> UTF-8 conversion checks ASCII 16 code units at a time, then 4, then one: a non-ASCII
    # code point at each offset (inside, at the edge of and after each block) must come out whole.
    tok = _tok()
    for ch in ("é", "한", "😀"):
        for off in range(0, 41):
            t = "x y" * 16
            t = t[:off] + ch + t[off:]
            assert tok.encode(t, "none") == tok._enc.encode(t.encode("utf-8"), [], True), (ch, off)


_EDGES = [0, 1, 0x41, 0x7F, 0x80, 0xBF, 0xFF, 0x100, 0x7FF, 0x800, 0xAC00, 0xD7FF, 0xE000, 0xFFFD,
          0xFFFF, 0x10000, 0x1F600, 0x10FFFF]


def test_utf8_conversion_equals_python_for_every_kind_length_and_range(utf8_isa):
    # The converter alone (the bytes encode() tokenizes), against str.encode: lengths across the
    # 16-code-point steps and the tail, every storage kind, each UTF-8 length's edges.
    r = random.Random(7)
    pools = [
        lambda: r.randint(0, 0xFF),                      # Latin-1 kind
        lambda: r.choice([r.randint(0, 0x7F), r.randint(0x80, 0xD7FF), r.randint(0xE000, 0xFFFF)]),
        lambda: r.choice([r.randint(0, 0x7F), r.randint(0x80, 0x7FF), r.randint(0x800, 0xD7FF),
                          r.randint(0x10000, 0x10FFFF)]),
        lambda: r.choice(_EDGES),
        lambda: r.choice([0x61, 0x20, 0x61, 0x61, 0xE9, 0xD55C, 0x1F600]),
    ]
    for _ in range(600):
        pick = r.choice(pools)
        t = "".join(chr(pick()) for _ in range(r.randint(0, 70)))
        assert _native._encode_utf8(t) == t.encode("utf-8"), (utf8_isa, t)


def test_utf8_conversion_refuses_a_surrogate_anywhere(utf8_isa):
    for ch in ("\ud800", "\udbff", "\udc00", "\udfff"):
        for other in ("a", "é", "한", "😀"):
            for off in range(0, 40):
                t = other * off + ch + other * 5
                assert _native._encode_utf8(t) is None, (utf8_isa, ch, other, off)
                assert _native._encode_utf8(t.replace(ch, "\ufffd")) == t.replace(ch, "\ufffd").encode("utf-8")
