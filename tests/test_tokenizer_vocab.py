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


# ------------------------------------------- from_tiktoken's C++ reader vs its Python reference
def _both_readers(path, **kw):
    """from_tiktoken through the C++ reader and through the Python reference: (result or the
    exception's type and message) for each."""
    from kernelgpt import tokenizer as tkmod

    out = []
    for fast in (True, False):
        tkmod._FAST_TIKTOKEN = fast
        try:
            out.append(Tokenizer.from_tiktoken(path, **kw))
        except ValueError as e:
            out.append((type(e), str(e)))
        finally:
            tkmod._FAST_TIKTOKEN = True
    return out


def _native_reader(data):
    from kernelgpt.tokenizer import _native

    return _native().tiktoken_ranks_to_merges(data)


@pytest.mark.parametrize("base", ["cl100k_base", "o200k_base"])
def test_native_reader_equals_python_on_openai_files(base):
    path = _openai_file(base)
    fast, slow = _both_readers(path, pattern=base.split("_")[0])
    assert isinstance(fast, Tokenizer) and fast == slow
    assert fast.merges == slow.merges


def _ambiguous_ranks(rnd):
    """A small vocabulary whose tokens often split into two lower-ranked tokens in several ways
    (the case where BPE of the bytes decides), with some tokens no text can make by merging."""
    alphabet = b"ab \n"
    ranks = {bytes([b]): r for r, b in enumerate(rnd.sample(range(256), 256))}
    toks = set()
    while len(toks) < 120:
        n = rnd.randint(2, 9)
        toks.add(bytes(rnd.choice(alphabet) for _ in range(n)))
    # keep only tokens that are two earlier tokens joined (in the order they get ranks)
    made = {bytes([b]) for b in range(256)}
    r = 256
    order = sorted(toks, key=lambda t: (len(t), t))
    for k in range(0, len(order) - 1, 2):  # some longer tokens ranked before shorter ones
        if rnd.random() < 0.3:
            order[k], order[k + 1] = order[k + 1], order[k]
    for t in order * 2:
        if t in made:
            continue
        if any(t[:i] in made and t[i:] in made for i in range(1, len(t))):
            made.add(t)
            ranks[t] = r
            r += rnd.randint(1, 3)
    return ranks


@pytest.mark.parametrize("seed", range(6))
def test_native_reader_equals_python_on_ambiguous_vocabularies(tmp_path, seed):
    rnd = random.Random(seed)
    ranks = _ambiguous_ranks(rnd)
    p = tmp_path / "amb.tiktoken"
    _write_ranks(p, ranks)
    assert _native_reader(p.read_bytes()) is not None  # the C++ reader took it
    fast, slow = _both_readers(p, pattern="o200k")
    assert isinstance(fast, Tokenizer) and fast == slow and fast.merges == slow.merges
    text = "".join(rnd.choice(["a", "b", " ", "\n", "ab", "ba "]) for _ in range(300))
    assert fast.encode(text) == slow.encode(text)


def test_native_reader_equals_python_on_permuted_ranks_with_gzip_crlf_and_blank_lines(tmp_path, permuted_ranks):
    lines = [base64.b64encode(tb) + b" \t" + str(r).encode() + b"\r\n"
             for tb, r in sorted(permuted_ranks.items(), key=lambda kv: kv[1])]
    lines.insert(3, b"\n")
    lines.insert(50, b"  \t \r\n")
    p = tmp_path / "perm.tiktoken.gz"
    p.write_bytes(gzip.compress(b"".join(lines)))
    assert _native_reader(gzip.decompress(p.read_bytes())) is not None
    fast, slow = _both_readers(p, pattern="gpt2", special_tokens={"<|endoftext|>": 10**6})
    assert isinstance(fast, Tokenizer) and fast == slow


def _good_file(permuted_ranks):
    return b"".join(base64.b64encode(tb) + b" " + str(r).encode() + b"\n"
                    for tb, r in sorted(permuted_ranks.items(), key=lambda kv: kv[1]))


@pytest.mark.parametrize("edit", [
    "unpadded_base64", "bad_base64_char", "plus_rank", "underscore_rank", "negative_rank",
    "huge_rank", "three_fields", "one_field", "duplicate_token", "duplicate_rank", "missing_byte",
    "not_joinable", "empty_token"])
def test_native_reader_leaves_every_odd_file_to_python(tmp_path, permuted_ranks, edit):
    """The C++ reader answers None for what it does not read exactly as Python does; the result
    (a Tokenizer, or the same error) is then Python's."""
    lines = _good_file(permuted_ranks).split(b"\n")[:-1]
    last = len(lines) - 1
    b64, r = lines[last].split()
    if edit == "unpadded_base64":  # "YQ" for b"a": Python says "Incorrect padding"
        lines.append(b"YWJjZA " + str(10**6).encode())  # 4 bytes -> "YWJjZA==" padded
    elif edit == "bad_base64_char":
        lines[last] = b"Y*== " + r
    elif edit == "plus_rank":
        lines[last] = b64 + b" +" + r
    elif edit == "underscore_rank":
        lines[last] = b64 + b" 1_" + r
    elif edit == "negative_rank":
        lines[last] = b64 + b" -5"
    elif edit == "huge_rank":
        lines[last] = b64 + b" " + str(2**31 - 1).encode()
    elif edit == "three_fields":
        lines[last] = b64 + b" " + r + b" x"
    elif edit == "one_field":
        lines[last] = b64
    elif edit == "duplicate_token":
        lines.append(b64 + b" " + str(10**6).encode())
    elif edit == "duplicate_rank":
        lines.append(base64.b64encode(b"zzzzqq") + b" " + r)
    elif edit == "missing_byte":
        lines = [ln for ln in lines if base64.b64decode(ln.split()[0]) != b"\x07"]
    elif edit == "not_joinable":
        lines.append(base64.b64encode(b"\x01\x02\x03\x04\x05") + b" " + str(10**6).encode())
    elif edit == "empty_token":
        lines.append(b"= " + str(10**6).encode())
    data = b"\n".join(lines) + b"\n"
    assert _native_reader(data) is None
    p = tmp_path / "odd.tiktoken"
    p.write_bytes(data)
    fast, slow = _both_readers(p, pattern="gpt2")
    assert fast == slow
    if edit in ("underscore_rank", "plus_rank"):
        # Python's int() reads "+7" and "1_7": the file is valid, and the C++ reader's None
        # costs only time
        assert isinstance(slow, Tokenizer)
        if edit == "plus_rank":
            good = tmp_path / "good.tiktoken"
            good.write_bytes(_good_file(permuted_ranks))
            assert slow == Tokenizer.from_tiktoken(good, pattern="gpt2")
    else:
        assert isinstance(slow, tuple) and slow[0] is ValueError


def test_native_reader_rejects_non_bytes():
    from kernelgpt.tokenizer import _native

    with pytest.raises(TypeError):
        _native().tiktoken_ranks_to_merges("not bytes")


def test_native_reader_when_bpe_of_a_token_stops_at_more_than_two_parts(tmp_path):
    # "dbdba" splits as "db"+"dba" or "dbdb"+"a"; BPE of its bytes merges "bd" first and then
    # finds no token among "dbd", "bdb", "ba": 4 parts, so the first split is taken.
    ranks = {bytes([b]): b for b in range(256)}
    for k, t in enumerate([b"bd", b"bdd", b"abdd", b"db", b"dbdb", b"dba", b"dbdba"]):
        ranks[t] = 256 + k
    p = tmp_path / "stuck.tiktoken"
    _write_ranks(p, ranks)
    assert _native_reader(p.read_bytes()) is not None
    fast, slow = _both_readers(p, pattern="gpt2")
    assert isinstance(fast, Tokenizer) and fast == slow
    assert fast.merges[-1] == (256 + 3, 256 + 5)  # "db" + "dba"
