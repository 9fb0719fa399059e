"""The native pre-tokenizer splits text exactly as regex.findall does with the "gpt4" and "gpt2"
patterns: hand-picked edge cases, seeded random strings across scripts, every code point on which
the pinned Unicode data (kernelgpt._unicode_data) and the regex package agree, bytes input (valid
and invalid UTF-8), spans."""
from __future__ import annotations

import importlib.util
import pathlib
import random

import numpy as np
import pytest

regex = pytest.importorskip("regex")
_native = pytest.importorskip("kernelgpt._native")

from kernelgpt import _unicode_data as _udata  # noqa: E402  (the pinned Unicode of the tables)

# The patterns, to the character, written out here independently of kernelgpt._bpe_reference.
PATTERNS = {
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}
COMPILED = {name: regex.compile(p) for name, p in PATTERNS.items()}
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_gen():
    spec = importlib.util.spec_from_file_location("gen_unicode_tables",
                                                  ROOT / "scripts" / "gen_unicode_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gen():
    return _load_gen()


@pytest.fixture(scope="module")
def agreeing(gen):
    """Code points (no surrogates) where the installed regex's \\p{L} / \\p{N} / \\s / letter
    sub-classes equal the pinned Unicode data the native tables are built from: all of them for the
    regex version the data was checked against (asserted), recently assigned ones left out for an
    older or newer regex."""
    bad = set(gen.regex_disagreements(_udata.runs()))
    if regex.__version__ == _udata.REGEX_AGREES:
        assert not bad, f"regex {regex.__version__} was recorded as agreeing on every code point"
    return [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and cp not in bad]


@pytest.fixture(scope="module")
def agreeing_set(agreeing):
    return frozenset(agreeing)


def check(text: str, pattern: str) -> None:
    want = COMPILED[pattern].findall(text)
    got = _native.pretokenize(text, pattern)
    assert got == want, f"{pattern} on {text!r}"
    assert "".join(got) == text


EDGE_CASES = [
    "", "a", " ", "'", "''", "'s", "'S", "'t", "'T", "'d", "'D", "'m", "'M", "'ll", "'LL", "'Ll",
    "'lL", "'l", "'ve", "'VE", "'vE", "'re", "'RE", "'rE", "'r", "'v", "'ſ", "'ſt", "'\u212a",
    "don't", "DON'T", "I'm", "we'll", "they're", "you've", "it's", "'sup", "''s", "x's's",
    " 's", "  's", "'\u2019s", "\u2019s", "'ß", "'İ", "' s", "'\ns",
    *("1234567"[:k] for k in range(1, 8)), " 12345", "a1234b", "x 1 22 333 4444", "١٢٣٤٥",
    "Ⅻ", "²³¹", "①②③④", "٣४５", "1.5", "-1", "3rd", "abc123def",
    "hello   world", "hello   ", "   hello", "  \n  hello", "a \n", "a  \n\n  b", "\n\n\n",
    "\r\n", "a\r\nb", "a\r\n\r\nb", " \r\n", "\r", "\r\r\n", "\n\r", "x.\r\n", "x...\n\n  y",
    "?!\n", " ?!\r\n\r\n", "end.  ", "\t\tindent", "a\tb", "\t\n\t", "\x0b\x0c", "a\x0bb",
    "\x1c\x1d\x1e\x1f", "a\x1cb", "\x85x", "a\x85\x85b", "\xa0", "a\xa0b", "a \xa0b", "\xa0\xa0word",
    "\u1680a", "\u2000\u200ab", "\u2028\u2029", "\u202f\u205f\u3000x", "\u180ex", "\u200bx",
    "(hello)", "[x]", "{'a': 1}", "@user #tag", "$100", "100%", "e.g.", "...", " ...", "---\n",
    "'hello'", "\"quoted\"", "a--b", "__init__", "x = y + 1\n", "def f(x):\n    return x\n",
    "생성형 모델은 데이터로부터", "日本語のテキスト", "中文，标点。", "ÀÉÎõü", "e\u0301", "\u0301e",
    " \u0301x", "a\u0301\u0302b", "नमस्ते दुनिया", "مرحبا بالعالم", "👍", "👍🏽", "👨‍👩‍👧", "hi👋there",
    " 🎉🎉\n", "🏳️‍🌈", "\U0001d400\U0001d401", "\U00020000\U0002a6d6", "\U000e0041", "\U0010ffff",
    "\ufeffBOM", "\ufffd", "\x00\x01\x7f", "a\x00b",
    # ASCII letter runs around the 16-byte block the native scanner skips at once
    *(("Ab" * 20)[:k] + tail for k in (1, 15, 16, 17, 31, 32, 33)
      for tail in ("", "é", "ſ", "1", " ", "\n", "'s", "生成", "\u0301", "\xa0x", "\udc80")),
    " " + "x" * 40 + "é" * 3 + "y" * 20 + "\U0001d400" + "z" * 17,
    # space runs around the 16-byte block skipped at once
    *(pre + " " * k + tail for k in (1, 2, 15, 16, 17, 33) for pre in ("", "a", "\n", "\r\n")
      for tail in ("", "x", "\n", "\n  x", "\t", "\u3000x", "1", "!", "\xa0")),
]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_edge_cases_match_regex(pattern):
    for text in EDGE_CASES:
        check(text, pattern)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_lone_surrogates_in_str_match_regex(pattern):
    for text in ["\ud800", "a\ud800b", " \udfff", "\ud83d\ude00", "x\udc80\udc81 y", "'\ud800s"]:
        check(text, pattern)


WORDS = ["hello", "World", "the", "I", "x", "ABC", "naïve", "café", "Straße", "ǅ", "ſ", "ǈa"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "'", "''", "\u2019", "\u00bf"]
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0b", "\x0c", "\xa0", "\u3000",
          "\x1c", "\x85", "\u2028", "\u2003"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'ll", "'LL", "'lL", "'ve", "'VE", "'re", "'Re", "'d", "'m",
                "'M", "'ſ", "n't"]
SCRIPTS = ["생성형", "모델은", "데이터로부터", "日本語", "中文", "テキスト", "مرحبا", "नमस्ते", "Привет",
           "Ελλάδα", "עברית", "ไทย", "e\u0301", "\u0301", "\u0308\u0301", "\u093f", "\u0e31"]
EMOJI = ["👍", "👍🏽", "👨‍👩‍👧", "🎉", "🏳️‍🌈", "❤️", "\u200d", "\ufe0f", "🇰🇷"]
DIGITS = ["0", "7", "42", "123", "2024", "1234567", "٣", "४", "５", "Ⅻ", "²", "①", "𝟙"]


def random_text(rnd: random.Random, sample_cp) -> str:
    parts = []
    for _ in range(rnd.randint(1, 24)):
        r = rnd.random()
        if r < 0.18:
            parts.append(rnd.choice(WORDS))
        elif r < 0.34:
            parts.append(rnd.choice(SPACES))
        elif r < 0.46:
            parts.append(rnd.choice(PUNCT))
        elif r < 0.54:
            parts.append(rnd.choice(CONTRACTIONS))
        elif r < 0.64:
            parts.append(rnd.choice(DIGITS))
        elif r < 0.74:
            parts.append(rnd.choice(SCRIPTS))
        elif r < 0.80:
            parts.append(rnd.choice(EMOJI))
        else:
            parts.append("".join(chr(sample_cp(rnd)) for _ in range(rnd.randint(1, 4))))
    return "".join(parts)


@pytest.fixture(scope="module")
def samplers(agreeing, gen):
    """Random code points from the agreeing set: any of them, or letters/numbers/marks only."""
    groups = gen.group_table(_udata.runs())
    by_cat: dict[str, list[int]] = {}
    for cp in agreeing:
        g = groups[cp]
        if g:
            by_cat.setdefault("L" if g in b"ulo" else "N" if g == ord("n") else "M", []).append(cp)
    pools = (by_cat["L"], by_cat["L"], by_cat["N"], by_cat["M"])
    return {
        "any": lambda rnd: agreeing[rnd.randrange(len(agreeing))],
        "classes": lambda rnd: rnd.choice(rnd.choice(pools)),
    }


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_random_strings_match_regex(pattern, samplers):
    rnd = random.Random(20261127 + len(pattern) + (pattern == "gpt2"))
    for i in range(2500):
        sampler = samplers["any" if i % 2 else "classes"]
        check(random_text(rnd, sampler), pattern)


def test_every_agreeing_code_point_is_classified_like_regex(agreeing):
    # " " + c + "a" splits differently for each class of c (letter: " ca"; number: " ", "c", "a";
    # other: " c", "a"; whitespace: " ", "ca"), so one comparison checks every table entry.
    text = "".join(" " + chr(cp) + "a" for cp in agreeing)
    got = _native.pretokenize(text, "gpt4")
    assert got == COMPILED["gpt4"].findall(text)


def test_unicode_tables_header_is_up_to_date(gen):
    # The compiled tables are the pinned data's, and the header is what the generator renders.
    assert _native._pretokenize_unicode_version == _udata.UNICODE_VERSION
    classes, _ = gen.classes_and_subs(_udata)
    np.testing.assert_array_equal(_native._pretokenize_unicode_classes(), np.array(classes, np.uint8))
    assert (ROOT / "csrc" / "tokenizer" / "unicode_tables.h").read_text() == gen.render(_udata)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_bytes_input_matches_regex_on_str(pattern):
    for text in EDGE_CASES:  # U+DC80..U+DCFF become the invalid bytes 80..FF (see below)
        data = text.encode("utf-8", "surrogateescape")
        got = _native.pretokenize(data, pattern)
        want = COMPILED[pattern].findall(text)
        assert got == [c.encode("utf-8", "surrogateescape") for c in want], repr(text)


INVALID = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe2\x82", b"\xe0\x80\x80",
           b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5",
           b"\xff", b"\xfe\xff", b"\xf0\x9f\x91", b"\xc3\x28"]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_invalid_utf8_bytes_are_single_other_code_points(pattern, samplers, agreeing_set):
    # Python's "surrogateescape" decoder maps each invalid byte to one lone surrogate U+DC80..U+DCFF
    # (category Cs: "other" to regex), which is exactly the contract for invalid bytes.
    rnd = random.Random(7 + (pattern == "gpt2"))
    for i in range(1500):
        pieces = []
        for _ in range(rnd.randint(1, 12)):
            r = rnd.random()
            if r < 0.3:
                pieces.append(rnd.choice(INVALID))
            elif r < 0.4:
                pieces.append(bytes([rnd.randrange(256)]))
            else:
                pieces.append(random_text(rnd, samplers["any"])[:6].encode())
        data = b"".join(pieces)
        text = data.decode("utf-8", "surrogateescape")
        if any(ord(ch) not in agreeing_set and not 0xDC80 <= ord(ch) <= 0xDCFF for ch in text):
            continue  # a code point the installed regex classifies unlike the pinned tables
            #           (none with the regex version they were checked against)
        want = [c.encode("utf-8", "surrogateescape")
                for c in COMPILED[pattern].findall(data.decode("utf-8", "surrogateescape"))]
        got = _native.pretokenize(data, pattern)
        assert got == want, repr(data)
        spans = _native.pretokenize_spans(data, pattern)
        assert [data[b:e] for b, e in spans] == got


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_spans_tile_the_input(pattern):
    rnd = random.Random(3)
    for _ in range(200):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 64)))
        spans = _native.pretokenize_spans(data, pattern)
        assert spans.dtype == np.int64 and spans.ndim == 2 and spans.shape[1] == 2
        ends = np.concatenate([[0], spans[:, 1]])
        assert np.all(spans[:, 0] == ends[:-1]) and np.all(spans[:, 1] > spans[:, 0])
        assert ends[-1] == len(data)
    text = "I'm 생성형 👍🏽\r\n"
    spans = _native.pretokenize_spans(text, pattern)
    raw = text.encode()
    assert [raw[b:e].decode() for b, e in spans] == COMPILED[pattern].findall(text)


def test_empty_input():
    for pattern in PATTERNS:
        assert _native.pretokenize("", pattern) == []
        assert _native.pretokenize(b"", pattern) == []
        spans = _native.pretokenize_spans(b"", pattern)
        assert spans.shape == (0, 2) and spans.dtype == np.int64


def test_default_pattern_is_gpt4():
    text = "I'LL 12345"
    assert _native.pretokenize(text) == COMPILED["gpt4"].findall(text)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pattern must be 'gpt4', 'gpt2', .*, got 'cl50k'"):
        _native.pretokenize("abc", "cl50k")
    with pytest.raises(ValueError, match="pattern"):
        _native.pretokenize_spans(b"abc", "")
    with pytest.raises(TypeError, match="text must be str or bytes, got list"):
        _native.pretokenize(["abc"])
    with pytest.raises(TypeError, match="data must be str or bytes, got int"):
        _native.pretokenize_spans(3)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_safe_boundaries_cut_the_split_without_changing_it(pattern, samplers):
    # How a caller splits one text on several threads: cut at safe boundaries, split each piece
    # over the whole text (pretokenize_range), concatenate.
    rnd = random.Random(11 + (pattern == "gpt2"))
    for _ in range(300):
        data = "".join(random_text(rnd, samplers["any"]) for _ in range(4)).encode()
        whole = _native.pretokenize_spans(data, pattern)
        ends = set(whole[:, 1].tolist()) | {0}
        cuts = sorted(_native._pretokenize_safe_boundary(data, rnd.randint(0, len(data)))
                      for _ in range(rnd.randint(0, 4)))
        bounds = [0, *cuts, len(data)]
        assert all(b in ends for b in bounds)
        parts = [_native._pretokenize_range(data, b, e, pattern) for b, e in zip(bounds, bounds[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert _native._pretokenize_safe_boundary(b"ab\ncd", 1) == 3
    assert _native._pretokenize_safe_boundary(b"ab\n cd", 1) == 6
    assert _native._pretokenize_safe_boundary(b"ab\r\n\xffcd", 0) == 0
    assert _native._pretokenize_safe_boundary(b"ab\r\n\xffcd", 1) == 4
    assert _native._pretokenize_safe_boundary("x\n생성".encode(), 1) == 2
    assert _native._pretokenize_safe_boundary(b"", 0) == 0
    with pytest.raises(ValueError, match="pos must be in"):
        _native._pretokenize_safe_boundary(b"ab", 3)
    with pytest.raises(ValueError, match="begin"):
        _native._pretokenize_range(b"ab", 2, 1)
