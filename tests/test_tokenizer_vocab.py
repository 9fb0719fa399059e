"""Vocabularies laid out otherwise than ours (byte tokens not at ids 0-255, gaps, special ids of
their own), read with Tokenizer.from_tiktoken: ids equal tiktoken's with the same ranks and
pattern; save/load (format version 2), pickling and decoding keep them. The real OpenAI cl100k and
o200k ranks are read from the `bpe-openai` wheel's data when it is installed (nothing is downloaded)."""
from __future__ import annotations

import base64
import gzip
import json
import os
import pathlib
import pickle
import random

import pytest

from kernelgpt import _bpe_reference as ref
from kernelgpt.tokenizer import Tokenizer

TEXTS = [
    "생성형 인공지능은 텍스트, 이미지, 코드를 만들어 냅니다. 한국어 문장입니다!",
    "def f(x):\r\n    return x ** 2  # square\r\n\r\nprint(f(3))\n",
    "👍🏽 family: 👨‍👩‍👧‍👦 flags 🇰🇷🇯🇵 ✨",
    "Hello WORLD's  \n\n  trailing  \n  ", "", " ", "\n", "x/y\n/z //\r\n", "ǅungla ʰA e\u0301",
    "1234567 3.14159 ١٢٣", "don't DON'T we'LL", "\u00a0\u3000 \t\x0b",
]


def _gpt2_byte_order():
    """GPT-2's byte order: the printable bytes first (so byte b is NOT id b), then the others."""
    first = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    return first + [b for b in range(256) if b not in first]


def _write_ranks(path, ranks):
    path.write_bytes(b"".join(base64.b64encode(tb) + b" " + str(r).encode() + b"\n"
                              for tb, r in sorted(ranks.items(), key=lambda kv: kv[1])))


@pytest.fixture(scope="module")
def trained():
    rnd = random.Random(3)
    corpus = TEXTS * 3 + ["".join(rnd.choice(TEXTS)[:rnd.randint(0, 30)] for _ in range(40))
                          for _ in range(20)]
    return Tokenizer.train(corpus, 256 + 400, pattern="o200k")


@pytest.fixture(scope="module")
def permuted_ranks(trained):
    """The trained vocabulary with GPT-2's byte order, the merges after them with gaps."""
    order = _gpt2_byte_order()
    ranks = {bytes([b]): k for k, b in enumerate(order)}
    for i in range(256, 256 + len(trained.merges)):
        ranks[trained.token_bytes(i)] = 256 + 3 * (i - 256) + (i % 3)
    return ranks


@pytest.mark.parametrize("pattern", ["o200k", "gpt2", "cl100k"])
def test_permuted_byte_ranks_equal_tiktoken(tmp_path, permuted_ranks, pattern):
    tiktoken = pytest.importorskip("tiktoken")
    p = tmp_path / "perm.tiktoken"
    _write_ranks(p, permuted_ranks)
    top = max(permuted_ranks.values())
    specials = {"<|endoftext|>": top + 1, "<|fim|>": top + 7}
    tok = Tokenizer.from_tiktoken(p, pattern=pattern, special_tokens=specials)
    enc = tiktoken.Encoding("perm", pat_str=ref.PATTERNS[pattern], mergeable_ranks=permuted_ranks,
                            special_tokens=specials)
    assert tok.vocab_size == enc.n_vocab == top + 8
    assert tok.encode("!") == enc.encode("!") == [0]  # GPT-2 layout: "!" is id 0
    rnd = random.Random(5)
    texts = TEXTS + ["".join(rnd.choice(TEXTS)[:rnd.randint(0, 20)] for _ in range(30)) for _ in range(20)]
    for s in texts:
        assert tok.encode(s) == enc.encode(s), s
        assert tok.decode(tok.encode(s)) == s
    s = "a<|endoftext|>b<|fim|>\n"
    assert tok.encode(s, allowed_special="all") == enc.encode(s, allowed_special="all")
    assert tok.encode_batch(texts) == enc.encode_batch(texts)
    assert tok.mergeable_ranks() == permuted_ranks
    assert tok.special_tokens == specials
    with pytest.raises(ValueError, match="not a token of this vocabulary"):
        tok.decode([top + 2])
    with pytest.raises(ValueError, match="not a token of this vocabulary"):
        tok.token_bytes(top + 2)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([top + 8])


def test_permuted_vocab_saves_loads_pickles(tmp_path, permuted_ranks):
    p = tmp_path / "perm.tiktoken"
    _write_ranks(p, permuted_ranks)
    tok = Tokenizer.from_tiktoken(p, pattern="o200k", special_tokens=["<|endoftext|>"])
    assert tok.special_tokens == {"<|endoftext|>": max(permuted_ranks.values()) + 1}
    f = tmp_path / "tok.json"
    tok.save(f)
    obj = json.loads(f.read_text())
    assert obj["version"] == 2 and obj["ids"][ord("!")] == 0
    for t2 in (Tokenizer.load(f), pickle.loads(pickle.dumps(tok))):
        assert t2 == tok
        for s in TEXTS:
            assert t2.encode(s) == tok.encode(s)
    out = tmp_path / "again.tiktoken"
    tok.export_tiktoken(out)
    assert Tokenizer.from_tiktoken(out, pattern="o200k", special_tokens=["<|endoftext|>"]) == tok


def test_version2_file_errors(tmp_path, permuted_ranks):
    p = tmp_path / "perm.tiktoken"
    _write_ranks(p, permuted_ranks)
    obj = Tokenizer.from_tiktoken(p, special_tokens={"<|x|>": 5000}).to_dict()
    f = tmp_path / "t.json"
    for edit, match in [(lambda o: o["ids"].pop(), "ids must be a list"),
                        (lambda o: o.update(vocab_size=7), "vocab_size 7"),
                        (lambda o: o.update(special_tokens={"<|x|>": 0}, vocab_size=max(o["ids"]) + 1),
                         "share the id 0"),
                        (lambda o: o["ids"].__setitem__(300, o["ids"][301]), "share the id")]:
        o = json.loads(json.dumps(obj))
        edit(o)
        f.write_text(json.dumps(o))
        with pytest.raises(ValueError, match=match):
            Tokenizer.load(f)


# ---------------------------------------------------------------- OpenAI's cl100k / o200k ranks
OPENAI = {  # tiktoken's special token ids for these encodings
    "cl100k": ("cl100k_base", {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                               "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                               "<|endofprompt|>": 100276}),
    "o200k": ("o200k_base", {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}


def _openai_file(base):
    bpe_openai = pytest.importorskip("bpe_openai")  # ships cl100k_base / o200k_base ranks
    path = os.path.join(os.path.dirname(bpe_openai.__file__), "data", base + ".tiktoken.gz")
    if not os.path.isfile(path):
        pytest.skip(f"bpe_openai has no {base} data")
    return path


@pytest.mark.parametrize("pattern", sorted(OPENAI))
def test_openai_ranks_equal_tiktoken(pattern):
    tiktoken = pytest.importorskip("tiktoken")
    base, specials = OPENAI[pattern]
    path = _openai_file(base)
    tok = Tokenizer.from_tiktoken(path, pattern=pattern, special_tokens=specials)
    ranks = {}
    with gzip.open(path) as f:
        data = f.read()
    for line in data.splitlines():
        if line:
            b64, r = line.split()
            ranks[base64.b64decode(b64)] = int(r)
    enc = tiktoken.Encoding(base, pat_str=ref.PATTERNS[pattern], mergeable_ranks=ranks,
                            special_tokens=specials)
    assert tok.n_vocab == enc.n_vocab and tok.eot_token == enc.eot_token
    assert tok.encode("!") == [0] and tok.decode([0]) == "!"
    rnd = random.Random(1)
    src = pathlib.Path(__file__).read_text(encoding="utf-8")  # holds special token strings
    texts = TEXTS + [src] + ["".join(rnd.choice(TEXTS) for _ in range(8)) for _ in range(10)]
    for s in texts:
        assert tok.encode_ordinary(s) == enc.encode_ordinary(s), s[:80]
    s = "x<|endoftext|>y<|endofprompt|>"
    assert tok.encode(s, allowed_special="all") == enc.encode(s, allowed_special="all")
    assert tok.encode_batch(texts, allowed_special="none") == enc.encode_ordinary_batch(texts)
    assert tok.decode_batch(enc.encode_ordinary_batch(texts)) == texts
