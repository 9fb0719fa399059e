"""The "o200k" and "cl100k" splitters (tiktoken's o200k_base and cl100k_base pattern strings) and
the "r50k"/"p50k" names of "gpt2" split exactly as the `regex` module does with those strings:
hand-picked edge cases, seeded random strings, and every assigned code point in contexts that tell
the o200k letter sub-classes apart. The strings are checked to the character against tiktoken's
when tiktoken is importable (without loading any ranks)."""
from __future__ import annotations

import importlib.util
import pathlib
import random
import unicodedata

import pytest

regex = pytest.importorskip("regex")
_native = pytest.importorskip("kernelgpt._native")

from kernelgpt import _bpe_reference as ref  # noqa: E402
from kernelgpt import _unicode_data as _udata  # noqa: E402
from kernelgpt.tokenizer import Tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# tiktoken's r50k_base / p50k_base pattern, to the character (tiktoken_ext/openai_public.py).
R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# native splitter name -> pattern string it must agree with
CASES = {"o200k": ref.PATTERNS["o200k"], "cl100k": ref.PATTERNS["cl100k"], "r50k": R50K,
         "p50k": R50K}
COMPILED = {k: regex.compile(v) for k, v in CASES.items()}
# Split patterns from_hf maps onto ours (tokenizer.py's _HF_SPLITS): Llama 3's string is "gpt4".
from kernelgpt import tokenizer as _tkm  # noqa: E402
HF_SPLITS = [(pat, name) for pat, name in _tkm._HF_SPLITS.items() if pat not in ref.PATTERNS.values()]


def _edge_cases():
    spec = importlib.util.spec_from_file_location("_tp", ROOT / "tests" / "test_pretokenize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.EDGE_CASES


O200K_CASES = [
    "Hello", "HELLO", "HELLOworld", "HelloWorld", "helloWORLD", "ABCdef'S", "ABC'S", "abc'LL",
    "x'SUP", "DON'T", "don't", "I'M", "'s", "'S", " 's", "!Hello", "!HELLO", "!!hello", "(ABC)",
    "ǅungla", "ǅ", "Aǅa", "ʰʰA", "Aʰ", "AʰB", "Aʰb", "가나다", "A가", "가A", "e\u0301", "E\u0301",
    "\u0301", "\u0301\u0301a", "\u0301A", " \u0301", "x\u0301\u0301", "A\u0301B", "A\u0301Bc",
    "\u0903A", "\u20ddx", "AB\u0301CD", "!\u0301", "!\u0301A", "a/b", "x!\n/", "!\n//\r\n/a",
    "!\n\n/", " /\n", "http://x.y/z\n", "1/2", "\n/", "\r\n/x", "a\n\n  b", "a\n  ", "  \n\n  ",
    "ſ", "'ſ", "A'ſ", "Ab'Ll", "ABC'RE's", "Ω'm", "ΑΒΓδεζ", "МОСКВАмосква", "İstanbul",
    "x\U000E0100", "\U000E0100", "A\U000E0100b", "\U0001D400\U0001D41A", "123456", "١٢٣٤",
    "ʕa", "Aʕ", "Aʕb", "ʕ",
]


@pytest.mark.parametrize("name", sorted(CASES))
def test_edge_cases_match_regex(name):
    for text in _edge_cases() + O200K_CASES:
        assert _native.pretokenize(text, name) == COMPILED[name].findall(text), (name, text)


@pytest.mark.parametrize("pat,name", HF_SPLITS, ids=[n for _, n in HF_SPLITS])
def test_hf_split_patterns_split_like_ours(pat, name):
    compiled = regex.compile(pat)
    rnd = random.Random(99)
    texts = _edge_cases() + O200K_CASES + ["".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 30)))
                                           for _ in range(1500)]
    for text in texts:
        assert _native.pretokenize(text, name) == compiled.findall(text), (name, text)


def _assigned(limit=0x30000):
    # letters, marks, numbers of the tables' pinned Unicode; everything else this Python assigns
    grouped = {cp for a, b, _ in _udata.runs() for cp in range(a, min(b, limit - 1) + 1)}
    return [cp for cp in range(limit) if not 0xD800 <= cp < 0xE000
            and (cp in grouped or unicodedata.category(chr(cp)) != "Cn")]


@pytest.fixture(scope="module")
def assigned():
    if regex.__version__ != _udata.REGEX_AGREES:
        pytest.skip("the installed regex was not checked against the tables' Unicode version")
    return _assigned()


POOL = ["A", "Z", "a", "z", "ǅ", "ʰ", "ʕ", "가", "漢", "\u0301", "\u0903", "\u20dd", "'", "s", "S",
        "t", "ll", "LL", "re", "VE", "ſ", " ", "  ", "\n", "\r\n", "\r", "\t", "/", "!", "?!", ".",
        "1", "22", "١", "\u00a0", "\u3000", "😀", "👍🏽", "Ω", "ω", "\U000E0100", "\x00"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_strings_match_regex(name, assigned):
    rnd = random.Random(20261205 + len(name))
    for i in range(1500):
        n = rnd.randint(1, 24)
        if i % 2:
            text = "".join(rnd.choice(POOL) for _ in range(n))
        else:
            text = "".join(rnd.choice(POOL) if rnd.random() < 0.5 else chr(rnd.choice(assigned))
                           for _ in range(n))
        assert _native.pretokenize(text, name) == COMPILED[name].findall(text), (name, text)


def test_every_assigned_code_point_o200k(assigned):
    # Around c: after an upper-case letter and before a lower-case one, after a lower-case letter,
    # after "!" and before "'s": each sub-class (upper, lower, both, mark, none) splits differently.
    text = "".join(" A" + chr(cp) + "a!" + chr(cp) + "'s\n" + chr(cp) + "B" for cp in assigned)
    assert _native.pretokenize(text, "o200k") == COMPILED["o200k"].findall(text)


def test_pattern_strings_are_tiktokens(monkeypatch):
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})  # no download
    assert openai_public.o200k_base()["pat_str"] == ref.PATTERNS["o200k"]
    assert openai_public.cl100k_base()["pat_str"] == ref.PATTERNS["cl100k"]
    assert openai_public.r50k_pat_str == R50K
    # "gpt2" is a different string from r50k (same splits, tested above); "gpt4" differs from
    # cl100k in splits too: a whitespace run that ends the text.
    assert ref.PATTERNS["gpt2"] != R50K
    assert regex.findall(ref.PATTERNS["gpt4"], "a\n  ") == ["a", "\n", "  "]
    assert regex.findall(ref.PATTERNS["cl100k"], "a\n  ") == ["a", "\n  "]


def test_tokenizer_accepts_the_names():
    text = "Hello WORLD's\n\n  x/y\n/"
    for name in ("o200k", "cl100k", "r50k", "p50k", "gpt2", "gpt4"):
        tok = Tokenizer.train(text * 3, 256 + 10, pattern=name)
        assert tok.pattern == {"r50k": "gpt2", "p50k": "gpt2"}.get(name, name)
        assert tok.decode(tok.encode(text)) == text
        assert tok.merges == ref.train([text * 3], 10, tok.pattern)
    with pytest.raises(ValueError, match="pattern must be one of"):
        Tokenizer.train("x", 300, pattern="o100k")


@pytest.mark.parametrize("name", ["o200k", "cl100k"])
def test_file_streaming_keeps_the_split(name, tmp_path):
    # A file is cut after a CR/LF; "o200k" chunks may hold CR/LF + "/" ("!\n/"), so no cut there.
    rnd = random.Random(7)
    text = "!\n/x" + "".join(rnd.choice(POOL) for _ in range(3000))
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode("utf-8"))
    a = _native.BpeTrainer(name)
    a.add_documents([text], 1)
    want = (a.num_chunks, a.num_unique_chunks, a.train(100).tolist())
    for block in (1, 3, 17):
        t = _native.BpeTrainer(name)
        t.add_file(str(f), 1, block_bytes=block)
        assert (t.num_chunks, t.num_unique_chunks, t.train(100).tolist()) == want, block


@pytest.mark.parametrize("name", sorted(CASES))
def test_lone_surrogates_and_invalid_bytes(name):
    rnd = random.Random(11)
    pool = ["a", "A", "\udc80", "\ud800", " ", "\n", "!", "1", "\u0301", "ʰ", "'s", "/"]
    for _ in range(1500):
        t = "".join(rnd.choice(pool) for _ in range(rnd.randint(1, 12)))
        assert _native.pretokenize(t, name) == COMPILED[name].findall(t), t
    for _ in range(1500):  # invalid UTF-8: every byte lands in exactly one chunk
        b = bytes(rnd.choice([0x41, 0x61, 0x80, 0xC3, 0xFF, 0x20, 0x0A, 0x2F, 0x21, 0xCC, 0x81, 0x27])
                  for _ in range(rnd.randint(1, 12)))
        pos = 0
        for s, e in _native.pretokenize_spans(b, name).tolist():
            assert s == pos and e > s
            pos = e
        assert pos == len(b)
